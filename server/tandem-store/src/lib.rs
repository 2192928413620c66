//! Tandem's storage: per-document update logs, snapshots and metadata in one redb file.
//!
//! The API is synchronous and knows nothing of tokio, yrs or the wire protocol: updates are
//! opaque bytes, document names opaque keys (never filesystem paths). The hub's writer thread
//! (`tandem_hub::persist`) calls [`Store::commit`] (redb allows one writer at a time), and the
//! hub and the server call the read methods from blocking tasks; redb lets reads run beside
//! the writer.
//!
//! Invariant: when `commit(.., durable = true)` returns `Ok`, every operation in it is on disk
//! (redb `Durability::Immediate`), and a crash at any point leaves either all or none of them.
//!
//! # Layout
//!
//! - `schema`: tables, key layout, `FORMAT_VERSION`, its check and the migration from 1 to 2.
//! - `checksum`: the checksum sealing every value that carries content (format version 2).
//! - `contain`: panics inside redb (a damaged page) turned into `StoreError::Panicked`.
//! - `damaged`: a damaged row met by a list or a scan is left out and logged once.
//! - `error`: `StoreError`.
//! - `accounts`: the `users` table and its versioned `UserRecord`.
//! - [`backup`]: a consistent copy of every table into a fresh file, from one read transaction.
//! - [`check`]: the offline check of a file, opened read-only (`tandem check`).
//! - `files`: uploaded files' versions, blob refcounts, uploads in progress, workspace usage.
//! - `history`: who sent each update, and each doc's versions (`VersionRecord`).
//! - `record`: the binary encoding of versioned records (`put_str`, `Reader`).
//! - `activity`: the activity feed (`ActivityEntry`) and its indexes.
//! - `webhooks`: webhook registrations, the delivery outbox and the delivery log.
//! - [`meta`]: the storage contracts of the server's services, implemented here by [`Store`] and
//!   in cluster mode by Postgres.
//! - `space`: read-only after a failed write (a full disk), the reserve file, and resuming.

mod accounts;
mod activity;
pub mod backup;
pub mod check;
mod checksum;
mod contain;
mod damaged;
mod dav;
pub mod error;
mod files;
mod history;
mod locks;
pub mod meta;
mod record;
pub mod schema;
pub mod space;
mod wal;
mod webhooks;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

pub use accounts::{AppPasswordRecord, UserRecord};
pub use activity::{ActivityEntry, ActivityQuery, ActivityWrite};
pub use dav::DeadProp;
pub use error::{ReadOnlyReason, StoreError};
pub use files::{
    BlobRow, Deleted, FileEntry, FileError, FileVersion, UploadRecord, Uploader, workspace_of,
};
pub use history::{Author, HistoryHead, UpdateAuthor, VersionKind, VersionRecord};
pub use locks::LockRecord;
use redb::TableHandle;
pub use schema::FORMAT_VERSION;
use schema::{DOCS, DocRow, SNAPSHOTS, UPDATES, decode_doc_row, encode_doc_row};
pub use space::StoreHealth;
use space::{Space, WriteKind};
pub use webhooks::{DeliveryAttempt, FinishedAttempt, OutboxDelivery, WebhookRecord};

/// Default bound of redb's page cache. redb's own default (1 GiB) lets the cache, and so the
/// server's memory, grow with the database; documents live in the doc actors while open, so the
/// cache mostly serves loads and can stay small.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The database. `Send + Sync`; share it in an `Arc`.
pub struct Store {
    /// `None` only if reopening the file failed; the next access tries again.
    db: RwLock<Option<Database>>,
    /// The file and cache size, to reopen it (`None` for a custom backend).
    reopen: Option<(PathBuf, usize)>,
    /// Writable or read-only, and the reserve file (`space.rs`).
    space: Space,
    /// The format version the file was migrated from when it was opened, if it was.
    migrated_from: Option<u64>,
    /// Damaged rows a list or scan left out, each logged once (`damaged.rs`).
    damaged: damaged::DamagedRows,
    /// Backups copying from a read transaction right now (`backup.rs`); `release_cache` waits
    /// for every operation in flight, so it is skipped while one runs rather than stall the
    /// writer thread for the length of a copy.
    backups_running: AtomicUsize,
    /// The write-ahead log of appends (`wal.rs`); `None` for a custom backend.
    wal: Mutex<Option<wal::Wal>>,
}

impl Drop for Store {
    /// A store closed in order leaves its write-ahead log with nothing to replay, so tools that
    /// read the database file alone (`tandem check`, an older build) see every append. Best
    /// effort: whatever is not checkpointed is replayed at the next open.
    fn drop(&mut self) {
        if let Err(error) = self.checkpoint_if_due(true) {
            tracing::warn!(%error, "write-ahead log checkpoint at close failed; replayed at the next open");
        }
    }
}

