//! What the hub needs to know of a peer before it joins, and how a peer's connection is told
//! to close.
//!
//! [`PeerGrant`] is the part of a verified token a connection uses: what the peer may do, who it
//! is, and until when. The server builds it from its own grant; the hub never sees tokens.
//! [`CloseReason`] is the one reason a connection ends with (mapped to one close code and one
//! log line), and [`Closer`] is how a doc actor hands that reason to the connection's task.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tandem_core::protocol::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER,
};
use tandem_core::{PeerAccess, PeerId, ProtocolError};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::metrics::{CloseKind, HubMetrics};

/// What one connection may do with its doc, from the peer's verified token.
#[derive(Debug, Clone)]
pub struct PeerGrant {
    /// Whether the peer may write, and who it verifiably is (`None` with authentication off).
    pub access: PeerAccess,
    /// When the token expires; the connection closes with 4401 then. `None`: never.
    pub expires_at: Option<SystemTime>,
    /// The token's role on the doc, as named in the connection's log span.
    pub role: &'static str,
}

/// Where a connection comes from, for its log span.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr {
    /// The client: the TCP peer's address, or the one a trusted proxy vouched for.
    pub ip: IpAddr,
    /// The trusted proxy the client came through, if any.
    pub proxy: Option<SocketAddr>,
}

/// Why the server closes a connection. Each maps to one close code and reason.
#[derive(Debug, Clone)]
pub(crate) enum CloseReason {
    /// The peer sent something the protocol does not allow.
    Protocol(ProtocolError),
    /// The peer's outbox filled up: it reads slower than the doc changes. It may reconnect.
    SlowConsumer,
    /// The peer answered no ping in time.
    PongTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The doc's storage failed; nothing unsaved was sent. The peer may retry later.
    StorageFailure,
    /// The peer's update was refused because the store is read-only (a full disk); nothing of
    /// it was stored or sent. The peer keeps its edits and resyncs after reconnecting.
    StorageFull,
    /// The peer's update was refused because the shared log (cluster mode's Redis) cannot be
    /// reached; nothing of it was relayed. The peer keeps its edits and resyncs after
    /// reconnecting, once the log is back.
    StorageUnavailable,
    /// The doc could not be opened.
    Unavailable,
    /// The doc's stored records are damaged; it cannot be served until the file is repaired.
    DocCorrupt,
    /// The peer's token expired; it may fetch a fresh one and reconnect.
    TokenExpired,
    /// A Hocuspocus socket asked for more documents than it may open at once.
    TooManyDocs { max: usize },
    /// A Hocuspocus socket sent more messages for documents it has no token for yet than may
    /// wait for their token.
    TooManyEarlyMessages {
        max_messages: usize,
        max_bytes: usize,
    },
    /// A Hocuspocus socket had too many tokens refused.
    TooManyRefusals { max: usize },
    /// A Hocuspocus socket had no token accepted within the pong timeout of opening.
    AuthTimeout,
}

/// Close code sent when the token of a connection expires (HTTP 401's number, in the 4000 range
/// that RFC 6455 leaves to applications).
pub(crate) const CLOSE_TOKEN_EXPIRED: u16 = 4401;

impl CloseReason {
    pub(crate) fn close_frame(&self) -> (u16, String) {
        match self {
            CloseReason::Protocol(error) => error.close_frame(),
            CloseReason::SlowConsumer => (CLOSE_POLICY_VIOLATION, "slow consumer".into()),
            CloseReason::PongTimeout => (CLOSE_POLICY_VIOLATION, "ping timeout".into()),
            CloseReason::Shutdown => (CLOSE_GOING_AWAY, "server shutting down".into()),
            CloseReason::StorageFailure => (CLOSE_INTERNAL_ERROR, "storage failure".into()),
            CloseReason::StorageFull => (CLOSE_TRY_AGAIN_LATER, "storage full, retry later".into()),
            CloseReason::StorageUnavailable => (
                CLOSE_TRY_AGAIN_LATER,
                "storage unavailable, retry later".into(),
            ),
            CloseReason::Unavailable => (CLOSE_TRY_AGAIN_LATER, "document unavailable".into()),
            CloseReason::DocCorrupt => (CLOSE_INTERNAL_ERROR, "document damaged".into()),
            CloseReason::TokenExpired => (CLOSE_TOKEN_EXPIRED, "token expired".into()),
            CloseReason::TooManyDocs { max } => (
                CLOSE_POLICY_VIOLATION,
                format!("too many documents on one connection, limit {max}"),
            ),
            CloseReason::TooManyEarlyMessages {
                max_messages,
                max_bytes,
            } => (
                CLOSE_POLICY_VIOLATION,
                format!(
                    "too many messages before authentication, limit {max_messages} messages or {max_bytes} bytes"
                ),
            ),
            CloseReason::TooManyRefusals { max } => (
                CLOSE_POLICY_VIOLATION,
                format!("too many refused authentications, limit {max}"),
            ),
            CloseReason::AuthTimeout => (
                CLOSE_POLICY_VIOLATION,
                "no document authenticated in time".into(),
            ),
        }
    }

