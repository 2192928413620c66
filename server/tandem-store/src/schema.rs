//! The on-disk layout: table definitions, key encoding and the format version.
//!
//! Described byte for byte in `protocol-spec/storage.md`. Any change here that an older build
//! could not read needs a new `FORMAT_VERSION`, a migration in `check_format_version`, and a new
//! fixture file in `tests/fixtures/`.
//!
//! Format version 2 seals every value that carries content (see `checksum.rs`): the tables
//! named in [`SEALED_BY_NAME`] and [`SEALED_BY_NAME_AND_SEQ`], and `docs`, whose fixed-width
//! tuple became a sealed byte string. A version-1 file is migrated on open, in one transaction.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::checksum::{self, Mismatch};
use crate::error::StoreError;

/// The format this build reads and writes.
pub const FORMAT_VERSION: u64 = 2;

/// Key of the format version in [`META`].
pub(crate) const FORMAT_VERSION_KEY: &str = "format_version";

/// Store-wide settings: `"format_version" -> u64`.
pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// Each doc's update log: `(doc name, seq) -> v1 update bytes`. Seqs start at 1 and grow by one.
/// Tuple keys order by name first, so one doc's entries are contiguous and in seq order.
pub(crate) const UPDATES: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("updates");

/// Each doc's snapshot: `doc name -> v1 update bytes` covering every seq up to `snapshot_seq`.
pub(crate) const SNAPSHOTS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("snapshots");

/// Each doc's metadata: `doc name -> sealed DocRow` (see [`encode_doc_row`]).
pub(crate) const DOCS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("docs");

/// The `docs` table of format version 1: the row as a redb tuple, without a checksum.
const V1_DOCS: TableDefinition<'static, &str, DocRow> = TableDefinition::new("docs");

/// Accounts for teams without an identity provider: `sub -> encoded UserRecord` (see
/// `accounts.rs` for the versioned encoding). Added after format version 1 shipped: a file
/// without this table reads as having no accounts, and the first `put_user` creates it, so the
/// format version did not change.
pub(crate) const USERS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("users");

// Files (`files.rs`). Added after format version 1 shipped, like `users`: a file without these
// tables reads as having no files and uploads, and the first write creates them.

/// Uploaded files: `path -> encoded FileEntry` (every version; see `files.rs`).
pub(crate) const FILES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("files");

/// Content-addressed blobs: `sha256 hex -> (size, refcount)`.
pub(crate) const BLOBS: TableDefinition<'static, &str, (u64, u64)> = TableDefinition::new("blobs");

/// Uploads in progress (tus): `upload id -> encoded UploadRecord`.
pub(crate) const UPLOADS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("uploads");

/// Bytes stored per workspace: `workspace -> sum of the sizes of all versions of its files`.
pub(crate) const FILE_USAGE: TableDefinition<'static, &str, u64> =
    TableDefinition::new("file_usage");

// History (`history.rs`). Added after format version 1 shipped, like `users`: a file without
// these tables reads as having no history, and the first write creates them.

/// Interned authors: encoded author (see `history::Author::encode`) -> author id.
pub(crate) const AUTHOR_IDS: TableDefinition<'static, &[u8], u32> =
    TableDefinition::new("author_ids");

/// Interned authors, reverse: author id -> encoded author.
pub(crate) const AUTHORS: TableDefinition<'static, u32, &[u8]> = TableDefinition::new("authors");

/// Who sent each stored update and when: `(doc name, first_seq) -> (at_ms, author id,
/// last_seq)`, one row per run of consecutive updates of one doc by one author in one commit.
/// Rows go with the log entries they describe at compaction, except those that reach past the
/// doc's newest version.
pub(crate) const UPDATE_AUTHORS: TableDefinition<'static, (&str, u64), (u64, u32, u64)> =
    TableDefinition::new("update_authors");

/// Each doc's versions, metadata only: `(doc name, version id) -> encoded VersionRecord`.
pub(crate) const VERSIONS: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("versions");

/// Each version's full state: `(doc name, version id) -> v1 update bytes`.
pub(crate) const VERSION_STATES: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("version_states");

// Activity feed and webhooks (`activity.rs`, `webhooks.rs`). Added after format version 1
// shipped: created for new files, and a file without them reads as empty.

