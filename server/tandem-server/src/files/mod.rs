//! Files: the service behind uploads (`PUT /api/files/{path}` and tus), downloads, listing,
//! versions, renames and deletes, and the cleanup of interrupted uploads. The contract is
//! `protocol-spec/files.md`; the handlers are `api/files.rs`, `api/download.rs` and `api/tus.rs`.
//!
//! The bytes live content-addressed on disk (`blobs.rs`) or, in cluster mode, optionally on an
//! S3-compatible store (`s3.rs`), behind the operations of `backend.rs`; the metadata and
//! refcounts in redb (`tandem_store::files`) or Postgres. An upload is received into
//! `uploads/<id>` with its SHA-256 computed as it arrives; completing it fsyncs the file, checks
//! size and hash, stages it (on S3: sends it to a staging object), places it among the blobs
//! under the blob lock (a rename, or a server-side copy; nothing when the blob exists) and then
//! records the version in one durable transaction. Only then is it listed, served, or announced
//! on the event bus.
//!
//! Invariants:
//! - Nothing is visible (listed, downloadable, announced) before the transaction that records
//!   it has committed; an upload that fails leaves no file visible and removes its bytes (a PUT
//!   at once, a tus upload when terminated or expired).
//! - An upload in progress holds quota: a tus upload its declared length (its record), a PUT
//!   its `Content-Length` or the bytes received so far (`puts`). A new upload is admitted only
//!   if the workspace's usage, every such reservation and its own size fit the quota; the
//!   check and the reservation happen together under `reserve_lock`.
//! - The cleanup never removes the bytes of an upload in progress: a tus upload has a record
//!   (or a running PATCH), a PUT an entry in `puts`.
//! - The blob lock serialises "place into blobs + commit" with "commit of a delete + remove
//!   unreferenced blobs" and with the cleanup of orphaned blobs, so a blob is never removed
//!   while a committed version names it. In cluster mode it is also a `flock` in the shared
//!   blob directory, or a Postgres advisory lock with an S3 store, so this holds across nodes
//!   (`blobs.rs`).
//! - No version names a blob before the blob is durable: the rename is fsynced, the S3 copy has
//!   returned. A failure of the store fails the request (503) and commits nothing.
//!
//! # Cluster mode
//!
//! The metadata is in Postgres (`tandem_cluster::PgMeta`) and the bytes, blobs and uploads in
//! progress alike, in the blob directory every node mounts ([`Sharing::Cluster`]) or on the S3
//! store (blobs, staging objects and tus segments; a body being received is in the node's own
//! data directory until it is complete). Any node can serve any file and continue any tus
//! upload: the record is shared, the offset is the length of the shared file (the end of the
//! contiguous segments on S3), and the PATCH writing an upload holds its `flock` (the shared
//! lock `upload:<id>` on S3). The set of file paths is
//! not cached (another node may add one at any time): `is_file` asks Postgres. The cleanup never
//! sweeps without a grace period, since other nodes may be writing. A PUT's reservation of quota
//! is known only to its node; the quota itself is checked in the transaction that stores a
//! version, so it holds across nodes.
//! - Request bodies are streamed to disk chunk by chunk and never held whole in memory; each
//!   chunk must arrive within [`UPLOAD_IDLE_TIMEOUT`].
//!
//! - This is a service: it returns [`FileError`] and never names HTTP or the API layer.
//!
//! # Layout
//!
//! - `backend`: the operations on bytes the service uses, on a directory or an S3 store.
//! - `blobs`: the directories, upload files, hashing, the blob lock.
//! - `s3`: the S3 store's layout and requests.
//! - `upload`: a body streamed to its upload file, the media type, the declared hash, the
//!   one-writer slot of a tus upload.
//! - `cleanup`: interrupted uploads and orphaned blobs, at start-up and periodically.

pub(crate) mod backend;
pub(crate) mod blobs;
mod cleanup;
pub(crate) mod pin;
pub(crate) mod s3;
pub(crate) mod upload;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tandem_store::meta::FileTable;
use tandem_store::{FileEntry, FileVersion, Store, StoreError, Uploader, workspace_of};

use tandem_hub::Actor;
use tandem_hub::clock::now_ms;

pub(crate) use backend::{Backend, BlobReader, Staged};
pub(crate) use blobs::{BlobGuard, BlobLock, Disk, LockError};

