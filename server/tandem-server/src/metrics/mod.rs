//! What the server knows about itself, for operators: the Prometheus metrics (`GET /metrics`,
//! `protocol-spec/metrics.md`) and the admin view's data (`GET /api/admin/...`).
//!
//! - this file: [`Telemetry`], the one cheap-clone handle every part of the server records
//!   through, and the server's own metric handles (HTTP, files, webhooks, activity, connections).
//! - `connections`: open WebSockets by protocol and the signed-in identities behind them.
//! - `errors`: the newest warn/error log events, kept by a tracing layer ([`ErrorLayer`]).
//! - `series`: the last hour of activity, one point every 10 s, sampled by a tracked task.
//! - `process`: CPU seconds and resident memory of the process, read from `/proc` on a scrape.
//!
//! The hub's metrics (updates, broadcasts, commits, durable wait, closes, open docs, awareness)
//! are the hub's own [`HubMetrics`]: made here, registered here, handed to the hub in its
//! config. With metrics off (`--metrics off`) no handle exists: every record is one branch on
//! `None`, and `/metrics` is a 404; the admin view still works, with zero activity in its series.
//!
//! Boundary: a service like the others; it knows no HTTP (the `api` layer serves it).

mod connections;
mod errors;
mod process;
pub(crate) mod series;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tandem_hub::HubMetrics;

pub(crate) use connections::{ConnectionGuard, Protocol};
pub use errors::ErrorLayer;
pub(crate) use errors::LogEvent;
pub(crate) use series::Point;

/// Failed webhook deliveries kept for the admin view.
const MAX_FAILED_DELIVERIES: usize = 50;

/// The handle the server records through; cheap to clone.
#[derive(Clone)]
pub(crate) struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every metric, registered once at start-up; read-only afterwards (a scrape encodes it).
    registry: Option<Registry>,
    hub: HubMetrics,
    server: Option<ServerMetrics>,
    connections: connections::Connections,
    failed_deliveries: Mutex<VecDeque<FailedDelivery>>,
    series: series::Series,
    series_interval: std::time::Duration,
    started_at_ms: u64,
}

/// The server's metric handles, made once; label sets are few and fixed.
struct ServerMetrics {
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabels, Histogram>,
    upload_bytes: Counter,
    download_bytes: Counter,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    webhook_outbox: Gauge,
    activity_queue: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// One failed webhook attempt, as the admin view lists it.
#[derive(Debug, Clone)]
pub(crate) struct FailedDelivery {
    pub(crate) webhook: String,
    pub(crate) url: String,
    pub(crate) event: String,
    pub(crate) at_ms: u64,
    pub(crate) error: String,
    pub(crate) attempts: u32,
}

fn http_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Telemetry {
    /// Metrics on (`enabled`) or off; the admin data is kept either way.
    pub(crate) fn new(enabled: bool, series_interval: std::time::Duration) -> Telemetry {
        let hub = if enabled {
            HubMetrics::enabled()
        } else {
            HubMetrics::default()
        };
        let (registry, server) = if enabled {
            let mut registry = Registry::default();
            let server = ServerMetrics {
                http_requests: Family::default(),
                http_seconds: Family::new_with_constructor(http_histogram),
                upload_bytes: Counter::default(),
                download_bytes: Counter::default(),
                webhook_deliveries: Family::default(),
                webhook_outbox: Gauge::default(),
                activity_queue: Gauge::default(),
            };
            server.register(&mut registry);
            hub.register(&mut registry);
            registry.register_collector(Box::new(process::ProcessCollector));
            (Some(registry), Some(server))
        } else {
            (None, None)
        };
        let connections = connections::Connections::new(registry.is_some());
        let mut inner = Inner {
            registry,
            hub,
            server,
            connections,
            failed_deliveries: Mutex::new(VecDeque::new()),
            series: series::Series::default(),
            series_interval,
            started_at_ms: tandem_hub::clock::now_ms(),
        };
        if let Some(registry) = inner.registry.as_mut() {
            inner.connections.register(registry);
        }
        Telemetry {
            inner: Arc::new(inner),
        }
    }

    /// The hub's handles, for `HubConfig` and the redb writer.
    pub(crate) fn hub(&self) -> &HubMetrics {
        &self.inner.hub
    }

    /// Whether metrics are collected.
    pub(crate) fn enabled(&self) -> bool {
        self.inner.registry.is_some()
    }

    /// The Prometheus text exposition of every metric; `None` when metrics are off.
    pub(crate) fn encode(&self) -> Option<String> {
        let registry = self.inner.registry.as_ref()?;
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, registry).ok()?;
        Some(text)
    }

    /// When the process started, ms since the epoch.
    pub(crate) fn started_at_ms(&self) -> u64 {
        self.inner.started_at_ms
    }

