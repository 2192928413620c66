//! Whether the store accepts writes: the read-only state after a failed write, the reserve file,
//! and the way back.
//!
//! A write that fails with an I/O error (`ENOSPC` above all) makes the store read-only:
//! - redb refuses every later operation on that `Database` ("a previous I/O error occurred"), so
//!   the file is closed and opened again at once; reads go on from the fresh handle;
//! - the reserve file (`reserve` beside the database, a few MiB of real blocks written at start)
//!   is deleted, so the disk has room again for what frees space: deletes of files, uploads,
//!   accounts and webhooks, and the roll-back of a failed doc commit ([`Store::discard_after`]);
//! - every other write is refused with [`StoreError::ReadOnly`] without touching the disk, so the
//!   freed room stays free for those deletes.
//!
//! Writes resume by themselves: a refused write, or [`Store::try_resume`] (the server polls it),
//! checks the free space of the data directory at most every [`PROBE_INTERVAL`]; once it holds
//! the reserve and as much again, the reserve file is written again and the store is writable.
//! Each transition is logged once, not each refused write.
//!
//! Invariant: a write refused here or failed with an I/O error stores nothing the caller may
//! report as stored. redb commits are atomic, so a failed commit stored all or nothing; the one
//! case where "failed" may still have reached the file (an fsync that fails after the commit
//! record was written) is rolled back by the doc writer through [`Store::discard_after`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable};

use crate::error::{ReadOnlyReason, StoreError, io_reason};
use crate::schema::{
    DOCS, DocRow, UPDATE_AUTHORS, UPDATES, VERSION_STATES, VERSIONS, decode_doc_row, encode_doc_row,
};
use crate::{DbGuard, Store};

/// Shortest time between two checks of the free space while read-only.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Default size of the reserve file: enough room for redb to commit deletes on a full disk.
pub const DEFAULT_RESERVE_BYTES: u64 = 4 * 1024 * 1024;

/// Free space needed beyond the reserve before writes resume, when the reserve is off or tiny.
const MIN_RESUME_HEADROOM_BYTES: u64 = 1024 * 1024;

/// The name of the reserve file, in the database's directory.
pub const RESERVE_FILE_NAME: &str = "reserve";

/// What a write does to the disk, which decides whether a read-only store lets it try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// Adds data: refused while read-only.
    Grow,
    /// Frees space (deletes) or rolls back a failed commit: tried even while read-only.
    Free,
}

/// The store's writability, shared by every thread that writes.
pub(crate) struct Space {
    /// Read-only, readable without the lock on every write.
    read_only: AtomicBool,
    state: Mutex<SpaceState>,
    /// The reserve file, `None` for a custom backend (no directory to reserve space in).
    reserve_path: Option<PathBuf>,
}

struct SpaceState {
    /// Why writes are refused; `None` while writable.
    reason: Option<ReadOnlyReason>,
    /// When the free space was last checked while read-only.
    last_probe: Option<Instant>,
    /// The reserve file's size (0: no reserve file).
    reserve_bytes: u64,
}

/// What `/healthz` reports about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether writes are accepted.
    pub writable: bool,
    /// Why not, when read-only.
    pub reason: Option<ReadOnlyReason>,
}

/// Errors a write body may return; the store looks inside for a storage fault.
pub(crate) trait WriteError: From<StoreError> {
    fn store_error(&self) -> Option<&StoreError>;
}