/// Shared access to the open database for the length of one operation. [`Store::release_cache`]
/// waits for every guard, so no transaction outlives the `Database` it came from.
pub(crate) struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was made")
    }
}

/// Everything needed to rebuild one doc, in the order it must be applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    /// The snapshot covering seqs up to the snapshot point, if the doc was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Log entries after the snapshot, in seq order.
    pub updates: Vec<Vec<u8>>,
    /// The highest seq stored (0 for a doc never written).
    pub last_seq: u64,
}

impl StoredDoc {
    /// The snapshot (if any) followed by the log entries.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.snapshot
            .iter()
            .map(Vec::as_slice)
            .chain(self.updates.iter().map(Vec::as_slice))
    }
}

/// One write, applied with others in a single transaction by [`Store::commit`].
#[derive(Debug, Clone, Copy)]
pub enum WriteOp<'a> {
    /// Append one update to a doc's log. Seqs start at 1 and strictly increase per doc.
    Append {
        /// The doc.
        doc: &'a str,
        /// Its position in the doc's log.
        seq: u64,
        /// The v1 update bytes.
        update: &'a [u8],
        /// Who sent it: an encoded [`Author`] (`Author::encode`), recorded with the commit's time.
        author: Option<&'a [u8]>,
    },
    /// Replace the log up to and including `upto_seq` by `snapshot`.
    Compact {
        /// The doc.
        doc: &'a str,
        /// The last seq the snapshot covers.
        upto_seq: u64,
        /// The whole doc state as of `upto_seq`.
        snapshot: &'a [u8],
    },
    /// Store a version of a doc (its metadata and full state); an automatic one prunes the
    /// doc's oldest automatic versions beyond `max_kept`. Ids must grow per doc.
    Version {
        /// The doc.
        doc: &'a str,
        /// The metadata.
        record: &'a VersionRecord,
        /// The whole doc state as one v1 update.
        state: &'a [u8],
        /// Most automatic versions kept for the doc.
        max_kept: u64,
    },
}

/// What `list_docs` and `doc_meta` report about one doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The doc name.
    pub name: String,
    /// Bytes stored: snapshot plus remaining log entries.
    pub size_bytes: u64,
    /// Wall-clock time of the last write, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Log entries after the snapshot.
    pub n_log_entries: u64,
    /// The highest seq stored.
    pub last_seq: u64,
}