    /// Counts a WebSocket of `protocol` as open until the guard drops.
    pub(crate) fn connection_opened(&self, protocol: Protocol) -> ConnectionGuard {
        self.inner.connections.open(protocol)
    }

    /// Open WebSockets: (y-websocket, hocuspocus).
    pub(crate) fn connections_by_protocol(&self) -> (u64, u64) {
        self.inner.connections.by_protocol()
    }

    /// Distinct signed-in identities with an open WebSocket.
    pub(crate) fn connected_users(&self) -> usize {
        self.inner.connections.n_users()
    }

    /// One HTTP request finished: `route` is the router's pattern (never the raw path).
    pub(crate) fn http_request(
        &self,
        method: &'static str,
        route: &str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        let Some(server) = &self.inner.server else {
            return;
        };
        server
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        server
            .http_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Bytes of file content accepted in an upload request.
    pub(crate) fn uploaded(&self, bytes: u64) {
        if let Some(server) = &self.inner.server {
            server.upload_bytes.inc_by(bytes);
        }
    }

    /// Bytes of file content sent in a download answer.
    pub(crate) fn downloaded(&self, bytes: u64) {
        if let Some(server) = &self.inner.server {
            server.download_bytes.inc_by(bytes);
        }
    }

    /// One webhook attempt ended with `outcome` (`delivered`, `retry`, `failed`); a failed one
    /// (`retry` or `failed`) is also kept for the admin view.
    pub(crate) fn webhook_attempt(&self, outcome: &'static str, failure: Option<FailedDelivery>) {
        if let Some(server) = &self.inner.server {
            server
                .webhook_deliveries
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
        if let Some(failure) = failure {
            let mut failed = self
                .inner
                .failed_deliveries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if failed.len() == MAX_FAILED_DELIVERIES {
                failed.pop_front();
            }
            failed.push_back(failure);
        }
    }

    /// The newest failed webhook attempts, newest first.
    pub(crate) fn failed_deliveries(&self) -> Vec<FailedDelivery> {
        let failed = self
            .inner
            .failed_deliveries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failed.iter().rev().cloned().collect()
    }

    /// The webhook outbox's depth, as last sampled.
    pub(crate) fn set_webhook_outbox(&self, depth: usize) {
        if let Some(server) = &self.inner.server {
            server.webhook_outbox.set(depth as i64);
        }
    }

    /// The activity recorder's queue depth, as last seen by the recorder.
    pub(crate) fn set_activity_queue(&self, depth: usize) {
        if let Some(server) = &self.inner.server {
            server.activity_queue.set(depth as i64);
        }
    }

    /// The newest warn/error log events of this process, newest first.
    pub(crate) fn errors(&self) -> Vec<LogEvent> {
        errors::newest()
    }

    /// Time between two points of the series.
    pub(crate) fn series_interval(&self) -> std::time::Duration {
        self.inner.series_interval
    }

    /// The series' points, oldest first.
    pub(crate) fn points(&self) -> Vec<Point> {
        self.inner.series.points()
    }

    /// Takes one point of the series now.
    pub(crate) fn sample(&self) {
        let (n_commits, commit_seconds) = self.inner.hub.commit_totals();
        let (y_websocket, hocuspocus) = self.connections_by_protocol();
        self.inner.series.sample(series::Reading {
            at_ms: tandem_hub::clock::now_ms(),
            at: std::time::Instant::now(),
            n_updates: self.inner.hub.updates_received(),
            n_commits,
            commit_seconds,
            connected_users: self.connected_users() as u64,
            connections: y_websocket + hocuspocus,
        });
    }
}

impl ServerMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tandem_http_requests",
            "HTTP requests answered, by method, route pattern and status",
            self.http_requests.clone(),
        );
        registry.register(
            "tandem_http_request_duration_seconds",
            "Time to answer an HTTP request (headers of the answer ready), by route pattern",
            self.http_seconds.clone(),
        );
        registry.register(
            "tandem_upload_bytes",
            "Bytes of file content accepted by uploads (PUT and tus PATCH)",
            self.upload_bytes.clone(),
        );
        registry.register(
            "tandem_download_bytes",
            "Bytes of file content sent by downloads",
            self.download_bytes.clone(),
        );
        registry.register(
            "tandem_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, retry, failed)",
            self.webhook_deliveries.clone(),
        );
        registry.register(
            "tandem_webhook_outbox_depth",
            "Webhook deliveries waiting in the outbox (sampled every 10 s)",
            self.webhook_outbox.clone(),
        );
        registry.register(
            "tandem_activity_queue_depth",
            "Workspace events waiting for the activity recorder",
            self.activity_queue.clone(),
        );
    }
}