/// Activity entries: `id -> encoded ActivityEntry`. Ids grow by one and are never reused.
pub(crate) const ACTIVITY: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("activity");
/// Index of [`ACTIVITY`] by path: `(path, id) -> ()`, one row for each path an entry names.
pub(crate) const ACTIVITY_BY_PATH: TableDefinition<'static, (&str, u64), ()> =
    TableDefinition::new("activity_by_path");
/// Index of [`ACTIVITY`] by actor id (`sub`, or the name without authentication):
/// `(actor, id) -> ()`.
pub(crate) const ACTIVITY_BY_ACTOR: TableDefinition<'static, (&str, u64), ()> =
    TableDefinition::new("activity_by_actor");
/// Counters of the activity and webhook tables: `name -> next value`.
pub(crate) const ACTIVITY_COUNTERS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("activity_counters");
/// Webhook registrations: `webhook id -> encoded WebhookRecord`.
pub(crate) const WEBHOOKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("webhooks");
/// Deliveries not yet acknowledged: `seq -> encoded OutboxDelivery`.
pub(crate) const WEBHOOK_OUTBOX: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("webhook_outbox");
/// The last attempts of each webhook: `(webhook id, seq) -> encoded DeliveryAttempt`.
pub(crate) const WEBHOOK_LOG: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("webhook_log");

/// `(snapshot_seq, size_bytes, updated_ms, n_log_entries, last_seq)`.
pub(crate) type DocRow = (u64, u64, u64, u64, u64);

/// Tables keyed by one string whose values are sealed (format version 2).
pub(crate) const SEALED_BY_NAME: [TableDefinition<'static, &str, &[u8]>; 4] =
    [SNAPSHOTS, USERS, FILES, UPLOADS];

/// Tables keyed by a string and a number whose values are sealed (format version 2).
pub(crate) const SEALED_BY_NAME_AND_SEQ: [TableDefinition<'static, (&str, u64), &[u8]>; 3] =
    [UPDATES, VERSIONS, VERSION_STATES];

/// Rows read and rewritten at a time by the migration, to bound its memory.
const MIGRATION_BATCH: usize = 1024;

/// The stored form of `row` under `doc`: the five fields as `u64` little-endian, sealed.
pub(crate) fn encode_doc_row(doc: &str, row: DocRow) -> Vec<u8> {
    let (a, b, c, d, e) = row;
    let mut payload = Vec::with_capacity(40);
    for field in [a, b, c, d, e] {
        payload.extend_from_slice(&field.to_le_bytes());
    }
    checksum::seal(DOCS.name(), doc, &payload)
}

/// The row stored under `doc`, if its checksum and length are right.
pub(crate) fn decode_doc_row(doc: &str, stored: &[u8]) -> Result<DocRow, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        doc: doc.into(),
        detail,
    };
    let payload = checksum::unseal(DOCS.name(), doc, stored)
        .map_err(|Mismatch| corrupt("docs row: checksum mismatch".into()))?;
    let mut fields = payload
        .chunks_exact(8)
        .map(|field| u64::from_le_bytes(field.try_into().expect("chunks_exact yields 8 bytes")));
    match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), Some(e)) if payload.len() == 40 => Ok((a, b, c, d, e)),
        _ => Err(corrupt(format!(
            "docs row is {} bytes, not 40",
            payload.len()
        ))),
    }
}

