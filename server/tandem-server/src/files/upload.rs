//! What an upload needs, whichever way it arrives (`PUT /api/files/{path}` or tus): a body
//! streamed to its file with a running SHA-256 and an idle limit, the upload file removed unless
//! handed on, the stored media type, the declared hash, and the one-writer slot of a tus upload.
//! Nothing here answers a request; the handlers are `api/files.rs` and `api/tus.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::blobs::{UploadFile, is_sha256_hex};
use super::{FileError, Files, UPLOAD_IDLE_TIMEOUT};

/// How long a PATCH waits for the one it replaces to stop and sync.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The media type to store: the client's, unless it is missing, generic or malformed; then a
/// guess from the name.
pub(crate) fn content_type_for(declared: Option<&str>, name: &str) -> String {
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
pub(crate) fn parse_sha256(text: &str) -> Result<String, FileError> {
    let lower = text.trim().to_ascii_lowercase();
    if is_sha256_hex(&lower) {
        Ok(lower)
    } else {
        Err(FileError::BadRequest(
            "a sha-256 must be 64 hex digits".into(),
        ))
    }
}

/// How receiving a body into an upload file ended, short of success.
#[derive(Debug)]
pub(crate) enum ReceiveError {
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
pub(crate) async fn receive<E>(
    mut stream: impl Stream<Item = Result<Bytes, E>> + Unpin,
    file: &mut UploadFile,
    mut hasher: Option<&mut Sha256>,
    max: u64,
    received: &mut u64,
    progress: Option<&AtomicU64>,
    cancel: &CancellationToken,
) -> Result<(), ReceiveError> {
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

/// Removes an upload file when dropped, unless it was handed on (a PUT's temporary bytes).
pub(crate) struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    /// Removes `path` when dropped.
    pub(crate) fn new(path: PathBuf) -> TempGuard {
        TempGuard { path: Some(path) }
    }

    /// The file.
    pub(crate) fn path(&self) -> &std::path::Path {
        self.path.as_deref().expect("set until kept")
    }

    /// Hands the file on: it is no longer removed on drop.
    pub(crate) fn keep(mut self) -> PathBuf {
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

/// The PATCH currently writing one upload.
pub(crate) struct UploadSlot {
    /// Held by the PATCH writing the upload.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancels the holder of `lock`, so a newer PATCH (the client resuming) takes over.
    current: Mutex<CancellationToken>,
}

/// Whether a PATCH is writing upload `id` (the cleanup leaves it alone).
pub(crate) fn is_busy(files: &Files, id: &str) -> bool {
    let slots = files
        .inner
        .slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    slots
        .get(id)
        .is_some_and(|slot| slot.lock.try_lock().is_err())
}

/// Drops the slot of a finished, terminated or expired upload.
pub(crate) fn forget_slot(files: &Files, id: &str) {
    files
        .inner
        .slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(id);
}

/// Becomes the one writer of upload `id`: cancels the current one and waits for it to finish.
/// The returned token is cancelled by the next taker or by shutdown (`parent`).
pub(crate) async fn take_slot(
    files: &Files,
    id: &str,
    parent: &CancellationToken,
) -> Result<(OwnedMutexGuard<()>, CancellationToken), FileError> {
    let slot = {
        let mut slots = files
            .inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(UploadSlot {
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    current: Mutex::new(CancellationToken::new()),
                })
            })
            .clone()
    };
    slot.current
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .cancel();
    let guard = tokio::time::timeout(TAKEOVER_TIMEOUT, slot.lock.clone().lock_owned())
        .await
        .map_err(|_| FileError::UploadBusy)?;
    let token = parent.child_token();
    *slot
        .current
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = token.clone();
    Ok((guard, token))
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
