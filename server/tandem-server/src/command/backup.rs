//! `tandem backup DEST` and `tandem restore-backup SRC --data-dir DIR`.
//!
//! `backup` streams `GET /api/backup` into `DEST.partial`, reads the whole archive back to
//! verify it (`backup/archive.rs`: every entry's size and SHA-256 against the manifest), and
//! only then renames it to `DEST`, so a `DEST` that exists is a whole, verified backup.
//! `restore-backup` lays an archive out in a staging directory beside the target, verifying as
//! it goes, opens the restored store once (migrating an older format), runs `tandem check` on
//! the result, and only then moves it into the new or empty target, `tandem.redb` last; on any
//! failure it removes what it wrote. The archive and the restored key and store are owner-only
//! (0600).

use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::http::Method;
use tandem_store::Store;
use tokio::io::AsyncWriteExt;

use super::CommandError;
use super::client::Client;
use crate::DB_FILE_NAME;
use crate::backup::archive::{self, Manifest};
use crate::cli::{BackupArgs, CheckArgs, RestoreBackupArgs};

/// The mode of the archive and of the restored `server-key` and `tandem.redb`: the server writes
/// its key owner-only too (`auth.rs`).
const PRIVATE_FILE_MODE: u32 = 0o600;

pub(super) async fn backup(args: &BackupArgs) -> Result<String, CommandError> {
    let dest = &args.dest;
    if dest.exists() {
        return Err(CommandError::Invalid(format!(
            "{} exists; a backup never overwrites a file",
            dest.display()
        )));
    }
    let client = Client::new(&args.server)?;
    let mut partial_name = dest.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = PartialFile(PathBuf::from(partial_name));
    let mut response = client.send(Method::GET, "/api/backup", None, None).await?;
    // The archive holds the server key, password hashes and webhook secrets: owner-only.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&partial.0)
        .await
        .map_err(io_error(&partial.0, "creating"))?;
    // A leftover `DEST.partial` kept its mode on being opened.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        PRIVATE_FILE_MODE,
    ))
    .await
    .map_err(io_error(&partial.0, "creating"))?;
    // A stream that breaks off fails here, or, if it ended cleanly but short, the verification.
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| client.unreachable(&error))?
    {
        file.write_all(&chunk)
            .await
            .map_err(io_error(&partial.0, "writing"))?;
    }
    file.sync_all()
        .await
        .map_err(io_error(&partial.0, "writing"))?;
    drop(file);
    let path = partial.0.clone();
    let manifest = tokio::task::spawn_blocking(move || verify(&path))
        .await
        .map_err(|_| CommandError::Invalid("verifying the backup panicked".into()))??;
    fs::rename(&partial.0, dest).map_err(io_error(dest, "renaming the verified backup to"))?;
    std::mem::forget(partial);
    let size = fs::metadata(dest).map(|meta| meta.len()).unwrap_or(0);
    Ok(format!(
        "backup of {} from {}: {} documents, {} blobs, {size} bytes, verified",
        dest.display(),
        client.server(),
        manifest.n_docs,
        n_blobs(&manifest),
    ))
}

/// The archive at `path` read back and checked.
fn verify(path: &Path) -> Result<Manifest, CommandError> {
    let file = fs::File::open(path).map_err(io_error(path, "opening"))?;
    archive::read(BufReader::new(file), |_, _| Ok(())).map_err(|error| {
        CommandError::Invalid(format!("the server's archive does not verify: {error}"))
    })
}

/// `DEST.partial`, removed unless forgotten (once renamed).
struct PartialFile(PathBuf);

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub(super) fn restore(args: &RestoreBackupArgs) -> Result<String, CommandError> {
    let dir = &args.data_dir;
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CommandError::Invalid(format!(
                    "{} is not empty; restore-backup only restores into a new or empty data \
                     directory",
                    dir.display()
                )));
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(dir, "reading")(error)),
    }
    // Everything is laid out, checked and synced in a staging directory beside `dir` first, and
    // only then moved into `dir`, `tandem.redb` last: a restore killed midway leaves no store
    // in `dir` for `serve` to start on with blobs missing.
    let staging = Staging(staging_dir(dir)?);
    if staging.0.exists() {
        // A leftover of a restore that was killed: the name is ours.
        fs::remove_dir_all(&staging.0).map_err(io_error(&staging.0, "removing"))?;
    }
    fs::create_dir_all(&staging.0).map_err(io_error(&staging.0, "creating"))?;
    let manifest = lay_out(&args.src, &staging.0)?;
    move_into_place(&staging.0, dir)?;
    Ok(format!(
        "restored {} documents and {} blobs into {}; start the server with: tandem serve \
         --data-dir {}",
        manifest.n_docs,
        n_blobs(&manifest),
        dir.display(),
        dir.display()
    ))
}

