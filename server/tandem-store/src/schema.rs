//! The on-disk layout: table definitions, key encoding and the format version.
//!
//! Described byte for byte in `protocol-spec/storage.md`. Any change here that an older build
//! could not read needs a new `FORMAT_VERSION`, a migration in `check_format_version`, and a new
//! fixture file in `tests/fixtures/`.

use redb::{ReadableDatabase, TableDefinition};

use crate::error::StoreError;

/// The format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

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

/// Each doc's metadata: `doc name -> DocRow` (see [`DocRow`]).
pub(crate) const DOCS: TableDefinition<'static, &str, DocRow> = TableDefinition::new("docs");

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

/// `(snapshot_seq, size_bytes, updated_ms, n_log_entries, last_seq)`, fixed width.
pub(crate) type DocRow = (u64, u64, u64, u64, u64);

/// Creates the tables of a new file and checks the version of an existing one.
pub(crate) fn check_format_version(db: &redb::Database) -> Result<(), StoreError> {
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(table) => table.get(FORMAT_VERSION_KEY)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(error.into()),
        }
    };
    match found {
        Some(FORMAT_VERSION) => Ok(()),
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
            Ok(())
        }
    }
}
