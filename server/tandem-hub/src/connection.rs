//! One WebSocket connection to one doc, served by one task once it has joined.
//!
//! The task waits on everything at once: frames from the peer, frames the doc actor put in the
//! bounded outbox, a close request, shutdown, the ping timer and the token's expiry. Each binary
//! frame is decoded with `tandem_core::protocol::decode_frame` and handed to the doc actor. When
//! the doc's inbox is full the command waits in the task, which stops reading from the peer
//! (backpressure to the socket instead of buffering without bound) while the outbox keeps
//! draining, so a busy doc never turns a fast writer into a slow consumer.
//!
//! What an idle connection costs is what this task holds, so it is kept small: one task (not a
//! reader and a writer), no split socket, a set-once slot instead of a channel for the close
//! request, and the join runs in the upgrade's task, which ends when the connection's own task
//! starts (a future keeps room for everything it ever awaits).
//!
//! Every connection ends with exactly one `CloseReason` (or a close by the peer), logged once
//! in the `conn` span and sent as the close frame.
//!
//! The task is generic over the byte stream under the WebSocket ([`Transport`]): the server hands
//! it an upgraded HTTP connection, tests an in-memory duplex. It knows the peer only as a
//! [`PeerGrant`] and a [`PeerAddr`]; tokens, HTTP and the upgrade stay in the server.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem_core::protocol::{decode_frame, truncate_reason};
use tandem_core::rate::ConnectionRates;
use tandem_core::{DocId, Limits, PeerId, ProtocolError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::clock::sleep_until;
use crate::doc_actor::DocCommand;
use crate::metrics::HubMetrics;
use crate::outbox::{self, OutboxReceiver};
use crate::peer::{CloseReason, Closer, PeerAddr, PeerGrant};
use crate::{Dialect, DocHandle, Hub, JoinError, PeerLink};

/// What a connection's socket must be: a byte stream the WebSocket runs over (an upgraded HTTP
/// connection in the server, an in-memory duplex in tests).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for S {}

/// Settings of every connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// How often the server pings a peer.
    pub ping_interval: Duration,
    /// A peer that sends nothing (not even a pong) for this long is closed and its presence removed.
    pub pong_timeout: Duration,
    /// Most documents one Hocuspocus socket may have open at once.
    pub max_docs_per_socket: usize,
}

/// Messages larger than this skip tungstenite's write buffer: see [`Conn::send_frame`].
pub(crate) const DIRECT_WRITE_BYTES: usize = 64 * 1024;

/// Most frames the writer sends before it flushes the socket.
pub(crate) const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Longest time a closing connection waits for the peer's answering close frame, reading and
/// dropping what arrives meanwhile (see `close_with`).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Longest time a closing connection tries to hand the peer its close frame. Generous, because a
/// slow consumer is closed while its socket is still full of updates it may yet read.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A command to the doc actor waiting for room in its inbox. The boxed `reserve_owned` keeps
/// the connection's place in the inbox's queue while the outbox is drained meanwhile.
pub(crate) type PendingSend = Pin<
    Box<
        dyn Future<Output = Result<mpsc::OwnedPermit<DocCommand>, mpsc::error::SendError<()>>>
            + Send,
    >,
>;

/// Serves one WebSocket: joins the doc, then hands the connection to its own task.
///
/// `guard` is held until the connection ends and dropped then (the server passes the client's
/// per-address slot); the hub does nothing else with it.
pub async fn run<S: Transport, G: Send + 'static>(
    socket: WebSocketStream<S>,
    doc: DocId,
    grant: PeerGrant,
    hub: Hub,
    config: ConnectionConfig,
    client: PeerAddr,
    guard: G,
) {
    let peer = hub.next_peer_id();
    let sub = grant
        .access
        .identity
        .as_ref()
        .map(|identity| identity.sub.clone());
    // A root span: the connection outlives the TCP and request spans it came from, and keeping
    // them alive would cost every idle connection their memory. `remote` is the client through
    // trusted proxies; `proxy` the proxy it came through, if any.
    let span = tracing::info_span!(
        parent: None,
        "conn",
        %peer,
        doc = %doc,
        remote = %client.ip,
        proxy = client.proxy.map(tracing::field::display),
        sub = sub.as_deref(),
        role = grant.role,
    );
    drop(sub);
    if let Some(conn) = join(socket, &doc, grant, &hub, config, peer)
        .instrument(span.clone())
        .await
    {
        // The embedder's guard (the client's per-address slot) lives as long as the connection.
        hub.lifecycle().spawn(span, async move {
            let _guard = guard;
            conn.serve().await;
        });
    }
}

