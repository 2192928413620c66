//! Files: uploads (`PUT /api/files/{path}` and tus), downloads, listing, versions, renames and
//! deletes, and the cleanup of interrupted uploads. The contract is `protocol-spec/files.md`.
//!
//! The bytes live on disk, content-addressed (`blobs.rs`); the metadata and refcounts in redb
//! (`tandem_store::files`). An upload is received into `uploads/<id>` with its SHA-256 computed
//! as it arrives; completing it fsyncs the file, checks size and hash, renames it into the blobs
//! (or drops it when the blob exists) and then records the version in one durable transaction.
//! Only then is it listed, served, or announced on the event bus.
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
//! - The blob lock serialises "rename into blobs + commit" with "commit of a delete + remove
//!   unreferenced blob files" and with the cleanup of orphaned blobs, so a blob file is never
//!   removed while a committed version names it.
//! - Request bodies are streamed to disk chunk by chunk and never held whole in memory; each
//!   chunk must arrive within [`UPLOAD_IDLE_TIMEOUT`].
//!
//! # Layout
//!
//! - `blobs`: the directories, upload files, hashing.
//! - `download`: `GET`/`HEAD /api/files/{path}` with ranges and validators.
//! - `tus`: resumable uploads (tus 1.0.0) under `/api/uploads`.

mod blobs;
mod download;
mod tus;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_core::{DocId, DocIdError};
use tandem_store::{FileEntry, FileError, FileVersion, Store, Uploader, workspace_of};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Grant, token_from};
use crate::events::{Actor, Event, now_ms};
use crate::http::{ApiError, AppState};

pub(crate) use blobs::Disk;
use blobs::{UploadFile, hex, is_sha256_hex, new_upload_id};

/// A request body that sends nothing for this long is abandoned (a tus upload keeps what it
/// received; a PUT is discarded).
pub(crate) const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An upload file without a record, or a blob file without a refcount, is removed only once it
/// is this old, so the cleanup never races a blob being committed.
const ORPHAN_GRACE: Duration = Duration::from_secs(120);
/// Largest JSON body of `POST /api/file-moves`.
const MAX_MOVE_BODY_BYTES: usize = 8 * 1024;
/// The header carrying the SHA-256 a client declares for a PUT.
const SHA256_HEADER: &str = "x-tandem-sha256";

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

/// File storage as the handlers see it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Files {
    inner: Arc<FilesInner>,
}

struct FilesInner {
    store: Arc<Store>,
    config: FilesConfig,
    disk: Disk,
    /// See the module invariants. A std mutex: it is only taken on the blocking pool.
    blob_lock: Mutex<()>,
    /// Every file path, so the WebSocket upgrade can refuse a file's path without a redb read.
    /// Updated after each commit that adds, moves or removes a path.
    paths: RwLock<HashSet<String>>,
    /// One slot per tus upload with a PATCH running or recently run (`tus.rs`).
    slots: Mutex<HashMap<String, Arc<tus::UploadSlot>>>,
    /// Every PUT being received, by upload id: its workspace and the bytes it reserves.
    puts: Mutex<HashMap<String, PutReservation>>,
    /// Held while checking the quota and reserving for a new upload (see the invariants).
    reserve_lock: Mutex<()>,
}

/// What a PUT in progress holds (see `FilesInner::puts`).
struct PutReservation {
    workspace: String,
    bytes: Arc<AtomicU64>,
}

/// A PUT's entry in `FilesInner::puts`, removed when dropped.
struct PutSlot {
    files: Files,
    id: String,
    bytes: Arc<AtomicU64>,
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

/// A file as the API shows it (`protocol-spec/files.md`).
#[derive(Debug, Serialize)]
pub(crate) struct FileJson {
    path: String,
    /// The last segment of the path.
    name: String,
    size: u64,
    content_type: String,
    sha256: String,
    version: u64,
    uploader: Actor,
    uploaded_ms: u64,
    n_versions: usize,
    /// The file name the version was uploaded with.
    original_name: String,
}

impl FileJson {
    fn new(entry: &FileEntry, version: &FileVersion) -> FileJson {
        FileJson {
            path: entry.path.clone(),
            name: last_segment(&entry.path).to_owned(),
            size: version.size,
            content_type: version.content_type.clone(),
            sha256: version.sha256.clone(),
            version: version.version,
            uploader: actor_of(&version.uploader),
            uploaded_ms: version.uploaded_ms,
            n_versions: entry.versions.len(),
            original_name: version.name.clone(),
        }
    }
}

/// Why a file request was refused; becomes `ApiError::File`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileApiError {
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
}

