//! The offline check of a database file (`tandem check`): every sealed record against its
//! checksum, every doc loaded as the server would load it, the files' blob refcounts and
//! workspace usage recounted, and records left behind by a parent that is gone.
//!
//! Must not: change the file. It is opened with redb's `ReadOnlyDatabase`, which takes a shared
//! lock and writes nothing; a file that needs redb's repair (not closed cleanly) is reported,
//! not repaired. A server running on the file holds it exclusively, so the check refuses then
//! ([`StoreError::AlreadyOpen`]).
//!
//! What a record means beyond the store (a Yjs update that decodes, a blob file on disk with
//! the right hash) is for the caller: `check_file` hands it each doc's records and every blob
//! the file names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::backup::{BlobRef, referenced_blobs};
use crate::checksum::{self, ChecksumKey};
use crate::error::StoreError;
use crate::files::FileVersion;
use crate::schema::{
    ACTIVITY, ACTIVITY_BY_ACTOR, ACTIVITY_BY_PATH, BLOBS, DAV_PROPS, DOCS, FILE_USAGE, FILES,
    FORMAT_VERSION_KEY, LOCKS, META, SEALED_BY_NAME, SEALED_BY_NAME_AND_SEQ, SEALED_BY_SEQ,
    SNAPSHOTS, UPDATES, VERSION_STATES, VERSIONS,
};
use crate::{FORMAT_VERSION, StoredDoc, contain, load_doc_in};

/// What the check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One line per problem, naming the table and key (or doc) it concerns.
    pub problems: Vec<String>,
    /// Docs whose records all held.
    pub n_docs: u64,
    /// Every blob the file names (file versions, `blobs` rows with a refcount), for the caller
    /// to look for on disk.
    pub blobs: Vec<BlobRef>,
}

/// Checks the file at `path` without changing it. `check_doc` is called with each doc whose
/// records hold, and returns a problem if its content is wrong (an update that does not decode).
pub fn check_file(
    path: &Path,
    mut check_doc: impl FnMut(&str, &StoredDoc) -> Option<String>,
) -> Result<CheckReport, StoreError> {
    contain::contain("check", || {
        let db = match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::AlreadyOpen),
            Err(error) => return Err(error.into()),
        };
        let txn = db.begin_read()?;
        let found = match txn.open_table(META) {
            Ok(table) => table.get(FORMAT_VERSION_KEY)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(error.into()),
        };
        if found != Some(FORMAT_VERSION) {
            return Err(StoreError::UnsupportedFormat {
                found: found.unwrap_or(0),
                expected: FORMAT_VERSION,
            });
        }
        let mut report = CheckReport::default();
        check_seals(&txn, &mut report.problems)?;
        check_docs(&txn, &mut report, &mut check_doc)?;
        check_versions(&txn, &mut report.problems)?;
        check_files(&txn, &mut report.problems)?;
        check_activity_indexes(&txn, &mut report.problems)?;
        report.blobs = referenced_blobs(&txn)?;
        Ok(report)
    })
}

/// Every value of every sealed table against its checksum.
fn check_seals(txn: &ReadTransaction, problems: &mut Vec<String>) -> Result<(), StoreError> {
    for definition in SEALED_BY_NAME {
        scan(txn, definition, problems, |key| key.to_owned())?;
    }
    for definition in SEALED_BY_SEQ {
        scan(txn, definition, problems, |key| key.to_string())?;
    }
    for definition in SEALED_BY_NAME_AND_SEQ {
        scan(txn, definition, problems, |(name, seq)| {
            format!("{name:?} #{seq}")
        })?;
    }
    // Sealed since it came (after format version 2), so not among the tables the version 1
    // migration seals.
    scan(txn, LOCKS, problems, |key| key.to_owned())?;
    scan(txn, DAV_PROPS, problems, |(path, key)| {
        format!("{path:?} {key}")
    })?;
    Ok(())
}

