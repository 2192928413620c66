//! Which webhooks an event goes to, and `doc.changed` debounced per doc: pure functions and the
//! [`Debouncer`], driven by the activity recorder. No I/O and no clock (times are passed in).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_store::{OutboxDelivery, WebhookRecord};
use tokio::time::Instant;

use super::{DOC_CHANGED, WebhookConfig, random_hex};
use crate::auth::pattern_matches;
use tandem_hub::Actor;

use crate::bus::Event;

/// The webhook event name of a recorded event (`doc.changed` is debounced separately).
pub(crate) fn event_name(event: &Event) -> Option<&'static str> {
    match event {
        Event::DocChanged { .. } => Some(DOC_CHANGED),
        Event::FileUploaded { .. } => Some("file.uploaded"),
        Event::FileRenamed { .. } => Some("file.renamed"),
        Event::FileDeleted { .. } => Some("file.deleted"),
        Event::VersionCreated { .. } => Some("version.created"),
        Event::VersionRestored { .. } => Some("version.restored"),
        Event::DocPresence { .. }
        | Event::FileLocked { .. }
        | Event::FileUnlocked { .. }
        | Event::Activity { .. }
        | Event::Relayed { .. } => None,
    }
}

/// The `data` of a delivery: the event's fields without its `type`.
pub(crate) fn event_data(event: &Event) -> Value {
    let mut data = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
    if let Some(object) = data.as_object_mut() {
        object.remove("type");
    }
    data
}

/// Whether `webhook` receives event `name` about `paths`: subscribed, and every path matches
/// its doc pattern when it has one.
pub(crate) fn matches(webhook: &WebhookRecord, name: &str, paths: &[&str]) -> bool {
    webhook.events.iter().any(|event| event == name)
        && webhook.docs.as_deref().is_none_or(|pattern| {
            !paths.is_empty() && paths.iter().all(|path| pattern_matches(pattern, path))
        })
}

/// Whether any webhook receives event `name` about `paths`.
pub(crate) fn wants(webhooks: &[WebhookRecord], name: &str, paths: &[&str]) -> bool {
    webhooks.iter().any(|webhook| matches(webhook, name, paths))
}

/// A delivery of event `name` with `data` to `webhook`, with a fresh idempotency id.
pub(crate) fn new_delivery(
    webhook: &WebhookRecord,
    name: &str,
    data: &Value,
    now_ms: u64,
) -> OutboxDelivery {
    let delivery_id = format!("dlv_{}", random_hex(16));
    let body = json!({
        "id": delivery_id,
        "event": name,
        "webhook": webhook.id,
        "created_ms": now_ms,
        "data": data,
    });
    OutboxDelivery {
        seq: 0,
        delivery_id,
        webhook_id: webhook.id.clone(),
        event: name.to_owned(),
        body: body.to_string(),
        created_ms: now_ms,
        attempts: 0,
        next_attempt_ms: now_ms,
    }
}

/// One `DocChanged` report, as the debouncer collects it.
pub(crate) struct Change {
    pub(crate) actor: Actor,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) n_updates: u64,
    pub(crate) at_ms: u64,
}

/// The changes of one doc not yet delivered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingChange {
    first_at: Instant,
    last_at: Instant,
    first_seq: u64,
    last_seq: u64,
    n_updates: u64,
    authors: Vec<Actor>,
    started_ms: u64,
    ended_ms: u64,
}

impl PendingChange {
    /// The `data` of its `doc.changed` delivery.
    pub(crate) fn data(&self, doc: &str) -> Value {
        json!({
            "doc": doc,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "n_updates": self.n_updates,
            "authors": self.authors,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
        })
    }
}

/// Debounces `doc.changed` per doc: a doc's changes are sent once it has been quiet for
/// `debounce`, or `max_delay` after the first of them. Pure; the recorder gives it the time.
pub(crate) struct Debouncer {
    debounce: Duration,
    max_delay: Duration,
    pending: HashMap<String, PendingChange>,
}