/// Creates the tables of a new file, checks the version of an existing one, and migrates a file
/// of an older version. Returns the version migrated from, if any.
pub(crate) fn check_format_version(db: &redb::Database) -> Result<Option<u64>, StoreError> {
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(table) => table.get(FORMAT_VERSION_KEY)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(error.into()),
        }
    };
    match found {
        Some(FORMAT_VERSION) => Ok(None),
        Some(1) => {
            migrate_from_v1(db)?;
            Ok(Some(1))
        }
        Some(found) => Err(StoreError::UnsupportedFormat {
            found,
            expected: FORMAT_VERSION,
        }),
        None => {
            let txn = db.begin_write()?;
            {
                txn.open_table(META)?
                    .insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
                txn.open_table(UPDATES)?;
                txn.open_table(SNAPSHOTS)?;
                txn.open_table(DOCS)?;
                txn.open_table(USERS)?;
                txn.open_table(FILES)?;
                txn.open_table(BLOBS)?;
                txn.open_table(UPLOADS)?;
                txn.open_table(FILE_USAGE)?;
                txn.open_table(AUTHOR_IDS)?;
                txn.open_table(AUTHORS)?;
                txn.open_table(UPDATE_AUTHORS)?;
                txn.open_table(VERSIONS)?;
                txn.open_table(VERSION_STATES)?;
                txn.open_table(ACTIVITY)?;
                txn.open_table(ACTIVITY_BY_PATH)?;
                txn.open_table(ACTIVITY_BY_ACTOR)?;
                txn.open_table(ACTIVITY_COUNTERS)?;
                txn.open_table(WEBHOOKS)?;
                txn.open_table(WEBHOOK_OUTBOX)?;
                txn.open_table(WEBHOOK_LOG)?;
            }
            txn.commit()?;
            Ok(None)
        }
    }
}

/// Format version 1 to 2, in one durable transaction: seals every value of the sealed tables
/// and rewrites `docs` as sealed byte strings. A crash leaves the file at version 1.
fn migrate_from_v1(db: &redb::Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let rows: Vec<(String, DocRow)> = match txn.open_table(V1_DOCS) {
        Ok(table) => table
            .iter()?
            .map(|entry| entry.map(|(name, row)| (name.value().to_owned(), row.value())))
            .collect::<Result<_, _>>()?,
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    txn.delete_table(V1_DOCS)?;
    {
        let mut docs = txn.open_table(DOCS)?;
        for (name, row) in &rows {
            docs.insert(name.as_str(), encode_doc_row(name, *row).as_slice())?;
        }
    }
    for definition in SEALED_BY_NAME {
        seal_by_name(&txn, definition)?;
    }
    for definition in SEALED_BY_NAME_AND_SEQ {
        seal_by_name_and_seq(&txn, definition)?;
    }
    txn.open_table(META)?
        .insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
    txn.commit()?;
    Ok(())
}

/// Seals every value of one table keyed by a string, a batch at a time (a table cannot be
/// written while it is being iterated).
fn seal_by_name(
    txn: &WriteTransaction,
    definition: TableDefinition<'static, &str, &[u8]>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition)?;
    let mut after: Option<String> = None;
    loop {
        let batch: Vec<(String, Vec<u8>)> = {
            let lower = match &after {
                Some(key) => Bound::Excluded(key.as_str()),
                None => Bound::Unbounded,
            };
            table
                .range::<&str>((lower, Bound::Unbounded))?
                .take(MIGRATION_BATCH)
                .map(|entry| {
                    entry.map(|(key, value)| (key.value().to_owned(), value.value().to_vec()))
                })
                .collect::<Result<_, _>>()?
        };
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        let last = last.clone();
        for (key, value) in &batch {
            let sealed = checksum::seal(definition.name(), key.as_str(), value);
            table.insert(key.as_str(), sealed.as_slice())?;
        }
        after = Some(last);
    }
}

/// Seals every value of one table keyed by a string and a number, a batch at a time.
fn seal_by_name_and_seq(
    txn: &WriteTransaction,
    definition: TableDefinition<'static, (&str, u64), &[u8]>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition)?;
    let mut after: Option<(String, u64)> = None;
    loop {
        let batch: Vec<((String, u64), Vec<u8>)> = {
            let lower = match &after {
                Some((name, seq)) => Bound::Excluded((name.as_str(), *seq)),
                None => Bound::Unbounded,
            };
            table
                .range::<(&str, u64)>((lower, Bound::Unbounded))?
                .take(MIGRATION_BATCH)
                .map(|entry| {
                    entry.map(|(key, value)| {
                        let (name, seq) = key.value();
                        ((name.to_owned(), seq), value.value().to_vec())
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        let last = last.clone();
        for ((name, seq), value) in &batch {
            let key = (name.as_str(), *seq);
            let sealed = checksum::seal(definition.name(), key, value);
            table.insert(key, sealed.as_slice())?;
        }
        after = Some(last);
    }
}
