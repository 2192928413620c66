//! The on-disk layout: table definitions, key encoding and the format version.
//!
//! Described byte for byte in `protocol-spec/storage.md`. Any change here that an older build
//! could not read needs a new `FORMAT_VERSION`, a migration in `check_format_version`, and a new
//! fixture file in `tests/fixtures/`.
//!
//! Format version 2 seals every value that carries content (see `checksum.rs`): the tables
//! named in `SEALED_BY_NAME`, `SEALED_BY_NAME_AND_SEQ` and `SEALED_BY_SEQ`, and `docs`, whose
//! fixed-width tuple became a sealed byte string. A version-1 file is migrated on open, in one
//! transaction.

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
/// `ACTIVITY_COUNTERS` key: the seq the next outbox delivery gets. Here, not in `activity.rs`
/// or `webhooks.rs`, because both write it.
pub(crate) const NEXT_OUTBOX_SEQ: &str = "webhook_outbox_next_seq";
/// `ACTIVITY_COUNTERS` key: the seq the next delivery-log row gets (both modules write it).
pub(crate) const NEXT_LOG_SEQ: &str = "webhook_log_next_seq";
/// Webhook registrations: `webhook id -> encoded WebhookRecord`.
pub(crate) const WEBHOOKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("webhooks");
/// Deliveries not yet acknowledged: `seq -> encoded OutboxDelivery`.
pub(crate) const WEBHOOK_OUTBOX: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("webhook_outbox");
/// The last attempts of each webhook: `(webhook id, seq) -> encoded DeliveryAttempt`.
pub(crate) const WEBHOOK_LOG: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("webhook_log");

// WebDAV (`dav.rs`). Added after format version 2 shipped, like `users` after version 1: a
// file without these tables reads as having no folders and no properties, the first write
// creates them, and an older build ignores them.

/// Folders made with `MKCOL`: `path -> made at (ms since the Unix epoch)`.
pub(crate) const DAV_FOLDERS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("dav_folders");
/// Dead properties: `(path, "{namespace}name") -> sealed property` (the server's encoding).
pub(crate) const DAV_PROPS: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new("dav_props");

// WebDAV locks (`locks.rs`). Added after format version 2 shipped, like `users` after version 1:
// a file without the table reads as having no locks, the first lock creates it, and an older
// build ignores it, so the format version did not change.

/// Write locks: `token -> sealed LockRecord`.
pub(crate) const LOCKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("locks");

/// `(snapshot_seq, size_bytes, updated_ms, n_log_entries, last_seq)`.
pub(crate) type DocRow = (u64, u64, u64, u64, u64);