impl Debouncer {
    pub(crate) fn new(config: &WebhookConfig) -> Debouncer {
        Debouncer {
            debounce: config.debounce,
            max_delay: config.max_delay,
            pending: HashMap::new(),
        }
    }

    pub(crate) fn add(&mut self, now: Instant, doc: &str, change: Change) {
        match self.pending.get_mut(doc) {
            Some(pending) => {
                pending.last_at = now;
                pending.first_seq = pending.first_seq.min(change.first_seq);
                pending.last_seq = pending.last_seq.max(change.last_seq);
                pending.n_updates += change.n_updates;
                pending.started_ms = pending.started_ms.min(change.at_ms);
                pending.ended_ms = pending.ended_ms.max(change.at_ms);
                if !pending.authors.contains(&change.actor) {
                    pending.authors.push(change.actor);
                }
            }
            None => {
                self.pending.insert(
                    doc.to_owned(),
                    PendingChange {
                        first_at: now,
                        last_at: now,
                        first_seq: change.first_seq,
                        last_seq: change.last_seq,
                        n_updates: change.n_updates,
                        authors: vec![change.actor],
                        started_ms: change.at_ms,
                        ended_ms: change.at_ms,
                    },
                );
            }
        }
    }

    fn due_at(&self, pending: &PendingChange) -> Instant {
        (pending.last_at + self.debounce).min(pending.first_at + self.max_delay)
    }

    /// When the next doc is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| self.due_at(pending))
            .min()
    }

    /// Takes the docs due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(String, PendingChange)> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, pending)| self.due_at(pending) <= now)
            .map(|(doc, _)| doc.clone())
            .collect();
        due.into_iter()
            .filter_map(|doc| self.pending.remove_entry(&doc))
            .collect()
    }

    /// Takes everything (shutdown).
    pub(crate) fn take_all(&mut self) -> Vec<(String, PendingChange)> {
        self.pending.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn actor(sub: &str) -> Actor {
        Actor {
            sub: Some(sub.into()),
            name: sub.into(),
        }
    }

    fn change(who: &str, seq: u64, at_ms: u64) -> Change {
        Change {
            actor: actor(who),
            first_seq: seq,
            last_seq: seq,
            n_updates: 1,
            at_ms,
        }
    }

    #[test]
    fn a_burst_of_changes_makes_one_delivery_after_the_quiet_period() {
        let config = WebhookConfig {
            debounce: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            ..WebhookConfig::default()
        };
        let mut debouncer = Debouncer::new(&config);
        let start = Instant::now();
        for n in 0..10u64 {
            let who = if n % 3 == 0 { "bob" } else { "ada" };
            debouncer.add(
                start + Duration::from_millis(500 * n),
                "d",
                change(who, n + 1, n),
            );
        }
        let last = start + Duration::from_millis(4500);
        assert_eq!(debouncer.deadline(), Some(last + Duration::from_secs(2)));
        assert!(
            debouncer
                .take_due(last + Duration::from_millis(1999))
                .is_empty()
        );
        let due = debouncer.take_due(last + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        let data = due[0].1.data(&due[0].0);
        assert_eq!(data["first_seq"], 1);
        assert_eq!(data["last_seq"], 10);
        assert_eq!(data["n_updates"], 10);
        assert_eq!(data["authors"].as_array().unwrap().len(), 2);
        assert_eq!(debouncer.deadline(), None);
    }

    #[test]
    fn continuous_changes_are_delivered_by_the_max_delay() {
        let config = WebhookConfig {
            debounce: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            ..WebhookConfig::default()
        };
        let mut debouncer = Debouncer::new(&config);
        let start = Instant::now();
        let mut now = start;
        let mut n_deliveries = 0;
        for n in 0..70u64 {
            now = start + Duration::from_secs(n);
            n_deliveries += debouncer.take_due(now).len();
            debouncer.add(now, "d", change("ada", n + 1, n));
        }
        assert_eq!(n_deliveries, 2, "at 30 s and 60 s");
        assert_eq!(debouncer.take_all().len(), 1);
        assert!(now > start);
    }
}
