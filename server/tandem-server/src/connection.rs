//! One WebSocket connection to one doc: a reader (this task) and a writer (a tracked task).
//!
//! The reader decodes each binary frame with `tandem_core::protocol::decode_frame` and hands the
//! messages to the doc actor with a blocking `send`: when the doc's inbox is full the reader
//! stops reading, which slows a fast writer down instead of buffering without bound.
//! The writer drains the bounded outbox the doc actor fills, sends pings, and sends the one close
//! frame of the connection. It is separate from the reader so that a reader waiting on a full
//! inbox never stops the outbox from draining.
//!
//! Every connection ends with exactly one [`CloseReason`] (or a close by the peer), logged once
//! in the `conn` span and sent as the close frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tandem_core::protocol::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER,
    decode_frame, truncate_reason,
};
use tandem_core::rate::ConnectionRates;
use tandem_core::{DocId, Limits, PeerId, ProtocolError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::auth::Grant;
use crate::doc_actor::DocCommand;
use crate::hub::{Hub, JoinError, PeerLink};
use crate::ws_upgrade::Socket;

/// Settings of every connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// How often the server pings a peer.
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is closed and its presence removed.
    pub pong_timeout: Duration,
}

/// `last_seen_ms` while the reader waits for room in the doc's inbox.
const BUSY: u64 = u64::MAX;

/// Messages larger than this are sent as fragments of this size.
const MAX_FRAGMENT_BYTES: usize = 256 * 1024;

/// Most frames the writer sends before it flushes the socket.
const MAX_FRAMES_PER_FLUSH: usize = 64;

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
    /// The doc could not be opened.
    Unavailable,
    /// The peer's token expired; it may fetch a fresh one and reconnect.
    TokenExpired,
}

/// Close code sent when the token of a connection expires (HTTP 401's number, in the 4000 range
/// that RFC 6455 leaves to applications).
pub(crate) const CLOSE_TOKEN_EXPIRED: u16 = 4401;

impl CloseReason {
    fn close_frame(&self) -> (u16, String) {
        match self {
            CloseReason::Protocol(error) => error.close_frame(),
            CloseReason::SlowConsumer => (CLOSE_POLICY_VIOLATION, "slow consumer".into()),
            CloseReason::PongTimeout => (CLOSE_POLICY_VIOLATION, "ping timeout".into()),
            CloseReason::Shutdown => (CLOSE_GOING_AWAY, "server shutting down".into()),
            CloseReason::StorageFailure => (CLOSE_INTERNAL_ERROR, "storage failure".into()),
            CloseReason::Unavailable => (CLOSE_TRY_AGAIN_LATER, "document unavailable".into()),
            CloseReason::TokenExpired => (CLOSE_TOKEN_EXPIRED, "token expired".into()),
        }
    }

    fn log(&self, peer: PeerId) {
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
            CloseReason::Protocol(_) | CloseReason::SlowConsumer | CloseReason::PongTimeout => {
                warn!(%peer, code, reason, "closing connection")
            }
            CloseReason::StorageFailure | CloseReason::Unavailable => {
                tracing::error!(%peer, code, reason, "closing connection")
            }
            CloseReason::Shutdown => debug!(%peer, code, reason, "closing connection"),
            CloseReason::TokenExpired => tracing::info!(%peer, code, reason, "closing connection"),
        }
    }
}

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn run(
    socket: Socket,
    doc: DocId,
    grant: Grant,
    hub: Hub,
    config: ConnectionConfig,
    remote: SocketAddr,
) {
    let peer = hub.next_peer_id();
    let sub = grant.identity.as_ref().map(|identity| identity.sub.clone());
    let span = tracing::info_span!("conn", %peer, doc = %doc, %remote, sub = sub.as_deref(), role = ?grant.role);
    serve(socket, doc, grant, hub, config, peer)
        .instrument(span)
        .await;
}