/// Tables keyed by one string whose values are sealed (format version 2).
pub(crate) const SEALED_BY_NAME: [TableDefinition<'static, &str, &[u8]>; 5] =
    [SNAPSHOTS, USERS, FILES, UPLOADS, WEBHOOKS];

/// Tables keyed by a number whose values are sealed (format version 2).
pub(crate) const SEALED_BY_SEQ: [TableDefinition<'static, u64, &[u8]>; 2] =
    [ACTIVITY, WEBHOOK_OUTBOX];

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
                txn.open_table(DAV_FOLDERS)?;
                txn.open_table(DAV_PROPS)?;
                txn.open_table(LOCKS)?;
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
    for definition in SEALED_BY_SEQ {
        seal_by_seq(&txn, definition)?;
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

/// Seals every value of one table keyed by a number, a batch at a time.
fn seal_by_seq(
    txn: &WriteTransaction,
    definition: TableDefinition<'static, u64, &[u8]>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(definition)?;
    let mut after: Option<u64> = None;
    loop {
        let batch: Vec<(u64, Vec<u8>)> = {
            let lower = match after {
                Some(key) => Bound::Excluded(key),
                None => Bound::Unbounded,
            };
            table
                .range::<u64>((lower, Bound::Unbounded))?
                .take(MIGRATION_BATCH)
                .map(|entry| entry.map(|(key, value)| (key.value(), value.value().to_vec())))
                .collect::<Result<_, _>>()?
        };
        let Some(&(last, _)) = batch.last() else {
            return Ok(());
        };
        for (key, value) in &batch {
            let sealed = checksum::seal(definition.name(), *key, value);
            table.insert(*key, sealed.as_slice())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ActivityEntry, ActivityQuery, ActivityWrite, Author, FileVersion, OutboxDelivery, Store,
        UploadRecord, Uploader, UserRecord, VersionKind, VersionRecord, WebhookRecord, WriteOp,
    };

    /// Rewrites a version-2 file as version 1 wrote it: every sealed value unsealed, `docs` as
    /// redb tuples, `format_version` 1.
    fn downgrade_to_v1(path: &std::path::Path) {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        for definition in SEALED_BY_NAME {
            let mut table = txn.open_table(definition).unwrap();
            let rows: Vec<(String, Vec<u8>)> = table
                .iter()
                .unwrap()
                .map(|row| {
                    let (key, value) = row.unwrap();
                    (key.value().to_owned(), value.value().to_vec())
                })
                .collect();
            for (key, value) in rows {
                table
                    .insert(key.as_str(), &value[checksum::CHECKSUM_BYTES..])
                    .unwrap();
            }
        }
        for definition in SEALED_BY_NAME_AND_SEQ {
            let mut table = txn.open_table(definition).unwrap();
            let rows: Vec<((String, u64), Vec<u8>)> = table
                .iter()
                .unwrap()
                .map(|row| {
                    let (key, value) = row.unwrap();
                    let (name, seq) = key.value();
                    ((name.to_owned(), seq), value.value().to_vec())
                })
                .collect();
            for ((name, seq), value) in rows {
                table
                    .insert((name.as_str(), seq), &value[checksum::CHECKSUM_BYTES..])
                    .unwrap();
            }
        }
        for definition in SEALED_BY_SEQ {
            let mut table = txn.open_table(definition).unwrap();
            let rows: Vec<(u64, Vec<u8>)> = table
                .iter()
                .unwrap()
                .map(|row| {
                    let (key, value) = row.unwrap();
                    (key.value(), value.value().to_vec())
                })
                .collect();
            for (key, value) in rows {
                table
                    .insert(key, &value[checksum::CHECKSUM_BYTES..])
                    .unwrap();
            }
        }
        let rows: Vec<(String, DocRow)> = txn
            .open_table(DOCS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (name, value) = row.unwrap();
                let name = name.value().to_owned();
                let row = decode_doc_row(&name, value.value()).unwrap();
                (name, row)
            })
            .collect();
        txn.delete_table(DOCS).unwrap();
        {
            let mut docs = txn.open_table(V1_DOCS).unwrap();
            for (name, row) in &rows {
                docs.insert(name.as_str(), *row).unwrap();
            }
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    /// Everything a store holds, as its readers return it.
    fn read_everything(store: &Store) -> String {
        format!(
            "{:?}",
            (
                store.load_doc("d").unwrap(),
                store.list_docs().unwrap(),
                store.list_versions("d").unwrap(),
                store.version("d", 1).unwrap(),
                store.list_users().unwrap(),
                store.list_files().unwrap(),
                store.list_uploads().unwrap(),
                store.list_webhooks().unwrap(),
                store.list_outbox(10).unwrap(),
                store
                    .list_activity(
                        &ActivityQuery {
                            limit: 10,
                            max_span_ms: 1000,
                            max_scan: 100,
                            ..ActivityQuery::default()
                        },
                        |_| true,
                    )
                    .unwrap(),
            )
        )
    }

    /// The v1 fixture predates accounts, files, history, activity and webhooks; this test
    /// migrates a version-1 file holding every sealed table and reads each back unchanged.
    #[test]
    fn a_version_1_file_with_every_table_migrates_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = Store::open(&path).unwrap();
        let author = Author {
            sub: Some("ada".into()),
            name: "Ada".into(),
        };
        let record = VersionRecord {
            id: 1,
            kind: VersionKind::Named,
            name: Some("v".into()),
            author: author.clone(),
            created_ms: 1,
            seq: 2,
            size_bytes: 5,
            authors: vec![author],
        };
        store
            .commit(
                &[
                    WriteOp::Append {
                        doc: "d",
                        seq: 1,
                        update: b"one",
                        author: None,
                    },
                    WriteOp::Append {
                        doc: "d",
                        seq: 2,
                        update: b"two",
                        author: None,
                    },
                    WriteOp::Compact {
                        doc: "d",
                        upto_seq: 1,
                        snapshot: b"snap",
                    },
                    WriteOp::Version {
                        doc: "d",
                        record: &record,
                        state: b"state",
                        max_kept: 5,
                    },
                ],
                7,
                true,
            )
            .unwrap();
        store
            .put_user(&UserRecord {
                sub: "ada".into(),
                name: "Ada".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                docs: [("team/*".to_string(), "write".to_string())].into(),
                admin: true,
                created_ms: 1,
                app_passwords: Vec::new(),
            })
            .unwrap();
        let uploader = Uploader {
            sub: None,
            name: "Ada".into(),
        };
        store
            .put_file_version(
                "team/f.bin",
                FileVersion {
                    version: 0,
                    sha256: "ab".repeat(32),
                    size: 3,
                    content_type: "text/plain".into(),
                    name: "f.bin".into(),
                    uploader: uploader.clone(),
                    uploaded_ms: 2,
                },
                None,
                None,
                None,
            )
            .unwrap();
        store
            .put_upload(&UploadRecord {
                id: "0123456789abcdef0123456789abcdef".into(),
                path: "team/g.bin".into(),
                length: 10,
                sha256: None,
                content_type: "text/plain".into(),
                name: "g.bin".into(),
                uploader,
                created_ms: 3,
                expires_ms: 4,
            })
            .unwrap();
        store
            .put_webhook(&WebhookRecord {
                id: "wh_1".into(),
                url: "http://127.0.0.1:9/hook".into(),
                events: vec!["doc.changed".into()],
                secret: "s3cret".into(),
                docs: None,
                created_ms: 5,
            })
            .unwrap();
        store
            .write_activity(&ActivityWrite {
                entries: vec![ActivityEntry {
                    id: 1,
                    kind: "doc.edited".into(),
                    path: "d".into(),
                    other_paths: Vec::new(),
                    actor_sub: None,
                    actor_name: "Ada".into(),
                    started_ms: 6,
                    ended_ms: 7,
                    n_updates: 2,
                    details: "{}".into(),
                }],
                deliveries: vec![OutboxDelivery {
                    seq: 0,
                    delivery_id: "del_1".into(),
                    webhook_id: "wh_1".into(),
                    event: "doc.changed".into(),
                    body: "{}".into(),
                    created_ms: 7,
                    attempts: 0,
                    next_attempt_ms: 7,
                }],
                next_entry_id: 2,
            })
            .unwrap();
        let before = read_everything(&store);
        drop(store);
        downgrade_to_v1(&path);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.migrated_from(), Some(1));
        assert_eq!(read_everything(&store), before);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.migrated_from(), None);
        assert_eq!(read_everything(&store), before);
    }
}
