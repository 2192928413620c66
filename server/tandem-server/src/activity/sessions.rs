//! Edit sessions: `DocChanged` reports of one author on one doc grouped into one activity
//! entry, and one entry for every other action. Pure: no I/O, no clock, no store; the recorder
//! (`mod.rs`) feeds it events and writes what it returns.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_store::ActivityEntry;

use super::{DOC_EDITED, MAX_SESSION};
use tandem_hub::Actor;

use crate::bus::Event;

/// Groups `DocChanged` reports into edit sessions and makes one entry for every other action.
/// Pure: no I/O; the recorder looks up a session the store has but memory does not (after a
/// restart) with [`Sessions::needs_lookup`] and [`Sessions::adopt`].
pub(crate) struct Sessions {
    gap_ms: u64,
    max_session_ms: u64,
    /// The ids the next entries get, in order: reserved from the store by the recorder
    /// (`ActivityTable::reserve_activity_ids`), so that no other node's recorder uses them.
    ids: Range<u64>,
    /// The newest edit session of each (doc, actor id) seen lately. One per author and doc
    /// edited within the gap, so it holds only what extending the entry needs: the rest of the
    /// entry follows from the key and the event that extends it.
    open: HashMap<(Box<str>, Box<str>), Session>,
}

/// What [`Sessions`] keeps of an open edit entry.
struct Session {
    id: u64,
    started_ms: u64,
    ended_ms: u64,
    n_updates: u64,
    /// The seqs of the entry's details (`None` if a stored entry's details lack them).
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Whether the entry's actor is a verified `sub` (the key's actor id) rather than a name.
    by_sub: bool,
}

impl Sessions {
    /// Sessions whose entries take their ids from `ids`.
    pub(crate) fn new(gap: Duration, ids: Range<u64>) -> Sessions {
        Sessions {
            gap_ms: gap.as_millis() as u64,
            max_session_ms: MAX_SESSION.as_millis() as u64,
            ids,
            open: HashMap::new(),
        }
    }

    /// The id the next entry gets (the start of the reserved range).
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.start
    }

    /// Whether every reserved id is taken: the recorder reserves more before the next event,
    /// or the entry that event would create is not made.
    pub(crate) fn needs_ids(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids freshly reserved, replacing the spent range.
    pub(crate) fn give_ids(&mut self, ids: Range<u64>) {
        self.ids = ids;
    }

    /// Whether an edit by `actor` on `doc` should first look for a stored session.
    pub(crate) fn needs_lookup(&self, doc: &str, actor: &str) -> bool {
        !self.open.contains_key(&(doc.into(), actor.into()))
    }

    /// Takes a stored edit entry as the running session of its doc and actor.
    pub(crate) fn adopt(&mut self, entry: &ActivityEntry) {
        let session = Session {
            id: entry.id,
            started_ms: entry.started_ms,
            ended_ms: entry.ended_ms,
            n_updates: entry.n_updates,
            first_seq: seq_of(&entry.details, "first_seq"),
            last_seq: seq_of(&entry.details, "last_seq"),
            by_sub: entry.actor_sub.is_some(),
        };
        let key = (entry.path.as_str().into(), entry.actor_id().into());
        self.open.insert(key, session);
    }

    /// Drops sessions that can no longer be extended at `now_ms` (memory stays bounded).
    pub(crate) fn forget_ended(&mut self, now_ms: u64) {
        let gap_ms = self.gap_ms;
        self.open
            .retain(|_, session| session.ended_ms.saturating_add(gap_ms) >= now_ms);
    }

    /// The entry `event` creates or extends, if it makes one (and, for a new entry, if an id
    /// is left).
    pub(crate) fn record(&mut self, event: &Event) -> Option<ActivityEntry> {
        let (kind, path, other_paths, actor, at_ms, details) = match event {
            Event::DocChanged {
                doc,
                actor,
                first_seq,
                last_seq,
                n_updates,
                at_ms,
            } => return self.edit(doc, actor, *first_seq, *last_seq, *n_updates, *at_ms),
            Event::FileUploaded {
                path,
                version,
                size,
                sha256,
                content_type,
                actor,
                at_ms,
            } => (
                "file.uploaded",
                path,
                Vec::new(),
                actor,
                *at_ms,
                json!({"version": version, "size": size, "sha256": sha256, "content_type": content_type}),
            ),
            Event::FileRenamed {
                from,
                to,
                actor,
                at_ms,
            } => (
                "file.renamed",
                to,
                vec![from.clone()],
                actor,
                *at_ms,
                json!({"from": from, "to": to}),
            ),
            Event::FileDeleted { path, actor, at_ms } => {
                ("file.deleted", path, Vec::new(), actor, *at_ms, json!({}))
            }
            // Automatic versions (and the one kept before a restore, which its
            // `version.restored` entry stands for) are the server's bookkeeping, not anyone's
            // action: they stay out of the feed (webhooks still hear of them).
            Event::VersionCreated { kind, .. } if kind != "named" => return None,
            Event::VersionCreated {
                doc,
                version,
                name,
                kind,
                actor,
                at_ms,
            } => (
                "version.created",
                doc,
                Vec::new(),
                actor,
                *at_ms,
                json!({"version": version, "name": name, "kind": kind}),
            ),
            Event::VersionRestored {
                doc,
                version,
                actor,
                at_ms,
            } => (
                "version.restored",
                doc,
                Vec::new(),
                actor,
                *at_ms,
                json!({"version": version}),
            ),
            Event::DocPresence { .. }
            | Event::FileLocked { .. }
            | Event::FileUnlocked { .. }
            | Event::Activity { .. }
            | Event::Relayed { .. } => {
                return None;
            }
        };
        let entry = ActivityEntry {
            id: self.take_id()?,
            kind: kind.to_owned(),
            path: path.clone(),
            other_paths,
            actor_sub: actor.sub.clone(),
            actor_name: actor.name.clone(),
            started_ms: at_ms,
            ended_ms: at_ms,
            n_updates: 0,
            details: details.to_string(),
        };
        Some(entry)
    }

    fn take_id(&mut self) -> Option<u64> {
        self.ids.next()
    }

    fn edit(
        &mut self,
        doc: &str,
        actor: &Actor,
        first_seq: u64,
        last_seq: u64,
        n_updates: u64,
        at_ms: u64,
    ) -> Option<ActivityEntry> {
        let key: (Box<str>, Box<str>) = (doc.into(), actor.id().into());
        if let Some(session) = self.open.get_mut(&key) {
            let within_gap = at_ms <= session.ended_ms.saturating_add(self.gap_ms);
            let short_enough = at_ms.saturating_sub(session.started_ms) < self.max_session_ms;
            if within_gap && short_enough {
                session.ended_ms = session.ended_ms.max(at_ms);
                session.n_updates += n_updates;
                session.first_seq = Some(session.first_seq.unwrap_or(first_seq).min(first_seq));
                session.last_seq = Some(session.last_seq.unwrap_or(last_seq).max(last_seq));
                // The name shown is the latest one the author used.
                return Some(edit_entry(&key, session, actor));
            }
        }
        let session = Session {
            id: self.take_id()?,
            started_ms: at_ms,
            ended_ms: at_ms,
            n_updates,
            first_seq: Some(first_seq),
            last_seq: Some(last_seq),
            by_sub: actor.sub.is_some(),
        };
        let entry = edit_entry(&key, &session, actor);
        self.open.insert(key, session);
        Some(entry)
    }
}