impl Store {
    /// Opens or creates the database file (and its parent directory) with the default cache.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens or creates the database file with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(redb::StorageError::from)?;
        }
        // A log beside a database that is not there (deleted to start over, or never made) is
        // not this database's: replaying it would bring back another store's documents.
        let wal_path = wal::path_of(path);
        let fresh = std::fs::metadata(path).map_or(true, |meta| meta.len() == 0);
        if fresh && wal_path.exists() {
            tracing::warn!(path = %wal_path.display(), "removing a write-ahead log left without its database");
            std::fs::remove_file(&wal_path).map_err(redb::StorageError::from)?;
        }
        contain::contain("open", || {
            let db = open_file(path, cache_bytes)?;
            let migrated_from = schema::check_format_version(&db)?;
            let (epoch, offset) = wal_checkpoint(&db)?;
            let mut wal = wal::Wal::open(&wal_path, epoch, offset).map_err(io_error)?;
            replay_wal(&db, &mut wal)?;
            Ok(Store {
                db: RwLock::new(Some(db)),
                reopen: Some((path.to_owned(), cache_bytes)),
                space: Space::new(Some(path)),
                migrated_from,
                damaged: damaged::DamagedRows::default(),
                backups_running: AtomicUsize::new(0),
                wal: Mutex::new(Some(wal)),
            })
        })
    }

    /// The database file, or `None` for a custom backend.
    pub fn path(&self) -> Option<&Path> {
        self.reopen.as_ref().map(|(path, _)| path.as_path())
    }

    /// The format version the file was migrated from when it was opened (in one transaction,
    /// before `open` returned), or `None` if it was already at [`FORMAT_VERSION`] or new.
    pub fn migrated_from(&self) -> Option<u64> {
        self.migrated_from
    }

    /// Drops redb's page cache by closing and reopening the file (redb has no call to shrink
    /// it, and it keeps what it cached up to its bound). The server calls this when no doc is
    /// open any more, so an idle server gives that memory back. Skipped, never waited for, while
    /// any operation holds the file (a backup's copy holds it for minutes, and waiting for it
    /// would hold up every operation behind the wait); a no-op for a custom backend.
    pub fn release_cache(&self) -> Result<(), StoreError> {
        if self.backups_running.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        self.contain("release_cache", || self.reopen_if_idle())
    }

    /// [`Store::reopen`] if no operation holds the file now; otherwise nothing.
    fn reopen_if_idle(&self) -> Result<(), StoreError> {
        let Some((path, cache_bytes)) = &self.reopen else {
            return Ok(());
        };
        let mut db = match self.db.try_write() {
            Ok(db) => db,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        drop(db.take());
        *db = Some(self.open_db(path, *cache_bytes)?);
        Ok(())
    }

    /// Closes and reopens the file: drops the page cache, and clears redb's "previous I/O
    /// error" state after a failed write. Waits for operations in flight; a no-op for a custom
    /// backend. Contained: the writer thread and the read-only transition call it, and a panic
    /// while closing or opening a damaged file must fail only this call.
    fn reopen(&self) -> Result<(), StoreError> {
        let Some((path, cache_bytes)) = &self.reopen else {
            return Ok(());
        };
        self.contain("reopen", || {
            let mut db = self
                .db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // The old handle must be closed before the file can be opened again.
            drop(db.take());
            *db = Some(self.open_db(path, *cache_bytes)?);
            Ok(())
        })
    }

    /// Drops the database handle after a panic inside redb, whose in-memory state is then not
    /// trusted; the next operation reopens the file ([`Store::db`]). A no-op for a custom
    /// backend, which cannot be reopened.
    fn drop_handle_after_panic(&self) {
        if self.reopen.is_none() {
            return;
        }
        let mut db = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Dropping the handle may itself panic on the damaged state; it must not escape.
        let _ = contain::contain("close after a panic", || {
            drop(db.take());
            Ok::<(), StoreError>(())
        });
    }

    /// The open database, reopening it first if an earlier reopen failed.
    pub(crate) fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        loop {
            let guard = self
                .db
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if guard.is_some() {
                return Ok(DbGuard(guard));
            }
            drop(guard);
            let Some((path, cache_bytes)) = &self.reopen else {
                return Err(StoreError::Closed);
            };
            let mut db = self
                .db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if db.is_none() {
                *db = Some(self.open_db(path, *cache_bytes)?);
            }
        }
    }

    /// Opens or creates a database on a custom redb backend (tests simulate crashes with one).
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<Store, StoreError> {
        contain::contain("open", || {
            let db = Database::builder().create_with_backend(backend)?;
            let migrated_from = schema::check_format_version(&db)?;
            Ok(Store {
                db: RwLock::new(Some(db)),
                reopen: None,
                space: Space::new(None),
                migrated_from,
                damaged: damaged::DamagedRows::default(),
                backups_running: AtomicUsize::new(0),
                wal: Mutex::new(None),
            })
        })
    }

    /// The stored state of `doc`: snapshot, then log entries after it.
    pub fn load_doc(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        self.contain("load_doc", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            load_doc_in(&txn, doc)
        })
    }

    /// Applies `ops` in one write transaction. When `durable`, it is on disk when this returns:
    /// a batch of appends that fits goes to redb without fsync and to the write-ahead log with
    /// one (`wal.rs`); anything else commits to redb with fsync (`Durability::Immediate`), which
    /// also moves the log's checkpoint. While the store is read-only this fails with
    /// [`StoreError::ReadOnly`] without writing.
    pub fn commit(
        &self,
        ops: &[WriteOp<'_>],
        now_ms: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        self.contain("commit", || {
            self.write(WriteKind::Grow, |db| {
                let mut wal = self.wal_guard();
                let logged = durable && wal.is_some() && wal::Wal::fits(ops);
                let mut txn = db.begin_write()?;
                txn.set_durability(if durable && !logged {
                    Durability::Immediate
                } else {
                    Durability::None
                })?;
                apply_ops(&txn, ops, now_ms, false)?;
                match wal.as_mut() {
                    Some(log) if logged => {
                        let at = log.append(now_ms, ops).map_err(io_error)?;
                        if let Err(error) = txn.commit() {
                            // Never acknowledged: it must not be replayed either.
                            if let Err(undo) = log.undo(at) {
                                tracing::error!(%undo, "taking back a write-ahead log record failed");
                            }
                            return Err(error.into());
                        }
                    }
                    Some(log) if durable => {
                        let epoch = log.epoch + 1;
                        set_wal_checkpoint(&txn, epoch)?;
                        txn.commit()?;
                        log.start_epoch(epoch);
                    }
                    _ => txn.commit()?,
                }
                Ok(())
            })
        })
    }

    /// Makes every append in the write-ahead log durable in the database (one redb commit with
    /// fsync) when the log holds more than `wal::CHECKPOINT_BYTES` or its oldest record is older
    /// than `wal::CHECKPOINT_AGE`, or whenever it holds anything if `force`. The writer thread
    /// calls it after each group (and with `force` before it releases the cache or stops).
    pub fn checkpoint_if_due(&self, force: bool) -> Result<(), StoreError> {
        {
            let wal = self.wal_guard();
            let Some(log) = wal.as_ref() else {
                return Ok(());
            };
            let due = log.pending_bytes() > 0
                && (force
                    || log.pending_bytes() > wal::CHECKPOINT_BYTES
                    || log
                        .oldest
                        .is_some_and(|t| t.elapsed() >= wal::CHECKPOINT_AGE));
            if !due {
                return Ok(());
            }
        }
        self.contain("checkpoint", || {
            self.write(WriteKind::Grow, |db| {
                let mut wal = self.wal_guard();
                let Some(log) = wal.as_mut() else {
                    return Ok(());
                };
                let txn = db.begin_write()?;
                let epoch = log.epoch + 1;
                set_wal_checkpoint(&txn, epoch)?;
                txn.commit()?;
                log.start_epoch(epoch);
                Ok(())
            })
        })
    }

    /// The write-ahead log, locked (always after the database guard, never before).
    pub(crate) fn wal_guard(&self) -> MutexGuard<'_, Option<wal::Wal>> {
        self.wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the file again and replays the write-ahead log into it: appends acknowledged from
    /// the log whose non-durable redb commits the closed handle dropped (after an I/O error,
    /// redb does not write them on close) are back before anyone reads.
    fn open_db(&self, path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
        let db = open_file(path, cache_bytes)?;
        let mut wal = self.wal_guard();
        if let Some(log) = wal.as_mut() {
            let (epoch, offset) = wal_checkpoint(&db)?;
            log.reposition(epoch, offset);
            replay_wal(&db, log)?;
        }
        Ok(db)
    }

    /// Metadata of every stored doc, sorted by name.
    pub fn list_docs(&self) -> Result<Vec<DocMeta>, StoreError> {
        self.contain("list_docs", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let docs = txn.open_table(DOCS)?;
            let mut out = Vec::new();
            for entry in docs.iter()? {
                let (name, row) = entry?;
                let name = name.value();
                match decode_doc_row(name, row.value()) {
                    Ok(row) => out.push(doc_meta(name, row)),
                    // The doc stays refused when opened; the others are listed.
                    Err(error) => self.skip_damaged(DOCS.name(), name, &error),
                }
            }
            Ok(out)
        })
    }

    /// Metadata of one doc; `None` if it was never written.
    pub fn doc_meta(&self, doc: &str) -> Result<Option<DocMeta>, StoreError> {
        self.contain("doc_meta", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            match txn.open_table(DOCS)?.get(doc)? {
                Some(row) => Ok(Some(doc_meta(doc, decode_doc_row(doc, row.value())?))),
                None => Ok(None),
            }
        })
    }
}

