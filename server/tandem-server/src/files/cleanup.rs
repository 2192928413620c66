//! The cleanup of interrupted uploads and orphaned blobs: once at start-up with no grace, then
//! every `cleanup_interval`. It never removes the bytes of an upload in progress, and removes a
//! blob file only under the blob lock, when no committed version names it.
//!
//! In cluster mode other nodes write into the same directory or store at any time, so even the
//! start-up pass keeps the grace period: a file another node is writing is younger than it (a
//! PUT's body must make progress every `UPLOAD_IDLE_TIMEOUT`, shorter than the grace), and an
//! expired tus upload whose one-writer lock a PATCH on any node holds (its `flock`, or the
//! shared lock on S3) is left alone; the cleanup holds that lock itself while it removes one.
//!
//! On S3 the node's own bodies being received are local files, swept like the others but never
//! while registered (a PUT's in `puts`, a PATCH's in `patches`). In the store, staging objects
//! and segments without a record are removed only once older than `upload_expiry` (24 h by
//! default): a PUT's staging object is known only to the node that wrote it, and its age says
//! when its (multipart) upload began, not when it ended.

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
            if record.expires_ms > now_ms || upload::is_busy(self, &record.id) {
                live.insert(record.id);
                continue;
            }
            // Held until the record and the bytes are gone, so no PATCH (on any node) starts
            // writing the upload meanwhile.
            let Some(_idle) = self.hold_idle_upload(&record.id) else {
                live.insert(record.id);
                continue;
            };
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
            Ok(bytes) => {
                // Read after the listing: a PUT, or a PATCH receiving into a file of its own,
                // registers before it creates its file, so every such file listed that is still
                // in progress is in `puts` or `patches` now.
                live.extend(
                    inner
                        .puts
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .keys()
                        .cloned(),
                );
                live.extend(
                    inner
                        .patches
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .iter()
                        .cloned(),
                );
                // In the store, a PUT's staging object has no record, and only the node
                // receiving it knows it is in progress; its age is when its upload began, which
                // for a large body waiting for the blob lock may be long ago. So objects without
                // a record go only once as old as an unfinished tus upload may be.
                let stored_grace = grace.max(inner.config.upload_expiry);
                let stored_old_enough = |modified: SystemTime| {
                    now.duration_since(modified)
                        .is_ok_and(|age| age >= stored_grace)
                };
                let local = bytes.local.into_iter().map(|(id, at)| (id, old_enough(at)));
                let stored = bytes
                    .stored
                    .into_iter()
                    .map(|(id, at)| (id, stored_old_enough(at)));
                for (id, old) in local.chain(stored) {
                    if old && !live.contains(&id) {
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
            let blobs = match self.lock_blobs() {
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
                        if !named.contains(&sha256) && self.remove_blob(&blobs, &sha256).is_ok() {
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