impl FileApiError {
    /// The status and the stable code of the JSON body.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            FileApiError::NotFound => (StatusCode::NOT_FOUND, "file_not_found"),
            FileApiError::VersionNotFound => (StatusCode::NOT_FOUND, "version_not_found"),
            FileApiError::PathTaken { .. } => (StatusCode::CONFLICT, "path_taken"),
            FileApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
            FileApiError::QuotaExceeded { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded")
            }
            FileApiError::Sha256Mismatch { .. } => (StatusCode::BAD_REQUEST, "sha256_mismatch"),
            FileApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_upload"),
            FileApiError::Incomplete { .. } => (StatusCode::BAD_REQUEST, "incomplete_body"),
            FileApiError::IdleTimeout => (StatusCode::REQUEST_TIMEOUT, "upload_timeout"),
            FileApiError::UploadNotFound => (StatusCode::NOT_FOUND, "upload_not_found"),
            FileApiError::UploadExpired => (StatusCode::GONE, "upload_expired"),
            FileApiError::OffsetMismatch { .. } => (StatusCode::CONFLICT, "offset_mismatch"),
            FileApiError::UploadBusy => (StatusCode::LOCKED, "upload_busy"),
            FileApiError::TusVersion => (StatusCode::PRECONDITION_FAILED, "tus_version"),
            FileApiError::PatchContentType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type")
            }
            FileApiError::RangeNotSatisfiable => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
        }
    }
}

impl From<FileApiError> for ApiError {
    fn from(error: FileApiError) -> Self {
        ApiError::File(error)
    }
}

impl From<FileError> for ApiError {
    fn from(error: FileError) -> Self {
        match error {
            FileError::NotFound => FileApiError::NotFound.into(),
            FileError::PathTaken { path } => FileApiError::PathTaken { path }.into(),
            FileError::QuotaExceeded {
                workspace,
                used,
                size,
                limit,
            } => FileApiError::QuotaExceeded {
                workspace,
                used,
                size,
                limit,
            }
            .into(),
            FileError::Corrupt { key, detail } => {
                tracing::error!(key, detail, "corrupt file record");
                ApiError::Internal
            }
            FileError::Store(error) => ApiError::from_store(&error, "file store"),
        }
    }
}

/// Routes whose bodies stream (uploads) or whose answers may take long (downloads): outside the
/// request timeout and the body limit of the rest of the API. Each enforces its own limits.
pub(crate) fn streaming_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/files/{*path}",
            get(download::get_file)
                .head(download::get_file)
                .put(put_file)
                .delete(delete_file),
        )
        .route("/api/uploads", post(tus::create).options(tus::options))
        .route(
            "/api/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::options),
        )
}

/// Routes with small requests and answers, under the API's timeout and body limit.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/files", get(list_files))
        .route("/api/file-versions/{*path}", get(list_versions))
        .route(
            "/api/file-moves",
            post(move_file).layer(axum::extract::DefaultBodyLimit::max(MAX_MOVE_BODY_BYTES)),
        )
}

impl Files {
    /// Opens the directories under `data_dir` and loads the set of file paths.
    pub(crate) fn open(
        store: Arc<Store>,
        config: FilesConfig,
        data_dir: &Path,
    ) -> std::io::Result<Files> {
        let disk = Disk::open(data_dir)?;
        let paths = store
            .file_paths()
            .map_err(std::io::Error::other)?
            .into_iter()
            .collect();
        Ok(Files {
            inner: Arc::new(FilesInner {
                store,
                config,
                disk,
                blob_lock: Mutex::new(()),
                paths: RwLock::new(paths),
                slots: Mutex::new(HashMap::new()),
                puts: Mutex::new(HashMap::new()),
                reserve_lock: Mutex::new(()),
            }),
        })
    }

