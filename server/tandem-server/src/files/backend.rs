//! Where the bytes of files live, behind one set of operations the service uses: a directory
//! ([`Disk`](super::Disk): the data directory, or in cluster mode the blob directory every node mounts) or an
//! S3-compatible store ([`S3`], cluster mode). Commit, delete, cleanup, downloads and tus call
//! these, never paths or object keys.
//!
//! In both, a complete upload is first *staged* (a fsynced upload file; a staging object),
//! outside the blob lock, and then *placed* as blob `sha256` under it (a rename or link; a
//! server-side copy, or nothing when the blob exists), so the lock is held for short metadata
//! work and one copy, never while bytes arrive.
//!
//! tus uploads: on disk the upload's file grows with each PATCH and its length is the offset;
//! on S3 each PATCH stores what it received as one segment object and the offset is the end of
//! the contiguous segments. One PATCH writes an upload at a time across nodes: the `flock` of
//! the upload file, or the cluster's shared lock `upload:<id>` ([`UploadWriter`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tandem_store::meta::{SharedLockGuard, SharedLocks};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::io::ReaderStream;

use super::blobs::{UploadFile, hash_file};
use super::s3::{self, S3};
use super::upload::TempGuard;
use super::{BlobGuard, FileError, Files};

/// Bytes read from a blob file at a time while streaming it. Each read is a trip to tokio's
/// blocking pool (`tokio::fs`), so a download of 1 GiB in 64 KiB reads paid 16,384 of them;
/// 256 KiB reads cut that by four for 192 KiB more per download in flight.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// The blobs' backend.
pub(crate) enum Backend {
    /// Blobs and uploads under [`FilesInner::disk`](super::FilesInner).
    Dir,
    /// Blobs, staged uploads and tus segments on the store; the node's `disk` holds only the
    /// bodies being received. `locks` elect the one writer of a tus upload.
    /// `writers` caps the one-writer locks this node holds at once (each takes a Postgres
    /// connection out of the pool for as long as a body takes to arrive).
    S3 {
        s3: S3,
        locks: Arc<dyn SharedLocks>,
        writers: Arc<Semaphore>,
    },
}

/// How many tus uploads a node with an S3 store writes at once, each holding one Postgres
/// connection for its one-writer lock; a PATCH beyond that is answered 423 (`upload_busy`).
pub(crate) const MAX_UPLOAD_WRITERS: usize = 16;

/// The bytes of uploads, by id, with when they last grew (see [`Files::list_upload_bytes`]).
pub(crate) struct UploadBytes {
    /// Files in the node's (or with a blob directory, the shared) `uploads/`.
    pub(crate) local: Vec<(String, SystemTime)>,
    /// Segments and staging objects in the S3 store.
    pub(crate) stored: Vec<(String, SystemTime)>,
}

/// A complete upload, ready to become a blob.
#[derive(Debug)]
pub(crate) enum Staged {
    /// A fsynced file: a PUT's (renamed into the blobs) or a tus upload's (linked).
    File(PathBuf),
    /// The staging object of upload `id`.
    Object(String),
}

