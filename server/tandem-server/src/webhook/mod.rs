//! Webhooks: the registrations service, with debounced `doc.changed` routing (`route.rs`), the
//! delivery worker (`deliver.rs`) and the targets a webhook may reach (`target.rs`). The admin
//! API is `api/webhooks.rs`.
//!
//! The activity recorder (`activity/`) decides what to deliver and writes each delivery to the
//! redb outbox, in the same transaction as the activity entry it reports, before anything tries
//! to send it. The worker ([`run_worker`]) then POSTs what is due, signed with the webhook's
//! secret, and records every attempt: a 2xx removes the delivery from the outbox; anything else
//! reschedules it with exponential back-off and jitter, until it is given up after
//! [`WebhookConfig::give_up`]. A delivery keeps its idempotency id on every attempt, across
//! restarts, so receivers drop repeats (a crash after the receiver answered but before the
//! outbox row was removed repeats an attempt; nothing is lost).
//!
//! A webhook URL is parsed by the `url` crate (the WHATWG parser browsers use), so a port out of
//! range or a host written as `0x7f.1` is read the way a client would read it. Unless
//! `--webhook-allow-private` is set, a target that is or resolves to a loopback, private,
//! link-local, shared, unspecified, broadcast, reserved or multicast address is refused at
//! registration (400 `bad_webhook`) and again at every attempt, since DNS answers change: an
//! attempt resolves the host, checks every address, and connects only to the checked
//! addresses, so a rebinding resolver cannot swap in another between the check and the connect.
//! A refused attempt is logged and counted as a failed attempt in the delivery log.
//!
//! This is a service: it returns [`WebhookError`] and never names HTTP or the API layer.
//! The contract (payloads, headers, the signature) is `protocol-spec/activity.md`.

mod deliver;
mod route;
mod target;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tandem_store::meta::WebhookTable;
use tandem_store::{DeliveryAttempt, OutboxDelivery, StoreError, WebhookRecord};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use deliver::run_worker;

pub(crate) use route::{
    Change, Debouncer, PendingChange, event_data, event_name, matches, new_delivery, wants,
};
use tandem_hub::clock::now_ms;

/// The event name of debounced document changes.
pub(crate) const DOC_CHANGED: &str = "doc.changed";
/// Every event a webhook can subscribe to.
pub const EVENT_NAMES: [&str; 6] = [
    DOC_CHANGED,
    "file.uploaded",
    "file.renamed",
    "file.deleted",
    "version.created",
    "version.restored",
];
/// Attempts kept in each webhook's delivery log.
pub(crate) const LOG_KEEP: usize = 200;
/// Longest URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// Longest secret accepted.
const MAX_SECRET_BYTES: usize = 256;
/// How often a cluster node re-reads the registrations, which any node may change: a webhook
/// registered on one node is delivered to by the others within this time.
pub(crate) const CLUSTER_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of webhook delivery.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `doc.changed` is sent once the doc has been quiet this long...
    pub debounce: Duration,
    /// ... or this long after the first change it reports, whichever comes first.
    pub max_delay: Duration,
    /// Delay before the first retry; doubles on each failure.
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// A delivery still unacknowledged this long after it was queued is given up.
    pub give_up: Duration,
    /// Time limit of one attempt, connection included.
    pub timeout: Duration,
    /// Whether targets on loopback, private and other internal addresses are allowed
    /// (`--webhook-allow-private`); off, they are refused at registration and delivery.
    pub allow_private: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            debounce: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            give_up: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(10),
            allow_private: false,
        }
    }
}

/// Why a webhook operation was refused. `api/error.rs` maps each to a status and a code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    /// The registration is invalid; the text says which field and why.
    #[error("{0}")]
    Bad(String),
    /// No webhook has this id.
    #[error("no such webhook")]
    NotFound,
    /// The store failed or is read-only.
    #[error("webhook storage: {0}")]
    Store(#[source] StoreError),
    /// A blocking task failed.
    #[error("internal error")]
    Internal,
}

/// The registered webhooks, cached for the recorder, and the worker's wake-up. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks {
    store: Arc<dyn WebhookTable>,
    /// The current registrations; replaced whole after every change through the API.
    registry: Arc<watch::Sender<Arc<Vec<WebhookRecord>>>>,
    /// Wakes the worker when deliveries were queued.
    wake: Arc<Notify>,
    /// `WebhookConfig::allow_private`, for the checks at registration.
    allow_private: bool,
}

