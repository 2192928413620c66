//! One Hocuspocus WebSocket: many docs over one socket, served by one task.
//!
//! A Hocuspocus client (`@hocuspocus/provider`, or many providers sharing one
//! `HocuspocusProviderWebsocket`) names the document in every frame (a routing key, see
//! `tandem_core::hocuspocus`) and sends a token for each document inside the socket. For each
//! accepted token the task joins the doc as one peer, exactly as a y-websocket connection does:
//! its own outbox (bounded by `--outbox-capacity`), its own awareness ownership, the same
//! [`PeerGrant`]. Frames from the doc actors go out with the routing key in front; the doc
//! actors know the peer only as [`Dialect::Hocuspocus`], which makes them acknowledge each update
//! with a SyncStatus once it is durable.
//!
//! Invariants:
//! - The socket is the unit of failure, as for y-websocket: every close reason (bad input, a
//!   rate limit, a slow consumer on any of its docs, an expired token, shutdown) closes the whole
//!   socket with one code and reason, and no other socket notices. All attachments share one
//!   [`Closer`], so a doc actor closing any of them closes the socket.
//! - The rate limits count per socket, whatever the number of docs on it.
//! - At most `max_docs_per_socket` docs are attached at once; a token for one more closes the
//!   socket. Refused tokens are answered with permission-denied and keep the socket, up to
//!   [`MAX_REFUSALS_PER_SOCKET`].
//! - A message for a doc whose token has not arrived yet waits for it in a bounded queue (the
//!   provider flushes what it queued while offline before its providers send their tokens), and
//!   is handled in order once the token is accepted. The queue holds the frames' bytes, copied,
//!   and decodes them again on replay: what a socket holds is exactly what is counted. Until the
//!   socket has an accepted token it may hold [`MAX_UNAUTHENTICATED_EARLY_MESSAGES`] messages or
//!   [`MAX_UNAUTHENTICATED_EARLY_BYTES`] bytes, afterwards [`MAX_EARLY_MESSAGES`] or
//!   [`MAX_EARLY_BYTES`]; one more closes the socket. A socket with no accepted token after the
//!   pong timeout is closed, so an anonymous socket cannot hold memory by answering pings.
//! - Messages for a doc whose token was refused, or that the client closed, are dropped: the
//!   provider sends its sync and awareness right behind the token, before the refusal can reach
//!   it. The last [`MAX_QUIET_KEYS`] such keys are remembered (the oldest is forgotten first):
//!   strays follow their refusal or close at once.
//! - A refusal is an answer about the token; a server that cannot answer (its storage is
//!   unreachable) closes the socket with 1013 instead, so that the provider retries.
//! - Every write to the socket is bounded by the pong timeout: a client that stops reading is
//!   closed as a slow consumer, its docs detached, even if none of its outboxes is full.
//! - The hub never sees a token: it asks the server's [`Authorizer`] for a [`PeerGrant`].
//!
//! Read next: `connection.rs` (the y-websocket task this mirrors), `protocol-spec/hocuspocus.md`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tandem_core::hocuspocus::{
    ClientFrame, HpMessage, SCOPE_READ_ONLY, SCOPE_READ_WRITE, decode_client_frame,
    encode_authenticated, encode_close, encode_key, encode_permission_denied,
};
use tandem_core::rate::ConnectionRates;
use tandem_core::{DocId, Limits, PeerId, ProtocolError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tracing::{Instrument, debug, warn};

use crate::clock::sleep_until;
use crate::connection::{
    ConnectionConfig, DIRECT_WRITE_BYTES, MAX_FRAMES_PER_FLUSH, PendingSend, Transport, close_with,
    read_error_reason, write_unbuffered,
};
use crate::doc_actor::DocCommand;
use crate::outbox::{self, OutboxReceiver};
use crate::peer::{CloseReason, Closer, PeerAddr, PeerGrant};
use crate::{Dialect, DocHandle, Hub, JoinError, PeerLink};

/// The default of `--max-docs-per-socket`.
pub const DEFAULT_MAX_DOCS_PER_SOCKET: usize = 64;

/// Refused tokens one socket may send before it is closed: enough for a client whose token
/// went stale for a few docs, far too few to probe names or tokens.
pub const MAX_REFUSALS_PER_SOCKET: usize = 32;

/// Messages one socket with an accepted token may hold for docs whose token has not arrived
/// (Hocuspocus: 1000).
pub const MAX_EARLY_MESSAGES: usize = 1000;
/// Bytes of frames one socket with an accepted token may hold for docs whose token has not
/// arrived (Hocuspocus: 5 MiB).
pub const MAX_EARLY_BYTES: usize = 5 * 1024 * 1024;

/// Messages a socket with no accepted token yet may hold: a provider's Auth, Step 1 and
/// awareness for a few docs, sent back to back, with room to spare; too few to make an anonymous
/// socket worth holding open.
pub const MAX_UNAUTHENTICATED_EARLY_MESSAGES: usize = 64;
/// Bytes of frames a socket with no accepted token yet may hold.
pub const MAX_UNAUTHENTICATED_EARLY_BYTES: usize = 64 * 1024;

/// Routing keys remembered as refused or closed, whose stray messages are dropped quietly. The
/// oldest is forgotten first; strays arrive right behind their refusal or close.
const MAX_QUIET_KEYS: usize = 256;

/// The answer to a client's CLOSE, as Hocuspocus gives it.
const CLOSE_REASON_PROVIDER: &str = "provider_initiated";

/// Why the server gives no grant for one doc.
#[derive(Debug)]
pub enum Refusal {
    /// The name or the token may not open the doc: the reason is sent as permission-denied and
    /// the socket stays open. The provider treats it as final for that doc.
    Denied(String),
    /// The server cannot tell now (its storage is unreachable): the socket closes with 1013,
    /// and the provider reconnects and sends its tokens again.
    Unavailable,
}

/// A boxed future, as the [`Authorizer`] returns it.
pub type AuthorizeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(DocId, PeerGrant), Refusal>> + Send + 'a>>;

/// How the server decides what a token may do on one doc (the hub knows no tokens). The same
/// checks as a y-websocket upgrade: the name, the token, the role, the doc-versus-file path.
pub trait Authorizer: Send + Sync + 'static {
    /// The doc named `doc_name` and what `token` (empty if the client has none) may do with it.
    fn authorize<'a>(&'a self, doc_name: &'a str, token: &'a str) -> AuthorizeFuture<'a>;
}