/// Joins `peer` to `doc`; on failure closes the socket with the reason and returns `None`.
async fn join<S: Transport>(
    mut socket: WebSocketStream<S>,
    doc: &DocId,
    grant: PeerGrant,
    hub: &Hub,
    config: ConnectionConfig,
    peer: PeerId,
) -> Option<Conn<S>> {
    let (outbox_tx, outbox) = outbox::outbox(hub.config().outbox_capacity);
    let closer = Closer::default();
    let link = PeerLink {
        outbox: outbox_tx,
        closer: closer.clone(),
        access: grant.access,
        dialect: Dialect::YWebsocket,
    };
    let doc_handle = match hub.join(doc, peer, link).await {
        Ok(handle) => handle,
        Err(error) => {
            let reason = match error {
                JoinError::ShuttingDown => CloseReason::Shutdown,
                JoinError::Retry | JoinError::Unavailable => CloseReason::Unavailable,
                JoinError::StorageFull => CloseReason::StorageFull,
                JoinError::Corrupt => CloseReason::DocCorrupt,
            };
            reason.count(&hub.config().metrics);
            close_with(&mut socket, peer, Some(reason)).await;
            return None;
        }
    };
    debug!(%peer, "peer connected");
    // The token's expiry as a point on the monotonic clock.
    let expires_at = grant.expires_at.and_then(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        // `None` (no timer) only for an expiry too far out to represent.
        Instant::now().checked_add(left)
    });
    let limits = hub.config().limits.clone();
    Some(Conn {
        rates: ConnectionRates::new(&limits, 0),
        limits,
        socket,
        outbox,
        doc: doc_handle,
        closer,
        shutdown: hub.lifecycle().cancel.clone(),
        expires_at,
        peer,
        started: Instant::now(),
        config,
        metrics: hub.config().metrics.clone(),
    })
}

