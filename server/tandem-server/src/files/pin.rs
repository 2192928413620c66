//! Blobs pinned by a backup in progress: a backup names the blobs of the read transaction it
//! copies, and those must outlive the backup even if a delete commits meanwhile.
//!
//! Pins are taken under the blob lock, in the same critical section as the backup's read
//! transaction begins (`backup/mod.rs`), and every blob removal checks them under the same
//! lock (`Files::remove_blob`), so no blob the copy names is removed before the backup has
//! streamed it. A removal refused for a pin leaves an orphaned blob, which the cleanup removes
//! on a later pass, once the backup has ended (the same path as a removal that failed).

use super::Files;
use super::blobs::BlobGuard;

/// The blobs one backup pinned; dropping it unpins them.
pub(crate) struct BlobPins {
    files: Files,
    sha256s: Vec<String>,
}

impl Files {
    /// Pins `sha256s` until the returned value is dropped. The caller holds the blob lock.
    pub(crate) fn pin_blobs(&self, _blobs: &BlobGuard<'_>, sha256s: Vec<String>) -> BlobPins {
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

    /// Whether a backup in progress names blob `sha256`.
    pub(crate) fn is_pinned(&self, sha256: &str) -> bool {
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

    /// A delete that commits while a backup runs must not remove a blob the backup names: the
    /// removal is refused while the pin holds, and goes through once the backup is over.
    #[test]
    fn a_pinned_blob_outlives_its_removal_until_the_pin_drops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(tandem_store::Store::open(&dir.path().join("t.redb")).expect("store"));
        let files = Files::open(
            store.clone(),
            store,
            FilesConfig::default(),
            dir.path(),
            Sharing::Local,
            None,
        )
        .expect("files");
        let sha256 = "ab".repeat(32);
        let temp = dir.path().join("staged");
        std::fs::write(&temp, b"bytes").expect("write");
        files
            .inner
            .disk
            .store_blob(&temp, &sha256)
            .expect("store blob");
        let blob = files.inner.disk.blob_path(&sha256);

        let pins = {
            let lock = files.lock_blobs().expect("lock");
            files.pin_blobs(&lock, vec![sha256.clone()])
        };
        let second = {
            let lock = files.lock_blobs().expect("lock");
            files.pin_blobs(&lock, vec![sha256.clone()])
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
}