/// Serves one Hocuspocus WebSocket until it closes.
///
/// `guard` is held until the socket closes (the server passes the client's per-address slot).
pub async fn run<S: Transport, G: Send + 'static>(
    socket: WebSocketStream<S>,
    hub: Hub,
    config: ConnectionConfig,
    authorizer: Arc<dyn Authorizer>,
    client: PeerAddr,
    guard: G,
) {
    let conn = hub.next_peer_id();
    // A root span, like `connection::run`'s: the socket outlives its request.
    let span = tracing::info_span!(
        parent: None,
        "hocuspocus",
        %conn,
        remote = %client.ip,
        proxy = client.proxy.map(tracing::field::display),
    );
    let limits = hub.config().limits.clone();
    let mux = Mux {
        socket,
        rates: ConnectionRates::new(&limits, 0),
        limits,
        closer: Closer::default(),
        shutdown_token: hub.lifecycle().cancel.clone(),
        hub,
        authorizer,
        config,
        conn,
        started: Instant::now(),
        attachments: Vec::new(),
        authenticated: false,
        write_stalled: false,
        quiet: VecDeque::new(),
        early: VecDeque::new(),
        early_bytes: 0,
        n_refusals: 0,
        next_poll: 0,
    };
    async move {
        let _guard = guard;
        mux.serve().await;
    }
    .instrument(span)
    .await;
}

/// One doc attached to the socket: a peer of that doc.
struct Attachment {
    /// The routing key as the client sent it; every frame for this doc carries it.
    key: String,
    /// `key` encoded as a var-string, put before each outgoing frame.
    prefix: Bytes,
    peer: PeerId,
    doc: DocHandle,
    outbox: OutboxReceiver,
    scope: &'static str,
    expires_at: Option<Instant>,
}