/// A request body that sends nothing for this long is abandoned (a tus upload keeps what it
/// received; a PUT is discarded).
pub(crate) const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An upload file without a record, or a blob file without a refcount, is removed only once it
/// is this old, so the cleanup never races a blob being committed.
const ORPHAN_GRACE: Duration = Duration::from_secs(120);

/// Limits and timers of file storage.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Largest file in bytes.
    pub max_file_bytes: u64,
    /// Bytes each workspace may store (all versions of its files); 0 means unlimited.
    pub workspace_quota_bytes: u64,
    /// How long a tus upload may stay unfinished before it and its bytes are deleted.
    pub upload_expiry: Duration,
    /// How often expired uploads and orphaned bytes are cleaned up.
    pub cleanup_interval: Duration,
    /// Versions kept per file; storing one more drops the oldest. 0 means unlimited.
    pub max_file_versions: usize,
    /// How old an upload or blob file nothing names must be before the periodic cleanup
    /// removes it. Not a flag: only tests shorten it.
    pub orphan_grace: Duration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            workspace_quota_bytes: 20 * 1024 * 1024 * 1024,
            upload_expiry: Duration::from_secs(24 * 60 * 60),
            cleanup_interval: Duration::from_secs(5 * 60),
            max_file_versions: 100,
            orphan_grace: ORPHAN_GRACE,
        }
    }
}

/// Whether other nodes share the files' directory and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// One node: the data directory and the local store.
    Local,
    /// Cluster mode: the blob directory every node mounts and the shared database.
    Cluster,
}

/// File storage as the handlers see it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Files {
    pub(crate) inner: Arc<FilesInner>,
}

pub(crate) struct FilesInner {
    /// File metadata: the local store on one node, the shared database in cluster mode.
    pub(crate) store: Arc<dyn FileTable>,
    /// The local store, whose space state (read-only on a full disk) uploads follow.
    space: Arc<Store>,
    config: FilesConfig,
    /// With [`Backend::Dir`] the blobs and uploads; with [`Backend::S3`] only the bodies being
    /// received before they go to the store.
    pub(crate) disk: Disk,
    /// Where the blobs are (`backend.rs`).
    pub(crate) backend: Backend,
    /// See the module invariants. Blocking: only taken on the blocking pool.
    pub(crate) blob_lock: BlobLock,
    /// Every file path, so the WebSocket upgrade can refuse a file's path without a redb read.
    /// Updated after each commit that adds, moves or removes a path. `None` in cluster mode,
    /// where other nodes change paths too: the store is asked instead.
    paths: Option<RwLock<HashSet<String>>>,
    sharing: Sharing,
    /// One slot per tus upload with a PATCH running or recently run (`tus.rs`).
    slots: Mutex<HashMap<String, Arc<upload::UploadSlot>>>,
    /// Every PUT being received, by upload id: its workspace and the bytes it reserves.
    puts: Mutex<HashMap<String, PutReservation>>,
    /// The ids of the local files PATCHes on S3 are receiving into (`backend::PatchTemp`).
    patches: Mutex<HashSet<String>>,
    /// Held while checking the quota and reserving for a new upload (see the invariants).
    reserve_lock: Mutex<()>,
    /// Blobs a backup in progress names, with how many backups name each (`pin.rs`).
    pins: Mutex<HashMap<String, usize>>,
    /// Backups between their transaction's beginning and their pins (`pin.rs`).
    pins_starting: std::sync::atomic::AtomicUsize,
    /// Whether a backup is running: one at a time (`pin.rs`).
    backup_running: std::sync::atomic::AtomicBool,
}

/// What a PUT in progress holds (see `FilesInner::puts`).
struct PutReservation {
    workspace: String,
    bytes: Arc<AtomicU64>,
}

/// A PUT's entry in `FilesInner::puts`, removed when dropped.
pub(crate) struct PutSlot {
    files: Files,
    id: String,
    /// The bytes the PUT reserves: its `Content-Length`, or what it received so far.
    pub(crate) bytes: Arc<AtomicU64>,
}