impl Webhooks {
    /// Loads the registrations.
    pub(crate) async fn load(
        store: Arc<dyn WebhookTable>,
        config: &WebhookConfig,
    ) -> Result<Webhooks, StoreError> {
        let list = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.list_webhooks())
                .await
                .map_err(|_| StoreError::Closed)??
        };
        Ok(Webhooks {
            store,
            registry: Arc::new(watch::Sender::new(Arc::new(list))),
            wake: Arc::new(Notify::new()),
            allow_private: config.allow_private,
        })
    }

    /// The registrations now.
    pub(crate) fn current(&self) -> Arc<Vec<WebhookRecord>> {
        self.registry.borrow().clone()
    }

    /// Deliveries waiting in the outbox (counted by the store, no rows read: sampled, not per
    /// delivery); `None` if the store cannot be read.
    pub(crate) async fn outbox_depth(&self) -> Option<usize> {
        self.with_store(|store| store.count_outbox())
            .await
            .ok()
            .map(|count| usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Tells the worker that deliveries were queued.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    async fn with_store<T: Send + 'static>(
        &self,
        op: impl FnOnce(&dyn WebhookTable) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WebhookError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&*store))
            .await
            .map_err(|_| WebhookError::Internal)?
            .map_err(WebhookError::Store)
    }

    /// Every registration, as stored.
    pub(crate) async fn list(&self) -> Result<Vec<WebhookRecord>, WebhookError> {
        self.with_store(|store| store.list_webhooks()).await
    }

    /// Checks and stores a new registration, and returns it with its secret.
    pub(crate) async fn add(&self, request: NewWebhook) -> Result<WebhookRecord, WebhookError> {
        let record = new_record(request, now_ms()).map_err(WebhookError::Bad)?;
        target::check_new_target(&record.url, self.allow_private)
            .await
            .map_err(WebhookError::Bad)?;
        let stored = record.clone();
        self.with_store(move |store| store.put_webhook(&stored))
            .await?;
        self.reload().await?;
        info!(webhook = %record.id, events = ?record.events, "webhook added");
        Ok(record)
    }

    /// Removes the registration `id` (its queued deliveries are dropped by the worker).
    pub(crate) async fn remove(&self, id: String) -> Result<(), WebhookError> {
        let removed = {
            let id = id.clone();
            self.with_store(move |store| store.remove_webhook(&id))
                .await?
        };
        if !removed {
            return Err(WebhookError::NotFound);
        }
        self.reload().await?;
        info!(webhook = %id, "webhook removed");
        Ok(())
    }

    /// The logged attempts of webhook `id`, newest first, and its pending deliveries.
    pub(crate) async fn deliveries(
        &self,
        id: String,
    ) -> Result<(Vec<DeliveryAttempt>, Vec<OutboxDelivery>), WebhookError> {
        if !self.current().iter().any(|hook| hook.id == id) {
            return Err(WebhookError::NotFound);
        }
        self.with_store(move |store| {
            let log = store.list_deliveries(&id)?;
            let pending: Vec<OutboxDelivery> = store
                .list_outbox(usize::MAX)?
                .into_iter()
                .filter(|delivery| delivery.webhook_id == id)
                .collect();
            Ok((log, pending))
        })
        .await
    }

    /// Re-reads the registrations after a change.
    pub(crate) async fn reload(&self) -> Result<(), WebhookError> {
        let list = self.with_store(|store| store.list_webhooks()).await?;
        self.registry.send_replace(Arc::new(list));
        Ok(())
    }

    /// Re-reads the registrations every `interval` until `cancel` (cluster mode: the other
    /// nodes change them too). The cache changes only when the list did; a failed read keeps
    /// the list it has and is logged once until a read succeeds again.
    pub(crate) async fn run_refresh(self, interval: Duration, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.with_store(|store| store.list_webhooks()).await {
                Ok(list) => {
                    failing = false;
                    self.registry.send_if_modified(|current| {
                        let changed = **current != list;
                        if changed {
                            *current = Arc::new(list);
                        }
                        changed
                    });
                }
                Err(error) if !failing => {
                    failing = true;
                    warn!(%error, "re-reading the webhook registrations");
                }
                Err(_) => {}
            }
        }
    }
}

/// `n_bytes` random bytes as lower-case hex.
pub(crate) fn random_hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::rng().fill(bytes.as_mut_slice());
    hex::encode(bytes)
}