/// Everything the socket's task holds.
struct Mux<S> {
    socket: WebSocketStream<S>,
    hub: Hub,
    authorizer: Arc<dyn Authorizer>,
    config: ConnectionConfig,
    limits: Limits,
    /// Per socket, whatever the number of docs: a breach closes the socket with 4429.
    rates: ConnectionRates,
    /// Shared by every attachment: any doc actor closing its peer closes the socket.
    closer: Closer,
    shutdown_token: tokio_util::sync::CancellationToken,
    /// The socket's id in logs (attachments have their own peer ids).
    conn: PeerId,
    started: Instant,
    /// At most `config.max_docs_per_socket`; few, so a linear search is the fastest lookup.
    attachments: Vec<Attachment>,
    /// Whether any token was accepted on this socket: it lifts the early queue's limits to the
    /// Hocuspocus ones and ends the deadline for a first token. Never goes back to false.
    authenticated: bool,
    /// A write did not finish within the pong timeout: the socket may hold half a frame, so no
    /// close frame can follow.
    write_stalled: bool,
    /// Keys refused or closed by the client, newest last: their stray messages are dropped. At
    /// most [`MAX_QUIET_KEYS`]; few, so a linear search is the fastest lookup.
    quiet: VecDeque<String>,
    /// Frames for docs whose token has not arrived, in arrival order, with their routing keys:
    /// copies, so that `early_bytes` is what they hold. Bounded by [`Mux::early_limits`].
    early: VecDeque<(String, Bytes)>,
    early_bytes: usize,
    n_refusals: usize,
    /// Where the next outbox poll starts, so that a busy doc cannot starve the others.
    next_poll: usize,
}

/// What one frame from the client asks of a doc actor.
struct ToDoc {
    tx: mpsc::Sender<DocCommand>,
    command: DocCommand,
}

