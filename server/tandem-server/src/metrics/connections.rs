//! Open WebSockets by protocol, and the signed-in identities behind them (the admin view's
//! "connections" and "connected users"). Counted at the upgrade, by a guard that lives as long
//! as the socket's task: one lock per connect or disconnect (and per identity a Hocuspocus
//! socket adds), never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The WebSocket protocols the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    YWebsocket,
    Hocuspocus,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::YWebsocket => "y-websocket",
            Protocol::Hocuspocus => "hocuspocus",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

pub(super) struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    y_websocket: AtomicU64,
    hocuspocus: AtomicU64,
    /// Open connections per identity (the token's `sub`).
    users: Mutex<HashMap<String, usize>>,
    /// The Prometheus gauges, when metrics are on: (y-websocket, hocuspocus).
    gauges: Option<(Family<ProtocolLabels, Gauge>, Gauge, Gauge)>,
}

impl Connections {
    pub(super) fn new(enabled: bool) -> Connections {
        let gauges = enabled.then(|| {
            let family = Family::<ProtocolLabels, Gauge>::default();
            let y_websocket = family
                .get_or_create(&ProtocolLabels {
                    protocol: Protocol::YWebsocket.as_str(),
                })
                .clone();
            let hocuspocus = family
                .get_or_create(&ProtocolLabels {
                    protocol: Protocol::Hocuspocus.as_str(),
                })
                .clone();
            (family, y_websocket, hocuspocus)
        });
        Connections {
            shared: Arc::new(Shared {
                y_websocket: AtomicU64::new(0),
                hocuspocus: AtomicU64::new(0),
                users: Mutex::new(HashMap::new()),
                gauges,
            }),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        if let Some((family, _, _)) = &self.shared.gauges {
            registry.register(
                "tandem_connections",
                "Open WebSocket connections, by protocol",
                family.clone(),
            );
        }
    }

    pub(super) fn open(&self, protocol: Protocol) -> ConnectionGuard {
        self.shared
            .counter(protocol)
            .fetch_add(1, Ordering::Relaxed);
        if let Some(gauge) = self.shared.gauge(protocol) {
            gauge.inc();
        }
        ConnectionGuard {
            shared: self.shared.clone(),
            protocol,
            identities: Vec::new(),
        }
    }

    pub(super) fn by_protocol(&self) -> (u64, u64) {
        (
            self.shared.y_websocket.load(Ordering::Relaxed),
            self.shared.hocuspocus.load(Ordering::Relaxed),
        )
    }

    pub(super) fn n_users(&self) -> usize {
        self.shared.lock_users().len()
    }
}

impl Shared {
    fn counter(&self, protocol: Protocol) -> &AtomicU64 {
        match protocol {
            Protocol::YWebsocket => &self.y_websocket,
            Protocol::Hocuspocus => &self.hocuspocus,
        }
    }

    fn gauge(&self, protocol: Protocol) -> Option<&Gauge> {
        self.gauges
            .as_ref()
            .map(|(_, y_websocket, hocuspocus)| match protocol {
                Protocol::YWebsocket => y_websocket,
                Protocol::Hocuspocus => hocuspocus,
            })
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One open WebSocket; dropping it counts the connection closed and releases its identities.
pub(crate) struct ConnectionGuard {
    shared: Arc<Shared>,
    protocol: Protocol,
    identities: Vec<String>,
}

impl ConnectionGuard {
    /// Counts `identity` as connected through this socket (once per socket).
    pub(crate) fn add_identity(&mut self, identity: &str) {
        if self.identities.iter().any(|known| known == identity) {
            return;
        }
        self.identities.push(identity.to_owned());
        *self
            .shared
            .lock_users()
            .entry(identity.to_owned())
            .or_insert(0) += 1;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared
            .counter(self.protocol)
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(gauge) = self.shared.gauge(self.protocol) {
            gauge.dec();
        }
        if self.identities.is_empty() {
            return;
        }
        let mut users = self.shared.lock_users();
        for identity in self.identities.drain(..) {
            if let Some(n) = users.get_mut(&identity) {
                *n -= 1;
                if *n == 0 {
                    users.remove(&identity);
                }
            }
        }
    }
}
