//! The delivery worker: POSTs what is due in the outbox, signed with the webhook's secret,
//! records every attempt, and reschedules failures with exponential back-off and jitter. Every
//! attempt connects only to addresses `target.rs` checked just before, through one reqwest
//! client (no redirects, no proxy, connect and total timeouts).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header;
use sha2::Sha256;
use tandem_store::{DeliveryAttempt, FinishedAttempt, OutboxDelivery, WebhookRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Host;

use super::target::{Target, TargetError, resolve, resolve_name};
use super::{LOG_KEEP, WebhookConfig, Webhooks};
use crate::metrics::{FailedDelivery, Telemetry};
use tandem_hub::clock::{now_ms, now_s};

/// Due deliveries the worker takes from the outbox per pass.
const OUTBOX_BATCH: usize = 256;
/// Pause of the worker after a pass that changed nothing in the outbox.
const NO_PROGRESS_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries to write a pass's results while the store fails.
const FINISH_RETRY_MAX: Duration = Duration::from_secs(30);
/// Attempts in flight at once.
const MAX_CONCURRENT_ATTEMPTS: usize = 8;
/// Bytes of a receiver's answer read (and ignored) at most.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`.
pub(crate) fn sign(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
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
    telemetry: Telemetry,
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
            let (client, config, telemetry) = (&client, &config, &telemetry);
            async move { deliver(client, config, telemetry, webhook, delivery).await }
        }))
        .buffer_unordered(MAX_CONCURRENT_ATTEMPTS)
        .collect::<Vec<FinishedAttempt>>();
        let finished = tokio::select! {
            () = cancel.cancelled() => break,
            finished = attempts => finished,
        };
        // The results of the pass in one transaction, so deliveries compete little with
        // document edits for the store's single writer. If the store fails (cluster mode's
        // Postgres briefly down), the results are kept and written again before anything new
        // is claimed: dropping them would send what a receiver already acknowledged once more,
        // when its claim lapsed.
        let mut progressed = n_due == 0;
        if n_due > 0 {
            let finished = Arc::new(finished);
            let mut pause = NO_PROGRESS_PAUSE;
            loop {
                let results = finished.clone();
                match webhooks
                    .with_store(move |store| store.finish_attempts(&results, LOG_KEEP))
                    .await
                {
                    Ok(n_changed) => {
                        progressed = n_changed > 0;
                        break;
                    }
                    Err(_) => {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(FINISH_RETRY_MAX);
                    }
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
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
    telemetry: &Telemetry,
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
    let failure = (outcome != "delivered").then(|| FailedDelivery {
        webhook: webhook.id.clone(),
        url: webhook.url.clone(),
        event: delivery.event.clone(),
        at_ms,
        error: match (&result.error, result.status) {
            (Some(error), _) => error.clone(),
            (None, Some(status)) => format!("answered {status}"),
            (None, None) => "no answer".to_owned(),
        },
        attempts: n_failures,
    });
    telemetry.webhook_attempt(outcome, failure);
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

/// The HTTP client of deliveries: reqwest over rustls (ring, the public roots), HTTP/1.1, no
/// redirects followed, no proxy from the environment, a fresh connection per attempt, and a
/// resolver ([`CheckedResolver`]) that answers only with addresses it checked. A host written
/// as an address never reaches a resolver, so [`Client::exchange`] checks it itself.
struct Client {
    http: reqwest::Client,
    timeout: Duration,
    allow_private: bool,
}

impl Client {
    fn new(timeout: Duration, allow_private: bool) -> Client {
        // No proxy (`outbound`): a proxy would connect for us, to addresses no check saw.
        let http = crate::outbound::client_builder()
            // Each attempt resolves and checks again: no connection outlives its attempt.
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent("tandem-webhook")
            .build()
            .expect("a client with a preconfigured rustls config and no system roots builds");
        Client {
            http,
            timeout,
            allow_private,
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
        let refused = |error: TargetError| {
            if let TargetError::Refused { .. } = error {
                warn!(webhook = %webhook.id, delivery = %delivery.delivery_id, %error, "webhook attempt refused");
            }
            error.to_string()
        };
        if !matches!(target.host, Host::Domain(_)) {
            resolve(&target.host, target.port, self.allow_private)
                .await
                .map_err(refused)?;
        }
        let timestamp = now_s();
        let signature = sign(&webhook.secret, timestamp, &delivery.body);
        let sent = self
            .http
            .post(target.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "close")
            .header("tandem-webhook-id", &webhook.id)
            .header("tandem-delivery-id", &delivery.delivery_id)
            .header("tandem-event", &delivery.event)
            .header("tandem-timestamp", timestamp.to_string())
            .header("tandem-signature", format!("t={timestamp},v1={signature}"))
            .body(delivery.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Err(match target_error(&error) {
                    Some(TargetError::Refused { host, addr, kind }) => {
                        refused(TargetError::Refused {
                            host: host.clone(),
                            addr: *addr,
                            kind,
                        })
                    }
                    Some(error) => error.to_string(),
                    None => describe(&error),
                });
            }
        };
        let status = response.status().as_u16();
        // Read (a bounded part of) the answer so the receiver is not cut off mid-write.
        let mut n_read = 0;
        while n_read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => n_read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(status)
    }
}

/// Resolves webhook hosts for reqwest, refusing a name any of whose addresses is internal
/// (unless `allow_private`): the connection then goes only to the addresses just checked, so a
/// rebinding resolver cannot swap in another between the check and the connect.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_name(name.as_str(), allow_private)
                .await
                .map_err(|error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(error) })?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The [`TargetError`] behind a failed request, if the resolver refused it.
fn target_error(error: &reqwest::Error) -> Option<&TargetError> {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(refusal) = error.downcast_ref::<TargetError>() {
            return Some(refusal);
        }
        source = error.source();
    }
    None
}

/// A failed request in a few words, its deepest cause last, never its URL (which may carry a
/// token in its query).
fn describe(error: &reqwest::Error) -> String {
    let mut cause = None;
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        cause = Some(error.to_string());
        source = error.source();
    }
    let what = if error.is_connect() {
        "connecting"
    } else {
        "http"
    };
    match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => format!("{what}: the request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our scheme: the message is "<t>.<body>".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        assert_eq!(
            sign("s", 1_700_000_000, "{\"a\":1}"),
            hex::encode(mac.finalize().into_bytes())
        );
        assert_ne!(
            sign("s", 1_700_000_001, "{\"a\":1}"),
            sign("s", 1_700_000_000, "{\"a\":1}")
        );
    }
}
