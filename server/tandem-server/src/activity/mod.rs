//! The activity recorder; `GET /api/activity` is `api/activity.rs`, edit sessions `sessions.rs`.
//!
//! The recorder is one task that consumes the lossless event queue of the bus (`bus.rs`) in
//! order. It turns events into activity entries (edits of one author on one doc grouped into
//! sessions, one entry per file or version action), queues webhook deliveries for them
//! (`webhook/`, with `doc.changed` debounced per doc), and writes both in batches: one durable
//! redb transaction per [`BATCH_INTERVAL`] or [`BATCH_MAX_EVENTS`] events, so a busy server does
//! not fsync per event. Only after a batch is committed are its entries shown to live streams
//! (`Event::Activity`) and the webhook worker woken.
//!
//! Shutdown: the recorder is not on the server's main task tracker, because it must outlive the
//! doc actors, whose final `DocChanged` events it records. `lib.rs::run` closes it (its own
//! `Lifecycle`) only after the main tracker is empty; it then drains what is queued, turns
//! pending debounced changes into outbox deliveries, commits once more and stops. See
//! ARCHITECTURE.md, "Activity and webhooks".
//!
//! This is a service: it never names HTTP or the API layer.

mod sessions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_store::meta::ActivityTable;
use tandem_store::{ActivityEntry, ActivityWrite, OutboxDelivery};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::bus::{Event, Events};
use crate::metrics::Telemetry;
use crate::webhook::{self, WebhookConfig, Webhooks};
pub(crate) use sessions::Sessions;
use tandem_hub::clock::{now_ms, sleep_until};

/// Longest time an event waits in memory before its batch is committed.
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Events that make a batch commit at once.
pub(crate) const BATCH_MAX_EVENTS: usize = 256;
/// An edit session that has run this long starts a new entry even while edits keep coming, so
/// every entry spans at most this (the feed's `since` filter relies on it).
pub(crate) const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);
/// How often entries past the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Pause before asking the store for entry ids again after it failed (a shared database that
/// is briefly unreachable); events wait in the queue meanwhile.
const RESERVE_RETRY: Duration = Duration::from_millis(500);

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
    store: Arc<dyn ActivityTable>,
    events: Events,
    webhooks: Webhooks,
    config: ActivityConfig,
    sessions: Sessions,
    debouncer: webhook::Debouncer,
    batch: Batch,
    /// Commits failed in a row (an unreachable shared database): logged once per run.
    n_commit_failures: u32,
    /// Where the queue's depth is reported (`tandem_activity_queue_depth`).
    telemetry: Option<Telemetry>,
}

impl Recorder {
    pub(crate) async fn new(
        store: Arc<dyn ActivityTable>,
        events: Events,
        webhooks: Webhooks,
        config: ActivityConfig,
        webhook_config: &WebhookConfig,
    ) -> Result<Recorder, tandem_store::StoreError> {
        let ids = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.reserve_activity_ids())
                .await
                .map_err(|_| tandem_store::StoreError::Closed)??
        };
        Ok(Recorder {
            store,
            events,
            webhooks,
            sessions: Sessions::new(config.session_gap, ids),
            config,
            debouncer: webhook::Debouncer::new(webhook_config),
            batch: Batch::default(),
            n_commit_failures: 0,
            telemetry: None,
        })
    }

    /// Reports the queue's depth to `telemetry` as the recorder takes events.
    pub(crate) fn with_telemetry(mut self, telemetry: Telemetry) -> Recorder {
        self.telemetry = Some(telemetry);
        self
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
                        self.handle(event, &close).await;
                    }
                    break;
                }
                n = records.recv_many(&mut received, BATCH_MAX_EVENTS) => {
                    if n == 0 {
                        break;
                    }
                    if let Some(telemetry) = &self.telemetry {
                        telemetry.set_activity_queue(records.len());
                    }
                    for event in received.drain(..) {
                        self.handle(event, &close).await;
                    }
                }
                () = sleep_until(flush_at) => self.commit().await,
                () = sleep_until(debounce_at) => {
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

    async fn handle(&mut self, event: Event, close: &CancellationToken) {
        if webhook::event_name(&event).is_none() {
            // Presence and live activity: neither recorded nor delivered.
            return;
        }
        if self.sessions.needs_ids() {
            self.reserve_ids(close).await;
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

    /// Reserves ids for the next entries, retrying while the store fails until it answers or
    /// `close` is cancelled (then one try: the entry of an event that finds no id is not made,
    /// and logged; its webhook deliveries are still queued).
    async fn reserve_ids(&mut self, close: &CancellationToken) {
        let mut n_failures = 0u32;
        loop {
            let store = self.store.clone();
            let failure =
                match tokio::task::spawn_blocking(move || store.reserve_activity_ids()).await {
                    Ok(Ok(ids)) => {
                        if n_failures > 0 {
                            info!(n_failures, "activity entry ids reserved again");
                        }
                        self.sessions.give_ids(ids);
                        return;
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                };
            // Once per outage (the shared database down), not every retry.
            if n_failures == 0 {
                error!(error = %failure, "reserving activity entry ids failed; retrying");
            }
            n_failures = n_failures.saturating_add(1);
            if close.is_cancelled() {
                return;
            }
            tokio::select! {
                () = close.cancelled() => return,
                () = tokio::time::sleep(RESERVE_RETRY) => {}
            }
        }
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
            if error.read_only_reason().is_some() || self.n_commit_failures > 0 {
                // The store logged the full disk once, or this run of failures was logged: the
                // batch waits for space or for the database.
                debug!(%error, n_entries = write.entries.len(), "storing activity refused; retrying");
            } else {
                error!(%error, n_entries = write.entries.len(), "storing activity failed; retrying");
            }
            self.n_commit_failures = self.n_commit_failures.saturating_add(1);
            self.batch.deliveries = write.deliveries;
            self.batch.since = Some(Instant::now());
            return;
        }
        if self.n_commit_failures > 0 {
            info!(n_failures = self.n_commit_failures, "activity stored again");
            self.n_commit_failures = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::{ActivityQuery, Store};

    use super::sessions::tests::{actor, changed};

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
}