    /// Whether `path` is a stored file (for the WebSocket upgrade).
    pub(crate) fn is_file(&self, path: &str) -> bool {
        self.inner
            .paths
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(path)
    }

    fn config(&self) -> &FilesConfig {
        &self.inner.config
    }

    fn quota(&self) -> Option<u64> {
        Some(self.inner.config.workspace_quota_bytes).filter(|quota| *quota > 0)
    }

    fn set_path(&self, add: Option<&str>, remove: Option<&str>) {
        let mut paths = self
            .inner
            .paths
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
    async fn blocking<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&FilesInner) -> Result<T, ApiError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|_| ApiError::Internal)?
    }

    /// Refuses a new upload while the store is read-only (a full disk): its bytes would take the
    /// room the reserve freed for deletes. Checks first whether space returned.
    pub(crate) async fn check_writable(&self) -> Result<(), ApiError> {
        let writable = self.blocking(|inner| Ok(inner.store.try_resume())).await?;
        if writable {
            Ok(())
        } else {
            Err(ApiError::InsufficientStorage)
        }
    }

    /// Maps a failed write of upload or blob bytes, on a blocking thread: a full disk is 507
    /// and makes the store read-only as well (which reopens the database, so not on a runtime
    /// worker); anything else is 500.
    pub(crate) fn io_failure_blocking(
        &self,
        error: &std::io::Error,
        what: &'static str,
    ) -> ApiError {
        if tandem_store::error::io_reason(error) == tandem_store::ReadOnlyReason::DiskFull {
            tracing::debug!(%error, what, "refused: the disk is full");
            self.inner.store.report_io_error(error);
            ApiError::InsufficientStorage
        } else {
            tracing::error!(%error, what, "file write failed");
            ApiError::Internal
        }
    }

    /// [`Self::io_failure_blocking`] from async code.
    pub(crate) async fn io_failure(&self, error: std::io::Error, what: &'static str) -> ApiError {
        let files = self.clone();
        self.blocking(move |_| Ok(files.io_failure_blocking(&error, what)))
            .await
            .unwrap_or_else(|refused| refused)
    }

    fn max_versions(&self) -> Option<usize> {
        Some(self.inner.config.max_file_versions).filter(|max| *max > 0)
    }

    /// Refuses an upload of `size` bytes (when known) beyond the file size limit.
    fn check_size(&self, size: Option<u64>) -> Result<(), ApiError> {
        let max = self.config().max_file_bytes;
        if size.is_some_and(|size| size > max) {
            return Err(FileApiError::TooLarge { max }.into());
        }
        Ok(())
    }

    /// Admits an upload of `size` bytes into `path`'s workspace and reserves them by running
    /// `reserve`, both under the reserve lock: refused with `quota_exceeded` unless the usage,
    /// what the uploads in progress reserve and `size` fit the quota (less what the versions
    /// the upload will push out of `path` free). Returns what the workspace had taken before
    /// (usage and reservations, less that) and the quota, `None` if unlimited.
    /// Blocking: runs on the blocking pool.
    fn admit(
        &self,
        path: &str,
        size: u64,
        reserve: impl FnOnce(&FilesInner) -> Result<(), ApiError>,
    ) -> Result<Option<(u64, u64)>, ApiError> {
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
            return Err(FileApiError::QuotaExceeded {
                workspace: workspace.to_owned(),
                used: taken,
                size,
                limit,
            }
            .into());
        }
        reserve(inner)?;
        Ok(Some((taken, limit)))
    }

    /// What storing one more version of `path` frees: the charge of the oldest versions it
    /// pushes beyond the version limit. Blocking.
    fn freed_by_next(&self, path: &str) -> Result<u64, ApiError> {
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
    fn taken(&self, workspace: &str) -> Result<u64, ApiError> {
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
    async fn admit_put(
        &self,
        path: &str,
        id: &str,
        size: Option<u64>,
    ) -> Result<(PutSlot, Option<(u64, u64)>), ApiError> {
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

    /// Makes the complete, fsynced upload file `temp` (of `version.size` bytes and hash
    /// `version.sha256`) a blob and records it as the next version of `path`, removing tus
    /// upload `upload_id` in the same transaction. Nothing is visible before this returns.
    ///
    /// A PUT's file is renamed into the blobs (and removed if that fails). A tus upload's file
    /// is linked into the blobs and removed only once the record is gone, so an upload whose
    /// commit failed (or never ran, after a crash) still has its bytes and completes on retry.
    async fn commit(
        &self,
        temp: PathBuf,
        path: String,
        version: FileVersion,
        upload_id: Option<String>,
    ) -> Result<FileEntry, ApiError> {
        let files = self.clone();
        let entry = self
            .blocking(move |inner| {
                let _blobs = inner
                    .blob_lock
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let sha256 = version.sha256.clone();
                let stored = match upload_id {
                    Some(_) => inner.disk.link_blob(&temp, &sha256),
                    None => inner.disk.store_blob(&temp, &sha256),
                };
                if let Err(error) = stored {
                    let refused = files.io_failure_blocking(&error, "storing blob");
                    if upload_id.is_none()
                        && let Err(error) = std::fs::remove_file(&temp)
                        && error.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(%error, "removing upload bytes failed");
                    }
                    return Err(refused);
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
                            if let Err(error) = inner.disk.remove_blob(sha256) {
                                // The cleanup task removes it later.
                                tracing::warn!(%error, sha256, "removing blob failed");
                            }
                        }
                        if let Some(id) = &upload_id
                            && let Err(error) = inner.disk.remove_upload(id)
                        {
                            // No record names it now: the cleanup removes it later.
                            tracing::warn!(%error, id, "removing upload bytes failed");
                        }
                        Ok(entry)
                    }
                    Err(error) => {
                        // A blob no committed version names is removed at once (it may have
                        // been stored just now); one that is named stays.
                        if matches!(inner.store.blob(&sha256), Ok(None))
                            && let Err(error) = inner.disk.remove_blob(&sha256)
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

    /// One pass of the cleanup; `grace` is how old orphaned files must be to go (zero at
    /// start-up, when nothing can be in progress).
    fn cleanup(&self, grace: Duration) {
        let inner = &self.inner;
        let now = SystemTime::now();
        let old_enough =
            |modified: SystemTime| now.duration_since(modified).is_ok_and(|age| age >= grace);
        let now_ms = now_ms();
        let mut n_expired = 0usize;
        let mut n_orphans = 0usize;
        let records = match inner.store.list_uploads() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "listing uploads for cleanup failed");
                return;
            }
        };
        let mut live = HashSet::new();
        for record in records {
            if record.expires_ms > now_ms || tus::is_busy(self, &record.id) {
                live.insert(record.id);
                continue;
            }
            match inner.store.remove_upload(&record.id) {
                Ok(_) => {
                    if let Err(error) = inner.disk.remove_upload(&record.id) {
                        tracing::warn!(%error, id = record.id, "removing expired upload failed");
                    }
                    tus::forget_slot(self, &record.id);
                    n_expired += 1;
                }
                Err(error) => tracing::error!(%error, "removing expired upload record failed"),
            }
        }
        match inner.disk.upload_files() {
            Ok(files) => {
                // Read after the listing: a PUT registers before it creates its file, so every
                // PUT file listed that is still in progress is in `puts` now.
                live.extend(
                    inner
                        .puts
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .keys()
                        .cloned(),
                );
                for (id, modified) in files {
                    if !live.contains(&id) && old_enough(modified) {
                        // No record: a PUT that died with the process, or an expired upload.
                        if inner.disk.remove_upload(&id).is_ok() {
                            n_orphans += 1;
                        }
                    }
                }
            }
            Err(error) => tracing::error!(%error, "listing upload files failed"),
        }
        {
            let _blobs = inner
                .blob_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match inner.disk.blob_files() {
                Ok(blobs) => {
                    let mut unreferenced = Vec::new();
                    for (sha256, modified) in blobs {
                        let referenced = match inner.store.blob(&sha256) {
                            Ok(row) => row.is_some_and(|row| row.refcount > 0),
                            // Unsure: keep it.
                            Err(_) => true,
                        };
                        if !referenced && old_enough(modified) {
                            unreferenced.push(sha256);
                        }
                    }
                    // The `blobs` rows are counters without checksums: a blob goes only if the
                    // file entries, each checked against its checksum, agree that no version
                    // names it. Any error reading them keeps every blob.
                    let named = if unreferenced.is_empty() {
                        Ok(HashSet::new())
                    } else {
                        inner.store.list_files().map(|entries| {
                            entries
                                .into_iter()
                                .flat_map(|entry| entry.versions)
                                .map(|version| version.sha256)
                                .collect::<HashSet<String>>()
                        })
                    };
                    match named {
                        Ok(named) => {
                            for sha256 in unreferenced {
                                if !named.contains(&sha256)
                                    && inner.disk.remove_blob(&sha256).is_ok()
                                {
                                    n_orphans += 1;
                                }
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, "reading file entries failed; keeping every blob");
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "listing blob files failed"),
            }
        }
        if n_expired + n_orphans > 0 {
            tracing::info!(n_expired, n_orphans, "file cleanup removed leftovers");
        }
    }

    /// Cleans up once with no grace, before the server accepts requests.
    pub(crate) async fn cleanup_at_start(&self) {
        let files = self.clone();
        let _ = tokio::task::spawn_blocking(move || files.cleanup(Duration::ZERO)).await;
    }

    /// The cleanup task: every `cleanup_interval` until `cancel`.
    pub(crate) async fn run_cleanup(self, cancel: CancellationToken) {
        let interval = self
            .config()
            .cleanup_interval
            .max(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let files = self.clone();
            let grace = files.config().orphan_grace;
            let _ = tokio::task::spawn_blocking(move || files.cleanup(grace)).await;
        }
    }
}

/// The actor behind a stored uploader.
fn actor_of(uploader: &Uploader) -> Actor {
    Actor {
        sub: uploader.sub.clone(),
        name: uploader.name.clone(),
    }
}

/// The uploader behind a request (see `actor_of_request`).
fn uploader_of(grant: &Grant, headers: &HeaderMap) -> Uploader {
    let actor = crate::events::actor_of_request(grant, headers);
    Uploader {
        sub: actor.sub,
        name: actor.name,
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The validated file path after `prefix` in the request path.
fn path_from(uri: &Uri, prefix: &str) -> Result<DocId, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or(ApiError::BadDocName(DocIdError::Empty))?;
    DocId::from_url_path(raw).map_err(ApiError::BadDocName)
}

/// Refuses a path a new file may not take: on top of the `DocId` rules, no character that
/// `name.rs` forbids (existing files stay reachable under the `DocId` rules alone).
fn check_new_path(path: &DocId) -> Result<(), ApiError> {
    if crate::name::has_forbidden(path.as_str()) {
        return Err(ApiError::BadDocName(DocIdError::ForbiddenCharacter));
    }
    Ok(())
}

/// What the request's token may do on `path` (at least read).
fn grant_for(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &DocId,
) -> Result<Grant, ApiError> {
    state
        .auth
        .grant(token_from(headers, uri).as_deref(), path)
        .map_err(ApiError::Auth)
}

/// Like [`grant_for`], but the write role is required.
fn write_grant(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &DocId,
) -> Result<Grant, ApiError> {
    let grant = grant_for(state, headers, uri, path)?;
    if !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    Ok(grant)
}

/// Refuses `path` if it names a doc, open or stored. The store checks stored docs again in the
/// transaction that creates the file.
async fn check_not_doc(state: &AppState, path: &DocId) -> Result<(), ApiError> {
    let taken = || -> ApiError {
        FileApiError::PathTaken {
            path: path.to_string(),
        }
        .into()
    };
    if state.hub.get(path).is_some() {
        return Err(taken());
    }
    let store = state.hub.store().clone();
    let name = path.to_string();
    let stored = tokio::task::spawn_blocking(move || store.doc_meta(&name))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)?;
    if stored.is_some() {
        return Err(taken());
    }
    Ok(())
}

/// The media type to store: the client's, unless it is missing, generic or malformed; then a
/// guess from the name.
fn content_type_for(declared: Option<&str>, name: &str) -> String {
    let declared = declared.map(str::trim).filter(|value| {
        !value.is_empty()
            && value.len() <= 255
            && value.contains('/')
            && value.bytes().all(|b| (0x20..0x7f).contains(&b))
            && !value.eq_ignore_ascii_case("application/octet-stream")
    });
    match declared {
        Some(value) => value.to_owned(),
        None => mime_guess::from_path(name)
            .first_raw()
            .unwrap_or("application/octet-stream")
            .to_owned(),
    }
}

/// A declared SHA-256: 64 hex digits, any case.
fn parse_sha256(text: &str) -> Result<String, ApiError> {
    let lower = text.trim().to_ascii_lowercase();
    if is_sha256_hex(&lower) {
        Ok(lower)
    } else {
        Err(FileApiError::BadRequest("a sha-256 must be 64 hex digits".into()).into())
    }
}

/// How receiving a body into an upload file ended, short of success.
#[derive(Debug)]
enum ReceiveError {
    /// The client went away or the body broke off.
    Cut,
    /// No bytes for [`UPLOAD_IDLE_TIMEOUT`].
    Idle,
    /// More bytes than `max` allowed.
    TooLarge,
    /// The server is shutting down.
    ShuttingDown,
    /// Writing the file failed.
    Io(std::io::Error),
}

/// Streams `body` into `file`, feeding `hasher` if given, refusing to go beyond `max` bytes.
/// Counts the bytes written in `received` (and in `progress`, if given); on an error, what was
/// written before it stays written (but may still be in the buffer: the caller syncs).
async fn receive(
    body: Body,
    file: &mut UploadFile,
    mut hasher: Option<&mut Sha256>,
    max: u64,
    received: &mut u64,
    progress: Option<&AtomicU64>,
    cancel: &CancellationToken,
) -> Result<(), ReceiveError> {
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return Err(ReceiveError::ShuttingDown),
            next = tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, stream.next()) => next,
        };
        let chunk = match next {
            Err(_) => return Err(ReceiveError::Idle),
            Ok(None) => return Ok(()),
            Ok(Some(Err(_))) => return Err(ReceiveError::Cut),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if received.saturating_add(chunk.len() as u64) > max {
            return Err(ReceiveError::TooLarge);
        }
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(&chunk);
        }
        file.write(&chunk).await.map_err(ReceiveError::Io)?;
        *received += chunk.len() as u64;
        if let Some(progress) = progress {
            progress.store(*received, Ordering::Relaxed);
        }
    }
}

