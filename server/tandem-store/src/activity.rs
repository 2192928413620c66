//! The activity feed: who did what to which doc or file, newest first.
//!
//! The store keeps entries as opaque, versioned records ([`ActivityEntry`]) under increasing
//! ids, with two indexes (by path and by actor) so that a filtered page reads only the rows of
//! that path or actor. What an entry means (edit sessions, kinds, the `details` JSON) belongs to
//! the server (`tandem-server/src/activity/`). The byte layout is in `protocol-spec/storage.md`.
//!
//! Invariants: an entry and its index rows are written in one transaction; the paths and actor
//! of an entry never change once written (only its end time, counts and details do), so its
//! index rows stay valid when it is extended. Ids are never reused: the next id is a counter
//! that survives pruning.

use redb::{ReadableDatabase, ReadableTable, Table, TableHandle};

use crate::Store;
use crate::checksum::{self, unseal_entry};
use crate::error::StoreError;
use crate::record::{Reader, put_str, put_u32};
use crate::schema::{
    ACTIVITY, ACTIVITY_BY_ACTOR, ACTIVITY_BY_PATH, ACTIVITY_COUNTERS, NEXT_OUTBOX_SEQ,
    WEBHOOK_OUTBOX, WEBHOOKS,
};
use crate::space::WriteKind;
use crate::webhooks::OutboxDelivery;

/// The version byte at the start of every encoded [`ActivityEntry`].
const ENTRY_VERSION: u8 = 1;
/// Counter key: the id the next entry gets.
const NEXT_ENTRY_ID: &str = "activity_next_id";
/// Entries of one path looked at when searching for an edit session to extend.
const MAX_SESSION_SEARCH: usize = 256;
/// Paths a folder (`prefix`) query merges the index rows of; a folder with more paths is read
/// from the whole feed, newest first, within the page's scan budget (and a cursor).
const MAX_PREFIX_PATHS: usize = 1024;
/// Entries removed by one `prune_activity` call, so a prune never holds the writer for long.
const MAX_PRUNE: usize = 10_000;

/// One line of the activity feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEntry {
    /// Increasing, never reused.
    pub id: u64,
    /// `doc.edited`, `file.uploaded`, ... (the server's vocabulary).
    pub kind: String,
    /// The doc or file the entry is about.
    pub path: String,
    /// Further paths it reveals and is found under (the old name of a renamed file).
    pub other_paths: Vec<String>,
    /// The verified account id, if authentication was on.
    pub actor_sub: Option<String>,
    /// The name shown.
    pub actor_name: String,
    /// When it began, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it last grew (equal to `started_ms` for a one-off action).
    pub ended_ms: u64,
    /// Updates in an edit session; 0 otherwise.
    pub n_updates: u64,
    /// Kind-specific details as JSON text; opaque to the store.
    pub details: String,
}

impl ActivityEntry {
    /// The id the actor index and filters use: the `sub`, or the name.
    pub fn actor_id(&self) -> &str {
        self.actor_sub.as_deref().unwrap_or(&self.actor_name)
    }

    /// Whether the entry names `path`.
    pub fn names(&self, path: &str) -> bool {
        self.path == path || self.other_paths.iter().any(|other| other == path)
    }

    fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str()).chain(self.other_paths.iter().map(String::as_str))
    }

    /// Version 1: `u8 1`, `kind`, `path`, `u32 n` and `n` other paths, `u8 has_sub` (0 or 1)
    /// and the `sub` when 1, `actor_name`, `u64 started_ms`, `u64 ended_ms`, `u64 n_updates`,
    /// `details`. Strings are a `u32` byte length and UTF-8; integers little-endian. The id is
    /// the key.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_VERSION];
        put_str(&mut out, &self.kind);
        put_str(&mut out, &self.path);
        put_u32(&mut out, self.other_paths.len());
        for path in &self.other_paths {
            put_str(&mut out, path);
        }
        match &self.actor_sub {
            Some(sub) => {
                out.push(1);
                put_str(&mut out, sub);
            }
            None => out.push(0),
        }
        put_str(&mut out, &self.actor_name);
        out.extend_from_slice(&self.started_ms.to_le_bytes());
        out.extend_from_slice(&self.ended_ms.to_le_bytes());
        out.extend_from_slice(&self.n_updates.to_le_bytes());
        put_str(&mut out, &self.details);
        out
    }

    fn decode(id: u64, bytes: &[u8]) -> Result<ActivityEntry, StoreError> {
        let corrupt = |detail: &str| StoreError::CorruptEntry {
            table: "activity",
            key: id.to_string(),
            detail: detail.to_owned(),
        };
        let mut reader = Reader::new(bytes);
        match reader.u8() {
            Some(ENTRY_VERSION) => {}
            Some(version) => return Err(corrupt(&format!("unknown record version {version}"))),
            None => return Err(corrupt("empty record")),
        }
        let decoded = (|| {
            let kind = reader.string()?;
            let path = reader.string()?;
            let n_other = reader.u32()?;
            let mut other_paths = Vec::new();
            for _ in 0..n_other {
                other_paths.push(reader.string()?);
            }
            let actor_sub = match reader.u8()? {
                0 => None,
                1 => Some(reader.string()?),
                _ => return None,
            };
            let entry = ActivityEntry {
                id,
                kind,
                path,
                other_paths,
                actor_sub,
                actor_name: reader.string()?,
                started_ms: reader.u64()?,
                ended_ms: reader.u64()?,
                n_updates: reader.u64()?,
                details: reader.string()?,
            };
            reader.is_empty().then_some(entry)
        })();
        decoded.ok_or_else(|| corrupt("record is truncated, has trailing bytes or is not UTF-8"))
    }
}

/// What the server hands [`Store::write_activity`] in one batch.
#[derive(Debug, Default)]
pub struct ActivityWrite {
    /// New or extended entries (a whole entry replaces the stored one with its id).
    pub entries: Vec<ActivityEntry>,
    /// Webhook deliveries to queue; their `seq` is assigned by the store.
    pub deliveries: Vec<OutboxDelivery>,
    /// The id the next entry will get (kept so ids are never reused).
    pub next_entry_id: u64,
}

/// A page request of the feed. Every filter present must hold.
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery {
    /// Entries naming exactly this path.
    pub path: Option<String>,
    /// Entries with a path starting with this (a folder: `team/`).
    pub prefix: Option<String>,
    /// Entries of this actor id.
    pub actor: Option<String>,
    /// Entries that ended at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Entries with an id below this (the cursor of the previous page).
    pub before_id: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// Longest span of one entry (`ended_ms - started_ms`): below `since_ms` minus this, nothing
    /// can match any more, so the scan stops.
    pub max_span_ms: u64,
    /// Entries examined at most for one page; a page cut short by it still has a cursor.
    pub max_scan: usize,
}

impl Store {
    /// The id the next activity entry gets (1 for a new file).
    pub fn next_activity_id(&self) -> Result<u64, StoreError> {
        self.contain("next_activity_id", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            match txn.open_table(ACTIVITY_COUNTERS) {
                Ok(table) => Ok(table.get(NEXT_ENTRY_ID)?.map_or(1, |v| v.value())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(1),
                Err(error) => Err(error.into()),
            }
        })
    }

    /// Ids for new entries that no other writer of this feed gets, as a range the caller
    /// takes from in order. The redb file is held by one process, whose recorder is its only
    /// writer of entries, so this hands out every id from [`Store::next_activity_id`] on; the
    /// recorder's [`ActivityWrite::next_entry_id`] records how far it got. A shared database
    /// (cluster mode) hands out a short block instead, since several nodes record at once.
    pub fn reserve_activity_ids(&self) -> Result<std::ops::Range<u64>, StoreError> {
        Ok(self.next_activity_id()?..u64::MAX)
    }

