//! Backups of a running server (one node): a consistent copy of the store and the blobs it
//! names, streamed as the archive of `archive.rs` to whoever asked (`GET /api/backup`,
//! `tandem backup`).
//!
//! How it stays consistent without stopping writes: [`prepare`] takes the blob lock, begins a
//! redb read transaction (`Store::write_backup`), pins the blobs that transaction names
//! (`files/pin.rs`) and lets the lock go: edits, uploads and deletes go on from there. The copy
//! of every table into a fresh file under `<data dir>/backup-tmp/` then runs from that read
//! transaction, and the archive streams the copy, the server key and the pinned blobs, which no
//! delete can remove until the stream ends (the blobs are immutable, so what is streamed is what
//! the copy names). The temporary copy is removed and the pins dropped however the stream ends.
//!
//! Must not: run in cluster mode (the API refuses: Redis, Postgres and the shared blobs have
//! backups of their own), or hold the blob lock for more than the beginning of a transaction.
//! Boundary: a service; it names no HTTP. `api/backup.rs` serves it.

pub(crate) mod archive;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tandem_hub::Lifecycle;
use tandem_store::{Store, StoreError};
use tokio::sync::mpsc;

use crate::DB_FILE_NAME;
use crate::auth::SERVER_KEY_FILE;
use crate::files::pin::{BackupSlot, BlobPins};
use crate::files::{FileError, Files};
use archive::{ARCHIVE_FORMAT, ARCHIVE_VERSION, Manifest, ManifestEntry};

/// Where the temporary copies go, under the data directory.
pub(crate) const BACKUP_TMP_DIR: &str = "backup-tmp";
/// Bytes of the archive handed to the response at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks waiting for the client: the stream's bounded queue (the copy pauses while it is full).
const STREAM_QUEUE_CHUNKS: usize = 8;
/// How long a chunk may wait for the client to take it: a client that stops reading for this
/// long ends the backup, which releases its copy, pins and slot (as file downloads give up on
/// a stalled client).
const SEND_IDLE_TIMEOUT: Duration = crate::files::UPLOAD_IDLE_TIMEOUT;
/// Bytes hashed at a time.
const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// Why a backup could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob lock or the files service failed.
    #[error("{0}")]
    File(#[from] FileError),
    /// A file could not be written or read.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        error: io::Error,
    },
    /// The store names a blob that is missing or has the wrong size on disk.
    #[error("blob {sha256} is missing or damaged ({detail}); `tandem check` reports such problems")]
    BadBlob {
        /// The blob.
        sha256: String,
        /// What is wrong.
        detail: String,
    },
    /// The store is not a file (a custom backend, in tests).
    #[error("the store is not a file")]
    NoFile,
    /// No room for the temporary copy, before it began or while it was written.
    #[error("no room for the backup's copy of the store: {detail}")]
    InsufficientStorage {
        /// How much was needed and free, or the error.
        detail: String,
    },
}

impl BackupError {
    /// Whether the disk (or the user's quota) ran out.
    pub(crate) fn is_disk_full(&self) -> bool {
        match self {
            BackupError::InsufficientStorage { .. } => true,
            BackupError::Io { error, .. } => {
                tandem_store::error::io_reason(error) == tandem_store::ReadOnlyReason::DiskFull
            }
            BackupError::Store(error) => {
                error.read_only_reason() == Some(tandem_store::ReadOnlyReason::DiskFull)
            }
            _ => false,
        }
    }
}

/// Room kept free beyond the size of the store file when a backup copies it: the copy is
/// about the size of the file (a compacted file is smaller), and the live store, on the same
/// file system, must still be able to grow meanwhile.
const FREE_SPACE_MARGIN_BYTES: u64 = 64 * 1024 * 1024;

/// Refuses a copy of the store at `db_path` into `tmp_dir` when the file system has less room
/// than the store file plus [`FREE_SPACE_MARGIN_BYTES`].
fn check_free_space(db_path: &Path, tmp_dir: &Path) -> Result<(), BackupError> {
    let io_error = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |error| BackupError::Io { what, error }
    };
    let needed = fs::metadata(db_path)
        .map_err(io_error("reading", db_path))?
        .len();
    let stat = rustix::fs::statvfs(tmp_dir)
        .map_err(io::Error::from)
        .map_err(io_error("reading the free space of", tmp_dir))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    enough_room(needed, free)
}

fn enough_room(store_bytes: u64, free_bytes: u64) -> Result<(), BackupError> {
    let needed = store_bytes.saturating_add(FREE_SPACE_MARGIN_BYTES);
    if free_bytes < needed {
        return Err(BackupError::InsufficientStorage {
            detail: format!("{needed} bytes needed, {free_bytes} free"),
        });
    }
    Ok(())
}

