//! The bytes of files on disk: content-addressed blobs and uploads in progress.
//!
//! Layout under the data directory, or in cluster mode under the blob directory every node mounts
//! (`protocol-spec/files.md`, `protocol-spec/cluster.md`):
//! - `blobs/<first 2 hex>/<sha256 hex>`: one file per distinct content, written once, never
//!   changed. It appears only by `rename` of a complete, fsynced upload file, so a blob file is
//!   always whole.
//! - `uploads/<upload id>`: the bytes of an upload in progress (a PUT body being received, or a
//!   tus upload). Never listed, never served.
//! - `blobs.lock` (cluster mode on a shared directory): the file every node `flock`s while it
//!   holds the blob lock
//!   ([`BlobLock`]), so that "store a blob, then commit the version naming it" on one node never
//!   interleaves with "commit a delete, then remove the blob's file" on another.
//!
//! A tus upload's file is also `flock`ed by the PATCH writing it ([`Disk::lock_upload`]), so
//! that one PATCH writes an upload at a time across all nodes.
//!
//! Everything here is blocking filesystem work except [`UploadFile`]; callers run it on the
//! blocking pool. Names read back from the directories are checked (hex of the right length)
//! before they are used, so nothing outside these two directories is ever touched.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tandem_store::meta::{SharedLockGuard, SharedLocks};
use tokio::io::{AsyncWriteExt, BufWriter};

/// Bytes buffered before a write to an upload file (fewer, larger writes on the blocking pool).
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes read at a time when a finished tus upload is hashed.
const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// The two directories.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    blobs: PathBuf,
    uploads: PathBuf,
}

/// Serialises the work that must not interleave with a blob appearing or going (see
/// `files/mod.rs`): a mutex between this node's threads and, when other nodes share the blobs,
/// a lock between nodes: an exclusive `flock` on `blobs.lock` in a shared directory, or the
/// shared lock `blobs` (a Postgres advisory lock) when the blobs are on an S3-compatible store.
pub(crate) struct BlobLock {
    local: Mutex<()>,
    across: Across,
}

/// The lock between nodes.
enum Across {
    /// One node.
    None,
    /// `blobs.lock`. Only locked while `local` is held, so one open file per node is enough
    /// (`flock` locks belong to the open file, not the process).
    Flock(fs::File),
    /// The cluster's shared locks.
    Shared(Arc<dyn SharedLocks>),
}

/// The name of the blob lock among the cluster's shared locks.
pub(crate) const BLOB_LOCK_NAME: &str = "blobs";

/// Why the blob lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// The `flock`.
    Io(io::Error),
    /// The shared lock's database.
    Shared(tandem_store::StoreError),
}

/// The blob lock, held until dropped.
pub(crate) struct BlobGuard<'a> {
    flock: Option<&'a fs::File>,
    /// Released (when dropped) before `_local`.
    _shared: Option<SharedLockGuard>,
    _local: MutexGuard<'a, ()>,
}

impl Drop for BlobGuard<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.flock
            && let Err(error) = file.unlock()
        {
            // Closing the file would release it; it stays open, so this is a bug or a dead
            // mount, and the next locker will block.
            tracing::error!(%error, "releasing the blob lock failed");
        }
    }
}

impl BlobGuard<'_> {
    /// Whether the lock is still held: always with a `flock` (or on one node); with the
    /// cluster's shared lock, only while the session holding it lives (asked of Postgres).
    /// Blocking.
    pub(crate) fn still_held(&self) -> bool {
        self._shared
            .as_ref()
            .is_none_or(SharedLockGuard::still_held)
    }
}

impl BlobLock {
    /// The lock of `disk`; `shared` when other nodes use the same directory.
    pub(crate) fn open(disk: &Disk, shared: bool) -> io::Result<BlobLock> {
        let across = if shared {
            let path = disk
                .blobs
                .parent()
                .unwrap_or(&disk.blobs)
                .join("blobs.lock");
            Across::Flock(
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)?,
            )
        } else {
            Across::None
        };
        Ok(BlobLock {
            local: Mutex::new(()),
            across,
        })
    }

    /// The lock of blobs on an S3-compatible store: the cluster's shared lock `blobs`.
    pub(crate) fn shared(locks: Arc<dyn SharedLocks>) -> BlobLock {
        BlobLock {
            local: Mutex::new(()),
            across: Across::Shared(locks),
        }
    }

    /// Waits for the lock. Blocking: call it on the blocking pool.
    pub(crate) fn lock(&self) -> Result<BlobGuard<'_>, LockError> {
        let local = self
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut guard = BlobGuard {
            flock: None,
            _shared: None,
            _local: local,
        };
        match &self.across {
            Across::None => {}
            Across::Flock(file) => {
                file.lock().map_err(LockError::Io)?;
                guard.flock = Some(file);
            }
            Across::Shared(locks) => {
                guard._shared = Some(locks.lock(BLOB_LOCK_NAME).map_err(LockError::Shared)?);
            }
        }
        Ok(guard)
    }
}