    /// Writes entries and queues deliveries in one durable transaction. A delivery to a webhook
    /// that no longer exists (removed after the caller read the registrations) is dropped.
    /// Returns the seqs given to the deliveries queued, in order.
    pub fn write_activity(&self, write: &ActivityWrite) -> Result<Vec<u64>, StoreError> {
        self.contain("write_activity", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let mut seqs = Vec::with_capacity(write.deliveries.len());
                {
                    let mut entries = txn.open_table(ACTIVITY)?;
                    let mut by_path = txn.open_table(ACTIVITY_BY_PATH)?;
                    let mut by_actor = txn.open_table(ACTIVITY_BY_ACTOR)?;
                    let mut counters = txn.open_table(ACTIVITY_COUNTERS)?;
                    for entry in &write.entries {
                        let sealed = checksum::seal(ACTIVITY.name(), entry.id, &entry.encode());
                        entries.insert(entry.id, sealed.as_slice())?;
                        for path in entry.paths() {
                            by_path.insert((path, entry.id), ())?;
                        }
                        by_actor.insert((entry.actor_id(), entry.id), ())?;
                    }
                    let stored_next = counters.get(NEXT_ENTRY_ID)?.map_or(1, |v| v.value());
                    counters.insert(NEXT_ENTRY_ID, stored_next.max(write.next_entry_id))?;
                    if !write.deliveries.is_empty() {
                        let webhooks = txn.open_table(WEBHOOKS)?;
                        let mut outbox = txn.open_table(WEBHOOK_OUTBOX)?;
                        let mut seq = counters.get(NEXT_OUTBOX_SEQ)?.map_or(1, |v| v.value());
                        for delivery in &write.deliveries {
                            if webhooks.get(delivery.webhook_id.as_str())?.is_none() {
                                continue;
                            }
                            let sealed =
                                checksum::seal(WEBHOOK_OUTBOX.name(), seq, &delivery.encode());
                            outbox.insert(seq, sealed.as_slice())?;
                            seqs.push(seq);
                            seq += 1;
                        }
                        counters.insert(NEXT_OUTBOX_SEQ, seq)?;
                    }
                }
                txn.commit()?;
                Ok(seqs)
            })
        })
    }

    /// The newest entry of `kind` by `actor` naming `path`, among the newest entries of that
    /// path (the recorder extends it when it is still a running session).
    pub fn latest_activity(
        &self,
        path: &str,
        kind: &str,
        actor: &str,
    ) -> Result<Option<ActivityEntry>, StoreError> {
        self.contain("latest_activity", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let (entries, by_path) =
                match (txn.open_table(ACTIVITY), txn.open_table(ACTIVITY_BY_PATH)) {
                    (Ok(entries), Ok(by_path)) => (entries, by_path),
                    (Err(redb::TableError::TableDoesNotExist(_)), _)
                    | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(None),
                    (Err(error), _) | (_, Err(error)) => return Err(error.into()),
                };
            for row in by_path
                .range((path, 0)..=(path, u64::MAX))?
                .rev()
                .take(MAX_SESSION_SEARCH)
            {
                let (key, _) = row?;
                let (_, id) = key.value();
                let Some(value) = entries.get(id)? else {
                    continue;
                };
                let Some(entry) = self.read_activity(id, value.value()) else {
                    continue;
                };
                if entry.kind == kind && entry.actor_id() == actor {
                    return Ok(Some(entry));
                }
            }
            Ok(None)
        })
    }

    /// One page of the feed, newest first, of the entries matching `query` that `visible`
    /// accepts. Returns the page and the cursor of the next one (`None` at the end).
    pub fn list_activity(
        &self,
        query: &ActivityQuery,
        mut visible: impl FnMut(&ActivityEntry) -> bool,
    ) -> Result<(Vec<ActivityEntry>, Option<u64>), StoreError> {
        self.contain("list_activity", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let entries = match txn.open_table(ACTIVITY) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
                Err(error) => return Err(error.into()),
            };
            let before = query.before_id.unwrap_or(u64::MAX);
            // Both indexes exist whenever `activity` does (created together).
            let by_path = txn.open_table(ACTIVITY_BY_PATH)?;
            let by_actor = txn.open_table(ACTIVITY_BY_ACTOR)?;
            // The most selective index available gives the candidate ids, newest first.
            let ids: Box<dyn Iterator<Item = Result<u64, StoreError>>> =
                if let Some(path) = query.path.as_deref() {
                    Box::new(
                        by_path
                            .range((path, 0)..(path, before))?
                            .rev()
                            .map(|row| row.map(|(key, _)| key.value().1).map_err(StoreError::from)),
                    )
                } else if let Some(actor) = query.actor.as_deref() {
                    Box::new(
                        by_actor
                            .range((actor, 0)..(actor, before))?
                            .rev()
                            .map(|row| row.map(|(key, _)| key.value().1).map_err(StoreError::from)),
                    )
                } else if let Some(prefix) = query.prefix.as_deref()
                    && let Some(paths) = paths_under(&by_path, prefix)?
                {
                    // The index rows of each path under the prefix, merged newest first.
                    let mut ranges = Vec::with_capacity(paths.len());
                    for path in &paths {
                        ranges.push(by_path.range((path.as_str(), 0)..(path.as_str(), before))?);
                    }
                    Box::new(NewestFirst::new(ranges))
                } else {
                    Box::new(
                        entries
                            .range(..before)?
                            .rev()
                            .map(|row| row.map(|(key, _)| key.value()).map_err(StoreError::from)),
                    )
                };
            let mut page = Vec::new();
            let mut last_scanned = None;
            for (n_scanned, id) in ids.enumerate() {
                let id = id?;
                if n_scanned >= query.max_scan {
                    // The budget ran out: the caller continues from here.
                    return Ok((page, last_scanned));
                }
                last_scanned = Some(id);
                let Some(value) = entries.get(id)? else {
                    continue;
                };
                let Some(entry) = self.read_activity(id, value.value()) else {
                    continue;
                };
                if let Some(since) = query.since_ms {
                    if entry.started_ms.saturating_add(query.max_span_ms) < since {
                        break;
                    }
                    if entry.ended_ms < since {
                        continue;
                    }
                }
                let matches = query.path.as_deref().is_none_or(|path| entry.names(path))
                    && query
                        .prefix
                        .as_deref()
                        .is_none_or(|prefix| entry.paths().any(|path| path.starts_with(prefix)))
                    && query
                        .actor
                        .as_deref()
                        .is_none_or(|actor| entry.actor_id() == actor);
                if !matches || !visible(&entry) {
                    continue;
                }
                if page.len() == query.limit {
                    // One more exists: the page is full and has a successor.
                    let next = page.last().map(|last: &ActivityEntry| last.id);
                    return Ok((page, next));
                }
                page.push(entry);
            }
            Ok((page, None))
        })
    }

    /// Removes entries that ended before `cutoff_ms` (at most a bounded number per call).
    /// Entries are ordered by start, so the scan stops `max_span_ms` past the cutoff. Returns
    /// how many were removed.
    pub fn prune_activity(&self, cutoff_ms: u64, max_span_ms: u64) -> Result<usize, StoreError> {
        self.contain("prune_activity", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let mut n_removed = 0;
                {
                    let mut entries = txn.open_table(ACTIVITY)?;
                    let mut doomed = Vec::new();
                    for row in entries.iter()? {
                        let (key, value) = row?;
                        let id = key.value();
                        // A damaged entry gives no times nor index keys to remove it by: it
                        // stays, refused, and the pruning goes on past it.
                        let Some(entry) = self.read_activity(id, value.value()) else {
                            continue;
                        };
                        if entry.started_ms >= cutoff_ms.saturating_add(max_span_ms)
                            || doomed.len() >= MAX_PRUNE
                        {
                            break;
                        }
                        if entry.ended_ms < cutoff_ms {
                            doomed.push(entry);
                        }
                    }
                    let mut by_path = txn.open_table(ACTIVITY_BY_PATH)?;
                    let mut by_actor = txn.open_table(ACTIVITY_BY_ACTOR)?;
                    for entry in &doomed {
                        remove_entry(&mut entries, &mut by_path, &mut by_actor, entry)?;
                        n_removed += 1;
                    }
                }
                txn.commit()?;
                Ok(n_removed)
            })
        })
    }
}

