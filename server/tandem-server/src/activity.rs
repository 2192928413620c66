//! The activity recorder and `GET /api/activity`.
//!
//! The recorder is one task that consumes the lossless event queue of the bus (`events.rs`) in
//! order. It turns events into activity entries (edits of one author on one doc grouped into
//! sessions, one entry per file or version action), queues webhook deliveries for them
//! (`webhook.rs`, with `doc.changed` debounced per doc), and writes both in batches: one durable
//! redb transaction per [`BATCH_INTERVAL`] or [`BATCH_MAX_EVENTS`] events, so a busy server does
//! not fsync per event. Only after a batch is committed are its entries shown to live streams
//! (`Event::Activity`) and the webhook worker woken.
//!
//! Shutdown: the recorder is not on the server's main task tracker, because it must outlive the
//! doc actors, whose final `DocChanged` events it records. `lib.rs::run` closes it (its own
//! `Lifecycle`) only after the main tracker is empty; it then drains what is queued, turns
//! pending debounced changes into outbox deliveries, commits once more and stops. See
//! ARCHITECTURE.md, "Activity and webhooks".

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_store::{ActivityEntry, ActivityQuery, ActivityWrite, OutboxDelivery, Store};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::auth::Claims;
use crate::events::{Actor, Event, Events, now_ms};
use crate::http::{ApiError, AppState};
use crate::webhook::{self, WebhookConfig, Webhooks};

/// Longest time an event waits in memory before its batch is committed.
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Events that make a batch commit at once.
pub(crate) const BATCH_MAX_EVENTS: usize = 256;
/// An edit session that has run this long starts a new entry even while edits keep coming, so
/// every entry spans at most this (the feed's `since` filter relies on it).
pub(crate) const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);
/// How often entries past the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Page size of `GET /api/activity` without `limit`.
const DEFAULT_LIMIT: usize = 50;
/// Largest page.
const MAX_LIMIT: usize = 500;
/// Entries one page request examines at most (filters that hide most entries stop early and
/// return a cursor).
const MAX_SCAN: usize = 20_000;

/// Kinds of activity entries.
pub(crate) const DOC_EDITED: &str = "doc.edited";