/// The `Content-Length` of a request, if it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// Removes an upload file when dropped, unless it was handed on (a PUT's temporary bytes).
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn keep(mut self) -> PathBuf {
        self.path.take().expect("kept once")
    }
}

impl Drop for TempGuard {
    // One unlink on the runtime thread: cheaper than handing it to the blocking pool.
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %path.display(), "removing upload bytes failed");
        }
    }
}

/// `PUT /api/files/{path}`: the body is the file.
async fn put_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/files/")?;
    check_new_path(&path)?;
    let grant = write_grant(&state, &headers, &uri, &path)?;
    check_not_doc(&state, &path).await?;
    let files = &state.files;
    files.check_writable().await?;
    let declared_len = content_length(&headers);
    let id = new_upload_id();
    // Until this request ends, the slot keeps the cleanup off its file and holds its quota.
    let (slot, quota) = files.admit_put(path.as_str(), &id, declared_len).await?;
    let declared_sha = match headers.get(SHA256_HEADER) {
        Some(value) => Some(parse_sha256(value.to_str().unwrap_or_default())?),
        None => None,
    };
    let name = last_segment(path.as_str()).to_owned();
    let content_type = content_type_for(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
        &name,
    );
    // While streaming: the smaller of the file limit and what the quota leaves.
    let max_file = files.config().max_file_bytes;
    let max = quota.map_or(max_file, |(used, limit)| {
        max_file.min(limit.saturating_sub(used))
    });

    let temp_path = files.inner.disk.upload_path(&id);
    let mut file = match UploadFile::create(&temp_path).await {
        Ok(file) => file,
        Err(error) => return Err(files.io_failure(error, "creating upload file").await),
    };
    let guard = TempGuard {
        path: Some(temp_path),
    };
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let cancel = state.hub.lifecycle().cancel.clone();
    let res = receive(
        body,
        &mut file,
        Some(&mut hasher),
        max,
        &mut received,
        declared_len.is_none().then_some(&*slot.bytes),
        &cancel,
    )
    .await;
    match res {
        Ok(()) => {}
        Err(ReceiveError::TooLarge) => {
            return Err(match quota {
                Some((used, limit)) if max < max_file => FileApiError::QuotaExceeded {
                    workspace: workspace_of(path.as_str()).to_owned(),
                    used,
                    size: received,
                    limit,
                },
                _ => FileApiError::TooLarge { max: max_file },
            }
            .into());
        }
        Err(ReceiveError::Cut) => {
            tracing::info!(path = %path, received, "upload cut off; discarded");
            return Err(FileApiError::Incomplete {
                received,
                expected: declared_len.unwrap_or(received),
            }
            .into());
        }
        Err(ReceiveError::Idle) => return Err(FileApiError::IdleTimeout.into()),
        Err(ReceiveError::ShuttingDown) => return Err(ApiError::ShuttingDown),
        Err(ReceiveError::Io(error)) => {
            return Err(files.io_failure(error, "writing upload").await);
        }
    }
    if let Some(expected) = declared_len
        && expected != received
    {
        return Err(FileApiError::Incomplete { received, expected }.into());
    }
    if let Err(error) = file.sync().await {
        return Err(files.io_failure(error, "syncing upload").await);
    }
    drop(file);
    let sha256 = hex(&hasher.finalize());
    if let Some(declared) = declared_sha
        && declared != sha256
    {
        return Err(FileApiError::Sha256Mismatch {
            declared,
            actual: sha256,
        }
        .into());
    }
    let uploader = uploader_of(&grant, &headers);
    let version = FileVersion {
        version: 0,
        sha256,
        size: received,
        content_type,
        name,
        uploader,
        uploaded_ms: now_ms(),
    };
    let entry = files
        .commit(guard.keep(), path.to_string(), version, None)
        .await?;
    drop(slot);
    publish_uploaded(&state, &entry);
    let json = FileJson::new(&entry, entry.current());
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "file": json })),
    )
        .into_response())
}