async fn serve(
    socket: Socket,
    doc: DocId,
    grant: Grant,
    hub: Hub,
    conn_config: ConnectionConfig,
    peer: PeerId,
) {
    // The token's expiry as a point on the monotonic clock the writer sleeps on.
    let expires_at = grant.expires_at.and_then(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        // `None` (no timer) only for an expiry too far out to represent.
        Instant::now().checked_add(left)
    });
    let config = hub.config().clone();
    let (outbox_tx, outbox_rx) = mpsc::channel::<Bytes>(config.outbox_capacity);
    let (closer_tx, closer_rx) = mpsc::channel::<CloseReason>(1);
    let (sink, stream) = socket.split();
    let conn_cancel = hub.lifecycle().cancel.child_token();
    let started = Instant::now();
    let last_seen_ms = Arc::new(AtomicU64::new(0));

    let writer = Writer {
        sink,
        outbox: outbox_rx,
        closer: closer_rx,
        conn_cancel: conn_cancel.clone(),
        server_cancel: hub.lifecycle().cancel.clone(),
        started,
        last_seen_ms: last_seen_ms.clone(),
        config: conn_config,
        peer,
        expires_at,
    };
    let writer_done = CancellationToken::new();
    {
        let writer_done = writer_done.clone();
        hub.lifecycle().spawn(tracing::Span::current(), async move {
            writer.run().await;
            writer_done.cancel();
        });
    }

    let link = PeerLink {
        outbox: outbox_tx,
        closer: closer_tx.clone(),
        access: grant.access(),
    };
    let handle = match hub.join(&doc, peer, link).await {
        Ok(handle) => handle,
        Err(error) => {
            let reason = match error {
                JoinError::ShuttingDown => CloseReason::Shutdown,
                JoinError::Retry | JoinError::Unavailable => CloseReason::Unavailable,
            };
            let _ = closer_tx.try_send(reason);
            writer_done.cancelled().await;
            return;
        }
    };
    debug!(%peer, "peer connected");

    let reader = Reader {
        stream,
        actor: handle.tx.clone(),
        peer,
        limits: config.limits.clone(),
        started,
        last_seen_ms,
        rates: ConnectionRates::new(&config.limits, started.elapsed().as_millis() as u64),
    };
    let ended = tokio::select! {
        reason = reader.run() => reason,
        // The writer stopped first (shutdown, kicked by the actor, socket error).
        () = conn_cancel.cancelled() => None,
    };
    if let Some(reason) = ended {
        let _ = closer_tx.try_send(reason);
    } else {
        conn_cancel.cancel();
    }
    let _ = handle.tx.send(DocCommand::Leave { peer }).await;
    writer_done.cancelled().await;
    debug!(%peer, "peer disconnected");
}

struct Reader {
    stream: SplitStream<Socket>,
    actor: mpsc::Sender<DocCommand>,
    peer: PeerId,
    limits: Limits,
    started: Instant,
    last_seen_ms: Arc<AtomicU64>,
    /// The per-connection rate limits; a breach closes the connection with 4429.
    rates: ConnectionRates,
}

impl Reader {
    /// Reads until the peer closes (`None`) or misbehaves (`Some(reason)`).
    async fn run(mut self) -> Option<CloseReason> {
        loop {
            let message = match self.stream.next().await? {
                Ok(message) => message,
                Err(error) => return self.read_error(error),
            };
            let now_ms = self.started.elapsed().as_millis() as u64;
            self.last_seen_ms.store(now_ms, Ordering::Relaxed);
            match message {
                WsMessage::Binary(frame) => {
                    // Bytes are counted before decoding, so a peer over its rate costs no decoding.
                    if let Err(error) = self.rates.check_frame(frame.len(), now_ms) {
                        return Some(CloseReason::Protocol(error));
                    }
                    let messages = match decode_frame(&frame, &self.limits) {
                        Ok(messages) => messages,
                        Err(error) => return Some(CloseReason::Protocol(error)),
                    };
                    if let Err(error) = self.rates.check_messages(&messages, now_ms) {
                        return Some(CloseReason::Protocol(error));
                    }
                    let command = DocCommand::Receive {
                        peer: self.peer,
                        messages,
                    };
                    // Blocks while the doc's inbox is full: backpressure to the socket. The
                    // peer is not silent meanwhile, we are not reading: no ping timeout.
                    self.last_seen_ms.store(BUSY, Ordering::Relaxed);
                    let sent = self.actor.send(command).await;
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    self.last_seen_ms.store(now_ms, Ordering::Relaxed);
                    if sent.is_err() {
                        return Some(CloseReason::Unavailable);
                    }
                }
                WsMessage::Text(_) => return Some(CloseReason::Protocol(ProtocolError::TextFrame)),
                WsMessage::Ping(payload) | WsMessage::Pong(payload) => {
                    // tungstenite answers every ping: a ping flood is bounded like messages.
                    if let Err(error) = self.rates.check_control_frame(payload.len(), now_ms) {
                        return Some(CloseReason::Protocol(error));
                    }
                }
                WsMessage::Close(_) => return None,
                // Only ever produced when writing.
                WsMessage::Frame(_) => {}
            }
        }
    }