/// The one writer of a tus upload, across nodes, while held.
pub(crate) enum UploadWriter {
    /// The upload file, `flock`ed; closing it unlocks.
    Flock(#[allow(dead_code)] std::fs::File),
    /// This node's permit to hold one (given back first, so that once the lock is seen
    /// released the permit is free too), and the shared lock `upload:<id>`.
    Shared(
        #[allow(dead_code)] OwnedSemaphorePermit,
        #[allow(dead_code)] SharedLockGuard,
    ),
    /// The shared lock `upload:<id>`, held for a moment by the cleanup or a terminate.
    Brief(#[allow(dead_code)] SharedLockGuard),
}

/// An upload no writer holds, locked against one while it is removed
/// ([`Files::hold_idle_upload`]); `None` inside for a disk upload whose file is gone.
pub(crate) struct IdleUpload(#[allow(dead_code)] Option<UploadWriter>);

/// Whether taking the one-writer lock of an upload worked.
pub(crate) enum WriterLock {
    Held(UploadWriter),
    /// A writer (on any node) holds it.
    Busy,
    /// The upload has no bytes (its file is gone).
    Missing,
}

/// A blob opened for download: its length checked; reading starts at any offset.
pub(crate) enum BlobReader {
    File(tokio::fs::File),
    Object {
        s3: S3,
        key: object_store::path::Path,
    },
}

fn upload_lock_name(id: &str) -> String {
    format!("upload:{id}")
}

impl BlobReader {
    /// `n_bytes` from `start` on, as a stream of chunks.
    pub(crate) async fn stream(
        self,
        start: u64,
        n_bytes: u64,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, FileError> {
        match self {
            BlobReader::File(mut file) => {
                if start > 0 {
                    file.seek(std::io::SeekFrom::Start(start))
                        .await
                        .map_err(|_| FileError::Internal)?;
                }
                Ok(ReaderStream::with_capacity(file.take(n_bytes), READ_CHUNK_BYTES).boxed())
            }
            BlobReader::Object { s3, key } => {
                Ok(s3.read(&key, start..start.saturating_add(n_bytes)).await?)
            }
        }
    }
}

impl Files {
    fn s3(&self) -> Option<&S3> {
        match &self.inner.backend {
            Backend::Dir => None,
            Backend::S3 { s3, .. } => Some(s3),
        }
    }

    /// Opens blob `sha256`: `Ok(None)` if it does not exist, `Err(StorageFault)`-worthy
    /// problems as `Err`. Also returns the blob's length as stored.
    pub(crate) async fn open_blob(
        &self,
        sha256: &str,
    ) -> Result<Option<(BlobReader, u64)>, FileError> {
        match self.s3() {
            None => {
                let path = self.inner.disk.blob_path(sha256);
                let file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(error) => {
                        tracing::error!(%error, sha256, "opening blob failed");
                        return Err(FileError::Internal);
                    }
                };
                let len = file.metadata().await.map_err(|error| {
                    tracing::error!(%error, sha256, "reading blob metadata failed");
                    FileError::Internal
                })?;
                Ok(Some((BlobReader::File(file), len.len())))
            }
            Some(s3) => {
                let key = s3.blob_key(sha256);
                Ok(s3.head(&key).await?.map(|meta| {
                    (
                        BlobReader::Object {
                            s3: s3.clone(),
                            key,
                        },
                        meta.size,
                    )
                }))
            }
        }
    }

    /// Stages a PUT's complete, fsynced file (`temp`, upload `id`). On disk the file itself is
    /// handed on; on S3 it is sent to the staging object and removed.
    pub(crate) async fn stage_put(&self, temp: TempGuard, id: &str) -> Result<Staged, FileError> {
        match self.s3() {
            None => Ok(Staged::File(temp.keep())),
            Some(s3) => {
                s3.put_file(&s3.staging_key(id), temp.path()).await?;
                Ok(Staged::Object(id.to_owned()))
            }
        }
    }

    /// Stages fully received tus upload `id`; returns its SHA-256, its length and the staged
    /// bytes. On disk the upload file is hashed; on S3 its segments are joined into the
    /// staging object, hashed on the way.
    pub(crate) async fn stage_upload(&self, id: &str) -> Result<(String, u64, Staged), FileError> {
        match self.s3() {
            None => {
                let path = self.inner.disk.upload_path(id);
                let hashed = path.clone();
                let (sha256, len) = tokio::task::spawn_blocking(move || hash_file(&hashed))
                    .await
                    .map_err(|_| FileError::Internal)?
                    .map_err(|error| {
                        tracing::error!(%error, id, "hashing upload failed");
                        FileError::Internal
                    })?;
                Ok((sha256, len, Staged::File(path)))
            }
            Some(s3) => {
                let (run, _) = s3::contiguous_run(&s3.segments(id).await?);
                let (sha256, len) = s3.join_segments(id, &run).await?;
                Ok((sha256, len, Staged::Object(id.to_owned())))
            }
        }
    }

    /// Makes `staged` blob `sha256` (nothing to do if the blob exists: same bytes). Durable once
    /// this returns. The caller holds the blob lock; blocking. A PUT's file is renamed (so it is
    /// gone), a tus upload's (`is_upload`) linked (so it stays until its record is gone).
    pub(crate) fn place_blob(
        &self,
        staged: &Staged,
        sha256: &str,
        is_upload: bool,
    ) -> Result<(), FileError> {
        match (staged, &self.inner.backend) {
            (Staged::File(path), Backend::Dir) => {
                let stored = if is_upload {
                    self.inner.disk.link_blob(path, sha256)
                } else {
                    self.inner.disk.store_blob(path, sha256)
                };
                stored.map_err(|error| self.io_failure_blocking(&error, "storing blob"))
            }
            (Staged::Object(id), Backend::S3 { s3, .. }) => s3.block(async {
                let blob = s3.blob_key(sha256);
                if s3.head(&blob).await?.is_none() {
                    s3.copy(&s3.staging_key(id), &blob).await?;
                }
                Ok(())
            }),
            _ => {
                tracing::error!(?staged, "staged bytes of another backend");
                Err(FileError::Internal)
            }
        }
    }

    /// Drops staged bytes that did not become a version (a PUT's file or any staging object;
    /// a tus upload's file stays for a retry). Blocking; failures are logged (the cleanup
    /// removes what is left).
    pub(crate) fn discard_staged(&self, staged: &Staged, is_upload: bool) {
        match (staged, &self.inner.backend) {
            (Staged::File(path), Backend::Dir) => {
                if !is_upload
                    && let Err(error) = std::fs::remove_file(path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%error, "removing upload bytes failed");
                }
            }
            (Staged::Object(id), Backend::S3 { s3, .. }) => {
                if let Err(error) = s3.block(s3.delete(&s3.staging_key(id))) {
                    tracing::warn!(%error, id, "removing staging object failed");
                }
            }
            _ => {}
        }
    }

    /// Removes blob `sha256`; a missing blob is not an error. The caller holds the blob lock
    /// (`blobs`) and has seen the blob's refcount row gone. If the lock turns out lost (its
    /// Postgres session ended: another node may have taken it and committed a version naming
    /// the blob), nothing is removed; the cleanup looks again later, under the lock. Blocking.
    pub(crate) fn remove_blob(&self, blobs: &BlobGuard<'_>, sha256: &str) -> Result<(), String> {
        if !blobs.still_held() {
            return Err("the blob lock was lost; the blob is left for the cleanup".into());
        }
        if self.is_pinned(sha256) {
            return Err("a backup in progress names the blob; it is left for the cleanup".into());
        }
        match &self.inner.backend {
            Backend::Dir => self
                .inner
                .disk
                .remove_blob(sha256)
                .map_err(|error| error.to_string()),
            Backend::S3 { s3, .. } => s3
                .block(s3.delete(&s3.blob_key(sha256)))
                .map_err(|error| error.to_string()),
        }
    }

    /// Every blob and when it was written. Blocking.
    pub(crate) fn list_blobs(&self) -> Result<Vec<(String, SystemTime)>, String> {
        match &self.inner.backend {
            Backend::Dir => self.inner.disk.blob_files().map_err(|e| e.to_string()),
            Backend::S3 { s3, .. } => s3.block(s3.blob_objects()).map_err(|e| e.to_string()),
        }
    }

    /// Every upload with bytes and when it last grew: the node's local files, and (on S3) the
    /// uploads with segments or a staging object in the store. Blocking.
    pub(crate) fn list_upload_bytes(&self) -> Result<UploadBytes, String> {
        let local = self.inner.disk.upload_files().map_err(|e| e.to_string())?;
        let stored = match &self.inner.backend {
            Backend::Dir => Vec::new(),
            Backend::S3 { s3, .. } => s3.block(s3.upload_objects()).map_err(|e| e.to_string())?,
        };
        Ok(UploadBytes { local, stored })
    }

    /// Removes the bytes of upload `id`, wherever they are; missing bytes are not an error.
    /// Blocking.
    pub(crate) fn remove_upload_bytes(&self, id: &str) -> Result<(), String> {
        self.inner
            .disk
            .remove_upload(id)
            .map_err(|error| error.to_string())?;
        if let Backend::S3 { s3, .. } = &self.inner.backend {
            s3.block(s3.remove_upload(id))
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// Creates the (empty) bytes of a new tus upload: its file on disk; nothing on S3, where no
    /// segment means offset 0.
    pub(crate) async fn create_upload_bytes(&self, id: &str) -> Result<(), FileError> {
        match self.s3() {
            None => match UploadFile::create(&self.inner.disk.upload_path(id)).await {
                Ok(_) => Ok(()),
                Err(error) => Err(self.io_failure(error, "creating upload file").await),
            },
            Some(_) => Ok(()),
        }
    }

    /// Bytes received so far by tus upload `id`; `None` if its bytes are gone (a disk upload
    /// whose file is missing).
    pub(crate) async fn upload_offset(&self, id: &str) -> Result<Option<u64>, FileError> {
        match self.s3() {
            None => match tokio::fs::metadata(self.inner.disk.upload_path(id)).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => {
                    tracing::error!(%error, id, "reading upload file failed");
                    Err(FileError::Internal)
                }
            },
            Some(s3) => Ok(Some(s3::contiguous_end(&s3.segments(id).await?))),
        }
    }

    /// Takes the one-writer lock of tus upload `id` without waiting. On S3 a node holds at
    /// most [`MAX_UPLOAD_WRITERS`] of them (each is a Postgres session): beyond that the upload
    /// is `Busy` too, and the client retries later.
    pub(crate) async fn lock_upload_writer(&self, id: &str) -> Result<WriterLock, FileError> {
        let key = id.to_owned();
        self.blocking(move |inner| match &inner.backend {
            Backend::Dir => match inner.disk.lock_upload(&key) {
                Ok(Some(file)) => Ok(WriterLock::Held(UploadWriter::Flock(file))),
                Ok(None) => Ok(WriterLock::Busy),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    Ok(WriterLock::Missing)
                }
                Err(error) => {
                    tracing::error!(%error, "locking upload file failed");
                    Err(FileError::Internal)
                }
            },
            Backend::S3 { locks, writers, .. } => {
                let Ok(permit) = writers.clone().try_acquire_owned() else {
                    tracing::warn!(
                        max = MAX_UPLOAD_WRITERS,
                        "refusing a PATCH: this node writes as many uploads as it may"
                    );
                    return Ok(WriterLock::Busy);
                };
                Ok(match locks.try_lock(&upload_lock_name(&key))? {
                    Some(guard) => WriterLock::Held(UploadWriter::Shared(permit, guard)),
                    None => WriterLock::Busy,
                })
            }
        })
        .await
    }

    /// Takes upload `id`'s one-writer lock for a moment, if no writer (on any node) holds
    /// it: `Some` to hold while removing the upload, `None` if a writer holds it or that is
    /// unsure (the database failed). Blocking.
    pub(crate) fn hold_idle_upload(&self, id: &str) -> Option<IdleUpload> {
        match &self.inner.backend {
            Backend::Dir => match self.inner.disk.lock_upload(id) {
                Ok(Some(file)) => Some(IdleUpload(Some(UploadWriter::Flock(file)))),
                Ok(None) => None,
                // No file to lock (it is gone): nothing can be writing it.
                Err(_) => Some(IdleUpload(None)),
            },
            Backend::S3 { locks, .. } => match locks.try_lock_brief(&upload_lock_name(id)) {
                Ok(Some(guard)) => Some(IdleUpload(Some(UploadWriter::Brief(guard)))),
                _ => None,
            },
        }
    }

    /// Where a PATCH of upload `id` writes what it receives, and whether that is a temporary
    /// file (S3: sent as a segment by [`Files::store_patch`], then removed) rather than the
    /// upload file itself (disk: appended to).
    pub(crate) async fn open_patch(
        &self,
        id: &str,
    ) -> Result<(UploadFile, Option<PatchTemp>), FileError> {
        let res = match self.s3() {
            None => UploadFile::append(&self.inner.disk.upload_path(id))
                .await
                .map(|file| (file, None)),
            Some(_) => {
                // Registered before the file exists, so the cleanup, which reads the set after
                // listing the files, never takes it for an orphan however slowly it grows.
                let temp = PatchTemp::register(self);
                UploadFile::create(temp.path())
                    .await
                    .map(|file| (file, Some(temp)))
            }
        };
        match res {
            Ok(opened) => Ok(opened),
            Err(error) => Err(self.io_failure(error, "opening upload file").await),
        }
    }

    /// Keeps what a PATCH of upload `id` received from `offset` on (`received` bytes in
    /// `temp`, if any): on S3, stores it as the segment at `offset`. Once this returns `Ok`, the
    /// upload's offset includes those bytes; on an error it does not.
    pub(crate) async fn store_patch(
        &self,
        id: &str,
        offset: u64,
        temp: Option<&PatchTemp>,
        received: u64,
    ) -> Result<(), FileError> {
        match (self.s3(), temp) {
            (Some(s3), Some(temp)) if received > 0 => {
                s3.put_file(&s3.segment_key(id, offset), temp.path()).await
            }
            _ => Ok(()),
        }
    }
}

/// The local file a PATCH on S3 receives its body into, under an id of its own; registered in
/// [`FilesInner::patches`](super::FilesInner) while it exists, so the cleanup leaves it alone
/// (its modification time moves only when the write buffer is flushed). Dropping it removes
/// the file, then the registration.
pub(crate) struct PatchTemp {
    files: Files,
    id: String,
    file: Option<TempGuard>,
}

impl PatchTemp {
    fn register(files: &Files) -> PatchTemp {
        let id = super::blobs::new_upload_id();
        files
            .inner
            .patches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.clone());
        PatchTemp {
            file: Some(TempGuard::new(files.inner.disk.upload_path(&id))),
            files: files.clone(),
            id,
        }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        self.file.as_ref().expect("set until dropped").path()
    }
}

impl Drop for PatchTemp {
    fn drop(&mut self) {
        drop(self.file.take());
        self.files
            .inner
            .patches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}
