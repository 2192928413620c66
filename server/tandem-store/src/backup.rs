//! A consistent copy of the store while the server runs: every table, as one read transaction
//! sees it, written into a fresh redb file.
//!
//! redb reads are MVCC snapshots, so the writer thread goes on committing while the copy runs;
//! the copy holds everything committed before its transaction began and nothing after. The
//! caller is told as soon as the transaction has begun ([`Store::write_backup`]'s `on_begin`),
//! so it can let go of its blob lock then (having held off blob removals), and is handed the
//! blobs the copy names once they are listed (`on_snapshot`), before the copy, so it can keep
//! them from its blob garbage collection.
//!
//! Must not: leave a table out. Every table of the source is copied, and a table this build does
//! not know fails the backup ([`StoreError::UnknownTable`]) instead of being skipped. The one
//! table copied empty is `uploads`: uploads in progress have their bytes outside the store and
//! outside the backup, so their clients start them over after a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value, WriteTransaction,
};

use crate::Store;
use crate::checksum;
use crate::error::StoreError;
use crate::schema::{
    ACTIVITY, ACTIVITY_BY_ACTOR, ACTIVITY_BY_PATH, ACTIVITY_COUNTERS, AUTHOR_IDS, AUTHORS, BLOBS,
    DAV_FOLDERS, DAV_PROPS, DOCS, FILE_USAGE, FILES, LOCKS, META, SNAPSHOTS, UPDATE_AUTHORS,
    UPDATES, UPLOADS, USERS, VERSION_STATES, VERSIONS, WEBHOOK_LOG, WEBHOOK_OUTBOX, WEBHOOKS,
};

/// A blob a copy names: by a file version, or by a `blobs` row with a non-zero refcount.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobRef {
    /// Lower-case hex SHA-256 of the bytes (the blob's name).
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// What a finished copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCopy {
    /// Every blob the copy names, sorted by hash.
    pub blobs: Vec<BlobRef>,
    /// Stored docs in the copy.
    pub n_docs: u64,
    /// The format version of the copy (this build's [`crate::FORMAT_VERSION`]).
    pub format_version: u64,
}

/// Decrements the running-backups count when the copy ends, however it ends.
struct Running<'a>(&'a Store);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.backups_running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store {
    /// Copies every table into a new database file at `dest` (which must not exist), from one
    /// read transaction. `on_begin` is called as soon as that transaction has begun (a caller
    /// holding its blob lock lets it go there), and `on_snapshot` with the blobs it names once
    /// they are listed, before the copy (the caller pins them there). Neither is called if the
    /// transaction cannot begin. Blocking; writers are not held up (the page cache is not
    /// released while a copy runs, see `release_cache`).
    pub fn write_backup(
        &self,
        dest: &Path,
        on_begin: impl FnOnce(),
        on_snapshot: impl FnOnce(&[BlobRef]),
    ) -> Result<BackupCopy, StoreError> {
        self.backups_running.fetch_add(1, Ordering::AcqRel);
        let _running = Running(self);
        self.contain("write_backup", || {
            let db = self.db()?;
            let source = db.begin_read()?;
            on_begin();
            let blobs = referenced_blobs(&source)?;
            on_snapshot(&blobs);
            if dest.exists() {
                return Err(redb::StorageError::from(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists", dest.display()),
                ))
                .into());
            }
            let target = Database::builder().create(dest)?;
            let mut txn = target.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            copy_tables(&source, &txn)?;
            let n_docs = source.open_table(DOCS)?.len()?;
            let format_version = source
                .open_table(META)?
                .get(crate::schema::FORMAT_VERSION_KEY)?
                .map_or(0, |version| version.value());
            txn.commit()?;
            Ok(BackupCopy {
                blobs,
                n_docs,
                format_version,
            })
        })
    }
}

/// Copies each table of `source` into `target`, refusing a table this build does not know.
fn copy_tables(source: &ReadTransaction, target: &WriteTransaction) -> Result<(), StoreError> {
    let mut copied = BTreeSet::new();
    let mut copy = |name: &'static str, res: Result<(), StoreError>| {
        copied.insert(name);
        res
    };
    copy(META.name(), copy_table(source, target, META))?;
    copy(UPDATES.name(), copy_table(source, target, UPDATES))?;
    copy(SNAPSHOTS.name(), copy_table(source, target, SNAPSHOTS))?;
    copy(DOCS.name(), copy_table(source, target, DOCS))?;
    copy(USERS.name(), copy_table(source, target, USERS))?;
    copy(FILES.name(), copy_table(source, target, FILES))?;
    copy(BLOBS.name(), copy_table(source, target, BLOBS))?;
    // Created empty: see the module docs.
    copy(
        UPLOADS.name(),
        target.open_table(UPLOADS).map(drop).map_err(Into::into),
    )?;
    copy(FILE_USAGE.name(), copy_table(source, target, FILE_USAGE))?;
    copy(AUTHOR_IDS.name(), copy_table(source, target, AUTHOR_IDS))?;
    copy(AUTHORS.name(), copy_table(source, target, AUTHORS))?;
    copy(
        UPDATE_AUTHORS.name(),
        copy_table(source, target, UPDATE_AUTHORS),
    )?;
    copy(VERSIONS.name(), copy_table(source, target, VERSIONS))?;
    copy(
        VERSION_STATES.name(),
        copy_table(source, target, VERSION_STATES),
    )?;
    copy(ACTIVITY.name(), copy_table(source, target, ACTIVITY))?;
    copy(
        ACTIVITY_BY_PATH.name(),
        copy_table(source, target, ACTIVITY_BY_PATH),
    )?;
    copy(
        ACTIVITY_BY_ACTOR.name(),
        copy_table(source, target, ACTIVITY_BY_ACTOR),
    )?;
    copy(
        ACTIVITY_COUNTERS.name(),
        copy_table(source, target, ACTIVITY_COUNTERS),
    )?;
    copy(WEBHOOKS.name(), copy_table(source, target, WEBHOOKS))?;
    copy(
        WEBHOOK_OUTBOX.name(),
        copy_table(source, target, WEBHOOK_OUTBOX),
    )?;
    copy(WEBHOOK_LOG.name(), copy_table(source, target, WEBHOOK_LOG))?;
    copy(DAV_FOLDERS.name(), copy_table(source, target, DAV_FOLDERS))?;
    copy(DAV_PROPS.name(), copy_table(source, target, DAV_PROPS))?;
    // Created empty, like `uploads`: a lock is a client's session, not data.
    copy(
        LOCKS.name(),
        target.open_table(LOCKS).map(drop).map_err(Into::into),
    )?;
    for table in source.list_tables()? {
        if !copied.contains(table.name()) {
            return Err(StoreError::UnknownTable {
                table: table.name().to_owned(),
            });
        }
    }
    Ok(())
}