/// `.<name>.restore-tmp` beside `dir`, on the same file system (so renames out of it are
/// atomic).
fn staging_dir(dir: &Path) -> Result<PathBuf, CommandError> {
    let absolute = std::path::absolute(dir).map_err(io_error(dir, "resolving"))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(CommandError::Invalid(format!(
            "{} cannot be a data directory",
            dir.display()
        )));
    };
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(".restore-tmp");
    Ok(parent.join(staging))
}

/// The staging directory, removed however the restore ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Moves every entry of `staging` into `dir` (created if missing), `tandem.redb` last, and
/// syncs `dir`. On a failure, what was moved is moved back, so `dir` is left empty.
fn move_into_place(staging: &Path, dir: &Path) -> Result<(), CommandError> {
    fs::create_dir_all(dir).map_err(io_error(dir, "creating"))?;
    let mut names: Vec<_> = fs::read_dir(staging)
        .map_err(io_error(staging, "reading"))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_error(staging, "reading"))?;
    // `false` sorts first: the store file goes last.
    names.sort_by_key(|name| name == DB_FILE_NAME);
    let mut moved = Vec::new();
    for name in &names {
        if let Err(error) = fs::rename(staging.join(name), dir.join(name)) {
            for name in moved.iter().rev() {
                let _ = fs::rename(dir.join(name), staging.join(name));
            }
            return Err(io_error(dir, "moving the restored files into")(error));
        }
        moved.push(name.clone());
    }
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir, "syncing"))
}

/// Writes every entry of the archive at `src` under `dir`, opens the restored store (which
/// migrates an older format) and checks it.
fn lay_out(src: &Path, dir: &Path) -> Result<Manifest, CommandError> {
    let file = fs::File::open(src).map_err(io_error(src, "opening"))?;
    let manifest = archive::read(BufReader::new(file), |entry, reader| {
        // `archive::read` admits only `tandem.redb`, `server-key` and `blobs/xx/<sha256>`.
        let path = dir.join(&entry.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        if !entry.path.starts_with("blobs/") {
            // The key and the store (password hashes, webhook secrets): owner-only.
            options.mode(PRIVATE_FILE_MODE);
        }
        let mut out = options.open(&path)?;
        io::copy(reader, &mut out)?;
        out.sync_all()
    })
    .map_err(|error| CommandError::Invalid(format!("{}: {error}", src.display())))?;
    // Opened first: an archive of an older store format is migrated here, and `tandem check`
    // knows only this build's format.
    let db = dir.join(DB_FILE_NAME);
    let store = Store::open(&db).map_err(|source| CommandError::Store {
        path: db.clone(),
        source,
    })?;
    drop(store);
    // The archive's hashes say the bytes are those the server sent; `tandem check` says the
    // store they make is sound (record checksums, docs, refcounts, blobs).
    let (report, sound) = super::check::check(&CheckArgs {
        data_dir: dir.to_path_buf(),
    })?;
    if !sound {
        return Err(CommandError::Invalid(format!(
            "{}: the restored store does not check out:\n{report}",
            src.display()
        )));
    }
    for sub in ["", "blobs"] {
        let path = dir.join(sub);
        if path.is_dir() {
            fs::File::open(&path)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error(&path, "syncing"))?;
        }
    }
    Ok(manifest)
}

fn n_blobs(manifest: &Manifest) -> usize {
    manifest
        .entries
        .iter()
        .filter(|entry| entry.path.starts_with("blobs/"))
        .count()
}

fn io_error<'a>(path: &'a Path, what: &'a str) -> impl Fn(io::Error) -> CommandError + 'a {
    move |error| CommandError::Io {
        what: format!("{what} {}", path.display()),
        error,
    }
}