/// The entry of an edit session of `key` (doc, actor id), showing `actor`'s current name.
fn edit_entry(key: &(Box<str>, Box<str>), session: &Session, actor: &Actor) -> ActivityEntry {
    let (doc, actor_id) = key;
    // Both seqs are known once the session has been extended or started by an event.
    let details = match (session.first_seq, session.last_seq) {
        (Some(first), Some(last)) => json!({"first_seq": first, "last_seq": last}),
        _ => json!({}),
    };
    ActivityEntry {
        id: session.id,
        kind: DOC_EDITED.to_owned(),
        path: doc.to_string(),
        other_paths: Vec::new(),
        actor_sub: session.by_sub.then(|| actor_id.to_string()),
        actor_name: actor.name.clone(),
        started_ms: session.started_ms,
        ended_ms: session.ended_ms,
        n_updates: session.n_updates,
        details: details.to_string(),
    }
}

fn seq_of(details: &str, field: &str) -> Option<u64> {
    serde_json::from_str::<Value>(details).ok()?[field].as_u64()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::activity::entry_json;

    /// An actor named after its account id; shared with the recorder's tests.
    pub(in crate::activity) fn actor(sub: &str) -> Actor {
        Actor {
            sub: Some(sub.into()),
            name: sub.to_uppercase(),
        }
    }

    /// A `doc.changed` report of seqs `first_seq..=last_seq`; shared with the recorder's tests.
    pub(in crate::activity) fn changed(
        doc: &str,
        who: &str,
        first_seq: u64,
        last_seq: u64,
        at_ms: u64,
    ) -> Event {
        Event::DocChanged {
            doc: doc.into(),
            actor: actor(who),
            first_seq,
            last_seq,
            n_updates: last_seq - first_seq + 1,
            at_ms,
        }
    }

    #[test]
    fn edits_within_the_gap_extend_one_entry_per_author_and_doc() {
        let mut sessions = Sessions::new(Duration::from_secs(300), 1..u64::MAX);
        let a1 = sessions.record(&changed("d", "ada", 1, 5, 1_000)).unwrap();
        let b1 = sessions.record(&changed("d", "bob", 6, 6, 1_500)).unwrap();
        let a2 = sessions.record(&changed("d", "ada", 7, 9, 2_000)).unwrap();
        let other_doc = sessions.record(&changed("e", "ada", 1, 1, 2_100)).unwrap();
        assert_eq!((a1.id, b1.id, a2.id, other_doc.id), (1, 2, 1, 3));
        assert_eq!(
            (a2.started_ms, a2.ended_ms, a2.n_updates),
            (1_000, 2_000, 8)
        );
        assert_eq!(seq_of(&a2.details, "first_seq"), Some(1));
        assert_eq!(seq_of(&a2.details, "last_seq"), Some(9));
        // Past the gap: a new session.
        let a3 = sessions
            .record(&changed("d", "ada", 10, 10, 2_000 + 300_001))
            .unwrap();
        assert_eq!((a3.id, a3.n_updates), (4, 1));
        assert_eq!(sessions.next_id(), 5);
    }

    #[test]
    fn new_entries_take_reserved_ids_only_and_sessions_extend_without_one() {
        // Cluster mode: a block of one id at a time, from a sequence other nodes draw from too.
        let mut sessions = Sessions::new(Duration::from_secs(300), 7..8);
        let a1 = sessions.record(&changed("d", "ada", 1, 1, 1_000)).unwrap();
        assert_eq!(a1.id, 7);
        assert!(sessions.needs_ids());
        assert!(
            sessions.record(&changed("d", "bob", 2, 2, 1_100)).is_none(),
            "no id left: no entry, never a reused id"
        );
        let a2 = sessions.record(&changed("d", "ada", 3, 3, 1_200)).unwrap();
        assert_eq!((a2.id, a2.n_updates), (7, 2), "extending needs no id");
        sessions.give_ids(12..13);
        let b1 = sessions.record(&changed("d", "bob", 4, 4, 1_300)).unwrap();
        assert_eq!(b1.id, 12);
        assert_eq!(sessions.next_id(), 13);
    }

    #[test]
    fn a_stored_session_is_extended_after_a_restart_and_a_long_one_is_split() {
        let mut sessions = Sessions::new(Duration::from_secs(300), 10..u64::MAX);
        let stored = ActivityEntry {
            id: 4,
            kind: DOC_EDITED.into(),
            path: "d".into(),
            other_paths: Vec::new(),
            actor_sub: Some("ada".into()),
            actor_name: "ADA".into(),
            started_ms: 1_000,
            ended_ms: 5_000,
            n_updates: 3,
            details: json!({"first_seq": 1, "last_seq": 3}).to_string(),
        };
        assert!(sessions.needs_lookup("d", "ada"));
        sessions.adopt(&stored);
        assert!(!sessions.needs_lookup("d", "ada"));
        let extended = sessions.record(&changed("d", "ada", 4, 4, 6_000)).unwrap();
        assert_eq!((extended.id, extended.n_updates), (4, 4));
        assert_eq!(extended.actor_sub.as_deref(), Some("ada"));
        assert_eq!(seq_of(&extended.details, "first_seq"), Some(1));
        assert_eq!(seq_of(&extended.details, "last_seq"), Some(4));
        // Without a verified identity the entry stays anonymous.
        let anonymous = |at_ms| Event::DocChanged {
            doc: "d".into(),
            actor: Actor {
                sub: None,
                name: "peer 9".into(),
            },
            first_seq: 5,
            last_seq: 5,
            n_updates: 1,
            at_ms,
        };
        let first = sessions.record(&anonymous(6_100)).unwrap();
        let again = sessions.record(&anonymous(6_200)).unwrap();
        assert_eq!((first.id, again.id, again.n_updates), (10, 10, 2));
        assert_eq!(
            (again.actor_sub, again.actor_name.as_str()),
            (None, "peer 9")
        );
        // Edits every minute for more than MAX_SESSION: a new entry once it is reached.
        let mut at = 6_000;
        let mut ids = std::collections::BTreeSet::new();
        while at < 1_000 + MAX_SESSION.as_millis() as u64 + 120_000 {
            at += 60_000;
            ids.insert(sessions.record(&changed("d", "ada", 5, 5, at)).unwrap().id);
        }
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![4, 11]);
        sessions.forget_ended(at + 300_001);
        assert!(sessions.needs_lookup("d", "ada"));
    }

    #[test]
    fn file_and_version_actions_make_one_entry_each() {
        let mut sessions = Sessions::new(Duration::from_secs(300), 1..u64::MAX);
        let renamed = sessions
            .record(&Event::FileRenamed {
                from: "a/x.zip".into(),
                to: "a/y.zip".into(),
                actor: actor("ada"),
                at_ms: 7,
            })
            .unwrap();
        assert_eq!(renamed.kind, "file.renamed");
        assert_eq!(renamed.path, "a/y.zip");
        assert_eq!(renamed.other_paths, vec!["a/x.zip".to_owned()]);
        let json = entry_json(&renamed);
        assert_eq!(json["details"]["from"], "a/x.zip");
        assert!(json.get("n_updates").is_none());
        let restored = sessions
            .record(&Event::VersionRestored {
                doc: "d".into(),
                version: 3,
                actor: actor("bob"),
                at_ms: 8,
            })
            .unwrap();
        assert_eq!(
            (restored.id, restored.kind.as_str()),
            (2, "version.restored")
        );
        assert!(
            sessions
                .record(&Event::DocPresence {
                    doc: "d".into(),
                    peers: 1
                })
                .is_none()
        );
    }
}