    /// The bounded label of this reason in the close counter (`metrics.rs`).
    pub(crate) fn kind(&self) -> CloseKind {
        match self {
            CloseReason::Protocol(ProtocolError::RateLimited { .. }) => CloseKind::RateLimited,
            CloseReason::Protocol(
                ProtocolError::FrameTooLarge { .. }
                | ProtocolError::AwarenessTooLarge { .. }
                | ProtocolError::DocTooLarge { .. }
                | ProtocolError::StatelessTooLarge { .. }
                | ProtocolError::NameTooLong { .. },
            ) => CloseKind::TooLarge,
            CloseReason::Protocol(_) => CloseKind::Protocol,
            CloseReason::SlowConsumer => CloseKind::SlowConsumer,
            CloseReason::PongTimeout => CloseKind::PongTimeout,
            CloseReason::Shutdown => CloseKind::Shutdown,
            CloseReason::StorageFailure
            | CloseReason::StorageFull
            | CloseReason::StorageUnavailable
            | CloseReason::Unavailable
            | CloseReason::DocCorrupt => CloseKind::Storage,
            CloseReason::TokenExpired => CloseKind::TokenExpired,
            CloseReason::TooManyDocs { .. }
            | CloseReason::TooManyEarlyMessages { .. }
            | CloseReason::TooManyRefusals { .. }
            | CloseReason::AuthTimeout => CloseKind::Limit,
        }
    }

    /// Counts this close in `metrics` (nothing when they are off).
    pub(crate) fn count(&self, metrics: &HubMetrics) {
        if metrics.is_enabled() {
            metrics.closed(self.close_frame().0, self.kind());
        }
    }

    pub(crate) fn log(&self, peer: PeerId) {
        let (code, reason) = self.close_frame();
        match self {
            // Limits: the log line names the limit and what the peer did.
            CloseReason::Protocol(ProtocolError::RateLimited {
                limit_per_s,
                observed_per_s,
                ..
            }) => warn!(%peer, code, reason, limit_per_s, observed_per_s, "closing connection"),
            CloseReason::Protocol(ProtocolError::DocTooLarge {
                doc_bytes,
                update_bytes,
                max,
            }) => {
                warn!(%peer, code, reason, doc_bytes, update_bytes, max_doc_bytes = max, "closing connection")
            }
            CloseReason::Protocol(_)
            | CloseReason::SlowConsumer
            | CloseReason::PongTimeout
            | CloseReason::TooManyDocs { .. }
            | CloseReason::TooManyEarlyMessages { .. }
            | CloseReason::TooManyRefusals { .. }
            | CloseReason::AuthTimeout => {
                warn!(%peer, code, reason, "closing connection")
            }
            CloseReason::StorageFailure | CloseReason::Unavailable | CloseReason::DocCorrupt => {
                tracing::error!(%peer, code, reason, "closing connection")
            }
            CloseReason::Shutdown => debug!(%peer, code, reason, "closing connection"),
            // The store logs the full disk once; each refused writer is routine.
            CloseReason::StorageFull | CloseReason::StorageUnavailable => {
                tracing::info!(%peer, code, reason, "closing connection")
            }
            CloseReason::TokenExpired => tracing::info!(%peer, code, reason, "closing connection"),
        }
    }
}

/// How the doc actor asks one connection to close: the first reason wins, the rest are ignored.
#[derive(Clone, Default)]
pub(crate) struct Closer(Arc<CloserSlot>);

#[derive(Default)]
struct CloserSlot {
    reason: OnceLock<CloseReason>,
    wake: Notify,
}

impl Closer {
    /// Asks the connection to close with `reason`, unless it already has one.
    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self.0.reason.set(reason);
        // Stored as a permit if the connection is not waiting right now.
        self.0.wake.notify_one();
    }

    /// Resolves when a reason is set (or was set while nobody waited).
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.wake.notified()
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.0.reason.get().cloned()
    }
}
