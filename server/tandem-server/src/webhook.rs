//! Webhooks: registrations, debounced `doc.changed`, the delivery worker and the admin API.
//!
//! The activity recorder (`activity.rs`) decides what to deliver and writes each delivery to the
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
//! link-local, shared, unspecified, broadcast, reserved or multicast address ([`refused_kind`])
//! is refused at registration (400 `bad_webhook`) and again at every attempt, since DNS answers
//! change: an attempt resolves the host, checks every address, and connects only to the checked
//! addresses, so a rebinding resolver cannot swap in another between the check and the connect.
//! A refused attempt is logged and counted as a failed attempt in the delivery log.
//!
//! The contract (payloads, headers, the signature) is `protocol-spec/activity.md`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tandem_store::{
    DeliveryAttempt, FinishedAttempt, OutboxDelivery, Store, StoreError, WebhookRecord,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::{Host, Url};

use crate::auth::{AuthError, pattern_matches};
use crate::events::{Actor, Event, now_ms};
use crate::http::{ApiError, AppState};

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
/// Due deliveries the worker takes from the outbox per pass.
const OUTBOX_BATCH: usize = 256;
/// Pause of the worker after a pass that changed nothing in the outbox.
const NO_PROGRESS_PAUSE: Duration = Duration::from_secs(1);
/// Attempts in flight at once.
const MAX_CONCURRENT_ATTEMPTS: usize = 8;
/// Bytes of a receiver's answer read (and ignored) at most.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// Longest secret accepted.
const MAX_SECRET_BYTES: usize = 256;
/// Largest body of `POST /api/webhooks`.
pub(crate) const MAX_WEBHOOK_BODY_BYTES: usize = 16 * 1024;

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

/// The registered webhooks, cached for the recorder, and the worker's wake-up. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks {
    store: Arc<Store>,
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
        store: Arc<Store>,
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

    /// Tells the worker that deliveries were queued.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    async fn with_store<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|error| ApiError::from_store(&error, "webhook storage"))
    }

    pub(crate) async fn reload(&self) -> Result<(), ApiError> {
        let list = self.with_store(|store| store.list_webhooks()).await?;
        self.registry.send_replace(Arc::new(list));
        Ok(())
    }
}