impl Disk {
    /// The local directory of a node whose blobs are on an S3-compatible store: only
    /// `uploads/` (bodies being received before they are sent to the store) is used.
    pub(crate) fn open_local(dir: &Path) -> io::Result<Disk> {
        let disk = Disk {
            blobs: dir.join("blobs"),
            uploads: dir.join("uploads"),
        };
        fs::create_dir_all(&disk.uploads)?;
        Ok(disk)
    }

    /// Creates `blobs/` and `uploads/` under `dir` if needed.
    pub(crate) fn open(dir: &Path) -> io::Result<Disk> {
        let disk = Disk {
            blobs: dir.join("blobs"),
            uploads: dir.join("uploads"),
        };
        fs::create_dir_all(&disk.blobs)?;
        fs::create_dir_all(&disk.uploads)?;
        Ok(disk)
    }

    /// Takes the exclusive `flock` of upload `id`'s file without waiting: `Ok(None)` if another
    /// writer (on any node sharing the directory) holds it. Released when the file is closed.
    pub(crate) fn lock_upload(&self, id: &str) -> io::Result<Option<fs::File>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .open(self.upload_path(id))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    /// Where blob `sha256` (checked hex) lives.
    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs.join(&sha256[..2]).join(sha256)
    }

    /// Where upload `id` (checked hex) keeps its bytes.
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    /// Makes the complete, fsynced file `temp` blob `sha256`: renamed into place, or removed if
    /// the blob exists already (same bytes). The directory entry is fsynced, so the blob
    /// survives a crash once this returns. The caller holds the blob lock.
    pub(crate) fn store_blob(&self, temp: &Path, sha256: &str) -> io::Result<()> {
        let target = self.blob_path(sha256);
        if target.exists() {
            fs::remove_file(temp)?;
            return Ok(());
        }
        let dir = target.parent().expect("a blob path has a parent");
        let new_dir = !dir.exists();
        fs::create_dir_all(dir)?;
        fs::rename(temp, &target)?;
        sync_dir(dir)?;
        if new_dir {
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }

    /// Makes the complete, fsynced file `temp` blob `sha256` by a hard link, leaving `temp` in
    /// place (a tus upload's bytes stay until its record is gone). Nothing to do if the blob
    /// exists already (same bytes). Durable once this returns. The caller holds the blob lock.
    pub(crate) fn link_blob(&self, temp: &Path, sha256: &str) -> io::Result<()> {
        let target = self.blob_path(sha256);
        if target.exists() {
            return Ok(());
        }
        let dir = target.parent().expect("a blob path has a parent");
        let new_dir = !dir.exists();
        fs::create_dir_all(dir)?;
        fs::hard_link(temp, &target)?;
        sync_dir(dir)?;
        if new_dir {
            sync_dir(&self.blobs)?;
        }
        Ok(())
    }

    /// Removes blob `sha256`'s file; a missing file is not an error. The caller holds the blob
    /// lock and has seen the blob's refcount row gone.
    pub(crate) fn remove_blob(&self, sha256: &str) -> io::Result<()> {
        match fs::remove_file(self.blob_path(sha256)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Removes upload `id`'s bytes; a missing file is not an error.
    pub(crate) fn remove_upload(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.upload_path(id)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Every blob file: its hash and when it was last modified.
    pub(crate) fn blob_files(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.blobs)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path())? {
                let file = file?;
                let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if is_sha256_hex(&name) {
                    out.push((name, file.metadata()?.modified()?));
                }
            }
        }
        Ok(out)
    }

    /// Every upload file: its id and when it was last modified.
    pub(crate) fn upload_files(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for file in fs::read_dir(&self.uploads)? {
            let file = file?;
            let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if is_upload_id(&name) {
                out.push((name, file.metadata()?.modified()?));
            }
        }
        Ok(out)
    }
}

/// An upload file being written: buffered appends, then flush and fsync.
pub(crate) struct UploadFile {
    writer: BufWriter<tokio::fs::File>,
}

impl UploadFile {
    /// Creates `path` (fails if it exists).
    pub(crate) async fn create(path: &Path) -> io::Result<UploadFile> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await?;
        Ok(UploadFile::wrap(file))
    }

    /// Opens `path` to append to it.
    pub(crate) async fn append(path: &Path) -> io::Result<UploadFile> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .await?;
        Ok(UploadFile::wrap(file))
    }

    fn wrap(file: tokio::fs::File) -> UploadFile {
        UploadFile {
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        }
    }

    /// Appends `bytes`.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Writes out the buffer and fsyncs the file: what was written is on disk.
    pub(crate) async fn sync(&mut self) -> io::Result<()> {
        self.writer.flush().await?;
        self.writer.get_mut().sync_all().await
    }
}

/// SHA-256 (hex) and length of the file at `path`, read in chunks.
pub(crate) fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// A fresh upload id: 128 random bits as 32 lower-case hex digits.
pub(crate) fn new_upload_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `text` is an upload id as [`new_upload_id`] makes them.
pub(crate) fn is_upload_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `text` is a SHA-256 in lower-case hex.
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// fsync of a directory, so a rename or creation in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