impl Drop for PutSlot {
    fn drop(&mut self) {
        self.files
            .inner
            .puts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

/// Why a file operation was refused. `api/error.rs` maps each to a status and a code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("no such version")]
    VersionNotFound,
    #[error("{path:?} is already a file or a document")]
    PathTaken { path: String },
    #[error("file too large: limit {max} bytes")]
    TooLarge { max: u64 },
    #[error(
        "workspace {workspace:?} is over its quota: {used} bytes used of {limit}, {size} more requested"
    )]
    QuotaExceeded {
        workspace: String,
        used: u64,
        size: u64,
        limit: u64,
    },
    #[error("sha-256 mismatch: declared {declared}, received {actual}")]
    Sha256Mismatch { declared: String, actual: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the body ended after {received} of {expected} bytes")]
    Incomplete { received: u64, expected: u64 },
    #[error("no bytes for {} s; upload abandoned", UPLOAD_IDLE_TIMEOUT.as_secs())]
    IdleTimeout,
    #[error("no such upload")]
    UploadNotFound,
    #[error("upload expired")]
    UploadExpired,
    #[error("upload offset is {actual}, request says {claimed}")]
    OffsetMismatch { actual: u64, claimed: u64 },
    #[error("another request is writing to this upload")]
    UploadBusy,
    #[error("tus version not supported; this server speaks 1.0.0")]
    TusVersion,
    #[error("PATCH bodies must be application/offset+octet-stream")]
    PatchContentType,
    #[error("the range is not satisfiable")]
    RangeNotSatisfiable,
    /// The store is read-only or the disk is full.
    #[error("storage full, retry later")]
    InsufficientStorage,
    /// The store failed.
    #[error("file store: {0}")]
    Store(#[source] StoreError),
    /// A blocking task failed, or a record is damaged (logged where found).
    #[error("internal error")]
    Internal,
}

impl From<tandem_store::FileError> for FileError {
    fn from(error: tandem_store::FileError) -> Self {
        match error {
            tandem_store::FileError::NotFound => FileError::NotFound,
            tandem_store::FileError::PathTaken { path } => FileError::PathTaken { path },
            tandem_store::FileError::QuotaExceeded {
                workspace,
                used,
                size,
                limit,
            } => FileError::QuotaExceeded {
                workspace,
                used,
                size,
                limit,
            },
            tandem_store::FileError::Corrupt { key, detail } => {
                tracing::error!(key, detail, "corrupt file record");
                FileError::Internal
            }
            tandem_store::FileError::Store(error) => FileError::Store(error),
        }
    }
}

impl From<StoreError> for FileError {
    fn from(error: StoreError) -> Self {
        FileError::Store(error)
    }
}

impl Files {
    /// Opens the file storage: on one node, or in cluster mode on a shared directory, the
    /// directories under `dir` (the data directory or the blob directory); with an S3 store
    /// (`s3`: the store and the cluster's shared locks), the node's local `dir` for bodies
    /// being received. On one node it also loads the set of file paths.
    pub(crate) fn open(
        store: Arc<dyn FileTable>,
        space: Arc<Store>,
        config: FilesConfig,
        dir: &Path,
        sharing: Sharing,
        s3: Option<(s3::S3, Arc<dyn tandem_store::meta::SharedLocks>)>,
    ) -> std::io::Result<Files> {
        let (disk, backend, blob_lock) = match s3 {
            None => {
                let disk = Disk::open(dir)?;
                let blob_lock = BlobLock::open(&disk, sharing == Sharing::Cluster)?;
                (disk, Backend::Dir, blob_lock)
            }
            Some((s3, locks)) => (
                Disk::open_local(dir)?,
                Backend::S3 {
                    s3,
                    locks: locks.clone(),
                    writers: Arc::new(tokio::sync::Semaphore::new(backend::MAX_UPLOAD_WRITERS)),
                },
                BlobLock::shared(locks),
            ),
        };
        let paths = match sharing {
            Sharing::Local => Some(RwLock::new(
                store
                    .file_paths()
                    .map_err(std::io::Error::other)?
                    .into_iter()
                    .collect(),
            )),
            Sharing::Cluster => None,
        };
        Ok(Files {
            inner: Arc::new(FilesInner {
                store,
                space,
                config,
                disk,
                backend,
                blob_lock,
                paths,
                sharing,
                slots: Mutex::new(HashMap::new()),
                puts: Mutex::new(HashMap::new()),
                patches: Mutex::new(HashSet::new()),
                reserve_lock: Mutex::new(()),
                pins: Mutex::new(HashMap::new()),
                pins_starting: std::sync::atomic::AtomicUsize::new(0),
                backup_running: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Takes the blob lock (see the module invariants). Blocking.
    pub(crate) fn lock_blobs(&self) -> Result<BlobGuard<'_>, FileError> {
        self.inner.blob_lock.lock().map_err(|error| match error {
            LockError::Io(error) => self.io_failure_blocking(&error, "blob lock"),
            LockError::Shared(error) => FileError::Store(error),
        })
    }

    /// Whether `path` is a stored file (for the WebSocket upgrade): from the set of paths on
    /// one node, from the shared store in cluster mode.
    pub(crate) async fn is_file(&self, path: &str) -> Result<bool, FileError> {
        if let Some(paths) = &self.inner.paths {
            return Ok(paths
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(path));
        }
        let path = path.to_owned();
        self.blocking(move |inner| Ok(inner.store.file(&path)?.is_some()))
            .await
    }

    /// Whether other nodes share the files.
    pub(crate) fn sharing(&self) -> Sharing {
        self.inner.sharing
    }

    pub(crate) fn config(&self) -> &FilesConfig {
        &self.inner.config
    }

    pub(crate) fn quota(&self) -> Option<u64> {
        Some(self.inner.config.workspace_quota_bytes).filter(|quota| *quota > 0)
    }

    pub(crate) fn set_path(&self, add: Option<&str>, remove: Option<&str>) {
        let Some(paths) = &self.inner.paths else {
            return;
        };
        let mut paths = paths
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(path) = remove {
            paths.remove(path);
        }
        if let Some(path) = add {
            paths.insert(path.to_owned());
        }
    }

    /// Runs `work` with the store on the blocking pool.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> Result<T, FileError>
    where
        T: Send + 'static,
        F: FnOnce(&FilesInner) -> Result<T, FileError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|_| FileError::Internal)?
    }

    /// Refuses a new upload while the store is read-only (a full disk): its bytes would take the
    /// room the reserve freed for deletes. Checks first whether space returned.
    pub(crate) async fn check_writable(&self) -> Result<(), FileError> {
        let writable = self.blocking(|inner| Ok(inner.space.try_resume())).await?;
        if writable {
            Ok(())
        } else {
            Err(FileError::InsufficientStorage)
        }
    }

    /// Maps a failed write of upload or blob bytes, on a blocking thread: a full disk is 507
    /// and makes the store read-only as well (which reopens the database, so not on a runtime
    /// worker); anything else is 500.
    pub(crate) fn io_failure_blocking(
        &self,
        error: &std::io::Error,
        what: &'static str,
    ) -> FileError {
        if tandem_store::error::io_reason(error) == tandem_store::ReadOnlyReason::DiskFull {
            tracing::debug!(%error, what, "refused: the disk is full");
            self.inner.space.report_io_error(error);
            FileError::InsufficientStorage
        } else {
            tracing::error!(%error, what, "file write failed");
            FileError::Internal
        }
    }

    /// [`Self::io_failure_blocking`] from async code.
    pub(crate) async fn io_failure(&self, error: std::io::Error, what: &'static str) -> FileError {
        let files = self.clone();
        self.blocking(move |_| Ok(files.io_failure_blocking(&error, what)))
            .await
            .unwrap_or_else(|refused| refused)
    }

    pub(crate) fn max_versions(&self) -> Option<usize> {
        Some(self.inner.config.max_file_versions).filter(|max| *max > 0)
    }

    /// Refuses an upload of `size` bytes (when known) beyond the file size limit.
    pub(crate) fn check_size(&self, size: Option<u64>) -> Result<(), FileError> {
        let max = self.config().max_file_bytes;
        if size.is_some_and(|size| size > max) {
            return Err(FileError::TooLarge { max });
        }
        Ok(())
    }

    /// Admits an upload of `size` bytes into `path`'s workspace and reserves them by running
    /// `reserve`, both under the reserve lock: refused with `quota_exceeded` unless the usage,
    /// what the uploads in progress reserve and `size` fit the quota (less what the versions
    /// the upload will push out of `path` free). Returns what the workspace had taken before
    /// (usage and reservations, less that) and the quota, `None` if unlimited.
    /// Blocking: runs on the blocking pool.
    pub(crate) fn admit(
        &self,
        path: &str,
        size: u64,
        reserve: impl FnOnce(&FilesInner) -> Result<(), FileError>,
    ) -> Result<Option<(u64, u64)>, FileError> {
        let inner = &self.inner;
        let _reserving = inner
            .reserve_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(limit) = self.quota() else {
            reserve(inner)?;
            return Ok(None);
        };
        let workspace = workspace_of(path);
        let taken = self
            .taken(workspace)?
            .saturating_sub(self.freed_by_next(path)?);
        let size = FileVersion::charge_for(size);
        if taken.saturating_add(size) > limit {
            return Err(FileError::QuotaExceeded {
                workspace: workspace.to_owned(),
                used: taken,
                size,
                limit,
            });
        }
        reserve(inner)?;
        Ok(Some((taken, limit)))
    }

    /// What storing one more version of `path` frees: the charge of the oldest versions it
    /// pushes beyond the version limit. Blocking.
    fn freed_by_next(&self, path: &str) -> Result<u64, FileError> {
        let Some(max) = self.max_versions() else {
            return Ok(0);
        };
        let Some(entry) = self.inner.store.file(path)? else {
            return Ok(0);
        };
        let excess = (entry.versions.len() + 1).saturating_sub(max);
        Ok(entry.versions[..excess.min(entry.versions.len())]
            .iter()
            .map(|version| FileVersion::charge_for(version.size))
            .sum())
    }

    /// Bytes `workspace` holds: its usage, the declared lengths of its unexpired tus uploads
    /// and what its PUTs in progress reserve. Blocking.
    fn taken(&self, workspace: &str) -> Result<u64, FileError> {
        let inner = &self.inner;
        let used = inner.store.workspace_usage(workspace)?;
        let now = now_ms();
        let tus: u64 = inner
            .store
            .list_uploads()?
            .iter()
            .filter(|record| record.expires_ms > now && workspace_of(&record.path) == workspace)
            .map(|record| record.length)
            .sum();
        let puts: u64 = inner
            .puts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|put| put.workspace == workspace)
            .map(|put| put.bytes.load(Ordering::Relaxed))
            .sum();
        Ok(used.saturating_add(tus).saturating_add(puts))
    }

    /// Admits a PUT of `size` bytes (if declared) as upload `id`; while the returned slot
    /// lives, the cleanup leaves its file alone and its bytes count against the quota.
    pub(crate) async fn admit_put(
        &self,
        path: &str,
        id: &str,
        size: Option<u64>,
    ) -> Result<(PutSlot, Option<(u64, u64)>), FileError> {
        self.check_size(size)?;
        let bytes = Arc::new(AtomicU64::new(size.unwrap_or(0)));
        let slot = PutSlot {
            files: self.clone(),
            id: id.to_owned(),
            bytes: bytes.clone(),
        };
        let (files, path, id) = (self.clone(), path.to_owned(), id.to_owned());
        let quota = self
            .blocking(move |_| {
                files.admit(&path, size.unwrap_or(0), |inner| {
                    inner
                        .puts
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(
                            id,
                            PutReservation {
                                workspace: workspace_of(&path).to_owned(),
                                bytes,
                            },
                        );
                    Ok(())
                })
            })
            .await?;
        Ok((slot, quota))
    }

    /// Makes the `staged` bytes (of `version.size` bytes and hash `version.sha256`) a blob and
    /// records them as the next version of `path`, removing tus upload `upload_id` in the same
    /// transaction. Nothing is visible before this returns.
    ///
    /// A PUT's staged bytes are gone afterwards, whatever happened. A tus upload's bytes are
    /// removed only once the record is gone, so an upload whose commit failed (or never ran,
    /// after a crash) still has them and completes on retry.
    pub(crate) async fn commit(
        &self,
        staged: Staged,
        path: String,
        version: FileVersion,
        upload_id: Option<String>,
    ) -> Result<FileEntry, FileError> {
        let files = self.clone();
        let entry = self
            .blocking(move |inner| {
                let is_upload = upload_id.is_some();
                let blobs = match files.lock_blobs() {
                    Ok(guard) => guard,
                    Err(error) => {
                        files.discard_staged(&staged, is_upload);
                        return Err(error);
                    }
                };
                let sha256 = version.sha256.clone();
                if let Err(error) = files.place_blob(&staged, &sha256, is_upload) {
                    files.discard_staged(&staged, is_upload);
                    return Err(error);
                }
                let quota = files.quota();
                let res = inner.store.put_file_version(
                    &path,
                    version,
                    quota,
                    upload_id.as_deref(),
                    files.max_versions(),
                );
                match res {
                    Ok((entry, unreferenced)) => {
                        files.set_path(Some(&entry.path), None);
                        for sha256 in &unreferenced {
                            if let Err(error) = files.remove_blob(&blobs, sha256) {
                                // The cleanup task removes it later.
                                tracing::warn!(%error, sha256, "removing blob failed");
                            }
                        }
                        // The staged bytes are no blob: removing them needs no lock.
                        drop(blobs);
                        if let Some(id) = &upload_id {
                            // No record names them now: the cleanup removes them later if this fails.
                            if let Err(error) = files.remove_upload_bytes(id) {
                                tracing::warn!(%error, id, "removing upload bytes failed");
                            }
                        } else {
                            files.discard_staged(&staged, false);
                        }
                        Ok(entry)
                    }
                    Err(error) => {
                        files.discard_staged(&staged, is_upload);
                        // A blob no committed version names is removed at once (it may have
                        // been stored just now); one that is named stays. Only after a definite
                        // refusal, though: after a failure of the shared database (`Unavailable`)
                        // the transaction may have committed all the same (the answer was lost) and another
                        // connection not see it yet, so the blob stays for the cleanup, which
                        // checks again under the lock once the grace has passed.
                        let uncertain = matches!(
                            error,
                            tandem_store::FileError::Store(StoreError::Unavailable { .. })
                        );
                        if !uncertain
                            && matches!(inner.store.blob(&sha256), Ok(None))
                            && let Err(error) = files.remove_blob(&blobs, &sha256)
                        {
                            tracing::warn!(%error, "removing unreferenced blob failed");
                        }
                        Err(error.into())
                    }
                }
            })
            .await?;
        Ok(entry)
    }
}

impl Files {
    /// Removes the file at `path` with all its versions; blobs nothing else names are deleted.
    /// Callers announce it (`Event::FileDeleted`).
    pub(crate) async fn delete_file(&self, path: &str) -> Result<(), FileError> {
        let files = self.clone();
        let name = path.to_owned();
        self.blocking(move |inner| {
            let blobs = files.lock_blobs()?;
            let deleted = inner.store.delete_file(&name)?;
            files.set_path(None, Some(&name));
            for sha256 in &deleted.unreferenced {
                if let Err(error) = files.remove_blob(&blobs, sha256) {
                    // The cleanup task removes it later.
                    tracing::warn!(%error, sha256, "removing blob failed");
                }
            }
            Ok(())
        })
        .await
    }

    /// Renames the file at `from` to `to` with all its versions (`to` must be free). Callers
    /// announce it (`Event::FileRenamed`).
    pub(crate) async fn move_file(&self, from: &str, to: &str) -> Result<FileEntry, FileError> {
        let files = self.clone();
        let quota = self.quota();
        let (from, to) = (from.to_owned(), to.to_owned());
        self.blocking(move |inner| {
            let entry = inner.store.move_file(&from, &to, quota)?;
            files.set_path(Some(&to), Some(&from));
            Ok(entry)
        })
        .await
    }

    /// Stores the current version of `from` as the next version of `to`, by `uploader`: the
    /// same blob, one more reference to it, under the blob lock so it cannot be removed
    /// meanwhile; quota and version limits as for an upload. Callers announce it
    /// (`Event::FileUploaded`).
    pub(crate) async fn copy_file(
        &self,
        from: &str,
        to: &str,
        uploader: Uploader,
    ) -> Result<FileEntry, FileError> {
        let files = self.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        self.blocking(move |inner| {
            let blobs = files.lock_blobs()?;
            let source = inner.store.file(&from)?.ok_or(FileError::NotFound)?;
            let current = source.current().clone();
            let version = FileVersion {
                version: 0,
                name: last_segment(&to).to_owned(),
                uploader,
                uploaded_ms: now_ms(),
                ..current
            };
            let (entry, unreferenced) = inner.store.put_file_version(
                &to,
                version,
                files.quota(),
                None,
                files.max_versions(),
            )?;
            files.set_path(Some(&entry.path), None);
            for sha256 in &unreferenced {
                if let Err(error) = files.remove_blob(&blobs, sha256) {
                    tracing::warn!(%error, sha256, "removing blob failed");
                }
            }
            Ok(entry)
        })
        .await
    }
}

/// The actor behind a stored uploader.
pub(crate) fn actor_of(uploader: &Uploader) -> Actor {
    Actor {
        sub: uploader.sub.clone(),
        name: uploader.name.clone(),
    }
}

/// The last segment of a path: a file's name.
pub(crate) fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