/// Logs `reason` and sends it as the close frame, then closes the socket.
pub(crate) async fn close_with<S: Transport>(
    socket: &mut WebSocketStream<S>,
    peer: PeerId,
    reason: Option<CloseReason>,
) {
    if let Some(reason) = &reason {
        reason.log(peer);
    }
    // A peer that reads nothing (a slow consumer) never takes the close frame off a full socket:
    // give up on it after a bound instead of holding the task and the socket for good.
    let sent = tokio::time::timeout(CLOSE_SEND_TIMEOUT, async {
        if let Some(reason) = reason {
            let (code, text) = reason.close_frame();
            let frame = CloseFrame {
                code: code.into(),
                reason: truncate_reason(text).into(),
            };
            let _ = socket.send(WsMessage::Close(Some(frame))).await;
        }
        let _ = socket.close(None).await;
    })
    .await;
    if sent.is_err() {
        debug!(%peer, timeout = ?CLOSE_SEND_TIMEOUT, "close frame not taken in time; dropping the socket");
        return;
    }
    // Linger until the peer answers the close (or hangs up), reading and dropping what it still
    // sends. Closing a socket with unread bytes in its receive buffer makes the kernel answer with
    // a reset, and a reset makes the peer's kernel discard what the peer has not read yet, our
    // close frame included: a slow consumer that answered a ping on its way to the close saw 1006
    // instead of 1008 "slow consumer".
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// One joined connection: everything its task holds.
struct Conn<S> {
    socket: WebSocketStream<S>,
    outbox: OutboxReceiver,
    doc: DocHandle,
    closer: Closer,
    /// The server's shutdown token.
    shutdown: CancellationToken,
    /// When the peer's token expires; the connection closes with 4401 then.
    expires_at: Option<Instant>,
    peer: PeerId,
    limits: Limits,
    /// The per-connection rate limits; a breach closes the connection with 4429.
    rates: ConnectionRates,
    started: Instant,
    config: ConnectionConfig,
    metrics: HubMetrics,
}

impl<S: Transport> Conn<S> {
    /// The connection's task: serves the peer, leaves the doc, closes the socket.
    ///
    /// An `async move` block rather than an `async fn`: an `async fn` keeps its by-value
    /// argument twice in its future (the argument and the local it is moved into), which would
    /// cost every connection a second copy of `Conn`.
    fn serve(self) -> impl Future<Output = ()> + Send {
        let mut conn = self;
        async move {
            let reason = conn.run().await;
            let _ = conn
                .doc
                .tx
                .send(DocCommand::Leave { peer: conn.peer })
                .await;
            if let Some(reason) = &reason {
                reason.count(&conn.metrics);
            }
            close_with(&mut conn.socket, conn.peer, reason).await;
            debug!(peer = %conn.peer, "peer disconnected");
        }
    }

    /// Serves the peer until it closes (`None`) or the connection must close (`Some(reason)`).
    async fn run(&mut self) -> Option<CloseReason> {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let shutdown = self.shutdown.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let expiry = sleep_until(self.expires_at);
        tokio::pin!(expiry);
        let closer = self.closer.clone();
        // Made once: a close is requested at most once, and a `Notified` made per turn of the
        // loop would join and leave the waiter list (two locks) on every frame sent.
        let woken = closer.woken();
        tokio::pin!(woken);
        let inbox = self.doc.tx.clone();
        // When the peer last sent anything.
        let mut last_seen_ms = 0u64;
        // When the oldest ping the peer has not yet answered (with anything) went out.
        let mut ping_sent_ms: Option<u64> = None;
        // A command waiting for room in the doc's inbox; nothing is read from the peer meanwhile.
        let mut pending: Option<(DocCommand, PendingSend)> = None;
        loop {
            if let Some(reason) = closer.reason() {
                return Some(reason);
            }
            tokio::select! {
                biased;
                frame = self.outbox.recv() => match frame {
                    Some(frame) => {
                        if self.send_batch(frame).await.is_err() {
                            return None;
                        }
                    }
                    // The doc actor dropped this peer: with the reason it gave, if any (it
                    // sets the reason before it lets go of the outbox).
                    None => return closer.reason(),
                },
                // Sent frames come first: a wake-up for one costs no other branch's poll. The
                // close reason is read at the top of every turn, so a flood of frames cannot
                // hide it; this wake-up only ends the wait.
                () = &mut woken => {}
                () = &mut shutdown => return Some(CloseReason::Shutdown),
                permit = async { pending.as_mut().expect("guarded").1.as_mut().await }, if pending.is_some() => {
                    let (command, _) = pending.take().expect("guarded");
                    match permit {
                        Ok(permit) => {
                            permit.send(command);
                            last_seen_ms = self.now_ms();
                        }
                        Err(_) => return Some(CloseReason::Unavailable),
                    }
                }
                message = self.socket.next(), if pending.is_none() => {
                    let message = match message? {
                        Ok(message) => message,
                        Err(error) => return self.read_error(error),
                    };
                    let now_ms = self.now_ms();
                    last_seen_ms = now_ms;
                    let command = match self.receive(message, now_ms) {
                        Ok(Some(command)) => command,
                        Ok(None) => continue,
                        Err(reason) => return reason,
                    };
                    match inbox.try_send(command) {
                        Ok(()) => {}
                        // The doc is busy: wait in line without blocking the outbox.
                        Err(mpsc::error::TrySendError::Full(command)) => {
                            pending = Some((command, Box::pin(inbox.clone().reserve_owned())));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Some(CloseReason::Unavailable);
                        }
                    }
                }
                () = &mut expiry => return Some(CloseReason::TokenExpired),
                _ = ping.tick() => {
                    // Silence counts from the first ping the peer could have answered: time
                    // spent writing a big frame to a slow peer, or waiting for room in the doc's
                    // inbox, is not the peer's silence.
                    let now_ms = self.now_ms();
                    if pending.is_some() || ping_sent_ms.is_some_and(|sent| last_seen_ms >= sent) {
                        ping_sent_ms = None;
                    }
                    if let Some(sent) = ping_sent_ms
                        && now_ms.saturating_sub(sent) >= self.config.pong_timeout.as_millis() as u64
                    {
                        return Some(CloseReason::PongTimeout);
                    }
                    if self.socket.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        return None;
                    }
                    if ping_sent_ms.is_none() {
                        ping_sent_ms = Some(self.now_ms());
                    }
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// What one message from the peer asks of the doc: a command, nothing, or the end.
    fn receive(
        &mut self,
        message: WsMessage,
        now_ms: u64,
    ) -> Result<Option<DocCommand>, Option<CloseReason>> {
        let protocol = |error| Some(CloseReason::Protocol(error));
        match message {
            WsMessage::Binary(frame) => {
                // Bytes are counted before decoding, so a peer over its rate costs no decoding.
                self.rates
                    .check_frame(frame.len(), now_ms)
                    .map_err(protocol)?;
                let messages = decode_frame(&frame, &self.limits).map_err(protocol)?;
                self.rates
                    .check_messages(&messages, now_ms)
                    .map_err(protocol)?;
                Ok(Some(DocCommand::Receive {
                    peer: self.peer,
                    messages,
                }))
            }
            WsMessage::Text(_) => Err(protocol(ProtocolError::TextFrame)),
            WsMessage::Ping(payload) | WsMessage::Pong(payload) => {
                // tungstenite answers every ping: a ping flood is bounded like messages.
                self.rates
                    .check_control_frame(payload.len(), now_ms)
                    .map_err(protocol)?;
                Ok(None)
            }
            WsMessage::Close(_) => Err(None),
            // Only ever produced when writing.
            WsMessage::Frame(_) => Ok(None),
        }
    }

    fn read_error(&self, error: WsError) -> Option<CloseReason> {
        read_error_reason(error, &self.limits, self.peer)
    }

    /// Sends `first` and whatever else is queued (up to a bound), then flushes once.
    async fn send_batch(&mut self, first: Bytes) -> Result<(), WsError> {
        self.send_frame(first).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match self.outbox.try_recv() {
                Some(frame) => self.send_frame(frame).await?,
                None => break,
            }
        }
        self.socket.flush().await
    }

    /// Queues one message. A big one (a sync step 2 of a big doc, shared by every joiner that
    /// sent the same state vector, or a big paste) is written straight to the socket once
    /// tungstenite's buffer is flushed: one unmasked binary frame, its header and then the shared
    /// payload. tungstenite would copy it into a write buffer that keeps its capacity for the life
    /// of the connection; this way the server copies nothing per joiner, and the peer gets one
    /// frame it can read into one buffer instead of fragments it has to join.
    ///
    /// This is a contract with tungstenite's internals, kept on purpose: after `flush` nothing
    /// of an earlier message is left in its buffer, and a server frame needs no mask, so bytes
    /// written to the inner stream form a valid frame between two of its own. tokio-tungstenite
    /// is pinned to one minor version in the root `Cargo.toml`; on an upgrade, the tests that
    /// guard this are `tls::wss_delivers_big_messages_between_small_ones` and
    /// `server::a_peer_still_receiving_a_big_document_is_not_closed_for_silence` in `tests/it`.
    async fn send_frame(&mut self, frame: Bytes) -> Result<(), WsError> {
        if frame.len() <= DIRECT_WRITE_BYTES {
            return self.socket.feed(WsMessage::Binary(frame)).await;
        }
        write_unbuffered(&mut self.socket, &[&frame]).await
    }
}

/// The close reason for a socket read that failed (`None`: the socket is simply gone).
pub(crate) fn read_error_reason(
    error: WsError,
    limits: &Limits,
    peer: PeerId,
) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Some(CloseReason::Protocol(ProtocolError::FrameTooLarge {
                len: size as u64,
                max: max_size as u64,
            }))
        }
        WsError::Capacity(_) => Some(CloseReason::Protocol(ProtocolError::FrameTooLarge {
            len: limits.max_frame_bytes.saturating_add(1),
            max: limits.max_frame_bytes,
        })),
        WsError::Utf8(_) => Some(CloseReason::Protocol(ProtocolError::TextFrame)),
        WsError::Protocol(_) => Some(CloseReason::Protocol(ProtocolError::Malformed(
            "invalid websocket framing",
        ))),
        error => {
            debug!(%peer, %error, "socket read failed");
            None
        }
    }
}

/// Writes one binary message made of `parts` straight to the socket under tungstenite, after
/// flushing its buffer: see [`Conn::send_frame`] for why this is sound and what guards it.
pub(crate) async fn write_unbuffered<S: Transport>(
    socket: &mut WebSocketStream<S>,
    parts: &[&[u8]],
) -> Result<(), WsError> {
    socket.flush().await?;
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    let len = parts.iter().map(|part| part.len() as u64).sum::<u64>();
    let mut head = Vec::with_capacity(header.len(len));
    header.format(len, &mut head)?;
    let io = socket.get_mut();
    io.write_all(&head).await?;
    for part in parts {
        io.write_all(part).await?;
    }
    Ok(())
}