/// A backup ready to stream: the manifest, the temporary copy and the pins.
pub(crate) struct Prepared {
    manifest: Manifest,
    data_dir: PathBuf,
    files: Files,
    /// Removes the temporary copy when dropped.
    copy: TempCopy,
    /// Keeps the named blobs from removal until dropped.
    _pins: BlobPins,
    /// Keeps other backups from starting until dropped (after `copy` and the pins).
    _slot: BackupSlot,
}

impl Prepared {
    /// The manifest the archive starts with.
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// The temporary copy of the store, removed when dropped.
struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.0)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %self.0.display(), "removing a backup's temporary copy failed");
        }
    }
}

/// Removes the temporary copies left in `<data_dir>/backup-tmp/` by a process that died while
/// streaming a backup. Called at start-up, before any backup can run. Blocking (one directory).
pub(crate) fn remove_leftovers(data_dir: &Path) {
    let dir = data_dir.join(BACKUP_TMP_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "redb") {
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a backup's leftover copy")
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "removing a backup's leftover copy failed")
                }
            }
        }
    }
}

/// Copies the store and pins its blobs (see the module docs). Blocking: run it on the blocking
/// pool.
pub(crate) fn prepare(
    store: &Store,
    files: &Files,
    slot: BackupSlot,
) -> Result<Prepared, BackupError> {
    let db_path = store.path().ok_or(BackupError::NoFile)?;
    let data_dir = db_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tmp_dir = data_dir.join(BACKUP_TMP_DIR);
    fs::create_dir_all(&tmp_dir).map_err(|error| BackupError::Io {
        what: format!("creating {}", tmp_dir.display()),
        error,
    })?;
    check_free_space(db_path, &tmp_dir)?;
    let copy = TempCopy(tmp_dir.join(format!("{:032x}.redb", rand::random::<u128>())));
    let created_ms = tandem_hub::clock::now_ms();
    let mut pins = None;
    let blob_lock = files.lock_blobs()?;
    // Blob removals wait from here until the pins are in place; the lock itself is held only
    // until the read transaction has begun.
    let start = files.begin_pinning(&blob_lock);
    let copied = store.write_backup(
        &copy.0,
        || drop(blob_lock),
        |blobs| pins = Some(start.pin(blobs.iter().map(|blob| blob.sha256.clone()).collect())),
    );
    // On an error the pins, if taken, drop here with the temporary copy.
    let copied = copied?;
    let pins = pins.expect("write_backup calls on_snapshot before it copies");
    let mut entries = vec![hashed_entry(&copy.0, DB_FILE_NAME)?];
    let key = data_dir.join(SERVER_KEY_FILE);
    if key.exists() {
        entries.push(hashed_entry(&key, SERVER_KEY_FILE)?);
    }
    for blob in &copied.blobs {
        let path = files.inner.disk.blob_path(&blob.sha256);
        let on_disk = fs::metadata(&path).map_err(|error| BackupError::BadBlob {
            sha256: blob.sha256.clone(),
            detail: error.to_string(),
        })?;
        if on_disk.len() != blob.size {
            return Err(BackupError::BadBlob {
                sha256: blob.sha256.clone(),
                detail: format!("{} bytes, the store says {}", on_disk.len(), blob.size),
            });
        }
        entries.push(ManifestEntry {
            path: archive::blob_path(&blob.sha256),
            size: blob.size,
            sha256: blob.sha256.clone(),
        });
    }
    Ok(Prepared {
        manifest: Manifest {
            format: ARCHIVE_FORMAT.into(),
            version: ARCHIVE_VERSION,
            store_format_version: copied.format_version,
            created_ms,
            n_docs: copied.n_docs,
            entries,
        },
        data_dir,
        files: files.clone(),
        copy,
        _pins: pins,
        _slot: slot,
    })
}

fn hashed_entry(path: &Path, name: &str) -> Result<ManifestEntry, BackupError> {
    let io_error = |error| BackupError::Io {
        what: format!("reading {}", path.display()),
        error,
    };
    let mut file = fs::File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(ManifestEntry {
        path: name.into(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Writes the archive of `prepared` to `out`. Blocking.
pub(crate) fn write(prepared: &Prepared, out: impl Write) -> io::Result<()> {
    archive::write(out, &prepared.manifest, |entry| {
        let path = if entry.path == DB_FILE_NAME {
            prepared.copy.0.clone()
        } else if entry.path == SERVER_KEY_FILE {
            prepared.data_dir.join(SERVER_KEY_FILE)
        } else {
            prepared.files.inner.disk.blob_path(&entry.sha256)
        };
        Ok(Box::new(io::BufReader::new(fs::File::open(path)?)))
    })?
    .flush()
}

/// Streams the archive of `prepared` from a tracked task on the blocking pool; the receiver
/// yields its chunks, then ends, or yields one error if writing failed (the response then ends
/// without the archive's end, and `tandem backup` refuses it). The task stops when the receiver
/// is dropped (the client went away) or shutdown begins.
pub(crate) fn spawn_stream(
    lifecycle: &Lifecycle,
    prepared: Prepared,
) -> mpsc::Receiver<io::Result<Bytes>> {
    spawn_stream_with(lifecycle, prepared, SEND_IDLE_TIMEOUT)
}

/// [`spawn_stream`] with the idle timeout given (tests shorten it).
fn spawn_stream_with(
    lifecycle: &Lifecycle,
    prepared: Prepared,
    idle_timeout: Duration,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE_CHUNKS);
    let shutting_down = lifecycle.cancel.clone();
    let span = tracing::info_span!("backup");
    let runtime = tokio::runtime::Handle::current();
    lifecycle.spawn(span.clone(), async move {
        let streamed = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
                n_bytes: 0,
                cancel: shutting_down,
                runtime,
                idle_timeout,
            };
            let res = write(&prepared, &mut out);
            match res {
                Ok(()) => tracing::info!(
                    n_docs = prepared.manifest.n_docs,
                    n_entries = prepared.manifest.entries.len(),
                    n_bytes = out.n_bytes,
                    "backup streamed"
                ),
                Err(error) => {
                    tracing::warn!(%error, n_bytes = out.n_bytes, "backup stream ended early");
                    // Never waits: a full queue means the client is not reading anyway.
                    let _ = tx.try_send(Err(error));
                }
            }
            // `prepared` drops here: the temporary copy goes and the pins are released.
        })
        .await;
        if streamed.is_err() {
            tracing::error!("the backup task panicked");
        }
    });
    rx
}