impl WriteError for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl Space {
    pub(crate) fn new(db_path: Option<&Path>) -> Space {
        let reserve_path = db_path.map(|path| {
            path.parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(RESERVE_FILE_NAME)
        });
        Space {
            read_only: AtomicBool::new(false),
            state: Mutex::new(SpaceState {
                reason: None,
                last_probe: None,
                reserve_bytes: 0,
            }),
            reserve_path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpaceState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store {
    /// Keeps a reserve file of `bytes` (0: none) beside the database, written now, and deleted
    /// when the disk fills up so that deletes can still commit (see the module documentation).
    /// A disk too full for it makes the store read-only at once.
    pub fn set_reserve(&self, bytes: u64) {
        self.contain_logged("set_reserve", || {
            let mut state = self.space.lock();
            state.reserve_bytes = bytes;
            let Some(path) = &self.space.reserve_path else {
                return;
            };
            if bytes == 0 {
                remove_reserve(path);
                return;
            }
            if let Err(error) = write_reserve(path, bytes) {
                let reason = io_reason(&error);
                drop(state);
                self.enter_read_only(reason, &error);
            }
        });
    }

    /// Whether the store accepts writes, and why not.
    pub fn health(&self) -> StoreHealth {
        let reason = self.space.lock().reason;
        StoreHealth {
            writable: reason.is_none(),
            reason,
        }
    }

    /// Checks whether a read-only store may write again (at most every [`PROBE_INTERVAL`]);
    /// if so, writes the reserve again and makes it writable. Returns whether it is writable.
    pub fn try_resume(&self) -> bool {
        self.contain("try_resume", || Ok::<bool, StoreError>(self.probe_resume()))
            .unwrap_or_else(|error| {
                tracing::error!(%error, "checking whether writes may resume failed");
                false
            })
    }

    /// [`Store::try_resume`], inside an operation that is contained already.
    fn probe_resume(&self) -> bool {
        if !self.space.read_only.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.space.lock();
        let Some(reason) = state.reason else {
            return true;
        };
        let now = Instant::now();
        if state
            .last_probe
            .is_some_and(|last| now.duration_since(last) < PROBE_INTERVAL)
        {
            return false;
        }
        state.last_probe = Some(now);
        let reserve_bytes = state.reserve_bytes;
        if let Some(path) = &self.space.reserve_path {
            let headroom = reserve_bytes.max(MIN_RESUME_HEADROOM_BYTES);
            match free_bytes(path) {
                Ok(free) if free >= reserve_bytes + headroom => {}
                Ok(_) => return false,
                Err(error) => {
                    tracing::debug!(%error, "cannot read the free space; staying read-only");
                    return false;
                }
            }
            if reserve_bytes > 0
                && let Err(error) = write_reserve(path, reserve_bytes)
            {
                tracing::debug!(%error, "cannot write the reserve again; staying read-only");
                remove_reserve(path);
                return false;
            }
        }
        state.reason = None;
        state.last_probe = None;
        self.space.read_only.store(false, Ordering::Release);
        tracing::info!(was = %reason, reserve_bytes, "store writable again");
        true
    }

    /// A write outside the database (an uploaded file's bytes) hit an I/O error: the disk is
    /// as full for the database, so the store becomes read-only too.
    pub fn report_io_error(&self, error: &std::io::Error) {
        self.contain_logged("report_io_error", || {
            self.enter_read_only(io_reason(error), error);
        });
    }

    /// Runs `work`, which returns nothing, with its panics contained (see `contain.rs`); a
    /// caught panic is logged, since the caller has no error to hear of.
    fn contain_logged(&self, operation: &'static str, work: impl FnOnce()) {
        let res = self.contain(operation, || {
            work();
            Ok::<(), StoreError>(())
        });
        if let Err(error) = res {
            tracing::error!(%error, "a store operation failed");
        }
    }

    /// Refuses `kind` writes while read-only (after a check whether it may resume); otherwise the
    /// open database.
    pub(crate) fn writable_db(&self, kind: WriteKind) -> Result<DbGuard<'_>, StoreError> {
        if kind == WriteKind::Grow && !self.probe_resume() {
            let reason = self.space.lock().reason.unwrap_or(ReadOnlyReason::Io);
            return Err(StoreError::ReadOnly { reason });
        }
        self.db()
    }

    /// Runs one write transaction's `body`. A storage fault makes the store read-only (and
    /// reopens the file, which redb needs after an I/O error) and comes back as
    /// [`StoreError::ReadOnly`].
    pub(crate) fn write<T, E: WriteError>(
        &self,
        kind: WriteKind,
        body: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let db = self.writable_db(kind)?;
        let res = body(&db);
        drop(db);
        match res {
            Err(error) => {
                let fault = error
                    .store_error()
                    .filter(|error| !matches!(error, StoreError::ReadOnly { .. }))
                    .and_then(|error| error.read_only_reason().map(|reason| (reason, error)));
                match fault {
                    Some((reason, detail)) => {
                        self.enter_read_only(reason, detail);
                        Err(StoreError::ReadOnly { reason }.into())
                    }
                    None => Err(error),
                }
            }
            ok => ok,
        }
    }

    /// A write failed with a storage fault: refuse writes, free the reserve, reopen the file.
    fn enter_read_only(&self, reason: ReadOnlyReason, error: &dyn std::fmt::Display) {
        {
            let mut state = self.space.lock();
            if state.reason.is_none() {
                tracing::error!(
                    %reason,
                    %error,
                    "store is read-only: writes are refused until space returns"
                );
                state.reason = Some(reason);
                if let Some(path) = &self.space.reserve_path
                    && state.reserve_bytes > 0
                {
                    remove_reserve(path);
                }
            }
            // Check again only after a full interval: the space just freed is for deletes.
            state.last_probe = Some(Instant::now());
            self.space.read_only.store(true, Ordering::Release);
        }
        if let Err(error) = self.reopen() {
            // `db()` tries again on the next operation.
            tracing::error!(%error, "reopening the database after a failed write failed");
        }
    }

    /// Rolls `doc` back to what was reported durable: removes its log entries after
    /// `durable_seq` and its versions after `durable_version`. The doc writer calls it after a
    /// failed commit, so that a commit that failed but still reached the file (an fsync that
    /// failed after the commit record was written) never surfaces as stored. Tried even on a
    /// full disk; commits only if there is something to remove. Returns whether it removed
    /// anything.
    pub fn discard_after(
        &self,
        doc: &str,
        durable_seq: u64,
        durable_version: u64,
    ) -> Result<bool, StoreError> {
        self.contain("discard_after", || {
            self.write(WriteKind::Free, |db| {
                let mut wal = self.wal_guard();
                let txn = db.begin_write()?;
                let mut removed = false;
                {
                    let mut docs = txn.open_table(DOCS)?;
                    let row = match docs.get(doc)? {
                        Some(row) => Some(decode_doc_row(doc, row.value())?),
                        None => None,
                    };
                    if let Some((snapshot_seq, size, updated_ms, n_log, last_seq)) = row
                        && last_seq > durable_seq
                    {
                        let mut updates = txn.open_table(UPDATES)?;
                        let mut n_removed = 0u64;
                        let mut n_bytes = 0u64;
                        updates.retain_in(
                            (doc, durable_seq + 1)..=(doc, u64::MAX),
                            |_, value| {
                                n_removed += 1;
                                n_bytes += crate::payload_len(value);
                                false
                            },
                        )?;
                        txn.open_table(UPDATE_AUTHORS)?
                            .retain_in((doc, durable_seq + 1)..=(doc, u64::MAX), |_, _| false)?;
                        let row: DocRow = (
                            snapshot_seq,
                            size.saturating_sub(n_bytes),
                            updated_ms,
                            n_log.saturating_sub(n_removed),
                            durable_seq,
                        );
                        if durable_seq == 0 && snapshot_seq == 0 {
                            docs.remove(doc)?;
                        } else {
                            docs.insert(doc, encode_doc_row(doc, row).as_slice())?;
                        }
                        removed = true;
                    }
                    let mut versions = txn.open_table(VERSIONS)?;
                    let newest = versions
                        .range((doc, 0)..=(doc, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map(|(key, _)| key.value().1);
                    if newest.is_some_and(|id| id > durable_version) {
                        versions
                            .retain_in((doc, durable_version + 1)..=(doc, u64::MAX), |_, _| {
                                false
                            })?;
                        txn.open_table(VERSION_STATES)?
                            .retain_in((doc, durable_version + 1)..=(doc, u64::MAX), |_, _| {
                                false
                            })?;
                        removed = true;
                    }
                }
                if removed {
                    // Whatever the write-ahead log holds is in the database now (redb's commit
                    // includes the non-durable ones before it); moving its checkpoint keeps a
                    // record of what was just removed from being replayed.
                    let epoch = wal.as_ref().map(|log| log.epoch + 1);
                    if let Some(epoch) = epoch {
                        crate::set_wal_checkpoint(&txn, epoch)?;
                    }
                    txn.commit()?;
                    if let (Some(log), Some(epoch)) = (wal.as_mut(), epoch) {
                        log.start_epoch(epoch);
                    }
                } else {
                    txn.abort()?;
                }
                Ok(removed)
            })
        })
    }
}

/// Bytes an unprivileged user may still write in the directory of `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Writes the reserve file with real blocks (zeros, synced: `set_len` alone would leave a sparse
/// file that reserves nothing).
fn write_reserve(path: &Path, bytes: u64) -> std::io::Result<()> {
    const CHUNK_BYTES: usize = 64 * 1024;
    let res = (|| {
        let mut file = std::fs::File::create(path)?;
        let zeros = vec![0u8; CHUNK_BYTES];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK_BYTES as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    })();
    if res.is_err() {
        remove_reserve(path);
    }
    res
}

fn remove_reserve(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, "removing the reserve file failed");
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::{Author, StoredDoc, VersionKind, VersionRecord, WriteOp};

    fn append<'a>(doc: &'a str, seq: u64, update: &'a [u8]) -> WriteOp<'a> {
        WriteOp::Append {
            doc,
            seq,
            update,
            author: None,
        }
    }

    fn version(id: u64, seq: u64) -> VersionRecord {
        VersionRecord {
            id,
            kind: VersionKind::Named,
            name: Some(format!("v{id}")),
            author: Author {
                sub: None,
                name: "t".into(),
            },
            created_ms: 1,
            seq,
            size_bytes: 1,
            authors: Vec::new(),
        }
    }

    /// A commit that failed but reached the file is rolled back to what was reported durable:
    /// log entries, their authors and versions after it go, the doc's row agrees, and the doc
    /// takes the same seqs again afterwards.
    #[test]
    fn discard_after_removes_everything_past_the_durable_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        let author = Author {
            sub: None,
            name: "ann".into(),
        }
        .encode();
        let (v1, v2) = (version(1, 1), version(2, 3));
        store
            .commit(
                &[
                    WriteOp::Append {
                        doc: "d",
                        seq: 1,
                        update: b"one",
                        author: Some(&author),
                    },
                    WriteOp::Version {
                        doc: "d",
                        record: &v1,
                        state: b"S1",
                        max_kept: 10,
                    },
                ],
                1,
                true,
            )
            .unwrap();
        store
            .commit(
                &[
                    WriteOp::Append {
                        doc: "d",
                        seq: 2,
                        update: b"two",
                        author: Some(&author),
                    },
                    append("d", 3, b"three"),
                    WriteOp::Version {
                        doc: "d",
                        record: &v2,
                        state: b"S3",
                        max_kept: 10,
                    },
                    append("new", 1, b"n"),
                ],
                2,
                true,
            )
            .unwrap();

        assert!(store.discard_after("d", 1, 1).unwrap());
        assert!(store.discard_after("new", 0, 0).unwrap());
        assert!(
            !store.discard_after("d", 1, 1).unwrap(),
            "nothing left to remove"
        );

        let doc = store.load_doc("d").unwrap();
        assert_eq!((doc.updates, doc.last_seq), (vec![b"one".to_vec()], 1));
        let meta = store.doc_meta("d").unwrap().unwrap();
        assert_eq!((meta.size_bytes, meta.n_log_entries), (3, 1));
        let ids: Vec<u64> = store
            .list_versions("d")
            .unwrap()
            .iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, vec![1]);
        assert_eq!(store.load_doc("new").unwrap(), StoredDoc::default());
        assert_eq!(store.doc_meta("new").unwrap(), None);
        store.commit(&[append("d", 2, b"again")], 3, true).unwrap();
        assert_eq!(store.load_doc("d").unwrap().last_seq, 2);
    }

    /// A tmpfs mounted for one test (needs root, as CI has), unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mounting a tmpfs failed; this test needs root"
            );
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            for args in [&[][..], &["--lazy"][..]] {
                let status = Command::new("umount")
                    .args(args)
                    .arg(self.0.path())
                    .status();
                if matches!(status, Ok(status) if status.success()) {
                    return;
                }
            }
        }
    }

    /// The recovery at the store level: a commit that hits `ENOSPC` makes the store read-only
    /// and frees the reserve; reads and deletes still work; further commits are refused without
    /// touching the disk; once space returns the reserve is written again and commits go on,
    /// on the same `Store`, without a restart.
    #[test]
    fn a_full_disk_makes_the_store_read_only_until_space_returns() {
        const RESERVE_BYTES: u64 = 1024 * 1024;
        let tmpfs = Tmpfs::mount("8m");
        let path = tmpfs.0.path().join("t.redb");
        let store = Store::open(&path).unwrap();
        store.set_reserve(RESERVE_BYTES);
        let reserve = tmpfs.0.path().join(RESERVE_FILE_NAME);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);

        let filler = tmpfs.0.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[1u8; 64 * 1024]).is_ok() {}
        drop(file);
        // Whatever the filler left, the doc's commits use it up.
        let update = vec![7u8; 64 * 1024];
        let mut seq = 0;
        let refused = loop {
            seq += 1;
            assert!(seq < 200, "the disk never filled");
            if let Err(error) = store.commit(&[append("d", seq, &update)], 1, true) {
                break error;
            }
        };
        assert!(
            matches!(
                refused,
                StoreError::ReadOnly {
                    reason: ReadOnlyReason::DiskFull
                }
            ),
            "{refused:?}"
        );
        let health = store.health();
        assert_eq!(
            (health.writable, health.reason),
            (false, Some(ReadOnlyReason::DiskFull))
        );
        assert!(!reserve.exists(), "the reserve is released");
        // Reads work from the reopened file, with nothing of the refused commit.
        assert_eq!(store.load_doc("d").unwrap().last_seq, seq - 1);
        // Refused at once, even a small commit.
        let res = store.commit(&[append("d", seq, b"x")], 1, true);
        assert!(matches!(res, Err(StoreError::ReadOnly { .. })), "{res:?}");
        // Deletes may still commit.
        assert!(!store.remove_user("nobody").unwrap());
        assert!(!store.try_resume(), "no space returned yet");

        std::fs::remove_file(&filler).unwrap();
        // The check runs at most every `PROBE_INTERVAL`: wait for it to see the space.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.try_resume() {
            assert!(Instant::now() < deadline, "writes never resumed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(store.health().writable);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        store.commit(&[append("d", seq, b"x")], 1, true).unwrap();
        assert_eq!(store.load_doc("d").unwrap().last_seq, seq);
        drop(store);
        drop(tmpfs);
    }
}
