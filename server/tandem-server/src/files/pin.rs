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
