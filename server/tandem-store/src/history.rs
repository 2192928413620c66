//! History: who sent each stored update and when, and each doc's versions.
//!
//! - Every appended update may carry its author (encoded [`Author`]). Authors are interned
//!   (`author_ids`, `authors`), and consecutive updates of one doc by one author in one
//!   transaction (so with one commit time) share a row of `update_authors`:
//!   `(doc, first_seq) -> (at_ms, author id, last_seq)`, written in the same transaction as the
//!   updates. A typing burst in one group commit is one small row, not one per keystroke.
//! - A version is two rows: its metadata ([`VersionRecord`], small, in `versions`) and its full
//!   state as one v1 update (in `version_states`), so listing versions never reads states, and a
//!   version loads whatever happened to the log since.
//!
//! Invariants:
//! - Compaction never touches `versions` or `version_states`; it drops the author rows of the
//!   log entries it merges, but keeps those after the doc's newest version, which the next
//!   version's `authors` list is built from.
//! - `auto` and `restore` versions are pruned, oldest first, beyond the cap of their kind per
//!   doc; `named` versions never are (their cap refuses new ones). The version just written is
//!   never pruned, so version ids only grow, also across reloads.
//! - A record that does not decode affects only itself: listings skip it, reading it reports
//!   `StoreError::CorruptRecord`.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle};

use crate::Store;
use crate::checksum;
use crate::error::StoreError;
use crate::record::{Reader, put_str};
use crate::schema::{AUTHOR_IDS, AUTHORS, UPDATE_AUTHORS, VERSION_STATES, VERSIONS};

/// The version byte at the start of every encoded [`VersionRecord`].
const VERSION_RECORD_VERSION: u8 = 1;

/// Who wrote something: the verified account (`sub`) and display name, or with authentication
/// off only a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Author {
    /// The token's `sub`; `None` when authentication is off.
    pub sub: Option<String>,
    /// What to show.
    pub name: String,
}

impl Author {
    /// `u8 has_sub` (0 or 1), the `sub` string if present, the `name` string.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.name.len());
        put_author(&mut out, self);
        out
    }

    /// The author `bytes` encode, or `None` if they do not.
    pub fn decode(bytes: &[u8]) -> Option<Author> {
        let mut reader = Reader::new(bytes);
        let author = read_author(&mut reader)?;
        reader.is_empty().then_some(author)
    }
}

fn put_author(out: &mut Vec<u8>, author: &Author) {
    match &author.sub {
        Some(sub) => {
            out.push(1);
            put_str(out, sub);
        }
        None => out.push(0),
    }
    put_str(out, &author.name);
}

fn read_author(reader: &mut Reader<'_>) -> Option<Author> {
    let sub = match reader.u8()? {
        0 => None,
        1 => Some(reader.string()?),
        _ => return None,
    };
    let name = reader.string()?;
    Some(Author { sub, name })
}

/// Why a version was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    /// Named by a user; never pruned.
    Named,
    /// Taken by the server after a period of activity or when the doc unloaded; pruned.
    Auto,
    /// Taken just before a restore, so the restore can be undone; never pruned.
    Restore,
}

impl VersionKind {
    /// The name used in the API and the record.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Named => "named",
            VersionKind::Auto => "auto",
            VersionKind::Restore => "restore",
        }
    }

    fn code(self) -> u8 {
        match self {
            VersionKind::Named => 1,
            VersionKind::Auto => 2,
            VersionKind::Restore => 3,
        }
    }

    fn from_code(code: u8) -> Option<VersionKind> {
        match code {
            1 => Some(VersionKind::Named),
            2 => Some(VersionKind::Auto),
            3 => Some(VersionKind::Restore),
            _ => None,
        }
    }
}