/// The stored state of `doc` as `txn` sees it, every record checked (see [`Store::load_doc`]).
pub(crate) fn load_doc_in(txn: &redb::ReadTransaction, doc: &str) -> Result<StoredDoc, StoreError> {
    let Some(row) = txn.open_table(DOCS)?.get(doc)? else {
        return Ok(StoredDoc::default());
    };
    let (snapshot_seq, _, _, _, last_seq) = decode_doc_row(doc, row.value())?;
    let snapshot = match txn.open_table(SNAPSHOTS)?.get(doc)? {
        Some(stored) => Some(
            checksum::unseal(SNAPSHOTS.name(), doc, stored.value())
                .map_err(|_| StoreError::Corrupt {
                    doc: doc.into(),
                    detail: "snapshot: checksum mismatch".into(),
                })?
                .to_vec(),
        ),
        None => None,
    };
    if snapshot.is_none() && snapshot_seq > 0 {
        return Err(StoreError::Corrupt {
            doc: doc.into(),
            detail: format!("snapshot up to seq {snapshot_seq} is missing"),
        });
    }
    let mut updates = Vec::new();
    let log = txn.open_table(UPDATES)?;
    let entries = log.range((doc, snapshot_seq + 1)..=(doc, u64::MAX))?;
    for (expected_seq, entry) in (snapshot_seq + 1..).zip(entries) {
        let (key, value) = entry?;
        let (_, seq) = key.value();
        if seq != expected_seq {
            return Err(StoreError::Corrupt {
                doc: doc.into(),
                detail: format!("log jumps from seq {} to {seq}", expected_seq - 1),
            });
        }
        let update = checksum::unseal(UPDATES.name(), (doc, seq), value.value()).map_err(|_| {
            StoreError::Corrupt {
                doc: doc.into(),
                detail: format!("log entry {seq}: checksum mismatch"),
            }
        })?;
        updates.push(update.to_vec());
    }
    if updates.len() as u64 != last_seq.saturating_sub(snapshot_seq) {
        return Err(StoreError::Corrupt {
            doc: doc.into(),
            detail: format!(
                "log holds {} entries after seq {snapshot_seq}, the docs row says it ends at seq {last_seq}",
                updates.len()
            ),
        });
    }
    Ok(StoredDoc {
        snapshot,
        updates,
        last_seq,
    })
}

