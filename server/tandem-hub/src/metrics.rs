//! The hub's own metrics: what the real-time path counts, as Prometheus metric handles the server
//! registers and serves (`protocol-spec/metrics.md` names each one).
//!
//! The server makes one [`HubMetrics`] (on or off), registers it in its registry and hands it to
//! the hub through [`crate::HubConfig`] and to the redb writer (`persist.rs`, which imports this
//! module, never the other way round). The hub itself knows nothing of HTTP or of how the
//! metrics are served.
//!
//! Invariants of the hot path: recording is an atomic add on a handle made at start-up (no
//! label lookup, no lock, no allocation), and when metrics are off ([`HubMetrics::default`])
//! every method is one branch on `None` and records nothing. The histograms are ours
//! ([`AtomicHistogram`]) because `prometheus-client`'s takes a mutex for each observation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency histograms, in seconds: 100 µs to about 10 s.
const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the commit group size histogram, in log commands.
const GROUP_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// The hub's metric handles: cheap to clone; `Default` is off (records nothing).
#[derive(Clone, Default)]
pub struct HubMetrics {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// Why a connection was closed by the server, as a bounded label: one value per close reason
/// kind, never the reason's text (which can carry numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CloseKind {
    Protocol,
    TooLarge,
    RateLimited,
    SlowConsumer,
    PongTimeout,
    Shutdown,
    Storage,
    TokenExpired,
    Limit,
}

impl CloseKind {
    #[cfg(test)]
    const ALL: [CloseKind; 9] = [
        CloseKind::Protocol,
        CloseKind::TooLarge,
        CloseKind::RateLimited,
        CloseKind::SlowConsumer,
        CloseKind::PongTimeout,
        CloseKind::Shutdown,
        CloseKind::Storage,
        CloseKind::TokenExpired,
        CloseKind::Limit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CloseKind::Protocol => "protocol_error",
            CloseKind::TooLarge => "too_large",
            CloseKind::RateLimited => "rate_limited",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::PongTimeout => "ping_timeout",
            CloseKind::Shutdown => "shutdown",
            CloseKind::Storage => "storage",
            CloseKind::TokenExpired => "token_expired",
            CloseKind::Limit => "limit",
        }
    }
}