/// A `Write` into the stream's bounded queue, in chunks of [`CHUNK_BYTES`].
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    n_bytes: u64,
    cancel: tokio_util::sync::CancellationToken,
    /// To wait for room in the queue with a timeout, from the blocking pool.
    runtime: tokio::runtime::Handle,
    idle_timeout: Duration,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("the server is shutting down"));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.n_bytes += chunk.len() as u64;
        let (tx, cancel, idle_timeout) = (&self.tx, &self.cancel, self.idle_timeout);
        self.runtime.block_on(async {
            tokio::select! {
                sent = tx.send_timeout(Ok(chunk), idle_timeout) => sent.map_err(|error| match error {
                    mpsc::error::SendTimeoutError::Timeout(_) => io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ),
                    mpsc::error::SendTimeoutError::Closed(_) => {
                        io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
                    }
                }),
                () = cancel.cancelled() => Err(io::Error::other("the server is shutting down")),
            }
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::files::{FilesConfig, Sharing};

    #[test]
    fn a_copy_needs_the_store_size_plus_a_margin_free() {
        assert!(enough_room(10, 10 + FREE_SPACE_MARGIN_BYTES).is_ok());
        let refused = enough_room(10, 9 + FREE_SPACE_MARGIN_BYTES).expect_err("too little room");
        assert!(refused.is_disk_full());
        assert!(enough_room(u64::MAX, u64::MAX - 1).is_err());
    }

    /// A client that stops reading ends its backup once the idle timeout passes: the copy, the
    /// pins and the slot go, and the next backup can start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_client_ends_the_backup_and_frees_the_slot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join(DB_FILE_NAME)).expect("store"));
        let files = Files::open(
            store.clone(),
            store.clone(),
            FilesConfig::default(),
            dir.path(),
            Sharing::Local,
            None,
        )
        .expect("files");
        // A blob bigger than the queue holds, so the writer must wait for the client.
        let sha256 = "ab".repeat(32);
        let staged = dir.path().join("staged");
        let size = CHUNK_BYTES * (STREAM_QUEUE_CHUNKS + 4);
        fs::write(&staged, vec![7u8; size]).expect("write");
        files
            .inner
            .disk
            .store_blob(&staged, &sha256)
            .expect("store blob");
        store
            .put_file_version(
                "w/big",
                tandem_store::FileVersion {
                    version: 0,
                    sha256: sha256.clone(),
                    size: size as u64,
                    content_type: "application/octet-stream".into(),
                    name: "big".into(),
                    uploader: tandem_store::Uploader {
                        sub: None,
                        name: "Ada".into(),
                    },
                    uploaded_ms: 1,
                },
                None,
                None,
                None,
            )
            .expect("file");
        let slot = files.try_start_backup().expect("slot");
        let prepared = {
            let (store, files) = (store.clone(), files.clone());
            tokio::task::spawn_blocking(move || prepare(&store, &files, slot))
                .await
                .expect("join")
                .expect("prepared")
        };
        let copy = prepared.copy.0.clone();
        assert!(files.try_start_backup().is_none(), "one backup at a time");
        let lifecycle = Lifecycle::default();
        // Never read.
        let _chunks = spawn_stream_with(&lifecycle, prepared, Duration::from_millis(200));
        lifecycle.tracker.close();
        tokio::time::timeout(Duration::from_secs(20), lifecycle.tracker.wait())
            .await
            .expect("the stalled backup ended");
        assert!(!copy.exists(), "the temporary copy is removed");
        assert!(!files.is_pinned(&sha256), "the pins are released");
        assert!(files.try_start_backup().is_some(), "the slot is free");
    }
}
