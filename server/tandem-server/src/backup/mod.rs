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

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tandem_hub::Lifecycle;
use tandem_store::{Store, StoreError};
use tokio::sync::mpsc;

use crate::DB_FILE_NAME;
use crate::auth::SERVER_KEY_FILE;
use crate::files::pin::BlobPins;
use crate::files::{FileError, Files};
use archive::{ARCHIVE_FORMAT, ARCHIVE_VERSION, Manifest, ManifestEntry};

/// Where the temporary copies go, under the data directory.
pub(crate) const BACKUP_TMP_DIR: &str = "backup-tmp";
/// Bytes of the archive handed to the response at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks waiting for the client: the stream's bounded queue (the copy pauses while it is full).
const STREAM_QUEUE_CHUNKS: usize = 8;
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
pub(crate) fn prepare(store: &Store, files: &Files) -> Result<Prepared, BackupError> {
    let db_path = store.path().ok_or(BackupError::NoFile)?;
    let data_dir = db_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let tmp_dir = data_dir.join(BACKUP_TMP_DIR);
    fs::create_dir_all(&tmp_dir).map_err(|error| BackupError::Io {
        what: format!("creating {}", tmp_dir.display()),
        error,
    })?;
    let copy = TempCopy(tmp_dir.join(format!("{:032x}.redb", rand::random::<u128>())));
    let created_ms = tandem_hub::clock::now_ms();
    let mut pins = None;
    let blob_lock = files.lock_blobs()?;
    let copied = store.write_backup(&copy.0, |blobs| {
        pins = Some(files.pin_blobs(
            &blob_lock,
            blobs.iter().map(|blob| blob.sha256.clone()).collect(),
        ));
        drop(blob_lock);
    });
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
    let (tx, rx) = mpsc::channel(STREAM_QUEUE_CHUNKS);
    let shutting_down = lifecycle.cancel.clone();
    let span = tracing::info_span!("backup");
    lifecycle.spawn(span.clone(), async move {
        let streamed = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
                n_bytes: 0,
                cancel: shutting_down,
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
                    let _ = tx.blocking_send(Err(error));
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
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
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