type CloseLabels = [(&'static str, String); 2];

struct Inner {
    updates_received: Counter,
    update_bytes_received: Counter,
    updates_broadcast: Counter,
    update_bytes_broadcast: Counter,
    open_docs: Gauge,
    awareness_states: Gauge,
    commit_seconds: Arc<AtomicHistogram>,
    commit_group_size: Arc<AtomicHistogram>,
    durable_wait_seconds: Arc<AtomicHistogram>,
    /// Closes by (code, kind); the family is only read when a connection closes, never per
    /// update.
    closes: Family<CloseLabels, Counter>,
}

impl HubMetrics {
    /// Metrics that record.
    pub fn enabled() -> HubMetrics {
        HubMetrics {
            inner: Some(Arc::new(Inner {
                updates_received: Counter::default(),
                update_bytes_received: Counter::default(),
                updates_broadcast: Counter::default(),
                update_bytes_broadcast: Counter::default(),
                open_docs: Gauge::default(),
                awareness_states: Gauge::default(),
                commit_seconds: Arc::new(AtomicHistogram::new(
                    "tandem_commit_duration_seconds",
                    "Time one redb commit (a group of log commands) took, fsync included",
                    LATENCY_BOUNDS_SECONDS,
                )),
                commit_group_size: Arc::new(AtomicHistogram::new(
                    "tandem_commit_group_size",
                    "Log commands (updates, versions, compactions) per redb commit",
                    GROUP_SIZE_BOUNDS,
                )),
                durable_wait_seconds: Arc::new(AtomicHistogram::new(
                    "tandem_durable_wait_seconds",
                    "Time from an update's arrival at its doc actor until it is durable",
                    LATENCY_BOUNDS_SECONDS,
                )),
                closes: Family::default(),
            })),
        }
    }

    /// Whether these metrics record anything.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Adds every metric to `registry` (nothing when off).
    pub fn register(&self, registry: &mut Registry) {
        let Some(inner) = &self.inner else {
            return;
        };
        registry.register(
            "tandem_updates_received",
            "Document updates received from peers (WebSocket and HTTP) and accepted",
            inner.updates_received.clone(),
        );
        registry.register(
            "tandem_update_bytes_received",
            "Bytes of the document updates received and accepted",
            inner.update_bytes_received.clone(),
        );
        registry.register(
            "tandem_updates_broadcast",
            "Update frames sent to other peers (one per receiving peer)",
            inner.updates_broadcast.clone(),
        );
        registry.register(
            "tandem_update_bytes_broadcast",
            "Bytes of the update frames sent to other peers",
            inner.update_bytes_broadcast.clone(),
        );
        registry.register(
            "tandem_open_docs",
            "Documents loaded in memory on this node",
            inner.open_docs.clone(),
        );
        registry.register(
            "tandem_awareness_states",
            "Awareness (presence) states held by the open documents",
            inner.awareness_states.clone(),
        );
        registry.register(
            "tandem_connection_closes",
            "Connections closed by the server, by close code and kind",
            inner.closes.clone(),
        );
        registry.register_collector(Box::new(inner.commit_seconds.clone()));
        registry.register_collector(Box::new(inner.commit_group_size.clone()));
        registry.register_collector(Box::new(inner.durable_wait_seconds.clone()));
    }

    /// Updates received and accepted since start (0 when off), for the admin series.
    pub fn updates_received(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.updates_received.get())
    }

    /// Commits since start and their total time in seconds (0 when off), for the admin series.
    pub fn commit_totals(&self) -> (u64, f64) {
        self.inner
            .as_ref()
            .map_or((0, 0.0), |inner| inner.commit_seconds.totals())
    }

    pub(crate) fn update_received(&self, bytes: usize) {
        if let Some(inner) = &self.inner {
            inner.updates_received.inc();
            inner.update_bytes_received.inc_by(bytes as u64);
        }
    }

    pub(crate) fn update_broadcast(&self, n_peers: usize, frame_bytes: usize) {
        if let Some(inner) = &self.inner {
            inner.updates_broadcast.inc_by(n_peers as u64);
            inner
                .update_bytes_broadcast
                .inc_by((n_peers * frame_bytes) as u64);
        }
    }

    pub(crate) fn doc_opened(&self) {
        if let Some(inner) = &self.inner {
            inner.open_docs.inc();
        }
    }

    pub(crate) fn doc_closed(&self) {
        if let Some(inner) = &self.inner {
            inner.open_docs.dec();
        }
    }

    /// A doc's awareness states went from `before` to `after`.
    pub(crate) fn awareness_changed(&self, before: usize, after: usize) {
        if before == after {
            return;
        }
        if let Some(inner) = &self.inner {
            inner.awareness_states.inc_by(after as i64 - before as i64);
        }
    }

    /// One commit of the document log (the redb writer's, or cluster mode's appender's) took
    /// `elapsed` and held `n_commands` log commands.
    pub fn observe_commit(&self, elapsed: Duration, n_commands: usize) {
        if let Some(inner) = &self.inner {
            inner.commit_seconds.observe(elapsed.as_secs_f64());
            inner.commit_group_size.observe(n_commands as f64);
        }
    }

    pub(crate) fn durable_after(&self, waited: Duration) {
        if let Some(inner) = &self.inner {
            inner.durable_wait_seconds.observe(waited.as_secs_f64());
        }
    }

    pub(crate) fn closed(&self, code: u16, kind: CloseKind) {
        if let Some(inner) = &self.inner {
            inner
                .closes
                .get_or_create(&[
                    ("code", code.to_string()),
                    ("kind", kind.as_str().to_owned()),
                ])
                .inc();
        }
    }

    /// Whether the durable-wait clock should be read at all (it costs a clock read per update).
    pub(crate) fn times_durable_wait(&self) -> bool {
        self.inner.is_some()
    }

    #[cfg(test)]
    pub(crate) fn kinds() -> &'static [CloseKind] {
        &CloseKind::ALL
    }
}

/// A histogram with fixed buckets, recorded with atomic adds only (no lock), encoded as a
/// Prometheus histogram on each scrape.
#[derive(Debug)]
pub struct AtomicHistogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// One counter per bound, plus the `+Inf` bucket.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, as `f64` bits (updated by compare-and-swap).
    sum_bits: AtomicU64,
}

impl AtomicHistogram {
    /// An empty histogram named `name` with upper bounds `bounds` (ascending).
    pub fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            name,
            help,
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let idx = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observations so far and their sum.
    pub fn totals(&self) -> (u64, f64) {
        (
            self.count.load(Ordering::Relaxed),
            f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        )
    }
}

impl Collector for AtomicHistogram {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' own total, so `_count` always equals the `+Inf` bucket even
        // while observations land; only the sum may be off by what is in flight.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let (_, sum) = self.totals();
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing_and_registers_nothing() {
        let metrics = HubMetrics::default();
        metrics.update_received(10);
        metrics.observe_commit(Duration::from_millis(1), 3);
        assert_eq!(metrics.updates_received(), 0);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert_eq!(text.trim(), "# EOF");
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let metrics = HubMetrics::enabled();
        metrics.observe_commit(Duration::from_micros(50), 1);
        metrics.observe_commit(Duration::from_millis(20), 3);
        metrics.observe_commit(Duration::from_secs(60), 3000);
        for kind in HubMetrics::kinds() {
            metrics.closed(1008, *kind);
        }
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("tandem_commit_duration_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("tandem_commit_duration_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tandem_commit_duration_seconds_bucket{le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tandem_commit_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("tandem_commit_group_size_bucket{le=\"4.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "tandem_connection_closes_total{code=\"1008\",kind=\"slow_consumer\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(metrics.commit_totals().0, 3);
    }
}