/// The webhook event name of a recorded event (`doc.changed` is debounced separately).
pub(crate) fn event_name(event: &Event) -> Option<&'static str> {
    match event {
        Event::DocChanged { .. } => Some(DOC_CHANGED),
        Event::FileUploaded { .. } => Some("file.uploaded"),
        Event::FileRenamed { .. } => Some("file.renamed"),
        Event::FileDeleted { .. } => Some("file.deleted"),
        Event::VersionCreated { .. } => Some("version.created"),
        Event::VersionRestored { .. } => Some("version.restored"),
        Event::DocPresence { .. } | Event::Activity { .. } => None,
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

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`.
pub(crate) fn sign(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Delay after failure number `n_failures` (1 for the first): `retry_base * 2^(n-1)`, capped at
/// `retry_max`, of which a random part (`jitter` in `[0, 1)`) of the upper half is taken off, so
/// receivers that come back are not hit by every sender at once.
pub(crate) fn retry_delay(config: &WebhookConfig, n_failures: u32, jitter: f64) -> Duration {
    let exponent = n_failures.saturating_sub(1).min(40);
    let full = config
        .retry_base
        .saturating_mul(1u32 << exponent.min(31))
        .saturating_mul(if exponent > 31 { u32::MAX } else { 1 })
        .min(config.retry_max);
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn random_hex(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::rng().fill(bytes.as_mut_slice());
    hex(&bytes)
}

/// What a delivery attempt got back.
struct AttemptResult {
    status: Option<u16>,
    error: Option<String>,
    duration: Duration,
}

/// Sends what is due in the outbox until `cancel`; woken by the recorder, by the next retry
/// time, or both. Its first pass takes up to [`OUTBOX_BATCH`] pending deliveries whatever their
/// schedule, so a restart resumes at once; the others keep their schedule.
pub(crate) async fn run_worker(
    webhooks: Webhooks,
    config: WebhookConfig,
    cancel: CancellationToken,
) {
    let client = Client::new(config.timeout, config.allow_private);
    let mut first_pass = true;
    loop {
        // The first pass takes pending deliveries whatever their schedule. A failed read was
        // logged; the next wake-up tries again.
        let now = now_ms();
        let due_at = if first_pass { u64::MAX } else { now };
        first_pass = false;
        let (due, next_due_ms) = webhooks
            .with_store(move |store| store.due_deliveries(due_at, OUTBOX_BATCH))
            .await
            .unwrap_or_default();
        let registry = webhooks.current();
        let next_wake =
            next_due_ms.map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now)));
        let n_due = due.len();
        let attempts = futures_util::stream::iter(due.into_iter().map(|delivery| {
            let webhook = registry
                .iter()
                .find(|webhook| webhook.id == delivery.webhook_id)
                .cloned();
            let (client, config) = (&client, &config);
            async move { deliver(client, config, webhook, delivery).await }
        }))
        .buffer_unordered(MAX_CONCURRENT_ATTEMPTS)
        .collect::<Vec<FinishedAttempt>>();
        let finished = tokio::select! {
            () = cancel.cancelled() => break,
            finished = attempts => finished,
        };
        // The results of the pass in one transaction, so deliveries compete little with
        // document edits for the store's single writer.
        let progressed = n_due == 0
            || webhooks
                .with_store(move |store| store.finish_attempts(&finished, LOG_KEEP))
                .await
                .is_ok_and(|n_changed| n_changed > 0);
        if n_due > 0 {
            if !progressed {
                // The outbox did not change (the store failed, or nothing could be attempted):
                // trying again at once would spin.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(NO_PROGRESS_PAUSE) => {}
                }
            }
            // More may be due already (a full batch, or attempts that took long).
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = webhooks.wake.notified() => {}
            () = async {
                match next_wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    debug!("webhook worker stopped");
}

/// One attempt at `delivery`, and what should become of it (logged, rescheduled or removed).
async fn deliver(
    client: &Client,
    config: &WebhookConfig,
    webhook: Option<WebhookRecord>,
    delivery: OutboxDelivery,
) -> FinishedAttempt {
    let Some(webhook) = webhook else {
        // Its webhook was removed after this pass read the registrations (or the delivery was
        // queued just as it was removed): the store drops the row if the webhook is gone.
        return FinishedAttempt {
            delivery,
            attempt: None,
            next_attempt_ms: None,
        };
    };
    let at_ms = now_ms();
    let result = client.post(&webhook, &delivery).await;
    let acknowledged = result
        .status
        .is_some_and(|status| (200..300).contains(&status));
    let n_failures = delivery.attempts.saturating_add(1);
    let next = if acknowledged {
        None
    } else {
        let jitter = rand::rng().random::<f64>();
        let delay = retry_delay(config, n_failures, jitter);
        let next_ms = now_ms().saturating_add(delay.as_millis() as u64);
        let deadline = delivery
            .created_ms
            .saturating_add(config.give_up.as_millis() as u64);
        (next_ms <= deadline).then_some(next_ms)
    };
    let outcome = match (acknowledged, next) {
        (true, _) => "delivered",
        (false, Some(_)) => "retry",
        (false, None) => "failed",
    };
    match outcome {
        "delivered" => {
            debug!(webhook = %webhook.id, delivery = %delivery.delivery_id, attempts = n_failures, "webhook delivered")
        }
        "failed" => {
            warn!(webhook = %webhook.id, delivery = %delivery.delivery_id, attempts = n_failures, "webhook delivery given up")
        }
        _ => {
            debug!(webhook = %webhook.id, delivery = %delivery.delivery_id, status = ?result.status, error = ?result.error, "webhook attempt failed")
        }
    }
    let attempt = DeliveryAttempt {
        delivery_id: delivery.delivery_id.clone(),
        event: delivery.event.clone(),
        at_ms,
        status: result.status,
        error: result.error,
        duration_ms: result.duration.as_millis() as u64,
        outcome: outcome.to_owned(),
    };
    FinishedAttempt {
        delivery,
        attempt: Some(attempt),
        next_attempt_ms: next,
    }
}

/// An HTTP/1.1 client for deliveries: one connection per attempt, no redirects followed,
/// https through rustls with the public roots, only to addresses [`resolve`] checked.
struct Client {
    timeout: Duration,
    allow_private: bool,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    fn new(timeout: Duration, allow_private: bool) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Client {
            timeout,
            allow_private,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn post(&self, webhook: &WebhookRecord, delivery: &OutboxDelivery) -> AttemptResult {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(webhook, delivery)).await;
        let (status, error) = match result {
            Ok(Ok(status)) => (Some(status), None),
            Ok(Err(error)) => (None, Some(error)),
            Err(_) => (None, Some(format!("no answer within {:?}", self.timeout))),
        };
        AttemptResult {
            status,
            error,
            duration: started.elapsed(),
        }
    }

    async fn exchange(
        &self,
        webhook: &WebhookRecord,
        delivery: &OutboxDelivery,
    ) -> Result<u16, String> {
        let target = Target::parse(&webhook.url)?;
        let timestamp = crate::auth::unix_now();
        let signature = sign(&webhook.secret, timestamp, &delivery.body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&target.path)
            .header(header::HOST, &target.host_header)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "tandem-webhook")
            .header(header::CONNECTION, "close")
            .header("tandem-webhook-id", &webhook.id)
            .header("tandem-delivery-id", &delivery.delivery_id)
            .header("tandem-event", &delivery.event)
            .header("tandem-timestamp", timestamp.to_string())
            .header("tandem-signature", format!("t={timestamp},v1={signature}"))
            .body(Full::new(Bytes::from(delivery.body.clone())))
            .map_err(|error| format!("building the request: {error}"))?;
        let addrs = match resolve(&target, self.allow_private).await {
            Ok(addrs) => addrs,
            Err(error) => {
                if let TargetError::Refused { .. } = error {
                    warn!(webhook = %webhook.id, delivery = %delivery.delivery_id, %error, "webhook attempt refused");
                }
                return Err(error.to_string());
            }
        };
        // Only the addresses just checked: a second lookup could answer differently.
        let stream = tokio::net::TcpStream::connect(addrs.as_slice())
            .await
            .map_err(|error| format!("connecting: {error}"))?;
        if target.https {
            let name = rustls_pki_types::ServerName::try_from(target.host_name())
                .map_err(|error| format!("server name: {error}"))?;
            let stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|error| format!("tls: {error}"))?;
            send(stream, request).await
        } else {
            send(stream, request).await
        }
    }
}

async fn send(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<Full<Bytes>>,
) -> Result<u16, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("http: {error}"))?;
    // The connection future does the I/O beside the request instead of being spawned.
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("http: {error}"))?;
        let status = response.status().as_u16();
        // Read (a bounded part of) the answer so the receiver is not cut off mid-write.
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        Ok(status)
    };
    let (result, _) = tokio::join!(exchange, connection);
    result
}

/// A webhook URL taken apart.
struct Target {
    https: bool,
    host: Host<String>,
    port: u16,
    /// `host[:port]` for the `Host` header (an IPv6 host in brackets, a default port left out).
    host_header: String,
    /// Path and query; a fragment is never sent.
    path: String,
}

impl Target {
    /// Parses and checks a webhook URL: http or https, a host, no user name or password.
    fn parse(text: &str) -> Result<Target, String> {
        let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err("the URL must start with http:// or https://".into()),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not contain a user name or password".into());
        }
        let host = url.host().ok_or("the URL has no host")?.to_owned();
        let host_text = url.host_str().ok_or("the URL has no host")?;
        // `port()` is `None` for the scheme's default, which the parser drops.
        let port = url.port().unwrap_or(if https { 443 } else { 80 });
        let host_header = match url.port() {
            Some(port) => format!("{host_text}:{port}"),
            None => host_text.to_owned(),
        };
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Target {
            https,
            host,
            port,
            host_header,
            path,
        })
    }

    /// The host as TLS names it: a DNS name, or an address without brackets.
    fn host_name(&self) -> String {
        match &self.host {
            Host::Domain(name) => name.clone(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        }
    }
}

/// Why a webhook target cannot be sent to.
#[derive(Debug, thiserror::Error)]
enum TargetError {
    /// The host does not resolve (yet, or any more).
    #[error("resolving {host}: {detail}")]
    Unresolved { host: String, detail: String },
    /// The host is or resolves to an internal address and `--webhook-allow-private` is off.
    #[error("{host} ({addr}) is a {kind} address; refused (see --webhook-allow-private)")]
    Refused {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
}

/// The addresses of `target`, every one of them checked unless `allow_private`.
async fn resolve(target: &Target, allow_private: bool) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = match &target.host {
        Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), target.port)],
        Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), target.port)],
        Host::Domain(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|error| TargetError::Unresolved {
                host: name.clone(),
                detail: error.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolved {
            host: target.host_name(),
            detail: "no address".into(),
        });
    }
    if !allow_private {
        for addr in &addrs {
            if let Some(kind) = refused_kind(addr.ip()) {
                return Err(TargetError::Refused {
                    host: target.host_name(),
                    addr: addr.ip(),
                    kind,
                });
            }
        }
    }
    Ok(addrs)
}

/// What kind of internal address `ip` is, if it is one a webhook may not reach by default:
/// loopback, private (RFC 1918, IPv6 unique local), link-local, shared (RFC 6598, carrier-grade
/// NAT), unspecified or "this network", broadcast and reserved (240.0.0.0/4), multicast. An IPv6
/// address that embeds an IPv4 one (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`)
/// is judged by the IPv4 address it reaches.
fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => refused_kind_v4(ip),
        IpAddr::V6(ip) => refused_kind_v6(ip),
    }
}

