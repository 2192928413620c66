//! Blobs pinned by a backup in progress: a backup names the blobs of the read transaction it
//! copies, and those must outlive the backup even if a delete commits meanwhile.
//!
//! A backup marks itself as starting ([`Files::begin_pinning`]) under the blob lock, in the
//! same critical section as its read transaction begins (`backup/mod.rs`), and lets the lock go;
//! it then lists the blobs that transaction names and pins them ([`PinStart::pin`]), which
//! ends the start. Every blob removal checks, under the same lock, both the starts and the pins
//! (`Files::remove_blob`) and is refused while a backup is starting or names the blob, so no
//! blob the copy names is removed before the backup has streamed it, and the lock is held only
//! for the beginning of the transaction, not for the listing.
//!
//! Also here: the one backup that may run at a time ([`Files::try_start_backup`]). A removal refused for a pin leaves an orphaned blob, which the cleanup removes
//! on a later pass, once the backup has ended (the same path as a removal that failed).

use std::sync::atomic::Ordering;

use super::Files;
use super::blobs::BlobGuard;

/// A backup between the beginning of its read transaction and pinning its blobs: blob removals
/// are refused meanwhile. Dropping it without pinning ends the start.
pub(crate) struct PinStart {
    files: Files,
}

impl PinStart {
    /// Pins `sha256s` until the returned value is dropped, and ends the start.
    pub(crate) fn pin(self, sha256s: Vec<String>) -> BlobPins {
        self.files.add_pins(sha256s)
        // `self` drops here, after the pins are in place.
    }
}

impl Drop for PinStart {
    fn drop(&mut self) {
        self.files
            .inner
            .pins_starting
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// The one backup allowed to run; dropping it lets the next one start.
pub(crate) struct BackupSlot {
    files: Files,
}

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.files
            .inner
            .backup_running
            .store(false, Ordering::Release);
    }
}

/// The blobs one backup pinned; dropping it unpins them.
pub(crate) struct BlobPins {
    files: Files,
    sha256s: Vec<String>,
}

impl Files {
    /// Marks a backup as starting until the returned value pins its blobs or is dropped: blob
    /// removals are refused meanwhile. The caller holds the blob lock.
    pub(crate) fn begin_pinning(&self, _blobs: &BlobGuard<'_>) -> PinStart {
        self.inner.pins_starting.fetch_add(1, Ordering::SeqCst);
        PinStart {
            files: self.clone(),
        }
    }

    /// The slot of the one backup that may run at a time, or `None` while another holds it.
    pub(crate) fn try_start_backup(&self) -> Option<BackupSlot> {
        self.inner
            .backup_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| BackupSlot {
                files: self.clone(),
            })
    }

    fn add_pins(&self, sha256s: Vec<String>) -> BlobPins {
        let mut pins = self
            .inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for sha256 in &sha256s {
            *pins.entry(sha256.clone()).or_default() += 1;
        }
        BlobPins {
            files: self.clone(),
            sha256s,
        }
    }

    /// Whether a backup in progress names blob `sha256`, or is starting and may name it.
    pub(crate) fn is_pinned(&self, sha256: &str) -> bool {
        // Read before the pins: a start ends only after its pins are in place.
        if self.inner.pins_starting.load(Ordering::SeqCst) > 0 {
            return true;
        }
        self.inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(sha256)
    }
}

impl Drop for BlobPins {
    fn drop(&mut self) {
        let mut pins = self
            .files
            .inner
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for sha256 in &self.sha256s {
            if let Some(count) = pins.get_mut(sha256) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(sha256);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::files::{FilesConfig, Sharing};

    /// The files service of one node over a fresh store in `dir`.
    fn open_files(dir: &std::path::Path) -> Files {
        let store = Arc::new(tandem_store::Store::open(&dir.join("t.redb")).expect("store"));
        Files::open(
            store.clone(),
            store,
            FilesConfig::default(),
            dir,
            Sharing::Local,
            None,
        )
        .expect("files")
    }

    /// Puts a blob named `sha256` into the store's blob directory.
    fn store_blob(files: &Files, dir: &std::path::Path, sha256: &str) {
        let temp = dir.join("staged");
        std::fs::write(&temp, b"bytes").expect("write");
        files
            .inner
            .disk
            .store_blob(&temp, sha256)
            .expect("store blob");
    }

    /// A delete that commits while a backup runs must not remove a blob the backup names: the
    /// removal is refused while the pin holds, and goes through once the backup is over.
    #[test]
    fn a_pinned_blob_outlives_its_removal_until_the_pin_drops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = open_files(dir.path());
        let sha256 = "ab".repeat(32);
        store_blob(&files, dir.path(), &sha256);
        let blob = files.inner.disk.blob_path(&sha256);

        let pins = {
            let lock = files.lock_blobs().expect("lock");
            files.begin_pinning(&lock).pin(vec![sha256.clone()])
        };
        let second = {
            let lock = files.lock_blobs().expect("lock");
            files.begin_pinning(&lock).pin(vec![sha256.clone()])
        };
        {
            let lock = files.lock_blobs().expect("lock");
            assert!(files.remove_blob(&lock, &sha256).is_err());
        }
        assert!(blob.exists(), "removed while pinned");
        drop(pins);
        {
            let lock = files.lock_blobs().expect("lock");
            assert!(
                files.remove_blob(&lock, &sha256).is_err(),
                "still pinned once"
            );
        }
        drop(second);
        let lock = files.lock_blobs().expect("lock");
        files.remove_blob(&lock, &sha256).expect("removed");
        assert!(!blob.exists());
    }

    /// Between the beginning of a backup's transaction and its pins, no blob may go: the
    /// backup has not yet listed what it names.
    #[test]
    fn a_starting_backup_holds_off_removals_until_it_has_pinned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = open_files(dir.path());
        let named = "cd".repeat(32);
        let other = "ef".repeat(32);
        for sha256 in [&named, &other] {
            store_blob(&files, dir.path(), sha256);
        }
        let start = {
            let lock = files.lock_blobs().expect("lock");
            files.begin_pinning(&lock)
        };
        {
            let lock = files.lock_blobs().expect("lock");
            assert!(
                files.remove_blob(&lock, &named).is_err(),
                "removed while starting"
            );
            assert!(
                files.remove_blob(&lock, &other).is_err(),
                "removed while starting"
            );
        }
        let pins = start.pin(vec![named.clone()]);
        {
            let lock = files.lock_blobs().expect("lock");
            assert!(
                files.remove_blob(&lock, &named).is_err(),
                "removed while pinned"
            );
            files
                .remove_blob(&lock, &other)
                .expect("an unnamed blob goes once pinned");
        }
        drop(pins);
        let lock = files.lock_blobs().expect("lock");
        files.remove_blob(&lock, &named).expect("removed");
    }

    #[test]
    fn one_backup_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = open_files(dir.path());
        let slot = files.try_start_backup().expect("free");
        assert!(
            files.try_start_backup().is_none(),
            "a second backup while one runs"
        );
        drop(slot);
        assert!(files.try_start_backup().is_some(), "free again");
    }
}