impl Store {
    /// Entry `id` as stored, or `None` (logged once) if it is damaged: lists and scans leave
    /// it out (`damaged.rs`).
    fn read_activity(&self, id: u64, stored: &[u8]) -> Option<ActivityEntry> {
        match unseal_entry("activity", id, stored)
            .and_then(|payload| ActivityEntry::decode(id, payload))
        {
            Ok(entry) => Some(entry),
            Err(error) => {
                self.skip_damaged(ACTIVITY.name(), &id.to_string(), &error);
                None
            }
        }
    }
}

/// The distinct paths starting with `prefix` in the path index, or `None` when there are more
/// than [`MAX_PREFIX_PATHS`]. Costs one index seek per path.
fn paths_under(
    by_path: &redb::ReadOnlyTable<(&'static str, u64), ()>,
    prefix: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    let mut paths: Vec<String> = Vec::new();
    loop {
        // The first row past every row of the last path found (ids stay below u64::MAX).
        let mut rows = match paths.last() {
            Some(last) => by_path.range((last.as_str(), u64::MAX)..)?,
            None => by_path.range((prefix, 0)..)?,
        };
        let next = loop {
            match rows.next() {
                None => break None,
                Some(row) => {
                    let (key, _) = row?;
                    let (path, _) = key.value();
                    if paths.last().is_none_or(|last| last != path) {
                        break Some(path.to_owned());
                    }
                }
            }
        };
        match next {
            Some(path) if path.starts_with(prefix) => {
                if paths.len() == MAX_PREFIX_PATHS {
                    return Ok(None);
                }
                paths.push(path);
            }
            _ => return Ok(Some(paths)),
        }
    }
}

/// Merges ranges of the path index (each ascending by id) into one sequence of ids, newest
/// first, each id once (an entry under two of the paths appears in two ranges).
struct NewestFirst<'a> {
    ranges: Vec<redb::Range<'a, (&'static str, u64), ()>>,
    /// The next id of each range not yet taken, by range.
    heads: std::collections::BinaryHeap<(u64, usize)>,
    started: bool,
    last: Option<u64>,
}