/// Settings of the activity feed.
#[derive(Debug, Clone)]
pub struct ActivityConfig {
    /// Edits of one author on one doc closer than this extend the same entry.
    pub session_gap: Duration,
    /// Entries that ended longer ago than this are deleted.
    pub retention: Duration,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            session_gap: Duration::from_secs(5 * 60),
            retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Groups `DocChanged` reports into edit sessions and makes one entry for every other action.
/// Pure: no I/O; the recorder looks up a session the store has but memory does not (after a
/// restart) with [`Sessions::needs_lookup`] and [`Sessions::adopt`].
pub(crate) struct Sessions {
    gap_ms: u64,
    max_session_ms: u64,
    /// The id the next entry gets.
    next_id: u64,
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
    pub(crate) fn new(gap: Duration, next_id: u64) -> Sessions {
        Sessions {
            gap_ms: gap.as_millis() as u64,
            max_session_ms: MAX_SESSION.as_millis() as u64,
            next_id,
            open: HashMap::new(),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
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

    /// The entry `event` creates or extends, if it makes one.
    pub(crate) fn record(&mut self, event: &Event) -> Option<ActivityEntry> {
        let (kind, path, other_paths, actor, at_ms, details) = match event {
            Event::DocChanged {
                doc,
                actor,
                first_seq,
                last_seq,
                n_updates,
                at_ms,
            } => return Some(self.edit(doc, actor, *first_seq, *last_seq, *n_updates, *at_ms)),
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
            Event::DocPresence { .. } | Event::Activity { .. } => return None,
        };
        let entry = ActivityEntry {
            id: self.take_id(),
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

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn edit(
        &mut self,
        doc: &str,
        actor: &Actor,
        first_seq: u64,
        last_seq: u64,
        n_updates: u64,
        at_ms: u64,
    ) -> ActivityEntry {
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
                return edit_entry(&key, session, actor);
            }
        }
        let session = Session {
            id: self.take_id(),
            started_ms: at_ms,
            ended_ms: at_ms,
            n_updates,
            first_seq: Some(first_seq),
            last_seq: Some(last_seq),
            by_sub: actor.sub.is_some(),
        };
        let entry = edit_entry(&key, &session, actor);
        self.open.insert(key, session);
        entry
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

/// The JSON of an entry (`EntryJson` in `protocol-spec/activity.md`).
pub(crate) fn entry_json(entry: &ActivityEntry) -> Value {
    let details: Value = serde_json::from_str(&entry.details).unwrap_or_else(|_| json!({}));
    let mut json = json!({
        "id": entry.id,
        "kind": entry.kind,
        "path": entry.path,
        "actor": {"sub": entry.actor_sub, "name": entry.actor_name},
        "started_ms": entry.started_ms,
        "ended_ms": entry.ended_ms,
        "details": details,
    });
    if entry.kind == DOC_EDITED {
        json["n_updates"] = json!(entry.n_updates);
    }
    json
}

/// What the recorder has taken in since its last commit.
#[derive(Default)]
struct Batch {
    /// New and extended entries by id (an entry extended twice is written once).
    entries: BTreeMap<u64, ActivityEntry>,
    deliveries: Vec<OutboxDelivery>,
    n_events: usize,
    /// When the oldest uncommitted event arrived.
    since: Option<Instant>,
}

/// The recorder task's state.
pub(crate) struct Recorder {
    store: Arc<Store>,
    events: Events,
    webhooks: Webhooks,
    config: ActivityConfig,
    sessions: Sessions,
    debouncer: webhook::Debouncer,
    batch: Batch,
}

impl Recorder {
    pub(crate) async fn new(
        store: Arc<Store>,
        events: Events,
        webhooks: Webhooks,
        config: ActivityConfig,
        webhook_config: &WebhookConfig,
    ) -> Result<Recorder, tandem_store::StoreError> {
        let next_id = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.next_activity_id())
                .await
                .map_err(|_| tandem_store::StoreError::Closed)??
        };
        Ok(Recorder {
            store,
            events,
            webhooks,
            sessions: Sessions::new(config.session_gap, next_id),
            config,
            debouncer: webhook::Debouncer::new(webhook_config),
            batch: Batch::default(),
        })
    }

    /// Consumes `records` until `close` is cancelled (then drains what is queued) or every
    /// sender is gone, committing in batches; commits everything before returning.
    pub(crate) async fn run(
        mut self,
        mut records: mpsc::UnboundedReceiver<Event>,
        close: CancellationToken,
    ) {
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut received = Vec::with_capacity(BATCH_MAX_EVENTS);
        loop {
            let flush_at = self.batch.since.map(|since| since + BATCH_INTERVAL);
            let debounce_at = self.debouncer.deadline();
            tokio::select! {
                biased;
                // Closed by `run` after every doc actor finished: what they published is
                // already in the queue, so draining it without waiting loses nothing.
                () = close.cancelled() => {
                    while let Ok(event) = records.try_recv() {
                        self.handle(event).await;
                    }
                    break;
                }
                n = records.recv_many(&mut received, BATCH_MAX_EVENTS) => {
                    if n == 0 {
                        break;
                    }
                    for event in received.drain(..) {
                        self.handle(event).await;
                    }
                }
                () = sleep_until_opt(flush_at) => self.commit().await,
                () = sleep_until_opt(debounce_at) => {
                    let due = self.debouncer.take_due(Instant::now());
                    self.queue_changes(due);
                }
                _ = prune.tick() => self.prune().await,
            }
            if self.batch.n_events >= BATCH_MAX_EVENTS {
                self.commit().await;
            }
        }
        // Debounced changes not yet sent go to the outbox now, so a restart delivers them.
        let pending = self.debouncer.take_all();
        self.queue_changes(pending);
        self.commit().await;
        info!(
            next_entry_id = self.sessions.next_id(),
            "activity recorder stopped"
        );
    }

    async fn handle(&mut self, event: Event) {
        if webhook::event_name(&event).is_none() {
            // Presence and live activity: neither recorded nor delivered.
            return;
        }
        if let Event::DocChanged { doc, actor, .. } = &event
            && self.sessions.needs_lookup(doc, actor.id())
        {
            let store = self.store.clone();
            let (doc, actor) = (doc.clone(), actor.id().to_owned());
            let found = tokio::task::spawn_blocking(move || {
                store.latest_activity(&doc, DOC_EDITED, &actor)
            })
            .await;
            match found {
                Ok(Ok(Some(entry))) => self.sessions.adopt(&entry),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => error!(%error, "looking up an edit session"),
                Err(error) => error!(%error, "looking up an edit session"),
            }
        }
        // Webhooks hear of every event, also of those the feed leaves out (automatic
        // versions).
        let entry = self.sessions.record(&event);
        let webhooks = self.webhooks.current();
        if let Event::DocChanged {
            doc,
            actor,
            first_seq,
            last_seq,
            n_updates,
            at_ms,
        } = &event
        {
            if webhook::wants(&webhooks, webhook::DOC_CHANGED, &[doc]) {
                let change = webhook::Change {
                    actor: actor.clone(),
                    first_seq: *first_seq,
                    last_seq: *last_seq,
                    n_updates: *n_updates,
                    at_ms: *at_ms,
                };
                self.debouncer.add(Instant::now(), doc, change);
            }
        } else if let Some(name) = webhook::event_name(&event) {
            let paths = event.paths();
            let data = webhook::event_data(&event);
            self.batch.deliveries.extend(
                webhooks
                    .iter()
                    .filter(|hook| webhook::matches(hook, name, &paths))
                    .map(|hook| webhook::new_delivery(hook, name, &data, now_ms())),
            );
        }
        if let Some(entry) = entry {
            self.batch.entries.insert(entry.id, entry);
        }
        self.batch.n_events += 1;
        self.batch.since.get_or_insert_with(Instant::now);
    }

    /// Turns debounced doc changes into deliveries of the current batch.
    fn queue_changes(&mut self, changes: Vec<(String, webhook::PendingChange)>) {
        if changes.is_empty() {
            return;
        }
        let webhooks = self.webhooks.current();
        for (doc, change) in changes {
            let data = change.data(&doc);
            self.batch.deliveries.extend(
                webhooks
                    .iter()
                    .filter(|hook| webhook::matches(hook, webhook::DOC_CHANGED, &[&doc]))
                    .map(|hook| webhook::new_delivery(hook, webhook::DOC_CHANGED, &data, now_ms())),
            );
        }
        self.batch.since.get_or_insert_with(Instant::now);
    }

    /// Writes the batch in one transaction, then shows its entries live and wakes the webhook
    /// worker. A failed commit keeps the batch for the next try.
    async fn commit(&mut self) {
        if self.batch.entries.is_empty() && self.batch.deliveries.is_empty() {
            self.batch = Batch::default();
            return;
        }
        let write = ActivityWrite {
            entries: self.batch.entries.values().cloned().collect(),
            deliveries: std::mem::take(&mut self.batch.deliveries),
            next_entry_id: self.sessions.next_id(),
        };
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = store.write_activity(&write);
            (write, result)
        })
        .await;
        let (write, result) = match result {
            Ok(done) => done,
            Err(error) => {
                error!(%error, "activity commit task failed");
                return;
            }
        };
        if let Err(error) = result {
            if error.read_only_reason().is_some() {
                // The store logged the full disk once; the batch waits for space.
                debug!(%error, n_entries = write.entries.len(), "storing activity refused; retrying");
            } else {
                error!(%error, n_entries = write.entries.len(), "storing activity failed; retrying");
            }
            self.batch.deliveries = write.deliveries;
            self.batch.since = Some(Instant::now());
            return;
        }
        debug!(
            n_entries = write.entries.len(),
            n_deliveries = write.deliveries.len(),
            n_events = self.batch.n_events,
            "activity committed"
        );
        for entry in &write.entries {
            let mut paths = vec![entry.path.clone()];
            paths.extend(entry.other_paths.iter().cloned());
            self.events.publish_live(Event::Activity {
                paths,
                entry: entry_json(entry),
            });
        }
        if !write.deliveries.is_empty() {
            self.webhooks.wake();
        }
        self.batch = Batch::default();
        self.sessions.forget_ended(now_ms());
    }

