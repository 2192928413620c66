//! The cleanup of interrupted uploads and orphaned blobs: once at start-up with no grace, then
//! every `cleanup_interval`. It never removes the bytes of an upload in progress, and removes a
//! blob file only under the blob lock, when no committed version names it.
//!
//! In cluster mode other nodes write into the same directory or store at any time, so even the
//! start-up pass keeps the grace period: a file or object another node is writing is younger
//! than it (a PUT's body must make progress every `UPLOAD_IDLE_TIMEOUT`, shorter than the
//! grace), and an expired tus upload whose one-writer lock a PATCH on any node holds (its
//! `flock`, or the shared lock on S3) is left alone. On S3 the node's own bodies being received
//! are local files, swept the same way; one being sent to the store is open, so removing its
//! name does not disturb the sending.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Files, upload};
use tandem_hub::clock::now_ms;

impl Files {
    /// One pass of the cleanup; `grace` is how old orphaned files must be to go (zero at
    /// start-up, when nothing can be in progress).
    pub(super) fn cleanup(&self, grace: Duration) {
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
            if record.expires_ms > now_ms
                || upload::is_busy(self, &record.id)
                || self.is_upload_locked(&record.id)
            {
                live.insert(record.id);
                continue;
            }
            match inner.store.remove_upload(&record.id) {
                Ok(_) => {
                    if let Err(error) = self.remove_upload_bytes(&record.id) {
                        tracing::warn!(%error, id = record.id, "removing expired upload failed");
                    }
                    upload::forget_slot(self, &record.id);
                    n_expired += 1;
                }
                Err(error) => tracing::error!(%error, "removing expired upload record failed"),
            }
        }
        match self.list_upload_bytes() {
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
                        if self.remove_upload_bytes(&id).is_ok() {
                            n_orphans += 1;
                        }
                    }
                }
            }
            Err(error) => tracing::error!(%error, "listing upload bytes failed"),
        }
        // Orphaned blobs, in two steps so that the blob lock (in cluster mode a lock every
        // node waits on) is held only for the few candidates: first, without the lock, the blob
        // files no row references; then, under the lock, each candidate checked again (an
        // upload may have taken it meanwhile) and against the file entries.
        let candidates: Vec<String> = match self.list_blobs() {
            Ok(blobs) => blobs
                .into_iter()
                .filter(|(sha256, modified)| {
                    old_enough(*modified)
                        && matches!(inner.store.blob(sha256), Ok(row) if row.is_none_or(|row| row.refcount == 0))
                })
                .map(|(sha256, _)| sha256)
                .collect(),
            Err(error) => {
                tracing::error!(%error, "listing blobs failed");
                Vec::new()
            }
        };
        if !candidates.is_empty() {
            let _blobs = match self.lock_blobs() {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::error!(%error, "taking the blob lock failed; no blob removed");
                    return;
                }
            };
            let unreferenced: Vec<String> = candidates
                .into_iter()
                .filter(|sha256| {
                    // Unsure (a failed read): keep it.
                    matches!(inner.store.blob(sha256), Ok(row) if row.is_none_or(|row| row.refcount == 0))
                })
                .collect();
            // The `blobs` rows are counters without checksums: a blob goes only if the file
            // entries, each checked against its checksum, agree that no version names it. Any
            // error reading them keeps every blob.
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
                        if !named.contains(&sha256) && self.remove_blob(&sha256).is_ok() {
                            n_orphans += 1;
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reading file entries failed; keeping every blob");
                }
            }
        }
        if n_expired + n_orphans > 0 {
            tracing::info!(n_expired, n_orphans, "file cleanup removed leftovers");
        }
    }

    /// Cleans up once before the server accepts requests: with no grace on one node, where
    /// nothing can be in progress yet; with the usual grace in cluster mode, where other nodes
    /// may be writing.
    pub(crate) async fn cleanup_at_start(&self) {
        let files = self.clone();
        let grace = match self.sharing() {
            super::Sharing::Local => Duration::ZERO,
            super::Sharing::Cluster => self.config().orphan_grace,
        };
        let _ = tokio::task::spawn_blocking(move || files.cleanup(grace)).await;
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