fn scan<K>(
    txn: &ReadTransaction,
    definition: TableDefinition<'static, K, &'static [u8]>,
    problems: &mut Vec<String>,
    show: impl Fn(K::SelfType<'_>) -> String,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    for<'a> K::SelfType<'a>: ChecksumKey,
{
    let table = match txn.open_table(definition) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for entry in table.iter()? {
        let (key, value) = entry?;
        let key = key.value();
        if checksum::unseal(definition.name(), key, value.value()).is_err() {
            problems.push(format!(
                "{} record {}: checksum mismatch",
                definition.name(),
                show(key)
            ));
        }
    }
    Ok(())
}

/// Each doc loaded as the server loads it; log entries and snapshots of no doc.
fn check_docs(
    txn: &ReadTransaction,
    report: &mut CheckReport,
    check_doc: &mut impl FnMut(&str, &StoredDoc) -> Option<String>,
) -> Result<(), StoreError> {
    let mut names = BTreeSet::new();
    for entry in txn.open_table(DOCS)?.iter()? {
        let (name, _) = entry?;
        names.insert(name.value().to_owned());
    }
    for name in &names {
        match load_doc_in(txn, name) {
            Ok(stored) => match check_doc(name, &stored) {
                Some(problem) => report.problems.push(format!("doc {name:?}: {problem}")),
                None => report.n_docs += 1,
            },
            Err(StoreError::Corrupt { detail, .. }) => {
                report.problems.push(format!("doc {name:?}: {detail}"));
            }
            Err(error) => return Err(error),
        }
    }
    let mut orphans = BTreeSet::new();
    for entry in txn.open_table(UPDATES)?.iter()? {
        let (key, _) = entry?;
        let (doc, _) = key.value();
        if !names.contains(doc) {
            orphans.insert(("updates", doc.to_owned()));
        }
    }
    for entry in txn.open_table(SNAPSHOTS)?.iter()? {
        let (key, _) = entry?;
        if !names.contains(key.value()) {
            orphans.insert(("snapshots", key.value().to_owned()));
        }
    }
    for (table, doc) in orphans {
        report.problems.push(format!(
            "{table} records of doc {doc:?}, which has no docs row (orphan records)"
        ));
    }
    Ok(())
}

/// Each version's metadata has its state and the other way round.
fn check_versions(txn: &ReadTransaction, problems: &mut Vec<String>) -> Result<(), StoreError> {
    let keys = |definition: TableDefinition<'static, (&str, u64), &[u8]>| {
        let mut keys = BTreeSet::new();
        match txn.open_table(definition) {
            Ok(table) => {
                for entry in table.iter()? {
                    let (key, _) = entry?;
                    let (doc, id) = key.value();
                    keys.insert((doc.to_owned(), id));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(StoreError::from(error)),
        }
        Ok(keys)
    };
    let records = keys(VERSIONS)?;
    let states = keys(VERSION_STATES)?;
    for (doc, id) in records.difference(&states) {
        problems.push(format!("version {id} of doc {doc:?} has no stored state"));
    }
    for (doc, id) in states.difference(&records) {
        problems.push(format!(
            "version_states record {id} of doc {doc:?} has no version record (orphan record)"
        ));
    }
    Ok(())
}

/// The `blobs` refcounts and `file_usage` sums recounted from the file entries.
fn check_files(txn: &ReadTransaction, problems: &mut Vec<String>) -> Result<(), StoreError> {
    let mut named: BTreeMap<String, u64> = BTreeMap::new();
    let mut usage: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries_hold = true;
    match txn.open_table(FILES) {
        Ok(files) => {
            for entry in files.iter()? {
                let (path, stored) = entry?;
                let path = path.value();
                let Ok(payload) = checksum::unseal(FILES.name(), path, stored.value()) else {
                    entries_hold = false;
                    continue;
                };
                match crate::files::decode_entry(path, payload) {
                    Ok(entry) => {
                        for version in &entry.versions {
                            *named.entry(version.sha256.clone()).or_default() += 1;
                            *usage
                                .entry(crate::files::workspace_of(path).to_owned())
                                .or_default() += FileVersion::charge_for(version.size);
                        }
                    }
                    Err(error) => {
                        entries_hold = false;
                        problems.push(format!("files record {path:?}: {error}"));
                    }
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }
    if !entries_hold {
        // Counts from damaged entries would only add noise to the problem already reported.
        return Ok(());
    }
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(table) = txn.open_table(BLOBS) {
        for row in table.iter()? {
            let (sha256, value) = row?;
            rows.insert(sha256.value().to_owned(), value.value().1);
        }
    }
    for (sha256, n_named) in &named {
        match rows.get(sha256) {
            None => problems.push(format!(
                "blob {sha256}: named by {n_named} file version(s) but has no blobs row"
            )),
            Some(refcount) if refcount != n_named => problems.push(format!(
                "blob {sha256}: refcount {refcount}, but {n_named} file version(s) name it"
            )),
            Some(_) => {}
        }
    }
    for (sha256, refcount) in &rows {
        if *refcount > 0 && !named.contains_key(sha256) {
            problems.push(format!(
                "blob {sha256}: refcount {refcount}, but no file version names it (orphan record)"
            ));
        }
    }
    let mut stored_usage: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(table) = txn.open_table(FILE_USAGE) {
        for row in table.iter()? {
            let (workspace, bytes) = row?;
            stored_usage.insert(workspace.value().to_owned(), bytes.value());
        }
    }
    let workspaces: BTreeSet<&String> = usage.keys().chain(stored_usage.keys()).collect();
    for workspace in workspaces {
        let counted = usage.get(workspace).copied().unwrap_or(0);
        let stored = stored_usage.get(workspace).copied().unwrap_or(0);
        if counted != stored {
            problems.push(format!(
                "workspace {workspace:?}: file_usage says {stored} bytes, its file versions count {counted}"
            ));
        }
    }
    Ok(())
}

/// Index rows of the activity feed that point at no entry.
fn check_activity_indexes(
    txn: &ReadTransaction,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    let Ok(activity) = txn.open_table(ACTIVITY) else {
        return Ok(());
    };
    for definition in [ACTIVITY_BY_PATH, ACTIVITY_BY_ACTOR] {
        let Ok(index) = txn.open_table(definition) else {
            continue;
        };
        let mut n_dangling = 0u64;
        for row in index.iter()? {
            let (key, _) = row?;
            let (_, id) = key.value();
            if activity.get(id)?.is_none() {
                n_dangling += 1;
            }
        }
        if n_dangling > 0 {
            problems.push(format!(
                "{}: {n_dangling} index row(s) point at no activity entry (orphan records)",
                definition.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, WriteOp};

    #[test]
    fn a_clean_file_has_no_problem_and_is_not_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = Store::open(&path).unwrap();
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
        assert!(matches!(
            check_file(&path, |_, _| None),
            Err(StoreError::AlreadyOpen)
        ));
        drop(store);
        let before = std::fs::read(&path).unwrap();
        let mut seen = Vec::new();
        let report = check_file(&path, |doc, stored| {
            seen.push((doc.to_owned(), stored.updates.clone()));
            None
        })
        .unwrap();
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!(report.n_docs, 1);
        assert_eq!(seen, vec![("d".to_owned(), vec![b"one".to_vec()])]);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_damaged_dead_property_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = Store::open(&path).unwrap();
        store
            .patch_dav_props("f.txt", &[("{u}a".to_owned(), Some(b"v".to_vec()))])
            .unwrap();
        drop(store);
        assert_eq!(
            check_file(&path, |_, _| None).unwrap().problems,
            Vec::<String>::new()
        );
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(DAV_PROPS)
                .unwrap()
                .insert(("f.txt", "{u}a"), b"not sealed".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(
            check_file(&path, |_, _| None).unwrap().problems,
            vec!["dav_props record \"f.txt\" {u}a: checksum mismatch".to_owned()]
        );
    }

    #[test]
    fn a_damaged_lock_row_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = Store::open(&path).unwrap();
        store
            .put_lock(&crate::LockRecord {
                token: "urn:uuid:x".into(),
                path: "a".into(),
                deep: false,
                shared: false,
                owner: None,
                principal: None,
                created_ms: 1,
                timeout_ms: 2,
                expires_ms: 3,
            })
            .unwrap();
        drop(store);
        assert_eq!(
            check_file(&path, |_, _| None).unwrap().problems,
            Vec::<String>::new()
        );
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LOCKS)
                .unwrap()
                .insert("urn:uuid:x", b"not sealed".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(
            check_file(&path, |_, _| None).unwrap().problems,
            vec!["locks record urn:uuid:x: checksum mismatch".to_owned()]
        );
    }
}