    async fn prune(&mut self) {
        let cutoff = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        let store = self.store.clone();
        let span = MAX_SESSION.as_millis() as u64;
        match tokio::task::spawn_blocking(move || store.prune_activity(cutoff, span)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n_removed)) => info!(n_removed, "old activity entries deleted"),
            Ok(Err(error)) => error!(%error, "pruning activity"),
            Err(error) => error!(%error, "pruning activity"),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Query of `GET /api/activity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    doc: Option<String>,
    prefix: Option<String>,
    user: Option<String>,
    since: Option<u64>,
    before: Option<String>,
    limit: Option<usize>,
    /// Tokens may travel in the query (`?token=`), as for every other endpoint.
    #[allow(dead_code)]
    token: Option<String>,
}

/// `GET /api/activity`: a page of entries the token may read, newest first.
pub(crate) async fn feed(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = crate::http::request_claims(&state, &headers, &uri)?;
    let Query(params) = Query::<FeedParams>::try_from_uri(&uri)
        .map_err(|rejection| ApiError::BadQuery(rejection.body_text()))?;
    let before_id = match params.before.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<u64>()
                .map_err(|_| ApiError::BadQuery(format!("before: not a cursor: {cursor:?}")))?,
        ),
    };
    let limit = match params.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(ApiError::BadQuery("limit must be at least 1".into())),
        Some(limit) => limit.min(MAX_LIMIT),
    };
    let query = ActivityQuery {
        path: params.doc.filter(|doc| !doc.is_empty()),
        prefix: params.prefix.filter(|prefix| !prefix.is_empty()),
        actor: params.user.filter(|user| !user.is_empty()),
        since_ms: params.since,
        before_id,
        limit,
        max_span_ms: MAX_SESSION.as_millis() as u64,
        max_scan: MAX_SCAN,
    };
    let store = state.hub.store().clone();
    let (page, next) = tokio::task::spawn_blocking(move || {
        store.list_activity(&query, |entry| visible(claims.as_ref(), entry))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|error| {
        error!(%error, "reading activity");
        ApiError::Internal
    })?;
    let entries: Vec<Value> = page.iter().map(entry_json).collect();
    let next = next.map(|id| id.to_string());
    Ok(axum::Json(json!({ "entries": entries, "next": next })).into_response())
}

/// Whether the holder of `claims` may read every path of `entry` (`None`: authentication off).
fn visible(claims: Option<&Claims>, entry: &ActivityEntry) -> bool {
    claims.is_none_or(|claims| {
        claims.role_for(&entry.path).is_some()
            && entry
                .other_paths
                .iter()
                .all(|path| claims.role_for(path).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(sub: &str) -> Actor {
        Actor {
            sub: Some(sub.into()),
            name: sub.to_uppercase(),
        }
    }

    fn changed(doc: &str, who: &str, first_seq: u64, last_seq: u64, at_ms: u64) -> Event {
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
        let mut sessions = Sessions::new(Duration::from_secs(300), 1);
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
    fn a_stored_session_is_extended_after_a_restart_and_a_long_one_is_split() {
        let mut sessions = Sessions::new(Duration::from_secs(300), 10);
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
        let mut sessions = Sessions::new(Duration::from_secs(300), 1);
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

    /// Runs a recorder over `store` and hands its bus to `feed`, then closes the recorder the
    /// way `lib.rs::run` does and waits for it to stop.
    async fn record(store: &Arc<Store>, feed: impl FnOnce(&Events)) {
        let (events, records) = Events::new();
        let webhooks = Webhooks::load(store.clone(), &WebhookConfig::default())
            .await
            .unwrap();
        let recorder = Recorder::new(
            store.clone(),
            events.clone(),
            webhooks,
            ActivityConfig::default(),
            &WebhookConfig::default(),
        )
        .await
        .unwrap();
        let lifecycle = tandem_hub::Lifecycle::default();
        lifecycle.spawn(
            tracing::Span::none(),
            recorder.run(records, lifecycle.cancel.clone()),
        );
        feed(&events);
        lifecycle.cancel.cancel();
        lifecycle.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), lifecycle.tracker.wait())
            .await
            .expect("the recorder stops once closed");
    }

    #[tokio::test]
    async fn the_recorder_groups_edits_queues_deliveries_and_drains_its_queue_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.redb")).unwrap());
        store
            .put_webhook(&tandem_store::WebhookRecord {
                id: "wh_1".into(),
                url: "http://127.0.0.1:9/".into(),
                events: vec!["file.uploaded".into()],
                secret: "s".into(),
                docs: None,
                created_ms: 1,
            })
            .unwrap();
        let now = now_ms();
        // More events than one batch holds, closed at once: all of them must be stored.
        record(&store, |events| {
            for seq in 1..=300 {
                events.publish(changed("d", "ada", seq, seq, now + seq));
            }
            events.publish(changed("d", "bob", 301, 301, now + 400));
            events.publish(Event::FileUploaded {
                path: "f.zip".into(),
                version: 1,
                size: 3,
                sha256: "ab".into(),
                content_type: "application/zip".into(),
                actor: actor("bob"),
                at_ms: now + 500,
            });
        })
        .await;
        let query = ActivityQuery {
            limit: 10,
            max_span_ms: MAX_SESSION.as_millis() as u64,
            max_scan: 100,
            ..ActivityQuery::default()
        };
        let (page, _) = store.list_activity(&query, |_| true).unwrap();
        let summary: Vec<(u64, &str, &str, u64)> = page
            .iter()
            .map(|e| (e.id, e.kind.as_str(), e.actor_id(), e.n_updates))
            .collect();
        assert_eq!(
            summary,
            vec![
                (3, "file.uploaded", "bob", 0),
                (2, DOC_EDITED, "bob", 1),
                (1, DOC_EDITED, "ada", 300)
            ]
        );
        let outbox = store.list_outbox(10).unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].event, "file.uploaded");
        // A new recorder (a restart) extends ada's session from the store, and ids go on.
        record(&store, |events| {
            events.publish(changed("d", "ada", 302, 303, now + 600));
            events.publish(changed("e", "ada", 1, 1, now + 700));
        })
        .await;
        let (page, _) = store.list_activity(&query, |_| true).unwrap();
        let ada: Vec<(u64, &str, u64)> = page
            .iter()
            .filter(|e| e.actor_id() == "ada")
            .map(|e| (e.id, e.path.as_str(), e.n_updates))
            .collect();
        assert_eq!(ada, vec![(4, "e", 1), (1, "d", 302)]);
    }

    #[test]
    fn an_entry_is_visible_only_when_every_path_is_readable() {
        let claims: Claims = serde_json::from_value(json!({
            "sub": "ada", "exp": 1, "docs": {"a/*": "read"}
        }))
        .unwrap();
        let mut sessions = Sessions::new(Duration::from_secs(300), 1);
        let inside = sessions.record(&changed("a/doc", "bob", 1, 1, 1)).unwrap();
        let outside = sessions.record(&changed("b/doc", "bob", 1, 1, 1)).unwrap();
        let moved_out = sessions
            .record(&Event::FileRenamed {
                from: "a/f".into(),
                to: "b/f".into(),
                actor: actor("bob"),
                at_ms: 1,
            })
            .unwrap();
        assert!(visible(Some(&claims), &inside));
        assert!(!visible(Some(&claims), &outside));
        assert!(!visible(Some(&claims), &moved_out));
        assert!(visible(None, &outside));
    }
}