/// One version's metadata (its state is stored apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// Per doc, from 1, increasing; the key, not repeated in the encoding.
    pub id: u64,
    /// Why it was taken.
    pub kind: VersionKind,
    /// The name given to a named version (restore versions name what they precede).
    pub name: Option<String>,
    /// Who asked for it (the server itself for automatic versions).
    pub author: Author,
    /// Wall-clock milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The last update seq the state includes.
    pub seq: u64,
    /// Length of the stored state.
    pub size_bytes: u64,
    /// Who wrote the updates since the previous version, in order of first appearance.
    pub authors: Vec<Author>,
}

impl VersionRecord {
    /// Version 1: `u8 1`, `u8 kind` (1 named, 2 auto, 3 restore), `u8 has_name` and the name
    /// string if 1, the author, `u64 created_ms`, `u64 seq`, `u64 size_bytes`, `u32 n_authors`
    /// and that many authors. Integers little-endian; strings as in user records.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION_RECORD_VERSION, self.kind.code()];
        match &self.name {
            Some(name) => {
                out.push(1);
                put_str(&mut out, name);
            }
            None => out.push(0),
        }
        put_author(&mut out, &self.author);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        let n = u32::try_from(self.authors.len()).expect("fewer than 2^32 authors");
        out.extend_from_slice(&n.to_le_bytes());
        for author in &self.authors {
            put_author(&mut out, author);
        }
        out
    }

    fn decode(doc: &str, id: u64, bytes: &[u8]) -> Result<VersionRecord, StoreError> {
        let corrupt = |detail: &str| StoreError::CorruptRecord {
            what: format!("version {id} of doc {doc:?}"),
            detail: detail.to_owned(),
        };
        let mut reader = Reader::new(bytes);
        match reader.u8() {
            Some(VERSION_RECORD_VERSION) => {}
            Some(version) => return Err(corrupt(&format!("unknown record version {version}"))),
            None => return Err(corrupt("empty record")),
        }
        let bad = || corrupt("record is truncated or malformed");
        let kind = VersionKind::from_code(reader.u8().ok_or_else(bad)?).ok_or_else(bad)?;
        let name = match reader.u8().ok_or_else(bad)? {
            0 => None,
            1 => Some(reader.string().ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        let author = read_author(&mut reader).ok_or_else(bad)?;
        let created_ms = reader.u64().ok_or_else(bad)?;
        let seq = reader.u64().ok_or_else(bad)?;
        let size_bytes = reader.u64().ok_or_else(bad)?;
        let n = reader.u32().ok_or_else(bad)?;
        let mut authors = Vec::new();
        for _ in 0..n {
            // Each author takes at least 5 bytes: a huge count runs out of bytes quickly.
            authors.push(read_author(&mut reader).ok_or_else(bad)?);
        }
        if !reader.is_empty() {
            return Err(corrupt("trailing bytes after the record"));
        }
        Ok(VersionRecord {
            id,
            kind,
            name,
            author,
            created_ms,
            seq,
            size_bytes,
            authors,
        })
    }
}

/// One stored update's author, for `GET /api/docs/{name}/history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateAuthor {
    /// The update's seq.
    pub seq: u64,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who sent it.
    pub author: Author,
    /// The update's length, if its log entry is still stored (0 otherwise).
    pub n_bytes: u64,
}

/// What a doc actor needs to know about a doc's history when it loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryHead {
    /// The newest version that decodes, if any.
    pub last_version: Option<VersionRecord>,
    /// The highest version id stored (also of a damaged record), 0 if none.
    pub last_version_id: u64,
    /// Distinct authors of the stored updates after the newest version, in order.
    pub authors_since: Vec<Author>,
}

/// Opens a table for reading; a table an older file lacks reads as empty (`None`).
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<'static, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The tables an append and a version write touch, open in one write transaction.
pub(crate) struct HistoryTables<'txn> {
    author_ids: redb::Table<'txn, &'static [u8], u32>,
    authors: redb::Table<'txn, u32, &'static [u8]>,
    update_authors: redb::Table<'txn, (&'static str, u64), (u64, u32, u64)>,
    versions: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    version_states: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    /// Authors interned in this transaction (a batch has few): encoded author -> id.
    interned: Vec<(Vec<u8>, u32)>,
    /// The open run of author rows of each doc in this transaction; written by `finish`.
    runs: HashMap<String, Run>,
    /// The transaction's commit time.
    now_ms: u64,
}