    fn read_error(&self, error: WsError) -> Option<CloseReason> {
        use tokio_tungstenite::tungstenite::error::CapacityError;
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Some(CloseReason::Protocol(ProtocolError::FrameTooLarge {
                    len: size as u64,
                    max: max_size as u64,
                }))
            }
            WsError::Capacity(_) => Some(CloseReason::Protocol(ProtocolError::FrameTooLarge {
                len: self.limits.max_frame_bytes.saturating_add(1),
                max: self.limits.max_frame_bytes,
            })),
            WsError::Utf8(_) => Some(CloseReason::Protocol(ProtocolError::TextFrame)),
            WsError::Protocol(_) => Some(CloseReason::Protocol(ProtocolError::Malformed(
                "invalid websocket framing",
            ))),
            error => {
                debug!(peer = %self.peer, %error, "socket read failed");
                None
            }
        }
    }
}

struct Writer {
    sink: SplitSink<Socket, WsMessage>,
    outbox: mpsc::Receiver<Bytes>,
    closer: mpsc::Receiver<CloseReason>,
    /// Cancelled when this connection ends for any reason.
    conn_cancel: CancellationToken,
    /// Cancelled when the server shuts down (the parent of `conn_cancel`).
    server_cancel: CancellationToken,
    started: Instant,
    last_seen_ms: Arc<AtomicU64>,
    config: ConnectionConfig,
    peer: PeerId,
    /// When the peer's token expires; the connection closes with 4401 then.
    expires_at: Option<Instant>,
}

impl Writer {
    async fn run(mut self) {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // When the oldest ping the peer has not yet answered (with anything) went out.
        let mut ping_sent_ms: Option<u64> = None;
        let reason = loop {
            tokio::select! {
                biased;
                // A reason from the reader or the doc actor: it is the last thing sent.
                reason = self.closer.recv() => break reason,
                // Server shutdown (1001), or the reader saw the peer close (nothing to send).
                () = self.conn_cancel.cancelled() => {
                    break self.server_cancel.is_cancelled().then_some(CloseReason::Shutdown);
                }
                frame = self.outbox.recv() => match frame {
                    Some(frame) => {
                        if self.send_batch(frame).await.is_err() {
                            break None;
                        }
                    }
                    // The doc actor dropped this peer without a reason: it is gone.
                    None => break None,
                },
                () = sleep_until_opt(self.expires_at) => break Some(CloseReason::TokenExpired),
                _ = ping.tick() => {
                    // Silence counts from the first ping the peer could have answered: time
                    // spent writing a big frame to a slow peer is not the peer's silence.
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    let last_seen = self.last_seen_ms.load(Ordering::Relaxed);
                    if last_seen == BUSY || ping_sent_ms.is_some_and(|sent| last_seen >= sent) {
                        ping_sent_ms = None;
                    }
                    if let Some(sent) = ping_sent_ms
                        && now_ms.saturating_sub(sent) >= self.config.pong_timeout.as_millis() as u64
                    {
                        break Some(CloseReason::PongTimeout);
                    }
                    if self.sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        break None;
                    }
                    if ping_sent_ms.is_none() {
                        ping_sent_ms = Some(self.started.elapsed().as_millis() as u64);
                    }
                }
            }
        };
        if let Some(reason) = reason {
            reason.log(self.peer);
            let (code, text) = reason.close_frame();
            let frame = CloseFrame {
                code: code.into(),
                reason: truncate_reason(text).into(),
            };
            let _ = self.sink.send(WsMessage::Close(Some(frame))).await;
        }
        let _ = self.sink.close().await;
        self.conn_cancel.cancel();
    }

    /// Sends `first` and whatever else is queued (up to a bound), then flushes once.
    async fn send_batch(&mut self, first: Bytes) -> Result<(), WsError> {
        self.send_frame(first).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match self.outbox.try_recv() {
                Ok(frame) => self.send_frame(frame).await?,
                Err(_) => break,
            }
        }
        self.sink.flush().await
    }

    /// Queues one message. A big one (a sync step 2 of a big doc, shared by every joiner that
    /// sent the same state vector) goes out as fragments, each flushed before the next is
    /// copied into tungstenite's write buffer, which keeps its capacity for the life of the
    /// connection: one fragment per connection instead of one copy of the doc.
    async fn send_frame(&mut self, frame: Bytes) -> Result<(), WsError> {
        if frame.len() <= MAX_FRAGMENT_BYTES {
            return self.sink.feed(WsMessage::Binary(frame)).await;
        }
        let n = frame.len().div_ceil(MAX_FRAGMENT_BYTES);
        for i in 0..n {
            let start = i * MAX_FRAGMENT_BYTES;
            let chunk = frame.slice(start..frame.len().min(start + MAX_FRAGMENT_BYTES));
            let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
            self.sink
                .send(WsMessage::Frame(Frame::message(chunk, opcode, i + 1 == n)))
                .await?;
        }
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