fn refused_kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared")
    } else if a == 198 && (18..20).contains(&b) {
        // 198.18.0.0/15, for benchmarking network devices: lab and internal gear lives there.
        Some("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        // 192.0.0.0/24, IETF protocol assignments (DS-Lite and NAT64 gateways among them).
        Some("protocol assignment")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        // 255.255.255.255 and the rest of 240.0.0.0/4.
        Some("broadcast or reserved")
    } else {
        None
    }
}

fn refused_kind_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        return refused_kind_v4(embedded(segments[6], segments[7]));
    }
    // NAT64 reaches the IPv4 address in its last 32 bits, 6to4 the one in bits 16..48.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_kind_v4(embedded(segments[6], segments[7]));
    }
    // 64:ff9b:1::/48, NAT64 for local use (RFC 8215): a translator inside the network.
    if segments[..3] == [0x64, 0xff9b, 1] {
        return Some("private");
    }
    if segments[0] == 0x2002 {
        return refused_kind_v4(embedded(segments[1], segments[2]));
    }
    match segments[0] {
        first if first & 0xfe00 == 0xfc00 => Some("private"),
        first if first & 0xffc0 == 0xfe80 => Some("link-local"),
        // Site-local, deprecated but still routed inside some networks.
        first if first & 0xffc0 == 0xfec0 => Some("private"),
        first if first & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// The check of a new registration's target: refused if it is or resolves to an internal
/// address (unless allowed). A name that does not resolve yet is accepted; every attempt
/// resolves and checks it again.
async fn check_new_target(url: &str, allow_private: bool) -> Result<(), String> {
    let target = Target::parse(url).map_err(|error| format!("url: {error}"))?;
    match resolve(&target, allow_private).await {
        Ok(_) | Err(TargetError::Unresolved { .. }) => Ok(()),
        Err(error @ TargetError::Refused { .. }) => Err(format!("url: {error}")),
    }
}

/// What the admin API shows of a webhook (never the secret).
#[derive(Debug, Serialize, Deserialize)]
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
#[derive(Debug, Serialize, Deserialize)]
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
    Target::parse(&request.url).map_err(|error| format!("url: {error}"))?;
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

/// Allows the webhook API to administrators; with authentication off, to everyone.
fn require_admin(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let claims = crate::http::request_claims(state, headers, uri)?;
    match claims {
        Some(claims) if !claims.admin => Err(ApiError::Auth(AuthError::NotAdmin)),
        _ => Ok(()),
    }
}

fn webhook_id_from(uri: &Uri) -> Result<String, ApiError> {
    let rest = uri
        .path()
        .strip_prefix("/api/webhooks/")
        .ok_or(ApiError::NotFound)?;
    let id = rest.strip_suffix("/deliveries").unwrap_or(rest);
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| ApiError::WebhookNotFound)?;
    if id.is_empty() || id.contains('/') {
        return Err(ApiError::NotFound);
    }
    Ok(id.into_owned())
}