/// The length of the payload of a sealed value (without its checksum).
pub(crate) fn payload_len(stored: &[u8]) -> u64 {
    stored.len().saturating_sub(checksum::CHECKSUM_BYTES) as u64
}

fn doc_meta(name: &str, row: DocRow) -> DocMeta {
    let (_, size_bytes, updated_ms, n_log_entries, last_seq) = row;
    DocMeta {
        name: name.to_owned(),
        size_bytes,
        updated_ms,
        n_log_entries,
        last_seq,
    }
}

/// Applies `ops` in `txn`, in order. When `replaying` (the write-ahead log after a crash), an
/// append whose seq the doc already has is skipped; otherwise it is `Corrupt`.
fn apply_ops(
    txn: &redb::WriteTransaction,
    ops: &[WriteOp<'_>],
    now_ms: u64,
    replaying: bool,
) -> Result<(), StoreError> {
    {
        let mut updates = txn.open_table(UPDATES)?;
        let mut snapshots = txn.open_table(SNAPSHOTS)?;
        let mut docs = txn.open_table(DOCS)?;
        // Opened on first use: a batch without authors or versions pays nothing for them.
        let mut history: Option<history::HistoryTables<'_>> = None;
        for op in ops {
            match *op {
                WriteOp::Append {
                    doc,
                    seq,
                    update,
                    author,
                } => {
                    let row = match docs.get(doc)? {
                        Some(row) => decode_doc_row(doc, row.value()),
                        None => Ok(DocRow::default()),
                    };
                    let (snapshot_seq, size, _, n_log, last_seq) = match row {
                        Ok(row) => row,
                        // A damaged doc stays refused when opened; the log's other docs replay.
                        Err(error) if replaying => {
                            tracing::warn!(doc, %error, "not replaying an update of a damaged doc");
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                    if seq <= last_seq && replaying {
                        continue;
                    }
                    if seq <= last_seq {
                        return Err(StoreError::Corrupt {
                            doc: doc.into(),
                            detail: format!("append of seq {seq} after seq {last_seq}"),
                        });
                    }
                    let sealed = checksum::seal(UPDATES.name(), (doc, seq), update);
                    updates.insert((doc, seq), sealed.as_slice())?;
                    if let Some(author) = author {
                        history::tables(&mut history, txn, now_ms)?
                            .record_author(doc, seq, author)?;
                    }
                    let row: DocRow = (
                        snapshot_seq,
                        size + update.len() as u64,
                        now_ms,
                        n_log + 1,
                        seq,
                    );
                    docs.insert(doc, encode_doc_row(doc, row).as_slice())?;
                }
                WriteOp::Compact {
                    doc,
                    upto_seq,
                    snapshot,
                } => {
                    let (_, _, updated_ms, _, last_seq) = match docs.get(doc)? {
                        Some(row) => decode_doc_row(doc, row.value())?,
                        None => DocRow::default(),
                    };
                    updates.retain_in((doc, 0)..=(doc, upto_seq), |_, _| false)?;
                    history::tables(&mut history, txn, now_ms)?.compact(doc, upto_seq)?;
                    let sealed = checksum::seal(SNAPSHOTS.name(), doc, snapshot);
                    snapshots.insert(doc, sealed.as_slice())?;
                    let mut n_log = 0u64;
                    let mut log_bytes = 0u64;
                    for entry in updates.range((doc, upto_seq + 1)..=(doc, u64::MAX))? {
                        let (_, value) = entry?;
                        n_log += 1;
                        log_bytes += payload_len(value.value());
                    }
                    let row: DocRow = (
                        upto_seq,
                        snapshot.len() as u64 + log_bytes,
                        updated_ms.max(now_ms),
                        n_log,
                        last_seq.max(upto_seq),
                    );
                    docs.insert(doc, encode_doc_row(doc, row).as_slice())?;
                }
                WriteOp::Version {
                    doc,
                    record,
                    state,
                    max_kept,
                } => history::tables(&mut history, txn, now_ms)?
                    .put_version(doc, record, state, max_kept)?,
            }
        }
        if let Some(history) = history {
            history.finish()?;
        }
    }
    Ok(())
}

/// Keys of the write-ahead log's checkpoint in `meta` (see `wal.rs`).
const WAL_EPOCH_KEY: &str = "wal_epoch";
const WAL_OFFSET_KEY: &str = "wal_offset";

/// The write-ahead log's checkpoint: `(1, 0)` in a file that never had one.
fn wal_checkpoint(db: &Database) -> Result<(u64, u64), StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(schema::META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((1, 0)),
        Err(error) => return Err(error.into()),
    };
    let epoch = meta.get(WAL_EPOCH_KEY)?.map_or(1, |v| v.value());
    let offset = meta.get(WAL_OFFSET_KEY)?.map_or(0, |v| v.value());
    Ok((epoch, offset))
}

/// Records in `txn` that every record of the log before `epoch` is in the database.
pub(crate) fn set_wal_checkpoint(
    txn: &redb::WriteTransaction,
    epoch: u64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(schema::META)?;
    meta.insert(WAL_EPOCH_KEY, epoch)?;
    meta.insert(WAL_OFFSET_KEY, 0)?;
    Ok(())
}

/// Applies the log's records after its checkpoint that the database lacks, in one durable
/// commit that also moves the checkpoint to the next epoch.
fn replay_wal(db: &Database, log: &mut wal::Wal) -> Result<(), StoreError> {
    let records = log.replay().map_err(io_error)?;
    if records.is_empty() && log.pending_bytes() == 0 {
        return Ok(());
    }
    let n_records = records.len();
    let txn = db.begin_write()?;
    for record in &records {
        let ops: Vec<WriteOp<'_>> = record
            .appends
            .iter()
            .map(|a| WriteOp::Append {
                doc: &a.doc,
                seq: a.seq,
                update: &a.update,
                author: a.author.as_deref(),
            })
            .collect();
        apply_ops(&txn, &ops, record.now_ms, true)?;
    }
    let epoch = log.epoch + 1;
    set_wal_checkpoint(&txn, epoch)?;
    txn.commit()?;
    log.start_epoch(epoch);
    if n_records > 0 {
        tracing::info!(n_records, path = %log.path().display(), "replayed the write-ahead log");
    }
    Ok(())
}

/// An I/O error of the write-ahead log, as redb's (so a full disk makes the store read-only).
fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Database(Box::new(redb::Error::Io(error)))
}

fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    #[cfg(test)]
    tests::panic_if_asked();
    match Database::builder().set_cache_size(cache_bytes).create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::AlreadyOpen),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Makes `open_file` panic on this thread, as redb may on a damaged file.
        static PANIC_ON_OPEN: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn panic_if_asked() {
        if PANIC_ON_OPEN.with(Cell::get) {
            panic!("damaged page while opening");
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("t.redb")).expect("open");
        (dir, store)
    }

    /// Releasing the cache while an operation holds the file (a backup's copy) is skipped,
    /// not waited for: a wait would hold up every operation queued behind it.
    #[test]
    fn release_cache_skips_while_the_file_is_in_use() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let in_use = store.db().expect("db");
        let (done, finished) = std::sync::mpsc::channel();
        let releaser = std::thread::spawn({
            let store = store.clone();
            move || {
                let res = store.release_cache();
                let _ = done.send(res.is_ok());
            }
        });
        let finished = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(in_use);
        releaser.join().expect("join");
        assert_eq!(finished, Ok(true), "release_cache waited for the operation");
    }

    fn append<'a>(doc: &'a str, seq: u64, update: &'a [u8]) -> WriteOp<'a> {
        WriteOp::Append {
            doc,
            seq,
            update,
            author: None,
        }
    }

    #[test]
    fn appended_updates_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/t.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(&[append("d", 1, b"one"), append("d", 2, b"two")], 5, true)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let doc = store.load_doc("d").unwrap();
        assert_eq!(
            doc.iter().collect::<Vec<_>>(),
            vec![&b"one"[..], &b"two"[..]]
        );
        assert_eq!(doc.last_seq, 2);
    }

    #[test]
    fn releasing_the_cache_keeps_every_doc_and_later_commits() {
        let (_dir, store) = open();
        let update = vec![7u8; 4096];
        for i in 0..200 {
            let doc = format!("doc-{i}");
            store.commit(&[append(&doc, 1, &update)], 5, true).unwrap();
        }
        for i in 0..200 {
            store.load_doc(&format!("doc-{i}")).unwrap();
        }
        store.release_cache().unwrap();
        for i in 0..200 {
            let doc = store.load_doc(&format!("doc-{i}")).unwrap();
            assert_eq!(doc.updates, vec![update.clone()]);
        }
        store
            .commit(&[append("doc-0", 2, b"more")], 6, true)
            .unwrap();
        assert_eq!(store.load_doc("doc-0").unwrap().last_seq, 2);
        assert_eq!(store.list_docs().unwrap().len(), 200);
    }

    #[test]
    fn docs_whose_names_share_a_prefix_are_isolated() {
        let (_dir, store) = open();
        store
            .commit(
                &[
                    append("a", 1, b"A"),
                    append("a/b", 1, b"AB"),
                    append("ab", 1, b"ab"),
                ],
                1,
                true,
            )
            .unwrap();
        assert_eq!(store.load_doc("a").unwrap().updates, vec![b"A".to_vec()]);
        assert_eq!(store.load_doc("a/b").unwrap().updates, vec![b"AB".to_vec()]);
        assert_eq!(store.load_doc("ab").unwrap().updates, vec![b"ab".to_vec()]);
        assert_eq!(store.load_doc("missing").unwrap(), StoredDoc::default());
    }

    #[test]
    fn compaction_keeps_later_entries_and_fixes_metadata() {
        let (_dir, store) = open();
        store
            .commit(
                &[
                    append("d", 1, b"1"),
                    append("d", 2, b"22"),
                    append("d", 3, b"333"),
                ],
                1,
                true,
            )
            .unwrap();
        store
            .commit(
                &[WriteOp::Compact {
                    doc: "d",
                    upto_seq: 2,
                    snapshot: b"S12",
                }],
                2,
                true,
            )
            .unwrap();
        let doc = store.load_doc("d").unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(&b"S12"[..]));
        assert_eq!(doc.updates, vec![b"333".to_vec()]);
        assert_eq!(doc.last_seq, 3);
        let meta = store.doc_meta("d").unwrap().unwrap();
        assert_eq!(
            (
                meta.size_bytes,
                meta.n_log_entries,
                meta.last_seq,
                meta.updated_ms
            ),
            (6, 1, 3, 2)
        );
        store.commit(&[append("d", 4, b"4")], 3, true).unwrap();
        let doc = store.load_doc("d").unwrap();
        assert_eq!(
            doc.iter().collect::<Vec<_>>(),
            vec![&b"S12"[..], &b"333"[..], &b"4"[..]]
        );
    }

    #[test]
    fn appends_and_compaction_in_one_batch_apply_in_order() {
        let (_dir, store) = open();
        store
            .commit(
                &[
                    append("d", 1, b"1"),
                    append("d", 2, b"2"),
                    WriteOp::Compact {
                        doc: "d",
                        upto_seq: 2,
                        snapshot: b"S",
                    },
                ],
                1,
                true,
            )
            .unwrap();
        let doc = store.load_doc("d").unwrap();
        assert_eq!(
            (doc.snapshot.as_deref(), doc.updates.len(), doc.last_seq),
            (Some(&b"S"[..]), 0, 2)
        );
    }

    #[test]
    fn a_stale_seq_is_refused_and_nothing_of_the_batch_is_written() {
        let (_dir, store) = open();
        store.commit(&[append("d", 1, b"1")], 1, true).unwrap();
        let res = store.commit(&[append("e", 1, b"e"), append("d", 1, b"again")], 2, true);
        assert!(
            matches!(res, Err(StoreError::Corrupt { ref doc, .. }) if doc == "d"),
            "{res:?}"
        );
        assert_eq!(store.load_doc("e").unwrap(), StoredDoc::default());
    }

    #[test]
    fn list_docs_reports_every_doc_sorted() {
        let (_dir, store) = open();
        store
            .commit(&[append("b", 1, b"xx"), append("a", 1, b"y")], 42, false)
            .unwrap();
        let names: Vec<(String, u64, u64)> = store
            .list_docs()
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.size_bytes, m.updated_ms))
            .collect();
        assert_eq!(names, vec![("a".into(), 1, 42), ("b".into(), 2, 42)]);
    }

    /// Rewrites the stored value of `key` in `table` with one bit flipped at `at` bytes from the
    /// end, as a damaged disk would.
    fn flip<K: redb::Key + 'static>(
        store: &Store,
        table: redb::TableDefinition<'static, K, &'static [u8]>,
        key: K::SelfType<'_>,
        from_end: usize,
    ) where
        for<'a> K::SelfType<'a>: Clone,
    {
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(table).unwrap();
            let mut stored = table.get(key.clone()).unwrap().unwrap().value().to_vec();
            let at = stored.len() - 1 - from_end;
            stored[at] ^= 0x04;
            table.insert(key, stored.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    fn two_docs_with_snapshots() -> (tempfile::TempDir, Store) {
        let (dir, store) = open();
        for doc in ["d", "e"] {
            store
                .commit(
                    &[
                        append(doc, 1, b"one"),
                        append(doc, 2, b"two"),
                        WriteOp::Compact {
                            doc,
                            upto_seq: 1,
                            snapshot: b"snap",
                        },
                    ],
                    1,
                    true,
                )
                .unwrap();
        }
        (dir, store)
    }

    fn assert_corrupt(store: &Store, doc: &str) {
        let res = store.load_doc(doc);
        assert!(
            matches!(&res, Err(StoreError::Corrupt { doc: found, .. }) if found == doc),
            "{res:?}"
        );
        assert!(res.is_err_and(|error| error.is_damage()));
    }

    /// Format version 1 served a flipped byte in a log entry as wrong content; version 2's
    /// checksum makes that doc's load fail with `Corrupt`, and the other doc still loads.
    #[test]
    fn a_flipped_byte_in_a_log_entry_fails_only_that_doc() {
        let (_dir, store) = two_docs_with_snapshots();
        flip(&store, UPDATES, ("d", 2), 1);
        assert_corrupt(&store, "d");
        let other = store.load_doc("e").unwrap();
        assert_eq!(
            other.iter().collect::<Vec<_>>(),
            vec![&b"snap"[..], &b"two"[..]]
        );
    }

    /// The same for the snapshot.
    #[test]
    fn a_flipped_byte_in_a_snapshot_fails_only_that_doc() {
        let (_dir, store) = two_docs_with_snapshots();
        flip(&store, SNAPSHOTS, "d", 0);
        assert_corrupt(&store, "d");
        assert_eq!(
            store.load_doc("e").unwrap().snapshot.as_deref(),
            Some(&b"snap"[..])
        );
    }

    /// The same for the docs row, which says where the log starts: a flipped `snapshot_seq`
    /// would replay the wrong entries.
    #[test]
    fn a_flipped_byte_in_the_docs_row_fails_only_that_doc() {
        let (_dir, store) = two_docs_with_snapshots();
        flip(&store, DOCS, "d", 39);
        assert_corrupt(&store, "d");
        assert!(matches!(
            store.doc_meta("d"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.commit(&[append("d", 3, b"3")], 2, true),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(store.load_doc("e").unwrap().last_seq, 2);
        assert_eq!(store.doc_meta("e").unwrap().map(|m| m.last_seq), Some(2));
    }

    /// A value copied under another key (a misdirected write) fails its checksum, because the
    /// checksum covers the key.
    #[test]
    fn a_value_found_under_the_wrong_key_is_refused() {
        let (_dir, store) = two_docs_with_snapshots();
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOTS).unwrap();
                let other = table.get("e").unwrap().unwrap().value().to_vec();
                table.insert("d", other.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_corrupt(&store, "d");
    }

    /// A log that ends before the seq the docs row names (lost tail entries) is corrupt, not a
    /// shorter doc.
    #[test]
    fn a_log_missing_its_tail_is_corrupt() {
        let (_dir, store) = two_docs_with_snapshots();
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(UPDATES).unwrap().remove(("d", 2)).unwrap();
            txn.commit().unwrap();
        }
        assert_corrupt(&store, "d");
    }

    /// A panic inside an operation (as redb raises on a damaged page) fails that operation with
    /// `Panicked`; the handle is reopened and the next operation works.
    #[test]
    fn a_panic_inside_an_operation_fails_only_that_operation() {
        let (_dir, store) = two_docs_with_snapshots();
        let res: Result<(), StoreError> = store.contain("test", || panic!("damaged page"));
        assert!(
            matches!(&res, Err(StoreError::Panicked { operation: "test", detail }) if detail == "damaged page"),
            "{res:?}"
        );
        assert!(res.is_err_and(|error| error.is_damage()));
        assert_eq!(store.load_doc("e").unwrap().last_seq, 2);
        store.commit(&[append("e", 3, b"3")], 2, true).unwrap();
        assert_eq!(store.load_doc("e").unwrap().last_seq, 3);
    }

    /// Regression: reopening the file (`release_cache` on the writer thread, the read-only
    /// transition of `report_io_error` and `set_reserve`) ran outside `catch_unwind`, so a panic
    /// while opening a damaged file unwound out of the store and killed the writer thread. Now
    /// each fails with `Panicked` (or logs it), the handle is dropped, and the next operation
    /// opens the file again.
    #[test]
    fn a_panic_while_reopening_fails_only_that_call() {
        let (dir, store) = two_docs_with_snapshots();
        PANIC_ON_OPEN.with(|panic| panic.set(true));
        let released = store.release_cache();
        store.report_io_error(&std::io::Error::other("write failed"));
        store.set_reserve(1024);
        PANIC_ON_OPEN.with(|panic| panic.set(false));
        assert!(
            matches!(&released, Err(StoreError::Panicked { detail, .. }) if detail == "damaged page while opening"),
            "{released:?}"
        );
        assert!(!store.health().writable, "the I/O error made it read-only");
        assert_eq!(store.load_doc("e").unwrap().last_seq, 2);
        assert!(store.release_cache().is_ok());
        assert_eq!(store.load_doc("d").unwrap().last_seq, 2);
        drop(dir);
    }

    #[test]
    fn a_file_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(schema::META)
                .unwrap()
                .insert(schema::FORMAT_VERSION_KEY, 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let res = Store::open(&path);
        assert!(matches!(
            res,
            Err(StoreError::UnsupportedFormat {
                found: 99,
                expected: FORMAT_VERSION
            })
        ));
    }
}