/// Consecutive updates of one doc by one author.
#[derive(Clone, Copy)]
struct Run {
    first_seq: u64,
    last_seq: u64,
    author: u32,
}

/// The history tables of `txn`, opening them on first use.
pub(crate) fn tables<'a, 'txn>(
    slot: &'a mut Option<HistoryTables<'txn>>,
    txn: &'txn redb::WriteTransaction,
    now_ms: u64,
) -> Result<&'a mut HistoryTables<'txn>, StoreError> {
    if slot.is_none() {
        *slot = Some(HistoryTables::open(txn, now_ms)?);
    }
    Ok(slot.as_mut().expect("just opened"))
}

impl<'txn> HistoryTables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction, now_ms: u64) -> Result<Self, StoreError> {
        Ok(HistoryTables {
            author_ids: txn.open_table(AUTHOR_IDS)?,
            authors: txn.open_table(AUTHORS)?,
            update_authors: txn.open_table(UPDATE_AUTHORS)?,
            versions: txn.open_table(VERSIONS)?,
            version_states: txn.open_table(VERSION_STATES)?,
            interned: Vec::new(),
            runs: HashMap::new(),
            now_ms,
        })
    }

    /// Records that `author` (encoded) sent update `seq` of `doc`, at the commit's time.
    pub(crate) fn record_author(
        &mut self,
        doc: &str,
        seq: u64,
        author: &[u8],
    ) -> Result<(), StoreError> {
        let id = self.intern(author)?;
        let next = Run {
            first_seq: seq,
            last_seq: seq,
            author: id,
        };
        match self.runs.get_mut(doc) {
            Some(run) if run.author == id && run.last_seq + 1 == seq => run.last_seq = seq,
            Some(run) => {
                let done = std::mem::replace(run, next);
                self.write_run(doc, done)?;
            }
            None => {
                self.runs.insert(doc.to_owned(), next);
            }
        }
        Ok(())
    }

    fn write_run(&mut self, doc: &str, run: Run) -> Result<(), StoreError> {
        self.update_authors.insert(
            (doc, run.first_seq),
            (self.now_ms, run.author, run.last_seq),
        )?;
        Ok(())
    }

    fn flush_doc(&mut self, doc: &str) -> Result<(), StoreError> {
        match self.runs.remove(doc) {
            Some(run) => self.write_run(doc, run),
            None => Ok(()),
        }
    }

    /// Writes the open runs; called once, at the end of the transaction's operations.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        let runs: Vec<(String, Run)> = self.runs.drain().collect();
        for (doc, run) in runs {
            self.write_run(&doc, run)?;
        }
        Ok(())
    }

    fn intern(&mut self, author: &[u8]) -> Result<u32, StoreError> {
        if let Some((_, id)) = self.interned.iter().find(|(bytes, _)| bytes == author) {
            return Ok(*id);
        }
        let known = self.author_ids.get(author)?.map(|id| id.value());
        let id = match known {
            Some(id) => id,
            None => {
                let last = self.authors.last()?.map(|(last, _)| last.value());
                let id = match last {
                    Some(last) => last
                        .checked_add(1)
                        .ok_or_else(|| StoreError::CorruptRecord {
                            what: "authors".into(),
                            detail: "author ids exhausted".into(),
                        })?,
                    None => 1,
                };
                self.author_ids.insert(author, id)?;
                self.authors.insert(id, author)?;
                id
            }
        };
        self.interned.push((author.to_vec(), id));
        Ok(id)
    }

    /// Drops the author rows of `doc` up to `upto_seq`, but none after its newest version.
    pub(crate) fn compact(&mut self, doc: &str, upto_seq: u64) -> Result<(), StoreError> {
        self.flush_doc(doc)?;
        let newest_version_seq = match self.versions.range((doc, 0)..=(doc, u64::MAX))?.next_back()
        {
            Some(entry) => {
                let (key, value) = entry?;
                let id = key.value().1;
                VersionRecord::decode(doc, id, version_payload(doc, id, value.value())?)
                    .map_or(0, |r| r.seq)
            }
            None => 0,
        };
        let upto = upto_seq.min(newest_version_seq);
        if upto > 0 {
            // A run that reaches past `upto` is kept whole.
            self.update_authors
                .retain_in((doc, 0)..=(doc, upto), |_, (_, _, last_seq)| {
                    last_seq > upto
                })?;
        }
        Ok(())
    }

    /// Stores a version; then, for an automatic or a restore one, prunes the doc's oldest
    /// versions of that kind beyond `keep` (the caller passes the cap of the record's kind:
    /// `WriteOp::Version::max_kept` for an automatic version, the named-version cap for a
    /// restore one). Named versions are never pruned here: the doc actor refuses new ones
    /// beyond their cap instead. The version just written is always kept, even with `keep` 0,
    /// so an id that was announced exists and ids are never reused after a reload.
    pub(crate) fn put_version(
        &mut self,
        doc: &str,
        record: &VersionRecord,
        state: &[u8],
        keep: u64,
    ) -> Result<(), StoreError> {
        if let Some(entry) = self.versions.range((doc, 0)..=(doc, u64::MAX))?.next_back() {
            let last_id = entry?.0.value().1;
            if record.id <= last_id {
                return Err(StoreError::Corrupt {
                    doc: doc.into(),
                    detail: format!("version {} after version {last_id}", record.id),
                });
            }
        }
        let key = (doc, record.id);
        let sealed = checksum::seal(VERSIONS.name(), key, &record.encode());
        self.versions.insert(key, sealed.as_slice())?;
        let sealed = checksum::seal(VERSION_STATES.name(), key, state);
        self.version_states.insert(key, sealed.as_slice())?;
        if record.kind == VersionKind::Named {
            return Ok(());
        }
        let mut same_kind = Vec::new();
        for entry in self.versions.range((doc, 0)..(doc, record.id))? {
            let (key, value) = entry?;
            let id = key.value().1;
            // A record of an unknown layout is left alone: its kind is not known.
            let payload = version_payload(doc, id, value.value())?;
            if VersionRecord::decode(doc, id, payload).is_ok_and(|r| r.kind == record.kind) {
                same_kind.push(id);
            }
        }
        // The new record is one of the `keep`, and is never pruned itself.
        let keep_older = usize::try_from(keep.max(1) - 1).unwrap_or(usize::MAX);
        let excess = same_kind.len().saturating_sub(keep_older);
        for id in same_kind.into_iter().take(excess) {
            self.versions.remove((doc, id))?;
            self.version_states.remove((doc, id))?;
        }
        Ok(())
    }
}