/// Announces the current version of `entry`.
fn publish_uploaded(state: &AppState, entry: &FileEntry) {
    let current = entry.current();
    tracing::info!(
        path = entry.path,
        version = current.version,
        size = current.size,
        "file stored"
    );
    state.events.publish(Event::FileUploaded {
        path: entry.path.clone(),
        version: current.version,
        size: current.size,
        sha256: current.sha256.clone(),
        content_type: current.content_type.clone(),
        actor: actor_of(&current.uploader),
        at_ms: current.uploaded_ms,
    });
}

/// `GET /api/files`: the current version of every file the token may read.
async fn list_files(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = crate::http::request_claims(&state, &headers, &uri)?;
    let entries = state
        .files
        .blocking(|inner| Ok(inner.store.list_files()?))
        .await?;
    let files: Vec<FileJson> = entries
        .iter()
        .filter(|entry| {
            claims
                .as_ref()
                .is_none_or(|claims| claims.role_for(&entry.path).is_some())
        })
        .map(|entry| FileJson::new(entry, entry.current()))
        .collect();
    Ok(axum::Json(serde_json::json!({ "files": files })).into_response())
}

/// `GET /api/file-versions/{path}`: every version, newest first.
async fn list_versions(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/file-versions/")?;
    grant_for(&state, &headers, &uri, &path)?;
    let entry = load_entry(&state.files, &path).await?;
    let versions: Vec<FileJson> = entry
        .versions
        .iter()
        .rev()
        .map(|version| FileJson::new(&entry, version))
        .collect();
    Ok(axum::Json(serde_json::json!({ "versions": versions })).into_response())
}