/// `GET /api/webhooks`.
pub(crate) async fn list(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let webhooks = state
        .webhooks
        .with_store(|store| store.list_webhooks())
        .await?;
    let views: Vec<WebhookView> = webhooks.iter().map(WebhookView::from).collect();
    Ok(axum::Json(json!({ "webhooks": views })).into_response())
}

/// `POST /api/webhooks`: 201 with the webhook and its secret (shown this once).
pub(crate) async fn add(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let body = crate::http::body_within_limit(body, MAX_WEBHOOK_BODY_BYTES)?;
    let request: NewWebhook = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadWebhook(format!("bad JSON: {error}")))?;
    let record = new_record(request, now_ms()).map_err(ApiError::BadWebhook)?;
    check_new_target(&record.url, state.webhooks.allow_private)
        .await
        .map_err(ApiError::BadWebhook)?;
    let stored = record.clone();
    state
        .webhooks
        .with_store(move |store| store.put_webhook(&stored))
        .await?;
    state.webhooks.reload().await?;
    info!(webhook = %record.id, events = ?record.events, "webhook added");
    let body = json!({ "webhook": WebhookView::from(&record), "secret": record.secret });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE /api/webhooks/{id}`: 204, or 404.
pub(crate) async fn remove(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let id = webhook_id_from(&uri)?;
    let removed = {
        let id = id.clone();
        state
            .webhooks
            .with_store(move |store| store.remove_webhook(&id))
            .await?
    };
    if !removed {
        return Err(ApiError::WebhookNotFound);
    }
    state.webhooks.reload().await?;
    info!(webhook = %id, "webhook removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/webhooks/{id}/deliveries`: the logged attempts, newest first, and what is pending.
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    if !uri.path().ends_with("/deliveries") {
        return Err(ApiError::NotFound);
    }
    let id = webhook_id_from(&uri)?;
    if !state.webhooks.current().iter().any(|hook| hook.id == id) {
        return Err(ApiError::WebhookNotFound);
    }
    let (log, pending) = state
        .webhooks
        .with_store(move |store| {
            let log = store.list_deliveries(&id)?;
            let pending: Vec<OutboxDelivery> = store
                .list_outbox(usize::MAX)?
                .into_iter()
                .filter(|delivery| delivery.webhook_id == id)
                .collect();
            Ok((log, pending))
        })
        .await?;
    let log: Vec<AttemptView> = log.into_iter().map(AttemptView::from).collect();
    let pending: Vec<Value> = pending
        .iter()
        .map(|delivery| {
            json!({
                "delivery_id": delivery.delivery_id,
                "event": delivery.event,
                "created_ms": delivery.created_ms,
                "attempts": delivery.attempts,
                "next_attempt_ms": delivery.next_attempt_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "deliveries": log, "pending": pending })).into_response())
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

    #[test]
    fn back_off_doubles_from_the_base_up_to_the_cap_with_jitter_below() {
        let config = WebhookConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            ..WebhookConfig::default()
        };
        let no_jitter: Vec<u64> = (1..=14)
            .map(|n| retry_delay(&config, n, 0.0).as_secs())
            .collect();
        assert_eq!(
            no_jitter,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600
            ]
        );
        assert_eq!(retry_delay(&config, 1000, 0.0), Duration::from_secs(3600));
        for n in 1..20 {
            let full = retry_delay(&config, n, 0.0);
            let jittered = retry_delay(&config, n, 0.99);
            assert!(jittered <= full && jittered >= full / 2, "{n}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our scheme: the message is "<t>.<body>".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        assert_eq!(
            sign("s", 1_700_000_000, "{\"a\":1}"),
            hex(&mac.finalize().into_bytes())
        );
        assert_ne!(
            sign("s", 1_700_000_001, "{\"a\":1}"),
            sign("s", 1_700_000_000, "{\"a\":1}")
        );
    }

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
                target.path.as_str()
            ),
            ("127.0.0.1", 9, "/a/b?c=d")
        );
        let target = Target::parse("https://[::1]/").unwrap();
        assert_eq!(
            (
                target.host_header.as_str(),
                target.port,
                target.path.as_str()
            ),
            ("[::1]", 443, "/")
        );
    }

    #[test]
    fn urls_with_bad_ports_schemes_or_credentials_are_refused() {
        for bad in [
            "http://example.test:99999/",
            "http://example.test:65536/",
            "http://example.test:-1/",
            "http://example.test:80a/",
            "http://example.test:+80/",
            "ftp://example.test/",
            "javascript:alert(1)",
            "http://user:pass@example.test/",
            "http://user@example.test/",
            "http://",
            "http://:80/",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let target = Target::parse("http://example.test:80/").unwrap();
        assert_eq!(
            (target.port, target.host_header.as_str()),
            (80, "example.test")
        );
        let target = Target::parse("http://example.test:8080").unwrap();
        assert_eq!(
            (
                target.port,
                target.host_header.as_str(),
                target.path.as_str()
            ),
            (8080, "example.test:8080", "/")
        );
    }

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        let refused = [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "64:ff9b:1::a00:1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused_kind(ip).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "192.0.2.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused_kind(ip), None, "{ip}");
        }
        // The WHATWG parser reads the shorthand forms a client would connect to.
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let target = Target::parse(url).unwrap();
            let ip = match target.host {
                Host::Ipv4(ip) => IpAddr::V4(ip),
                Host::Ipv6(ip) => IpAddr::V6(ip),
                Host::Domain(name) => panic!("{url} parsed as the name {name}"),
            };
            assert_eq!(refused_kind(ip), Some("loopback"), "{url}");
        }
    }
}