/// The payload of a stored version record, if its checksum matches.
fn version_payload<'a>(doc: &str, id: u64, stored: &'a [u8]) -> Result<&'a [u8], StoreError> {
    checksum::unseal(VERSIONS.name(), (doc, id), stored).map_err(|_| StoreError::Corrupt {
        doc: doc.into(),
        detail: format!("metadata of version {id}: checksum mismatch"),
    })
}

impl Store {
    /// The versions of `doc` that decode, newest first; records of a layout this build does not
    /// know are skipped, and a record whose checksum fails fails the call (`Corrupt { doc }`).
    pub fn list_versions(&self, doc: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.contain("list_versions", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let Some(versions) = open_read(&txn, VERSIONS)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for entry in versions.range((doc, 0)..=(doc, u64::MAX))?.rev() {
                let (key, value) = entry?;
                let id = key.value().1;
                if let Ok(record) =
                    VersionRecord::decode(doc, id, version_payload(doc, id, value.value())?)
                {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    /// One version's metadata and state; `None` if there is no such version.
    pub fn version(
        &self,
        doc: &str,
        id: u64,
    ) -> Result<Option<(VersionRecord, Vec<u8>)>, StoreError> {
        self.contain("version", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let (Some(versions), Some(states)) =
                (open_read(&txn, VERSIONS)?, open_read(&txn, VERSION_STATES)?)
            else {
                return Ok(None);
            };
            let Some(record) = versions.get((doc, id))? else {
                return Ok(None);
            };
            let record = VersionRecord::decode(doc, id, version_payload(doc, id, record.value())?)?;
            let state = states
                .get((doc, id))?
                .ok_or_else(|| StoreError::CorruptRecord {
                    what: format!("version {id} of doc {doc:?}"),
                    detail: "its state is missing".into(),
                })?;
            let state = checksum::unseal(VERSION_STATES.name(), (doc, id), state.value())
                .map_err(|_| StoreError::Corrupt {
                    doc: doc.into(),
                    detail: format!("state of version {id}: checksum mismatch"),
                })?
                .to_vec();
            Ok(Some((record, state)))
        })
    }

    /// The newest version of `doc` and who wrote the stored updates after it.
    pub fn history_head(&self, doc: &str) -> Result<HistoryHead, StoreError> {
        self.contain("history_head", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let mut head = HistoryHead::default();
            if let Some(versions) = open_read(&txn, VERSIONS)? {
                for entry in versions.range((doc, 0)..=(doc, u64::MAX))?.rev() {
                    let (key, value) = entry?;
                    let id = key.value().1;
                    head.last_version_id = head.last_version_id.max(id);
                    let payload = version_payload(doc, id, value.value())?;
                    if let Ok(record) = VersionRecord::decode(doc, id, payload) {
                        head.last_version = Some(record);
                        break;
                    }
                }
            }
            let since = head.last_version.as_ref().map_or(0, |v| v.seq);
            if let (Some(rows), Some(authors)) =
                (open_read(&txn, UPDATE_AUTHORS)?, open_read(&txn, AUTHORS)?)
            {
                let mut ids: Vec<u32> = Vec::new();
                // A run that began at or before the version may reach past it.
                if let Some(entry) = rows.range((doc, 0)..=(doc, since))?.next_back() {
                    let (_, id, last_seq) = entry?.1.value();
                    if last_seq > since {
                        ids.push(id);
                    }
                }
                for entry in rows.range((doc, since + 1)..=(doc, u64::MAX))? {
                    let (_, value) = entry?;
                    let id = value.value().1;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                for id in ids {
                    if let Some(author) = authors.get(id)?.and_then(|v| Author::decode(v.value())) {
                        head.authors_since.push(author);
                    }
                }
            }
            Ok(head)
        })
    }

    /// The authors of `doc`'s stored updates with a seq below `before_seq`, newest first, at most
    /// `limit` of them.
    pub fn update_authors(
        &self,
        doc: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<UpdateAuthor>, StoreError> {
        self.contain("update_authors", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let (Some(rows), Some(authors)) =
                (open_read(&txn, UPDATE_AUTHORS)?, open_read(&txn, AUTHORS)?)
            else {
                return Ok(Vec::new());
            };
            let log = txn.open_table(crate::schema::UPDATES)?;
            let mut out = Vec::new();
            let mut names: Vec<(u32, Option<Author>)> = Vec::new();
            for entry in rows.range((doc, 0)..(doc, before_seq))?.rev() {
                let (key, value) = entry?;
                let first_seq = key.value().1;
                let (at_ms, id, last_seq) = value.value();
                let author = match names.iter().find(|(known, _)| *known == id) {
                    Some((_, author)) => author.clone(),
                    None => {
                        let author = authors.get(id)?.and_then(|v| Author::decode(v.value()));
                        names.push((id, author.clone()));
                        author
                    }
                };
                // A row whose author is damaged is skipped; the others still list.
                let Some(author) = author else { continue };
                for seq in (first_seq..=last_seq.min(before_seq - 1)).rev() {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    let n_bytes = log
                        .get((doc, seq))?
                        .map_or(0, |v| crate::payload_len(v.value()));
                    out.push(UpdateAuthor {
                        seq,
                        at_ms,
                        author: author.clone(),
                        n_bytes,
                    });
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOp;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("t.redb")).expect("open");
        (dir, store)
    }

    fn alice() -> Author {
        Author {
            sub: Some("alice".into()),
            name: "Alice Ä".into(),
        }
    }

    fn bob() -> Author {
        Author {
            sub: None,
            name: "peer 7".into(),
        }
    }

    /// Commits version `record` of doc "d" (state `s`), keeping `max_kept` of its kind.
    fn put_version(store: &Store, record: &VersionRecord, max_kept: u64) -> Result<(), StoreError> {
        store.commit(
            &[WriteOp::Version {
                doc: "d",
                record,
                state: b"s",
                max_kept,
            }],
            1,
            true,
        )
    }

    fn record(id: u64, kind: VersionKind, seq: u64) -> VersionRecord {
        VersionRecord {
            id,
            kind,
            name: (kind == VersionKind::Named).then(|| format!("v{id}")),
            author: alice(),
            created_ms: 1000 + id,
            seq,
            size_bytes: 3,
            authors: vec![alice(), bob()],
        }
    }

    #[test]
    fn records_and_authors_round_trip() {
        for author in [alice(), bob()] {
            assert_eq!(Author::decode(&author.encode()), Some(author));
        }
        for kind in [VersionKind::Named, VersionKind::Auto, VersionKind::Restore] {
            let r = record(4, kind, 9);
            assert_eq!(VersionRecord::decode("d", 4, &r.encode()).unwrap(), r);
        }
        let bytes = record(1, VersionKind::Named, 1).encode();
        for len in 0..bytes.len() {
            assert!(
                VersionRecord::decode("d", 1, &bytes[..len]).is_err(),
                "{len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(VersionRecord::decode("d", 1, &trailing).is_err());
        assert_eq!(Author::decode(&[2, 0, 0, 0, 0]), None);
    }

    #[test]
    fn appends_record_interned_authors_and_compaction_keeps_what_versions_need() {
        let (_dir, store) = open();
        let (a, b) = (alice().encode(), bob().encode());
        let append = |seq, author: &[u8]| {
            let ops = [WriteOp::Append {
                doc: "d",
                seq,
                update: b"u",
                author: Some(author),
            }];
            store.commit(&ops, 10 * seq, true).unwrap();
        };
        append(1, &a);
        append(2, &b);
        append(3, &a);
        let log = store.update_authors("d", u64::MAX, 10).unwrap();
        let seqs: Vec<(u64, u64, String, u64)> = log
            .iter()
            .map(|e| (e.seq, e.at_ms, e.author.name.clone(), e.n_bytes))
            .collect();
        assert_eq!(
            seqs,
            vec![
                (3, 30, "Alice Ä".into(), 1),
                (2, 20, "peer 7".into(), 1),
                (1, 10, "Alice Ä".into(), 1)
            ]
        );
        assert_eq!(store.update_authors("d", 3, 1).unwrap()[0].seq, 2);
        assert_eq!(
            store.history_head("d").unwrap().authors_since,
            vec![alice(), bob()]
        );
        // A version at seq 2, then compaction of everything: rows after the version stay.
        let v = record(1, VersionKind::Named, 2);
        store
            .commit(
                &[WriteOp::Version {
                    doc: "d",
                    record: &v,
                    state: b"S2",
                    max_kept: 10,
                }],
                40,
                true,
            )
            .unwrap();
        store
            .commit(
                &[WriteOp::Compact {
                    doc: "d",
                    upto_seq: 3,
                    snapshot: b"S3",
                }],
                50,
                true,
            )
            .unwrap();
        let log = store.update_authors("d", u64::MAX, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].seq, log[0].n_bytes), (3, 0));
        let head = store.history_head("d").unwrap();
        assert_eq!(head.last_version, Some(v.clone()));
        assert_eq!(head.authors_since, vec![alice()]);
        assert_eq!(store.version("d", 1).unwrap(), Some((v, b"S2".to_vec())));
    }

    #[test]
    fn updates_of_one_author_in_one_commit_share_a_row_and_list_one_by_one() {
        let (_dir, store) = open();
        let (a, b) = (alice().encode(), bob().encode());
        let by = [&a, &a, &b, &b, &a];
        let ops: Vec<WriteOp<'_>> = by
            .iter()
            .enumerate()
            .map(|(i, author)| WriteOp::Append {
                doc: "d",
                seq: i as u64 + 1,
                update: b"u",
                author: Some(author),
            })
            .collect();
        store.commit(&ops, 7, true).unwrap();
        {
            let db = store.db().unwrap();
            let txn = db.begin_read().unwrap();
            let rows = txn.open_table(UPDATE_AUTHORS).unwrap();
            assert_eq!(redb::ReadableTableMetadata::len(&rows).unwrap(), 3);
        }
        let listed: Vec<(u64, String)> = store
            .update_authors("d", u64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.author.name))
            .collect();
        let expected: Vec<(u64, String)> = [
            (5, "Alice Ä"),
            (4, "peer 7"),
            (3, "peer 7"),
            (2, "Alice Ä"),
            (1, "Alice Ä"),
        ]
        .iter()
        .map(|(s, n)| (*s, n.to_string()))
        .collect();
        assert_eq!(listed, expected);
        let page: Vec<u64> = store
            .update_authors("d", 4, 2)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, vec![3, 2]);
        // A version at seq 3 (inside bob's run), then compaction of everything: bob's run
        // reaches past the version and stays, with alice's last run.
        let v = record(1, VersionKind::Named, 3);
        store
            .commit(
                &[
                    WriteOp::Version {
                        doc: "d",
                        record: &v,
                        state: b"S",
                        max_kept: 1,
                    },
                    WriteOp::Compact {
                        doc: "d",
                        upto_seq: 5,
                        snapshot: b"S5",
                    },
                ],
                8,
                true,
            )
            .unwrap();
        let seqs: Vec<u64> = store
            .update_authors("d", u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        assert_eq!(
            store.history_head("d").unwrap().authors_since,
            vec![bob(), alice()]
        );
    }

    #[test]
    fn only_automatic_versions_are_pruned() {
        let (_dir, store) = open();
        let kinds = [
            VersionKind::Auto,
            VersionKind::Named,
            VersionKind::Auto,
            VersionKind::Restore,
            VersionKind::Auto,
            VersionKind::Auto,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let id = i as u64 + 1;
            let r = record(id, kind, id);
            put_version(&store, &r, 2).unwrap();
        }
        let ids: Vec<u64> = store
            .list_versions("d")
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![6, 5, 4, 2]);
        assert_eq!(store.version("d", 1).unwrap(), None);
        // Ids only grow.
        let stale = record(3, VersionKind::Named, 9);
        let res = put_version(&store, &stale, 2);
        assert!(matches!(res, Err(StoreError::Corrupt { .. })), "{res:?}");
        assert!(store.list_versions("other").unwrap().is_empty());
    }

    #[test]
    fn a_cap_of_zero_keeps_the_version_just_written_and_restore_versions_are_capped() {
        let (_dir, store) = open();
        let put = |id: u64, kind: VersionKind, keep: u64| {
            let r = record(id, kind, id);
            put_version(&store, &r, keep).unwrap();
        };
        let ids = || -> Vec<u64> {
            store
                .list_versions("d")
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect()
        };
        put(1, VersionKind::Auto, 0);
        assert_eq!(
            ids(),
            vec![1],
            "the automatic version just announced exists"
        );
        put(2, VersionKind::Auto, 0);
        assert_eq!(ids(), vec![2]);
        assert!(store.version("d", 2).unwrap().is_some());
        // After a reload the next id is past the newest, never a reused one.
        assert_eq!(store.history_head("d").unwrap().last_version_id, 2);
        put(3, VersionKind::Named, 1);
        put(4, VersionKind::Named, 1);
        for id in 5..=8 {
            put(id, VersionKind::Restore, 2);
        }
        // Restore versions beyond the cap go, oldest first; named ones never do.
        assert_eq!(ids(), vec![8, 7, 4, 3, 2]);
        assert_eq!(store.version("d", 6).unwrap(), None);
    }

    #[test]
    fn a_version_record_of_an_unknown_layout_affects_only_itself() {
        let (_dir, store) = open();
        for id in 1..=3 {
            let r = record(id, VersionKind::Named, id);
            put_version(&store, &r, 2).unwrap();
        }
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            let sealed = checksum::seal(VERSIONS.name(), ("d", 3u64), &[9u8, 9]);
            txn.open_table(VERSIONS)
                .unwrap()
                .insert(("d", 3), sealed.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let ids: Vec<u64> = store
            .list_versions("d")
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![2, 1]);
        assert!(matches!(
            store.version("d", 3),
            Err(StoreError::CorruptRecord { .. })
        ));
        let head = store.history_head("d").unwrap();
        assert_eq!(
            (head.last_version_id, head.last_version.map(|v| v.id)),
            (3, Some(2))
        );
    }

    /// A flipped byte in a version's metadata or state used to be served (the state as wrong
    /// content, the metadata skipped or misread); with format version 2 the checksum fails and
    /// the doc's history calls report `Corrupt { doc }`, while other docs read normally.
    #[test]
    fn a_flipped_byte_in_a_version_fails_that_doc_only() {
        let (_dir, store) = open();
        for doc in ["d", "e"] {
            let mut r = record(1, VersionKind::Named, 1);
            r.name = Some(format!("{doc} v1"));
            store
                .commit(
                    &[WriteOp::Version {
                        doc,
                        record: &r,
                        state: b"state bytes",
                        max_kept: 2,
                    }],
                    1,
                    true,
                )
                .unwrap();
        }
        let flip = |table: TableDefinition<'static, (&'static str, u64), &'static [u8]>| {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(table).unwrap();
                let mut stored = table.get(("d", 1)).unwrap().unwrap().value().to_vec();
                let last = stored.len() - 1;
                stored[last] ^= 0x20;
                table.insert(("d", 1), stored.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        };
        flip(VERSION_STATES);
        assert!(matches!(
            store.version("d", 1),
            Err(StoreError::Corrupt { ref doc, .. }) if doc == "d"
        ));
        assert_eq!(store.list_versions("d").unwrap().len(), 1);
        flip(VERSIONS);
        assert!(matches!(
            store.list_versions("d"),
            Err(StoreError::Corrupt { ref doc, .. }) if doc == "d"
        ));
        assert!(matches!(
            store.history_head("d"),
            Err(StoreError::Corrupt { ref doc, .. }) if doc == "d"
        ));
        let (record, state) = store.version("e", 1).unwrap().unwrap();
        assert_eq!(
            (record.name.as_deref(), state.as_slice()),
            (Some("e v1"), &b"state bytes"[..])
        );
    }

    #[test]
    fn a_file_without_history_tables_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            for table in [VERSIONS, VERSION_STATES] {
                txn.delete_table(table).unwrap();
            }
            txn.delete_table(UPDATE_AUTHORS).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert!(store.list_versions("d").unwrap().is_empty());
        assert_eq!(store.version("d", 1).unwrap(), None);
        assert_eq!(store.history_head("d").unwrap(), HistoryHead::default());
        assert!(store.update_authors("d", u64::MAX, 5).unwrap().is_empty());
    }
}