/// The entry at `path`, or 404.
async fn load_entry(files: &Files, path: &DocId) -> Result<FileEntry, ApiError> {
    let name = path.to_string();
    files
        .blocking(move |inner| Ok(inner.store.file(&name)?))
        .await?
        .ok_or_else(|| FileApiError::NotFound.into())
}

/// The body of `POST /api/file-moves`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    from: String,
    to: String,
}

/// `POST /api/file-moves`: renames a file with all its versions (write on both paths).
async fn move_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = crate::http::body_within_limit(body, MAX_MOVE_BODY_BYTES)?;
    let request: MoveRequest = serde_json::from_slice(&body).map_err(|_| ApiError::BadBody)?;
    let from = DocId::new(&request.from).map_err(ApiError::BadDocName)?;
    let to = DocId::new(&request.to).map_err(ApiError::BadDocName)?;
    check_new_path(&to)?;
    let grant = write_grant(&state, &headers, &uri, &from)?;
    write_grant(&state, &headers, &uri, &to)?;
    check_not_doc(&state, &to).await?;
    let files = state.files.clone();
    let quota = files.quota();
    let (from_name, to_name) = (from.to_string(), to.to_string());
    let entry = state
        .files
        .blocking(move |inner| {
            let entry = inner.store.move_file(&from_name, &to_name, quota)?;
            files.set_path(Some(&to_name), Some(&from_name));
            Ok(entry)
        })
        .await?;
    tracing::info!(from = %from, to = %to, "file moved");
    state.events.publish(Event::FileRenamed {
        from: from.to_string(),
        to: to.to_string(),
        actor: crate::events::actor_of_request(&grant, &headers),
        at_ms: now_ms(),
    });
    let json = FileJson::new(&entry, entry.current());
    Ok(axum::Json(serde_json::json!({ "file": json })).into_response())
}