/// What the admin API shows of a webhook (never the secret).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// Its id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event names.
    pub events: Vec<String>,
    /// The doc pattern, if any.
    pub docs: Option<String>,
    /// When it was registered.
    pub created_ms: u64,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(record: &WebhookRecord) -> Self {
        WebhookView {
            id: record.id.clone(),
            url: record.url.clone(),
            events: record.events.clone(),
            docs: record.docs.clone(),
            created_ms: record.created_ms,
        }
    }
}

/// Body of `POST /api/webhooks`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct NewWebhook {
    /// Where to POST.
    pub url: String,
    /// Event names.
    pub events: Vec<String>,
    /// The signing secret; generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Only events about paths matching this pattern.
    #[serde(default)]
    pub docs: Option<String>,
}

/// One logged attempt as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// The delivery's idempotency id.
    pub delivery_id: String,
    /// The event name.
    pub event: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
}

impl From<DeliveryAttempt> for AttemptView {
    fn from(attempt: DeliveryAttempt) -> Self {
        AttemptView {
            delivery_id: attempt.delivery_id,
            event: attempt.event,
            at_ms: attempt.at_ms,
            status: attempt.status,
            error: attempt.error,
            duration_ms: attempt.duration_ms,
            outcome: attempt.outcome,
        }
    }
}

/// Checks a registration and makes its record (with a new id, and a secret if none was given).
pub fn new_record(request: NewWebhook, created_ms: u64) -> Result<WebhookRecord, String> {
    if request.url.len() > MAX_URL_BYTES {
        return Err(format!("url longer than {MAX_URL_BYTES} bytes"));
    }
    target::Target::parse(&request.url).map_err(|error| format!("url: {error}"))?;
    if request.events.is_empty() {
        return Err(format!(
            "events: name at least one of {}",
            EVENT_NAMES.join(", ")
        ));
    }
    let mut events = Vec::new();
    for event in request.events {
        let event = event.trim().to_owned();
        if !EVENT_NAMES.contains(&event.as_str()) {
            return Err(format!(
                "events: unknown event {event:?}; use {}",
                EVENT_NAMES.join(", ")
            ));
        }
        if !events.contains(&event) {
            events.push(event);
        }
    }
    let secret = match request.secret {
        Some(secret) if secret.is_empty() || secret.len() > MAX_SECRET_BYTES => {
            return Err(format!("secret: 1 to {MAX_SECRET_BYTES} bytes"));
        }
        Some(secret) => secret,
        None => format!("whsec_{}", random_hex(24)),
    };
    let docs = request.docs.filter(|docs| !docs.is_empty());
    if docs.as_ref().is_some_and(|docs| docs.len() > MAX_URL_BYTES) {
        return Err("docs: pattern too long".into());
    }
    if docs.as_deref().is_some_and(crate::name::has_forbidden) {
        return Err("docs: the pattern contains a control character".into());
    }
    Ok(WebhookRecord {
        id: format!("wh_{}", random_hex(8)),
        url: request.url,
        events,
        secret,
        docs,
        created_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use route::matches;
    use target::Target;

    #[test]
    fn registrations_are_checked_and_filters_match_paths() {
        let request = |url: &str, events: &[&str]| NewWebhook {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret: None,
            docs: Some("team/*".into()),
        };
        let record = new_record(request("https://example.test/hook", &["doc.changed"]), 1).unwrap();
        assert!(record.id.starts_with("wh_") && record.secret.starts_with("whsec_"));
        assert!(new_record(request("ftp://x/y", &["doc.changed"]), 1).is_err());
        assert!(new_record(request("http://x/y", &["doc.typed"]), 1).is_err());
        assert!(new_record(request("http://x/y", &[]), 1).is_err());
        assert!(matches(&record, "doc.changed", &["team/a"]));
        assert!(!matches(&record, "doc.changed", &["other/a"]));
        assert!(!matches(&record, "file.uploaded", &["team/a"]));
        assert!(!matches(&record, "doc.changed", &["team/a", "other/b"]));
        let target = Target::parse("http://127.0.0.1:9/a/b?c=d#e").unwrap();
        assert_eq!(
            (
                target.host_name().as_str(),
                target.port,
                target.path().as_str()
            ),
            ("127.0.0.1", 9, "/a/b?c=d")
        );
        let target = Target::parse("https://[::1]/").unwrap();
        assert_eq!(
            (
                target.host_header().as_str(),
                target.port,
                target.path().as_str()
            ),
            ("[::1]", 443, "/")
        );
    }
}