impl<S: Transport> Mux<S> {
    async fn serve(mut self) {
        let reason = self.run().await;
        if let Some(reason) = &reason {
            reason.count(&self.hub.config().metrics);
        }
        for attachment in self.attachments.drain(..) {
            let _ = attachment
                .doc
                .tx
                .send(DocCommand::Leave {
                    peer: attachment.peer,
                })
                .await;
        }
        if self.write_stalled {
            // The socket took nothing for a pong timeout and may hold half a frame: a close
            // frame behind it would be garbage, and would not be taken either. Just hang up.
            if let Some(reason) = &reason {
                reason.log(self.conn);
            }
        } else {
            close_with(&mut self.socket, self.conn, reason).await;
        }
        debug!("hocuspocus socket closed");
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Serves the socket until the client closes it (`None`) or it must close (`Some`).
    async fn run(&mut self) -> Option<CloseReason> {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let shutdown = self.shutdown_token.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let closer = self.closer.clone();
        // Made once: a close is requested at most once, and a `Notified` made per turn of the
        // loop would join and leave the waiter list (two locks) on every frame sent.
        let woken = closer.woken();
        tokio::pin!(woken);
        let mut last_seen_ms = 0u64;
        let mut ping_sent_ms: Option<u64> = None;
        // A socket must present an accepted token as soon as an idle one must answer a ping.
        let auth_deadline = Instant::now().checked_add(self.config.pong_timeout);
        // A command waiting for room in a doc's inbox; nothing is read from the socket meanwhile.
        let mut pending: Option<(DocCommand, PendingSend)> = None;
        loop {
            if let Some(reason) = closer.reason() {
                return Some(reason);
            }
            let expires_at = self.attachments.iter().filter_map(|a| a.expires_at).min();
            let attachments = &mut self.attachments;
            let start = self.next_poll;
            tokio::select! {
                biased;
                (idx, frame) = std::future::poll_fn(|cx| poll_outboxes(attachments, start, cx)) => {
                    let Some(frame) = frame else {
                        // The doc actor dropped this peer: with the reason it gave, if any (it
                        // sets the reason before it lets go of the outbox).
                        return Some(closer.reason().unwrap_or(CloseReason::Unavailable));
                    };
                    self.next_poll = idx + 1;
                    let timeout = self.config.pong_timeout;
                    let sent = bounded_write(timeout, self.send_batch(idx, frame)).await;
                    if let Err(reason) = self.note_write(sent) {
                        return reason;
                    }
                }
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
                        Err(error) => return read_error_reason(error, &self.limits, self.conn),
                    };
                    let now_ms = self.now_ms();
                    last_seen_ms = now_ms;
                    let ToDoc { tx, command } = match self.receive(message, now_ms).await {
                        Ok(Some(to_doc)) => to_doc,
                        Ok(None) => continue,
                        Err(reason) => return reason,
                    };
                    match tx.try_send(command) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(command)) => {
                            pending = Some((command, Box::pin(tx.reserve_owned())));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Some(CloseReason::Unavailable);
                        }
                    }
                }
                () = sleep_until(expires_at) => return Some(CloseReason::TokenExpired),
                () = sleep_until(auth_deadline), if !self.authenticated => {
                    return Some(CloseReason::AuthTimeout);
                }
                _ = ping.tick() => {
                    // As in `connection.rs`: silence counts from the first unanswered ping.
                    let now_ms = self.now_ms();
                    if pending.is_some() || ping_sent_ms.is_some_and(|sent| last_seen_ms >= sent) {
                        ping_sent_ms = None;
                    }
                    if let Some(sent) = ping_sent_ms
                        && now_ms.saturating_sub(sent) >= self.config.pong_timeout.as_millis() as u64
                    {
                        return Some(CloseReason::PongTimeout);
                    }
                    let timeout = self.config.pong_timeout;
                    let ping = self.socket.send(WsMessage::Ping(Bytes::new()));
                    let sent = bounded_write(timeout, ping).await;
                    if let Err(reason) = self.note_write(sent) {
                        return reason;
                    }
                    if ping_sent_ms.is_none() {
                        ping_sent_ms = Some(self.now_ms());
                    }
                }
            }
        }
    }

    /// What one WebSocket message asks: a command for a doc, nothing, or the end.
    async fn receive(
        &mut self,
        message: WsMessage,
        now_ms: u64,
    ) -> Result<Option<ToDoc>, Option<CloseReason>> {
        let protocol = |error| Some(CloseReason::Protocol(error));
        let frame = match message {
            WsMessage::Binary(frame) => frame,
            WsMessage::Text(_) => return Err(protocol(ProtocolError::TextFrame)),
            WsMessage::Ping(payload) | WsMessage::Pong(payload) => {
                self.rates
                    .check_control_frame(payload.len(), now_ms)
                    .map_err(protocol)?;
                return Ok(None);
            }
            WsMessage::Close(_) => return Err(None),
            WsMessage::Frame(_) => return Ok(None),
        };
        self.rates
            .check_frame(frame.len(), now_ms)
            .map_err(protocol)?;
        let (key, message) = match decode_client_frame(&frame, &self.limits).map_err(protocol)? {
            ClientFrame::Pong => {
                self.rates.check_other_message(now_ms).map_err(protocol)?;
                return Ok(None);
            }
            ClientFrame::ToDoc { key, message } => (key, message),
        };
        match &message {
            HpMessage::Doc(doc_message) => self
                .rates
                .check_messages(std::slice::from_ref(doc_message), now_ms)
                .map_err(protocol)?,
            _ => self.rates.check_other_message(now_ms).map_err(protocol)?,
        }
        let attached = self.attachments.iter().position(|a| a.key == key);
        match (message, attached) {
            (HpMessage::Auth { token }, _) => {
                self.authenticate(key, &token).await?;
                Ok(None)
            }
            (HpMessage::Close, Some(idx)) => {
                let attachment = self.attachments.swap_remove(idx);
                let _ = attachment
                    .doc
                    .tx
                    .send(DocCommand::Leave {
                        peer: attachment.peer,
                    })
                    .await;
                debug!(peer = %attachment.peer, "doc detached by the client");
                let answer = encode_close(&attachment.key, CLOSE_REASON_PROVIDER);
                self.remember_quiet(attachment.key);
                self.send_now(answer).await?;
                Ok(None)
            }
            // A CLOSE for a doc not attached: nothing to detach, but what waited for its token
            // is dropped.
            (HpMessage::Close, None) => {
                self.take_early(&key);
                Ok(None)
            }
            (HpMessage::Doc(doc_message), Some(idx)) => {
                let attachment = &self.attachments[idx];
                Ok(Some(ToDoc {
                    tx: attachment.doc.tx.clone(),
                    command: DocCommand::Receive {
                        peer: attachment.peer,
                        messages: vec![doc_message],
                    },
                }))
            }
            (HpMessage::Stateless(payload), Some(idx)) => {
                let attachment = &self.attachments[idx];
                Ok(Some(ToDoc {
                    tx: attachment.doc.tx.clone(),
                    command: DocCommand::Stateless(Box::new((attachment.peer, payload))),
                }))
            }
            (HpMessage::Doc(_) | HpMessage::Stateless(_), None) => {
                if self.quiet.contains(&key) {
                    return Ok(None);
                }
                let (max_messages, max_bytes) = self.early_limits();
                if self.early.len() >= max_messages
                    || self.early_bytes.saturating_add(frame.len()) > max_bytes
                {
                    return Err(Some(CloseReason::TooManyEarlyMessages {
                        max_messages,
                        max_bytes,
                    }));
                }
                // A copy: the received frame may share a larger buffer, which would then be held
                // uncounted.
                self.early_bytes += frame.len();
                self.early.push_back((key, Bytes::copy_from_slice(&frame)));
                Ok(None)
            }
        }
    }

    /// Handles a token for `key`: attaches the doc, or answers permission-denied.
    async fn authenticate(&mut self, key: String, token: &str) -> Result<(), Option<CloseReason>> {
        if let Some(attachment) = self.attachments.iter().find(|a| a.key == key) {
            // A token again for an attached doc (the provider re-sends it when asked): the
            // attachment keeps the grant it joined with.
            let frame = encode_authenticated(&key, attachment.scope);
            return self.send_now(frame).await;
        }
        let max = self.config.max_docs_per_socket;
        if self.attachments.len() >= max {
            return Err(Some(CloseReason::TooManyDocs { max }));
        }
        let doc_name = ClientFrame::doc_name(&key);
        let authorized = self.authorizer.authorize(doc_name, token).await;
        let (doc, grant) = match authorized {
            Ok(granted) => granted,
            // Not an answer about the token: the provider would take permission-denied as final.
            Err(Refusal::Unavailable) => return Err(Some(CloseReason::StorageUnavailable)),
            Err(Refusal::Denied(reason)) => {
                self.n_refusals += 1;
                warn!(
                    doc_name_bytes = doc_name.len(),
                    reason, "hocuspocus token refused"
                );
                if self.n_refusals > MAX_REFUSALS_PER_SOCKET {
                    return Err(Some(CloseReason::TooManyRefusals {
                        max: MAX_REFUSALS_PER_SOCKET,
                    }));
                }
                let frame = encode_permission_denied(&key, &reason);
                self.take_early(&key);
                self.remember_quiet(key);
                return self.send_now(frame).await;
            }
        };
        let peer = self.hub.next_peer_id();
        let (outbox_tx, outbox) = outbox::outbox(self.hub.config().outbox_capacity);
        let scope = if grant.access.can_write {
            SCOPE_READ_WRITE
        } else {
            SCOPE_READ_ONLY
        };
        let link = PeerLink {
            outbox: outbox_tx,
            closer: self.closer.clone(),
            access: grant.access,
            dialect: Dialect::Hocuspocus,
        };
        // The join waits for the doc to load; the other docs' outboxes wait meanwhile, which
        // their capacity absorbs.
        let handle = match self.hub.join(&doc, peer, link).await {
            Ok(handle) => handle,
            Err(error) => {
                return Err(Some(match error {
                    JoinError::ShuttingDown => CloseReason::Shutdown,
                    JoinError::Retry | JoinError::Unavailable => CloseReason::Unavailable,
                    JoinError::StorageFull => CloseReason::StorageFull,
                    JoinError::Corrupt => CloseReason::DocCorrupt,
                }));
            }
        };
        debug!(%peer, doc = %doc, role = grant.role, "doc attached");
        let expires_at = grant.expires_at.and_then(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now().checked_add(left)
        });
        self.authenticated = true;
        self.quiet.retain(|quiet| *quiet != key);
        // Authenticated goes out before anything of the doc: its outbox (the handshake is
        // already in it) is only drained once the attachment is in the list.
        let frame = encode_authenticated(&key, scope);
        let sent = self.send_now(frame).await;
        // What arrived for this doc before its token, in order, behind the join. Each frame
        // decoded when it arrived, under the same limits, so it decodes again.
        for frame in self.take_early(&key) {
            let message = match decode_client_frame(&frame, &self.limits) {
                Ok(ClientFrame::ToDoc { message, .. }) => message,
                Ok(ClientFrame::Pong) => continue,
                Err(error) => {
                    let _ = handle.tx.send(DocCommand::Leave { peer }).await;
                    return Err(Some(CloseReason::Protocol(error)));
                }
            };
            let command = match message {
                HpMessage::Doc(message) => DocCommand::Receive {
                    peer,
                    messages: vec![message],
                },
                HpMessage::Stateless(payload) => DocCommand::Stateless(Box::new((peer, payload))),
                HpMessage::Auth { .. } | HpMessage::Close => continue,
            };
            if handle.tx.send(command).await.is_err() {
                return Err(Some(CloseReason::Unavailable));
            }
        }
        self.attachments.push(Attachment {
            prefix: encode_key(&key),
            key,
            peer,
            doc: handle,
            outbox,
            scope,
            expires_at,
        });
        sent
    }

    /// How many messages and bytes may wait for their tokens on this socket now.
    fn early_limits(&self) -> (usize, usize) {
        if self.authenticated {
            (MAX_EARLY_MESSAGES, MAX_EARLY_BYTES)
        } else {
            (
                MAX_UNAUTHENTICATED_EARLY_MESSAGES,
                MAX_UNAUTHENTICATED_EARLY_BYTES,
            )
        }
    }

    /// Removes and returns, in order, the frames that waited for `key`'s token.
    fn take_early(&mut self, key: &str) -> Vec<Bytes> {
        if !self.early.iter().any(|(early_key, _)| early_key == key) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.early.len());
        for (early_key, frame) in self.early.drain(..) {
            if early_key == key {
                self.early_bytes -= frame.len();
                taken.push(frame);
            } else {
                kept.push_back((early_key, frame));
            }
        }
        self.early = kept;
        taken
    }

    /// Remembers `key` as refused or closed, forgetting the oldest such key beyond the bound.
    fn remember_quiet(&mut self, key: String) {
        if self.quiet.contains(&key) {
            return;
        }
        if self.quiet.len() >= MAX_QUIET_KEYS {
            self.quiet.pop_front();
        }
        self.quiet.push_back(key);
    }

    /// Notes the outcome of a [`bounded_write`]: one that timed out leaves the socket unusable.
    fn note_write(
        &mut self,
        res: Result<(), Option<CloseReason>>,
    ) -> Result<(), Option<CloseReason>> {
        if matches!(res, Err(Some(CloseReason::SlowConsumer))) {
            self.write_stalled = true;
        }
        res
    }

    /// Sends one frame the task made itself (auth answers) and flushes, bounded like every write.
    async fn send_now(&mut self, frame: Bytes) -> Result<(), Option<CloseReason>> {
        let timeout = self.config.pong_timeout;
        let res = bounded_write(timeout, self.socket.send(WsMessage::Binary(frame))).await;
        self.note_write(res)
    }

    /// Sends `first` and whatever else attachment `idx` has queued (up to a bound), then flushes.
    async fn send_batch(&mut self, idx: usize, first: Bytes) -> Result<(), WsError> {
        let prefix = self.attachments[idx].prefix.clone();
        self.send_prefixed(&prefix, first).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match self.attachments[idx].outbox.try_recv() {
                Some(frame) => self.send_prefixed(&prefix, frame).await?,
                None => break,
            }
        }
        self.socket.flush().await
    }

    /// Queues one doc frame with its routing key in front. A small frame is copied once into a
    /// message with the key; a big one is written straight to the socket as header, key and the
    /// shared payload, without a copy (see `Conn::send_frame` in `connection.rs`).
    async fn send_prefixed(&mut self, prefix: &[u8], frame: Bytes) -> Result<(), WsError> {
        if prefix.len() + frame.len() <= DIRECT_WRITE_BYTES {
            let mut message = BytesMut::with_capacity(prefix.len() + frame.len());
            message.put_slice(prefix);
            message.put_slice(&frame);
            return self.socket.feed(WsMessage::Binary(message.freeze())).await;
        }
        write_unbuffered(&mut self.socket, &[prefix, &frame]).await
    }
}

/// Runs one write to the socket, bounded by `timeout` (the pong timeout). `Err(None)`: the
/// socket failed. `Err(Some(SlowConsumer))`: the client took nothing for that long, it stopped
/// reading, and the write was abandoned, maybe half done. Unbounded, such a write would hold the
/// task forever, deaf to its closer, its pings and its other docs, which would never unload.
async fn bounded_write(
    timeout: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), Option<CloseReason>> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(CloseReason::SlowConsumer)),
    }
}

/// Polls every attachment's outbox, starting at `start`: the first frame found and where.
fn poll_outboxes(
    attachments: &mut [Attachment],
    start: usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<(usize, Option<Bytes>)> {
    let n = attachments.len();
    for offset in 0..n {
        let idx = (start + offset) % n;
        if let Poll::Ready(frame) = attachments[idx].outbox.poll_recv(cx) {
            return Poll::Ready((idx, frame));
        }
    }
    Poll::Pending
}