/// `DELETE /api/files/{path}`: removes the file and all its versions; blobs nothing else
/// names are deleted from disk.
async fn delete_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/files/")?;
    let grant = write_grant(&state, &headers, &uri, &path)?;
    let files = state.files.clone();
    let name = path.to_string();
    state
        .files
        .blocking(move |inner| {
            let _blobs = inner
                .blob_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let deleted = inner.store.delete_file(&name)?;
            files.set_path(None, Some(&name));
            for sha256 in &deleted.unreferenced {
                if let Err(error) = inner.disk.remove_blob(sha256) {
                    // The cleanup task removes it later.
                    tracing::warn!(%error, sha256, "removing blob failed");
                }
            }
            Ok(())
        })
        .await?;
    tracing::info!(path = %path, "file deleted");
    state.events.publish(Event::FileDeleted {
        path: path.to_string(),
        actor: crate::events::actor_of_request(&grant, &headers),
        at_ms: now_ms(),
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_come_from_the_client_unless_generic_then_from_the_name() {
        assert_eq!(content_type_for(Some("image/png"), "a.bin"), "image/png");
        assert_eq!(
            content_type_for(Some("application/octet-stream"), "a.pdf"),
            "application/pdf"
        );
        assert_eq!(content_type_for(None, "build.zip"), "application/zip");
        assert_eq!(
            content_type_for(Some("nonsense"), "noext"),
            "application/octet-stream"
        );
    }
}
