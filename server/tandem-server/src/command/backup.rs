//! `tandem backup DEST` and `tandem restore-backup SRC --data-dir DIR`.
//!
//! `backup` streams `GET /api/backup` into `DEST.partial`, reads the whole archive back to
//! verify it (`backup/archive.rs`: every entry's size and SHA-256 against the manifest), and
//! only then renames it to `DEST`, so a `DEST` that exists is a whole, verified backup.
//! `restore-backup` lays an archive out in a new or empty directory, verifying as it goes, runs
//! `tandem check` on the result and opens the restored store once; on any failure it removes
//! what it wrote.

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use axum::http::Method;
use tandem_store::Store;
use tokio::io::AsyncWriteExt;

use super::CommandError;
use super::client::Client;
use crate::DB_FILE_NAME;
use crate::backup::archive::{self, Manifest};
use crate::cli::{BackupArgs, CheckArgs, RestoreBackupArgs};

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
    let mut file = tokio::fs::File::create(&partial.0)
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
    let created = match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CommandError::Invalid(format!(
                    "{} is not empty; restore-backup only restores into a new or empty data \
                     directory",
                    dir.display()
                )));
            }
            false
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_error(dir, "creating"))?;
            true
        }
        Err(error) => return Err(io_error(dir, "reading")(error)),
    };
    let res = lay_out(&args.src, dir);
    if res.is_err() {
        // Everything in `dir` is ours: it was empty or new.
        if created {
            let _ = fs::remove_dir_all(dir);
        } else if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
    }
    let manifest = res?;
    Ok(format!(
        "restored {} documents and {} blobs into {}; start the server with: tandem serve \
         --data-dir {}",
        manifest.n_docs,
        n_blobs(&manifest),
        dir.display(),
        dir.display()
    ))
}

/// Writes every entry of the archive at `src` under `dir` and opens the restored store.
fn lay_out(src: &Path, dir: &Path) -> Result<Manifest, CommandError> {
    let file = fs::File::open(src).map_err(io_error(src, "opening"))?;
    let manifest = archive::read(BufReader::new(file), |entry, reader| {
        // `archive::read` admits only `tandem.redb`, `server-key` and `blobs/xx/<sha256>`.
        let path = dir.join(&entry.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = fs::File::create_new(&path)?;
        io::copy(reader, &mut out)?;
        out.sync_all()
    })
    .map_err(|error| CommandError::Invalid(format!("{}: {error}", src.display())))?;
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
    let db = dir.join(DB_FILE_NAME);
    let store = Store::open(&db).map_err(|source| CommandError::Store {
        path: db.clone(),
        source,
    })?;
    drop(store);
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