impl<'a> NewestFirst<'a> {
    fn new(ranges: Vec<redb::Range<'a, (&'static str, u64), ()>>) -> NewestFirst<'a> {
        NewestFirst {
            ranges,
            heads: std::collections::BinaryHeap::new(),
            started: false,
            last: None,
        }
    }

    /// Puts the next (older) id of range `n` among the heads.
    fn advance(&mut self, n: usize) -> Result<(), StoreError> {
        if let Some(row) = self.ranges[n].next_back() {
            let (key, _) = row?;
            self.heads.push((key.value().1, n));
        }
        Ok(())
    }
}

impl Iterator for NewestFirst<'_> {
    type Item = Result<u64, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for n in 0..self.ranges.len() {
                if let Err(error) = self.advance(n) {
                    return Some(Err(error));
                }
            }
        }
        loop {
            let (id, n) = self.heads.pop()?;
            if let Err(error) = self.advance(n) {
                return Some(Err(error));
            }
            if self.last != Some(id) {
                self.last = Some(id);
                return Some(Ok(id));
            }
        }
    }
}

fn remove_entry(
    entries: &mut Table<'_, u64, &[u8]>,
    by_path: &mut Table<'_, (&str, u64), ()>,
    by_actor: &mut Table<'_, (&str, u64), ()>,
    entry: &ActivityEntry,
) -> Result<(), StoreError> {
    entries.remove(entry.id)?;
    for path in entry.paths() {
        by_path.remove((path, entry.id))?;
    }
    by_actor.remove((entry.actor_id(), entry.id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, path: &str, actor: &str, started_ms: u64) -> ActivityEntry {
        ActivityEntry {
            id,
            kind: "doc.edited".into(),
            path: path.into(),
            other_paths: Vec::new(),
            actor_sub: Some(actor.into()),
            actor_name: actor.to_uppercase(),
            started_ms,
            ended_ms: started_ms + 10,
            n_updates: 3,
            details: "{}".into(),
        }
    }

    fn write(store: &Store, entries: Vec<ActivityEntry>) {
        let next_entry_id = entries.iter().map(|e| e.id + 1).max().unwrap_or(1);
        store
            .write_activity(&ActivityWrite {
                entries,
                deliveries: Vec::new(),
                next_entry_id,
            })
            .unwrap();
    }

    fn query(limit: usize) -> ActivityQuery {
        ActivityQuery {
            limit,
            max_span_ms: 1000,
            max_scan: 10_000,
            ..ActivityQuery::default()
        }
    }

    fn ids(page: &[ActivityEntry]) -> Vec<u64> {
        page.iter().map(|e| e.id).collect()
    }

    #[test]
    fn pages_run_newest_first_with_a_cursor_and_filters_use_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path).unwrap();
            let mut entries: Vec<ActivityEntry> = (1..=7)
                .map(|id| entry(id, if id % 2 == 0 { "a" } else { "b" }, "ada", id * 100))
                .collect();
            entries[6].actor_sub = Some("bob".into());
            entries[6].other_paths = vec!["old/b".into()];
            write(&store, entries);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_activity_id().unwrap(), 8);
        let (page, next) = store.list_activity(&query(3), |_| true).unwrap();
        assert_eq!((ids(&page), next), (vec![7, 6, 5], Some(5)));
        let (page, next) = store
            .list_activity(
                &ActivityQuery {
                    before_id: next,
                    ..query(3)
                },
                |_| true,
            )
            .unwrap();
        assert_eq!((ids(&page), next), (vec![4, 3, 2], Some(2)));
        let (page, next) = store
            .list_activity(
                &ActivityQuery {
                    before_id: next,
                    ..query(3)
                },
                |_| true,
            )
            .unwrap();
        assert_eq!((ids(&page), next), (vec![1], None));
        let by_path = ActivityQuery {
            path: Some("a".into()),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&by_path, |_| true).unwrap().0),
            vec![6, 4, 2]
        );
        let old_name = ActivityQuery {
            path: Some("old/b".into()),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&old_name, |_| true).unwrap().0),
            vec![7]
        );
        let by_actor = ActivityQuery {
            actor: Some("bob".into()),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&by_actor, |_| true).unwrap().0),
            vec![7]
        );
        let since = ActivityQuery {
            since_ms: Some(500),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&since, |_| true).unwrap().0),
            vec![7, 6, 5]
        );
        let hidden = store.list_activity(&query(10), |e| e.path != "b").unwrap();
        assert_eq!(ids(&hidden.0), vec![6, 4, 2]);
        let prefix = ActivityQuery {
            prefix: Some("old/".into()),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&prefix, |_| true).unwrap().0),
            vec![7]
        );
    }

    #[test]
    fn a_folder_page_holds_its_newest_entries_whatever_the_paths_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        // A busy first path, then one newer entry of a later path, and one outside the folder.
        let n_busy = 200_001;
        let mut entries: Vec<ActivityEntry> =
            (1..=n_busy).map(|id| entry(id, "f/a", "ada", id)).collect();
        entries.push(entry(n_busy + 1, "f/b", "bob", n_busy + 1));
        entries.push(entry(n_busy + 2, "g/c", "bob", n_busy + 2));
        write(&store, entries);
        let folder = ActivityQuery {
            prefix: Some("f/".into()),
            ..query(2)
        };
        let (page, next) = store.list_activity(&folder, |_| true).unwrap();
        assert_eq!(ids(&page), vec![n_busy + 1, n_busy]);
        assert_eq!(next, Some(n_busy));
        let (page, _) = store
            .list_activity(
                &ActivityQuery {
                    before_id: next,
                    ..folder
                },
                |_| true,
            )
            .unwrap();
        assert_eq!(ids(&page), vec![n_busy - 1, n_busy - 2]);
    }

    #[test]
    fn a_folder_of_many_paths_pages_newest_first_without_losing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        // More paths than are merged, each with entries far apart in time; a rename names two
        // paths of the folder and must appear once.
        let n_paths = MAX_PREFIX_PATHS as u64 + 100;
        let mut entries = Vec::new();
        for id in 1..=2 * n_paths {
            entries.push(entry(id, &format!("f/{:05}", id % n_paths), "ada", id));
        }
        let mut renamed = entry(2 * n_paths + 1, "f/new", "ada", 2 * n_paths + 1);
        renamed.other_paths = vec!["f/00001".into()];
        entries.push(renamed);
        entries.push(entry(2 * n_paths + 2, "other", "ada", 2 * n_paths + 2));
        write(&store, entries);
        for prefix in ["f/", "f/0000"] {
            let mut expected = vec![2 * n_paths + 1];
            expected.extend(
                (1..=2 * n_paths)
                    .rev()
                    .filter(|id| format!("f/{:05}", id % n_paths).starts_with(prefix)),
            );
            let mut all = Vec::new();
            let mut before_id = None;
            loop {
                let (page, next) = store
                    .list_activity(
                        &ActivityQuery {
                            prefix: Some(prefix.into()),
                            before_id,
                            max_scan: 500,
                            ..query(100)
                        },
                        |_| true,
                    )
                    .unwrap();
                all.extend(ids(&page));
                match next {
                    Some(next) => before_id = Some(next),
                    None => break,
                }
            }
            assert_eq!(all, expected, "{prefix}");
        }
    }

    #[test]
    fn an_extended_entry_replaces_the_stored_one_and_is_found_as_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        write(
            &store,
            vec![entry(1, "d", "ada", 100), entry(2, "d", "bob", 150)],
        );
        let mut longer = entry(1, "d", "ada", 100);
        longer.ended_ms = 900;
        longer.n_updates = 40;
        write(&store, vec![longer.clone()]);
        assert_eq!(
            store.latest_activity("d", "doc.edited", "ada").unwrap(),
            Some(longer)
        );
        assert_eq!(
            store.latest_activity("d", "file.uploaded", "ada").unwrap(),
            None
        );
        assert_eq!(
            store.list_activity(&query(10), |_| true).unwrap().0.len(),
            2
        );
    }

    #[test]
    fn pruning_removes_old_entries_and_their_index_rows_but_keeps_ids_growing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        write(
            &store,
            vec![
                entry(1, "d", "ada", 100),
                entry(2, "d", "ada", 200),
                entry(3, "d", "ada", 5000),
            ],
        );
        assert_eq!(store.prune_activity(300, 1000).unwrap(), 2);
        let by_path = ActivityQuery {
            path: Some("d".into()),
            ..query(10)
        };
        assert_eq!(
            ids(&store.list_activity(&by_path, |_| true).unwrap().0),
            vec![3]
        );
        assert_eq!(store.prune_activity(300, 1000).unwrap(), 0);
        assert_eq!(store.next_activity_id().unwrap(), 4);
    }

    /// Regression: one damaged activity entry failed `prune_activity` on every run, so the feed
    /// grew without bound, and failed every page of the feed. Now the damaged entry is left
    /// out (and never served), pruning goes on past it, and the other entries are listed.
    #[test]
    fn a_damaged_entry_is_left_out_and_pruning_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        write(
            &store,
            vec![
                entry(1, "d", "ada", 100),
                entry(2, "d", "ada", 150),
                entry(3, "d", "ada", 200),
                entry(4, "d", "ada", 5000),
            ],
        );
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut entries = txn.open_table(ACTIVITY).unwrap();
                let mut stored = entries.get(2).unwrap().unwrap().value().to_vec();
                stored[4] ^= 0x20;
                entries.insert(2, stored.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(
            ids(&store.list_activity(&query(10), |_| true).unwrap().0),
            vec![4, 3, 1]
        );
        assert_eq!(
            store
                .latest_activity("d", "doc.edited", "ada")
                .unwrap()
                .map(|e| e.id),
            Some(4)
        );
        assert_eq!(store.prune_activity(300, 1000).unwrap(), 2);
        assert_eq!(
            ids(&store.list_activity(&query(10), |_| true).unwrap().0),
            vec![4]
        );
    }

    #[test]
    fn decoding_any_prefix_of_an_entry_fails_without_panicking() {
        let mut full = entry(9, "team/a", "ada", 1);
        full.other_paths = vec!["x".into()];
        full.actor_sub = None;
        let bytes = full.encode();
        for len in 0..bytes.len() {
            assert!(ActivityEntry::decode(9, &bytes[..len]).is_err(), "{len}");
        }
        assert_eq!(ActivityEntry::decode(9, &bytes).unwrap(), full);
    }
}