/// Copies one table row by row; a table missing from the source (an older file) is created
/// empty.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    source: &ReadTransaction,
    target: &WriteTransaction,
    definition: TableDefinition<'static, K, V>,
) -> Result<(), StoreError> {
    let mut to = target.open_table(definition)?;
    let from = match source.open_table(definition) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for entry in from.iter()? {
        let (key, value) = entry?;
        to.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// Every blob `txn` names: the blobs of every file version (from entries whose checksum holds)
/// and every `blobs` row with a non-zero refcount, sorted by hash.
pub(crate) fn referenced_blobs(txn: &ReadTransaction) -> Result<Vec<BlobRef>, StoreError> {
    let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
    match txn.open_table(FILES) {
        Ok(files) => {
            for entry in files.iter()? {
                let (path, stored) = entry?;
                let path = path.value();
                let Ok(payload) = checksum::unseal(FILES.name(), path, stored.value()) else {
                    continue;
                };
                let Ok(entry) = crate::files::decode_entry(path, payload) else {
                    continue;
                };
                for version in entry.versions {
                    blobs.insert(version.sha256, version.size);
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }
    match txn.open_table(BLOBS) {
        Ok(rows) => {
            for row in rows.iter()? {
                let (sha256, value) = row?;
                let (size, refcount) = value.value();
                if refcount > 0 {
                    blobs.entry(sha256.value().to_owned()).or_insert(size);
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(blobs
        .into_iter()
        .map(|(sha256, size)| BlobRef { sha256, size })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileVersion, Uploader, UserRecord, WriteOp};

    fn version(sha: char) -> FileVersion {
        FileVersion {
            version: 0,
            sha256: sha.to_string().repeat(64),
            size: 7,
            content_type: "text/plain".into(),
            name: "f".into(),
            uploader: Uploader {
                sub: None,
                name: "Ada".into(),
            },
            uploaded_ms: 1,
        }
    }

    #[test]
    fn a_backup_holds_what_was_committed_before_it_and_names_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store
            .commit(
                &[WriteOp::Append {
                    doc: "d",
                    seq: 1,
                    update: b"one",
                    author: None,
                }],
                5,
                true,
            )
            .unwrap();
        store
            .put_file_version("w/f", version('a'), None, None, None)
            .unwrap();
        store
            .put_user(&UserRecord {
                sub: "ada".into(),
                name: "Ada".into(),
                password_hash: "h".into(),
                docs: Default::default(),
                admin: true,
                created_ms: 1,
                app_passwords: Vec::new(),
            })
            .unwrap();
        let dest = dir.path().join("copy.redb");
        let mut seen = Vec::new();
        let copy = store
            .write_backup(
                &dest,
                || {
                    // A commit after the snapshot began is not in the copy.
                    store
                        .commit(
                            &[WriteOp::Append {
                                doc: "d",
                                seq: 2,
                                update: b"two",
                                author: None,
                            }],
                            6,
                            true,
                        )
                        .unwrap();
                },
                |blobs| seen = blobs.to_vec(),
            )
            .unwrap();
        assert_eq!(copy.n_docs, 1);
        assert_eq!(copy.format_version, crate::FORMAT_VERSION);
        assert_eq!(
            seen,
            vec![BlobRef {
                sha256: "a".repeat(64),
                size: 7
            }]
        );
        assert_eq!(copy.blobs, seen);
        assert!(
            store.write_backup(&dest, || {}, |_| {}).is_err(),
            "dest exists"
        );
        drop(store);
        let restored = Store::open(&dest).unwrap();
        assert_eq!(
            restored.load_doc("d").unwrap().updates,
            vec![b"one".to_vec()]
        );
        assert!(restored.file("w/f").unwrap().is_some());
        assert_eq!(restored.list_users().unwrap().len(), 1);
    }
}
