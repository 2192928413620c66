//! The accept loop: every TCP connection from accept to close, before axum sees a request.
//!
//! It owns the defences that must run before any HTTP parsing, so they live here and not in
//! the router: the connection caps, the client's address (`proxy.rs`), the TLS handshake, the
//! upgrade deadline, and the JSON body of hyper's own answers to requests it cannot parse.
//!
//! - **Caps.** [`ConnectionCaps`] counts open connections in total and per client address. Over
//!   a cap the new connection gets a fixed `503` with `{"error":"too_many_connections"}` (best
//!   effort, bounded by [`REFUSAL_TIMEOUT`]) and is closed; nobody else notices. A
//!   [`ConnectionPermit`] lives *inside* the connection's I/O object, so it is released when the
//!   socket is dropped, which for a WebSocket is long after hyper hands the upgraded socket to
//!   the hub's `connection.rs`.
//! - **Client address.** The total is counted at accept, for every socket. The per-address count
//!   happens where the client's address is first known, which depends on who connected: at
//!   accept for an untrusted peer (the peer is the client); after the PROXY header for a trusted
//!   balancer with `--proxy-protocol` (one TCP connection is one client); and per request for a
//!   trusted HTTP proxy, because one keep-alive connection of a proxy carries many clients in
//!   turn. That per-request count is a [`RequestPermit`] in the request's extensions, which the
//!   WebSocket upgrade moves into the connection task, so it lasts as long as the WebSocket; any
//!   other response's body holds it until its last byte is out (an event stream, a slow
//!   download), as axum drops the request's extensions when the handler returns; a
//!   request over the cap gets the same JSON 503 and the proxy's connection stays open. A
//!   process on this machine (a loopback peer that sends no forwarding header) is not counted
//!   per address: a local load test or script is bounded by the total cap only. Any other
//!   trusted peer that names no client beyond the trusted hops is counted under its own
//!   address, and so is a balancer whose PROXY header names no client. Every request carries a
//!   [`ClientAddr`], which the sign-in limiter and the `conn` span use.
//! - **TLS.** Each handshake runs in the connection's own task, never in the accept loop, so a
//!   slow or silent client cannot stall accepting. Certificates come from `tls.rs`.
//! - **Upgrade deadline.** A connection must finish its TLS handshake and send the complete
//!   headers of its first request within `upgrade_timeout` of being accepted, or it is dropped
//!   (slowloris). Later requests on a keep-alive connection are bounded by hyper's
//!   `header_read_timeout`, set to the same value, which also closes idle keep-alive connections.
//!   A PROXY header is read under the same deadline, before the TLS handshake; from a trusted
//!   peer it is optional (a health check may speak plain HTTP), from others it is never read.
//! - **hyper's own errors.** hyper answers a request head it cannot parse (a `Content-Length`
//!   beyond 2^64 - 3, too many or too long headers, a malformed request line) itself, with an
//!   empty `400`, `414` or `431`, and closes the connection. [`CountedIo`] recognises that head
//!   as it is written and sends the same status with our JSON error body instead (see
//!   [`json_parse_error`] for why nothing else can match it), but only while no response is
//!   being written on the connection ([`ResponseTracker`]).
//!
//! Why our own loop rather than `axum::serve`: `axum::serve` has no hook between accept and
//! HTTP (no TLS, no caps, no deadline) and sets no header timeout. We drive hyper's HTTP/1.1
//! connection directly (`http1::Builder::serve_connection(..).with_upgrades()`), as `axum::serve`
//! does inside; HTTP/2 is not offered (y-websocket clients upgrade over HTTP/1.1), so hyper-util's
//! protocol-sniffing `auto::Builder` would only add a read before the deadline starts to matter.
//! Shutdown follows `axum::serve`: on cancel the loop stops accepting, each connection task calls
//! `graceful_shutdown` (in-flight requests finish, idle keep-alive connections close) and exits;
//! every task is on the lifecycle tracker, so `lib.rs::run` waits for them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use hyper::Request;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use crate::proxy::{self, ClientAddr, ForwardedHeader, ProxyHeader, TrustedProxies};
use crate::tls::TlsFiles;
use tandem_hub::Lifecycle;

/// Settings of the accept loop.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Serve https and wss with these files; `None` serves plain http and ws.
    pub tls: Option<TlsFiles>,
    /// Open TCP connections in total (at least 1).
    pub max_connections: usize,
    /// Open TCP connections from one remote IP address (at least 1).
    pub max_connections_per_address: usize,
    /// Time from accept to the end of the first request's headers (TLS handshake included);
    /// also the limit for the headers of every later request on the connection.
    pub upgrade_timeout: Duration,
    /// Peers whose forwarding headers (and PROXY headers) name the client.
    pub trusted_proxies: TrustedProxies,
    /// Read a PROXY protocol header (v1 or v2) first on connections from a trusted peer.
    pub proxy_protocol: bool,
    /// The forwarding header a trusted proxy names the client in; the other is ignored.
    pub forwarded_header: ForwardedHeader,
    /// How often the TLS certificate and key files are checked for a new pair.
    pub tls_poll_interval: Duration,
}

/// Longest time a refused connection is given to receive its 503. The answer is a courtesy: a
/// client that does not read it must not keep a socket (which the caps do not count) for long.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Refusals in progress at once. They are not counted by the caps, so under a flood this bounds
/// them; past it a connection over the cap is closed without an answer.
const MAX_PENDING_REFUSALS: usize = 64;

/// Pause after an accept error that is not about one connection (out of file descriptors, say):
/// accepting again at once would fail again at once, in a hot loop. `axum::serve` waits 1 s.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Largest part of a refused client's request read (and discarded) before closing. Reading it
/// avoids a TCP reset that could destroy the 503 before the client reads it.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// The accept loop and what every connection task shares.
pub(crate) struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Read-only state of every connection task, plus the two counters.
struct Shared {
    app: Router,
    tls: Option<TlsAcceptor>,
    http: hyper::server::conn::http1::Builder,
    upgrade_timeout: Duration,
    caps: Arc<ConnectionCaps>,
    trusted_proxies: TrustedProxies,
    proxy_protocol: bool,
    forwarded_header: ForwardedHeader,
    /// Refusal tasks running now, bounded by [`MAX_PENDING_REFUSALS`].
    pending_refusals: Arc<AtomicUsize>,
    lifecycle: Lifecycle,
}

impl Listener {
    /// Wraps a bound listener; `tls` is `Some` when the port serves https.
    pub(crate) fn new(
        listener: TcpListener,
        app: Router,
        config: &ListenerConfig,
        tls: Option<TlsAcceptor>,
        lifecycle: Lifecycle,
    ) -> Listener {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.upgrade_timeout);
        let trusted: Vec<String> = config
            .trusted_proxies
            .nets()
            .iter()
            .map(ToString::to_string)
            .collect();
        let trusted = if trusted.is_empty() {
            "none".to_owned()
        } else {
            trusted.join(",")
        };
        info!(
            trusted_proxies = %trusted,
            proxy_protocol = config.proxy_protocol,
            forwarded_header = ?config.forwarded_header,
            "client addresses"
        );
        if config.proxy_protocol && config.trusted_proxies.nets().is_empty() {
            warn!("--proxy-protocol is on but no proxy is trusted: no PROXY header will be read");
        }
        let shared = Shared {
            app,
            tls,
            http,
            upgrade_timeout: config.upgrade_timeout,
            caps: Arc::new(ConnectionCaps::new(
                config.max_connections,
                config.max_connections_per_address,
            )),
            trusted_proxies: config.trusted_proxies.clone(),
            proxy_protocol: config.proxy_protocol,
            forwarded_header: config.forwarded_header,
            pending_refusals: Arc::new(AtomicUsize::new(0)),
            lifecycle,
        };
        Listener {
            listener,
            shared: Arc::new(shared),
        }
    }

    /// Accepts until the lifecycle's token is cancelled. Connections already accepted carry on
    /// in their own tracked tasks and wind down gracefully.
    pub(crate) async fn run(self) {
        let cancel = self.shared.lifecycle.cancel.clone();
        loop {
            let accepted = tokio::select! {
                biased;
                // Shutdown: stop accepting; the listening socket closes when `self` drops.
                () = cancel.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => self.handle_accepted(stream, remote),
                Err(error) if is_connection_error(&error) => {
                    debug!(%error, "accept failed for one connection");
                }
                Err(error) => {
                    error!(%error, backoff = ?ACCEPT_ERROR_BACKOFF, "accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }

    fn handle_accepted(&self, stream: TcpStream, remote: SocketAddr) {
        let accepted_at = Instant::now();
        // No Nagle: the writer already batches frames and flushes once per batch, so each flush
        // should leave at once. With Nagle on, a small frame that follows an unacknowledged one
        // waits for the peer's delayed ACK (up to 40 ms on Linux), the tail latency seen in
        // servers that leave it on.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        let trusted = self.shared.trusted_proxies.contains(remote.ip());
        // The per-address count waits until the client is known: a trusted peer speaks for
        // others (counted after its PROXY header or per request), a local process is not
        // counted per address at all.
        let counted = if trusted || ClientAddr::direct(remote).is_local() {
            self.shared.caps.try_acquire_total()
        } else {
            self.shared.caps.try_acquire(remote.ip())
        };
        match counted {
            Ok(permit) => {
                let span = tracing::info_span!("tcp", %remote, proxy = tracing::field::Empty);
                let shared = self.shared.clone();
                let source = Source {
                    client: ClientAddr::direct(remote),
                    trusted,
                };
                self.shared.lifecycle.spawn(
                    span,
                    serve_connection(shared, stream, source, permit, accepted_at),
                );
            }
            Err(hit) => self.refuse(stream, remote, hit),
        }
    }

    /// Answers a connection over a cap with a 503 in its own short task, then closes it.
    fn refuse(&self, stream: TcpStream, remote: SocketAddr, hit: CapHit) {
        let error_id = crate::error_id::new();
        warn!(%remote, cap = hit.name(), max = hit.max(), error_id = %error_id, "too many connections; refusing one");
        let pending = self.shared.pending_refusals.fetch_add(1, Ordering::Relaxed);
        let guard = RefusalGuard(self.shared.pending_refusals.clone());
        if pending >= MAX_PENDING_REFUSALS {
            // Dropping the socket closes it; the guard gives the slot back.
            return;
        }
        let tls = self.shared.tls.clone();
        let span = tracing::info_span!("refuse", %remote);
        self.shared.lifecycle.spawn(span, async move {
            let _guard = guard;
            deliver_refusal(tls, stream, hit, &error_id).await;
        });
    }
}

/// Where a connection's requests come from, as far as the connection can tell.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// The TCP peer, or the client its PROXY header named.
    client: ClientAddr,
    /// Whether `client` is a trusted proxy, whose forwarding headers name the client per request.
    trusted: bool,
}

/// Answers a connection over a cap with the 503 (after the TLS handshake, if any), bounded by
/// [`REFUSAL_TIMEOUT`].
async fn deliver_refusal<S>(tls: Option<TlsAcceptor>, stream: S, hit: CapHit, error_id: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answered = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        match tls {
            None => answer_refusal(stream, hit, error_id).await,
            Some(acceptor) => answer_refusal(acceptor.accept(stream).await?, hit, error_id).await,
        }
    })
    .await;
    if let Ok(Err(error)) = answered {
        debug!(%error, "503 not delivered");
    }
}

/// Gives a refusal slot back when the refusal task ends (or is never started).
struct RefusalGuard(Arc<AtomicUsize>);

impl Drop for RefusalGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the 503, closes our side, and reads what the client sent until it closes its side.
async fn answer_refusal<S>(mut stream: S, hit: CapHit, error_id: &str) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&refusal_response(hit, error_id)).await?;
    stream.shutdown().await?;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    while drained < REFUSAL_DRAIN_BYTES {
        match stream.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// The JSON body of every answer over a cap (`protocol-spec/http.md`), with the `error_id` of
/// its log line, like every 5xx body.
fn refusal_body(hit: CapHit, error_id: &str) -> serde_json::Value {
    let message = match hit {
        CapHit::Total { max } => format!("too many open connections to this server, limit {max}"),
        CapHit::PerAddress { max, ip } => {
            format!("too many open connections from address {ip}, limit {max}")
        }
    };
    serde_json::json!({
        "error": "too_many_connections",
        "message": message,
        "error_id": error_id,
    })
}

/// The answer to one request over the per-address cap from a trusted proxy: the same JSON 503,
/// without closing the proxy's connection, which carries other clients too.
fn refusal_for_request(hit: CapHit, error_id: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(refusal_body(hit, error_id)),
    )
        .into_response()
}

/// The fixed answer to a connection over a cap (`protocol-spec/http.md`).
fn refusal_response(hit: CapHit, error_id: &str) -> Vec<u8> {
    let body = refusal_body(hit, error_id).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// One accepted connection: PROXY header (if any), TLS handshake (if any), then HTTP/1.1 until
/// it closes or upgrades.
async fn serve_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    mut source: Source,
    permit: ConnectionPermit,
    accepted_at: Instant,
) {
    let deadline = accepted_at + shared.upgrade_timeout;
    let cancel = shared.lifecycle.cancel.clone();
    let mut read_ahead = Bytes::new();
    let mut address_permit = None;
    if source.trusted && shared.proxy_protocol {
        let read = tokio::select! {
            // Shutdown: a connection still in its PROXY header has no request to finish.
            () = cancel.cancelled() => return,
            read = tokio::time::timeout_at(deadline, read_proxy_header(&mut stream)) => read,
        };
        let (said, rest) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                warn!(%error, "bad PROXY header; dropping connection");
                return;
            }
            Err(_elapsed) => {
                warn!(
                    upgrade_timeout = ?shared.upgrade_timeout,
                    "no complete PROXY header in time; dropping connection"
                );
                return;
            }
        };
        read_ahead = rest;
        let relayed = match said {
            Some(ProxyHeader::Client(client)) => {
                let span = tracing::Span::current();
                span.record("remote", tracing::field::display(client));
                span.record("proxy", tracing::field::display(source.client.peer));
                source = Source {
                    client: ClientAddr {
                        ip: client.ip().to_canonical(),
                        peer: source.client.peer,
                        proxied: true,
                    },
                    trusted: shared.trusted_proxies.contains(client.ip()),
                };
                true
            }
            // A relayed connection whose source the balancer cannot name: its bytes (forwarding
            // headers included) are not the balancer's, so they are counted under the
            // balancer's address and believed no more than a direct client's.
            Some(ProxyHeader::Unknown) => {
                source.trusted = false;
                true
            }
            // The balancer's own connection, or a plain request from the trusted peer.
            Some(ProxyHeader::Local) | None => false,
        };
        // One TCP connection from a balancer is one client: count it like a direct one.
        if relayed && !source.trusted {
            match shared.caps.try_acquire_address(source.client.ip) {
                Ok(permit) => address_permit = Some(permit),
                Err(hit) => {
                    let error_id = crate::error_id::new();
                    warn!(
                        cap = hit.name(),
                        max = hit.max(),
                        error_id = %error_id,
                        "too many connections; refusing one"
                    );
                    let stream = ReadAhead::new(stream, read_ahead);
                    deliver_refusal(shared.tls.clone(), stream, hit, &error_id).await;
                    return;
                }
            }
        }
    }
    let stream = ReadAhead::new(stream, read_ahead);
    let Some(acceptor) = shared.tls.clone() else {
        let io = CountedIo::new(stream, permit, address_permit);
        serve_http(&shared, io, source, deadline).await;
        return;
    };
    let handshake = tokio::select! {
        // Shutdown: a connection still in its handshake has no request to finish.
        () = cancel.cancelled() => return,
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(tls_stream)) => {
            let io = CountedIo::new(tls_stream, permit, address_permit);
            serve_http(&shared, io, source, deadline).await;
        }
        Ok(Err(error)) => warn!(%error, "tls handshake failed"),
        Err(_elapsed) => warn!(
            upgrade_timeout = ?shared.upgrade_timeout,
            "tls handshake not finished in time; dropping connection"
        ),
    }
}

/// Reads a PROXY header if the connection starts with one. Returns what it said (`None` for a
/// plain HTTP request from a trusted peer) and the bytes read past it, which belong to HTTP.
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> std::io::Result<(Option<ProxyHeader>, Bytes)> {
    let mut buf = Vec::with_capacity(512);
    loop {
        if !buf.is_empty() {
            if !proxy::may_be_proxy_header(&buf) {
                return Ok((None, Bytes::from(buf)));
            }
            match proxy::parse_proxy_header(&buf) {
                Ok(Some((said, len))) => return Ok((Some(said), Bytes::from(buf).slice(len..))),
                Ok(None) => {}
                Err(error) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
                }
            }
        }
        // Bounded: `parse_proxy_header` refuses a header longer than MAX_PROXY_HEADER_BYTES.
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Closed early: hyper sees the incomplete request and ends the connection.
            return Ok((None, Bytes::from(buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves HTTP/1.1 on `io`, with a [`ClientAddr`] (and, for a client a trusted proxy forwards,
/// its [`RequestPermit`]) in every request's extensions.
async fn serve_http<I>(shared: &Arc<Shared>, io: CountedIo<I>, source: Source, deadline: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set once hyper has parsed the first request's headers; disarms the upgrade deadline.
    let got_request = Arc::new(AtomicBool::new(false));
    // What the connection's responses are doing, for `CountedIo`'s rewrite of hyper's errors.
    let responses = io.responses.clone();
    let service = tower::service_fn({
        let got_request = got_request.clone();
        let shared = shared.clone();
        move |mut request: Request<Incoming>| {
            got_request.store(true, Ordering::Relaxed);
            // Counted here, when hyper dispatches the request, before any byte of the answer.
            let response_end = responses.dispatch();
            let admitted = shared.admit(source, request.headers());
            let app = shared.app.clone();
            async move {
                let (response, permit) = match admitted {
                    Ok((client, permit)) => {
                        request.extensions_mut().insert(client);
                        if let Some(permit) = &permit {
                            request.extensions_mut().insert(permit.clone());
                        }
                        let Ok(response) = app.oneshot(request).await;
                        (response, permit)
                    }
                    Err((hit, error_id)) => (refusal_for_request(hit, &error_id), None),
                };
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    response_end.upgraded();
                }
                // axum drops the request's extensions once its extractors have run, so the
                // body carries the permit until the last byte of a stream or download is out.
                Ok::<_, Infallible>(response.map(|body| {
                    axum::body::Body::new(TrackedBody {
                        inner: body,
                        _permit: permit,
                        _end: response_end,
                    })
                }))
            }
        }
    });
    let connection = shared
        .http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = pin!(connection);
    let cancel = shared.lifecycle.cancel.clone();
    let mut deadline_armed = true;
    let mut draining = false;
    let result = loop {
        tokio::select! {
            // The connection closed, failed, or handed its socket to a WebSocket upgrade.
            result = connection.as_mut() => break result,
            // The upgrade deadline: only until the first request's headers have arrived.
            () = tokio::time::sleep_until(deadline), if deadline_armed => {
                if !got_request.load(Ordering::Relaxed) {
                    warn!(
                        upgrade_timeout = ?shared.upgrade_timeout,
                        "no complete request headers in time; dropping connection"
                    );
                    return;
                }
                deadline_armed = false;
            }
            // Shutdown: finish the request in flight, then close; idle connections close now.
            () = cancel.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(error) if error.is_timeout() && !got_request.load(Ordering::Relaxed) => {
            warn!(upgrade_timeout = ?shared.upgrade_timeout, "no complete request headers in time; dropping connection");
        }
        // After a first request a header timeout is usually an idle keep-alive connection.
        Err(error) => debug!(%error, "http connection ended with an error"),
    }
}

impl Shared {
    /// The client of one request, and its per-address permit when a trusted peer's request is
    /// counted; or the cap that client is over, with the `error_id` its refusal was logged with.
    fn admit(
        &self,
        source: Source,
        headers: &HeaderMap,
    ) -> Result<(ClientAddr, Option<RequestPermit>), (CapHit, String)> {
        if !source.trusted {
            return Ok((source.client, None));
        }
        let named = proxy::forwarded_client(headers, &self.trusted_proxies, self.forwarded_header);
        let (client, counted_ip) = match named {
            // A client beyond the trusted hops: counted under its own address.
            Some(Some(ip)) if !self.trusted_proxies.contains(ip) => {
                let client = ClientAddr {
                    ip,
                    peer: source.client.peer,
                    proxied: true,
                };
                (client, ip)
            }
            // A process on this machine with no forwarding header speaks for itself (a health
            // check, a local script): counted in the total only, like its connection.
            None if source.client.is_local() => return Ok((source.client, None)),
            // Any other trusted peer that names no client beyond the trusted hops (no header, a
            // header of trusted hops only, or one that names nobody) is counted under its own
            // address: a remote proxy's requests are bounded like anyone's, and a broken header
            // does not escape the per-address cap.
            _ => (source.client, source.client.ip),
        };
        match self.caps.try_acquire_address(counted_ip) {
            Ok(permit) => Ok((
                client,
                Some(RequestPermit {
                    _permit: Arc::new(permit),
                }),
            )),
            Err(hit) => {
                let error_id = crate::error_id::new();
                warn!(client = %counted_ip, cap = hit.name(), max = hit.max(), error_id = %error_id, "too many connections; refusing one request");
                Err((hit, error_id))
            }
        }
    }
}

/// The per-address count of one client a trusted proxy forwards, carried in its request's
/// extensions (an `Arc`, because extensions are `Clone`). The WebSocket upgrade moves it into the
/// connection task; for any other request the response body holds a clone ([`TrackedBody`]).
#[derive(Clone)]
pub(crate) struct RequestPermit {
    _permit: Arc<ConnectionPermit>,
}

/// Where one connection's responses stand, so that [`CountedIo`] rewrites hyper's error head only
/// between responses. A body chunk of ours may be exactly those bytes (a downloaded file that
/// holds them, served by `Range`), and hyper writes each chunk of a `Content-Length` body as its
/// own write; rewriting it would corrupt the download and desynchronise the keep-alive stream.
/// hyper serves one request at a time, but may parse the next head from its buffer before the
/// last answer is flushed, hence counters rather than a flag.
#[derive(Default)]
struct ResponseTracker {
    /// Requests handed to the service.
    dispatched: AtomicUsize,
    /// Their responses whose body has ended or been dropped.
    ended: AtomicUsize,
    /// `ended` as it was at the last completed flush of the socket: those responses are out.
    flushed: AtomicUsize,
    /// A response switched protocols: the socket carries WebSocket frames from then on.
    upgraded: AtomicBool,
}

impl ResponseTracker {
    /// Counts one more dispatched request; its [`ResponseEnd`] counts the end of its response.
    fn dispatch(self: &Arc<Self>) -> ResponseEnd {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        ResponseEnd(self.clone())
    }

    /// Whether no response is being written: every dispatched response has ended and been
    /// flushed, and none upgraded the connection.
    fn idle(&self) -> bool {
        !self.upgraded.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed) == self.dispatched.load(Ordering::Relaxed)
    }

    /// Called once a flush of the socket has completed: every response ended before it is out.
    fn flushed(&self) {
        let ended = self.ended.load(Ordering::Relaxed);
        self.flushed.store(ended, Ordering::Relaxed);
    }
}

/// The end of one response, counted when it is dropped (its body ended, or was dropped unread).
struct ResponseEnd(Arc<ResponseTracker>);

impl ResponseEnd {
    /// Marks the connection as upgraded (a `101` answer): no rewrite ever again.
    fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's [`RequestPermit`] and [`ResponseEnd`] until its
/// last frame has been read, or until hyper drops it (a HEAD request, a closed connection).
/// Without it a forwarded client's `GET /api/events` streams and slow downloads went uncounted
/// per address, because axum drops the request (and the permit in its extensions) as soon as
/// the handler returns.
struct TrackedBody {
    inner: axum::body::Body,
    _permit: Option<RequestPermit>,
    _end: ResponseEnd,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accept errors that concern only the connection being accepted (as `axum::serve` decides).
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Open connections, in total and per client address, against their caps.
pub(crate) struct ConnectionCaps {
    max_total: usize,
    max_per_address: usize,
    /// A std mutex: held only to change two counters, never across an `.await`.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one open connection, so at most `max_total` entries (a
    /// per-request count lives in a request or WebSocket of a connection the total counts).
    per_address: HashMap<IpAddr, usize>,
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapHit {
    /// `max_connections`.
    Total { max: usize },
    /// `max_connections_per_address`, for the client counted under `ip` ([`client_key`]).
    PerAddress { max: usize, ip: IpAddr },
}

impl CapHit {
    fn name(self) -> &'static str {
        match self {
            CapHit::Total { .. } => "max_connections",
            CapHit::PerAddress { .. } => "max_connections_per_address",
        }
    }

    fn max(self) -> usize {
        match self {
            CapHit::Total { max } | CapHit::PerAddress { max, .. } => max,
        }
    }
}

impl ConnectionCaps {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> ConnectionCaps {
        ConnectionCaps {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Counts one more connection from `ip`, in the total and per address, or says which cap
    /// that would break.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, CapHit> {
        self.acquire(true, Some(ip))
    }

    /// Counts one more connection in the total only (its client is not known yet, or is local).
    pub(crate) fn try_acquire_total(self: &Arc<Self>) -> Result<ConnectionPermit, CapHit> {
        self.acquire(true, None)
    }

    /// Counts one more client at `ip` whose connection the total already counts.
    pub(crate) fn try_acquire_address(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnectionPermit, CapHit> {
        self.acquire(false, Some(ip))
    }

    fn acquire(
        self: &Arc<Self>,
        total: bool,
        ip: Option<IpAddr>,
    ) -> Result<ConnectionPermit, CapHit> {
        let ip = ip.map(client_key);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if total && counts.total >= self.max_total {
            return Err(CapHit::Total {
                max: self.max_total,
            });
        }
        if let Some(ip) = ip {
            let from_ip = counts.per_address.entry(ip).or_insert(0);
            if *from_ip >= self.max_per_address {
                return Err(CapHit::PerAddress {
                    max: self.max_per_address,
                    ip,
                });
            }
            *from_ip += 1;
        }
        if total {
            counts.total += 1;
        }
        Ok(ConnectionPermit {
            caps: self.clone(),
            total,
            ip,
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        (counts.total, counts.per_address.len())
    }
}

/// The key under which one client is counted: its IPv4 address (an IPv4 client of a dual-stack
/// socket appears as `::ffff:a.b.c.d` and counts as `a.b.c.d`), or the /64 of its IPv6 address,
/// the smallest block one subscriber usually gets (so a single host cannot dodge the per-address
/// limits by cycling through its 2^64 addresses). Shared with the sign-in limiter.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
    }
}

/// One counted connection or client; dropping it gives the slots back.
pub(crate) struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    /// Whether this permit holds a slot of the total.
    total: bool,
    /// The address slot this permit holds, if any.
    ip: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self
            .caps
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.total {
            counts.total = counts.total.saturating_sub(1);
        }
        if let Some(ip) = self.ip
            && let Some(from_ip) = counts.per_address.get_mut(&ip)
        {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                counts.per_address.remove(&ip);
            }
        }
    }
}

/// A connection's socket (plain or TLS) carrying its [`ConnectionPermit`]s. hyper moves it into
/// the upgraded WebSocket, so the permits live exactly as long as the socket. It also puts our
/// JSON body into hyper's own bodiless answer to a request it cannot parse.
struct CountedIo<I> {
    io: I,
    _permit: ConnectionPermit,
    /// The client's address slot, when it was counted for the whole connection after a PROXY
    /// header (a direct client's permit counts both).
    _address_permit: Option<ConnectionPermit>,
    /// Our replacement for hyper's error head, while it is being written.
    rewrite: Option<Rewrite>,
    /// Whether a response is in progress: hyper's error head is looked for only between them.
    responses: Arc<ResponseTracker>,
}

/// Our answer written in place of one hyper wrote: `reported` is the length of hyper's bytes,
/// confirmed to hyper once all of ours are out.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    reported: usize,
}

impl<I> CountedIo<I> {
    fn new(
        io: I,
        permit: ConnectionPermit,
        address_permit: Option<ConnectionPermit>,
    ) -> CountedIo<I> {
        CountedIo {
            io,
            _permit: permit,
            _address_permit: address_permit,
            rewrite: None,
            responses: Arc::default(),
        }
    }
}

impl<I: AsyncWrite + Unpin> CountedIo<I> {
    /// Writes the rest of the replacement, then tells hyper its own bytes were written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some(rewrite) = self.rewrite.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while rewrite.written < rewrite.bytes.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &rewrite.bytes[rewrite.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            rewrite.written += n;
        }
        let reported = rewrite.reported;
        self.rewrite = None;
        Poll::Ready(Ok(reported))
    }
}

/// hyper's own answer to a request head it could not parse, rewritten with our JSON error body;
/// `None` for anything else (which is written as it is).
///
/// hyper writes that answer (`proto/h1/role.rs`, `Server::on_error`) as a bare head: the status
/// line of a `400`, `414` or `431`, `connection: close`, `content-length: 0` and `date`, nothing
/// else, in one write, and then closes the connection.
/// A head of ours never matches, as every response of ours carries a `content-type` or other
/// headers. A body chunk can be exactly those bytes (hyper writes each chunk of a
/// `Content-Length` body on its own), so [`CountedIo`] asks only between responses, never while
/// one is being written and never after an upgrade ([`ResponseTracker`]). As hyper closes the
/// connection after its error head, the added body cannot confuse a keep-alive client.
fn json_parse_error(written: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(written)
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let (code, message) = match status.get(..3)? {
        "400" => ("bad_request", "malformed request"),
        "414" => ("uri_too_long", "request URI too long"),
        "431" => (
            "request_header_fields_too_large",
            "request headers too large, or a header value out of range",
        ),
        _ => return None,
    };
    let mut has_length = false;
    let mut date = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") && value == "0" && !has_length {
            has_length = true;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            // hyper closes after this answer and says so; so do we.
        } else if name.eq_ignore_ascii_case("date") && date.is_none() {
            date = Some(value);
        } else {
            return None;
        }
    }
    if !has_length {
        return None;
    }
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let date = date.map_or(String::new(), |date| format!("date: {date}\r\n"));
    Some(
        format!(
            "{status_line}\r\n\
             content-type: application/json\r\n\
             content-length: {}\r\n\
             connection: close\r\n\
             {date}\r\n\
             {body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Longest write that is looked at as a possible error head of hyper's (which is about 100 bytes).
const MAX_ERROR_HEAD_BYTES: usize = 256;

/// Whether a write may be hyper's error head and is worth a closer look.
fn may_be_error_head(first: &[u8], total_len: usize) -> bool {
    total_len <= MAX_ERROR_HEAD_BYTES && first.starts_with(b"HTTP/1.")
}

impl<I: AsyncRead + Unpin> AsyncRead for CountedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none()
            && this.responses.idle()
            && may_be_error_head(buf, buf.len())
            && let Some(bytes) = json_parse_error(buf)
        {
            this.rewrite = Some(Rewrite {
                bytes,
                written: 0,
                reported: buf.len(),
            });
        }
        if this.rewrite.is_some() {
            // hyper retries a pending write with the same bytes, so `buf` is still its head.
            return this
                .poll_rewrite(cx)
                .map_ok(|reported| reported.min(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total_len: usize = bufs.iter().map(|buf| buf.len()).sum();
        if this.rewrite.is_none() && this.responses.idle() {
            let first = bufs.iter().find(|buf| !buf.is_empty());
            if first.is_some_and(|first| may_be_error_head(first, total_len)) {
                let whole: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
                if let Some(bytes) = json_parse_error(&whole) {
                    this.rewrite = Some(Rewrite {
                        bytes,
                        written: 0,
                        reported: total_len,
                    });
                }
            }
        }
        if this.rewrite.is_some() {
            return this
                .poll_rewrite(cx)
                .map_ok(|reported| reported.min(total_len));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // hyper flushes the socket only once its own buffer is written out, so every response
        // whose body had ended is now on the wire.
        this.responses.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A socket with bytes already read from it in front (what followed a PROXY header in the same
/// read), served to the next reader before the socket's own.
struct ReadAhead<I> {
    io: I,
    ahead: Bytes,
}

impl<I> ReadAhead<I> {
    fn new(io: I, ahead: Bytes) -> ReadAhead<I> {
        ReadAhead { io, ahead }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadAhead<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.has_remaining() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ReadAhead<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip literal")
    }

    #[test]
    fn the_per_address_cap_counts_each_address_and_frees_on_drop() {
        let caps = Arc::new(ConnectionCaps::new(100, 2));
        let first = caps.try_acquire(ip("10.0.0.1")).expect("first");
        let _second = caps.try_acquire(ip("10.0.0.1")).expect("second");
        assert_eq!(
            caps.try_acquire(ip("10.0.0.1")).err(),
            Some(CapHit::PerAddress {
                max: 2,
                ip: ip("10.0.0.1")
            })
        );
        // The same client over an IPv4-mapped IPv6 address is the same address.
        assert_eq!(
            caps.try_acquire(ip("::ffff:10.0.0.1")).err(),
            Some(CapHit::PerAddress {
                max: 2,
                ip: ip("10.0.0.1")
            })
        );
        let _other = caps.try_acquire(ip("10.0.0.2")).expect("another address");
        drop(first);
        let _third = caps.try_acquire(ip("10.0.0.1")).expect("a slot came back");
        assert_eq!(caps.counts(), (3, 2));
    }

    #[test]
    fn the_total_cap_applies_across_addresses_and_empty_entries_are_removed() {
        let caps = Arc::new(ConnectionCaps::new(2, 10));
        let a = caps.try_acquire(ip("10.0.0.1")).expect("a");
        let b = caps.try_acquire(ip("10.0.0.2")).expect("b");
        assert_eq!(
            caps.try_acquire(ip("10.0.0.3")).err(),
            Some(CapHit::Total { max: 2 })
        );
        drop(a);
        drop(b);
        assert_eq!(caps.counts(), (0, 0));
    }

    #[test]
    fn the_refusal_is_a_complete_json_503_that_closes() {
        let response = refusal_response(
            CapHit::PerAddress {
                max: 3,
                ip: ip("10.0.0.1"),
            },
            "00112233aabbccdd",
        );
        let text = String::from_utf8(response).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(json["error"], "too_many_connections");
        assert_eq!(json["error_id"], "00112233aabbccdd");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("limit 3"))
        );
    }

    #[test]
    fn address_only_and_total_only_permits_count_their_own_part() {
        let caps = Arc::new(ConnectionCaps::new(2, 1));
        let proxy_connection = caps.try_acquire_total().expect("total");
        let client = caps
            .try_acquire_address(ip("203.0.113.7"))
            .expect("address");
        assert_eq!(caps.counts(), (1, 1));
        assert_eq!(
            caps.try_acquire_address(ip("203.0.113.7")).err(),
            Some(CapHit::PerAddress {
                max: 1,
                ip: ip("203.0.113.7")
            })
        );
        let _another = caps
            .try_acquire_address(ip("203.0.113.8"))
            .expect("another");
        drop(client);
        drop(proxy_connection);
        assert_eq!(caps.counts(), (0, 1));
    }

    #[test]
    fn only_hypers_bare_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n";
        let rewritten = json_parse_error(head).expect("rewritten");
        let text = String::from_utf8(rewritten).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\ndate: Mon, 07 Dec 2026"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"], "request_header_fields_too_large");
        assert!(
            json_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        for other in [
            // Our own responses carry more headers, or another status.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"\x82\x05hello",
        ] {
            assert!(json_parse_error(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
    }

    /// Bug: a body chunk that was exactly hyper's error head (a downloaded file holding those
    /// bytes) was rewritten into our JSON answer, corrupting the download. Fix: the rewrite
    /// happens only between responses, and never after an upgrade.
    #[tokio::test]
    async fn a_body_chunk_like_an_error_head_passes_untouched() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let caps = Arc::new(ConnectionCaps::new(1, 1));
        let permit = caps.try_acquire_total().expect("permit");
        let (near, mut far) = tokio::io::duplex(4096);
        let mut io = CountedIo::new(near, permit, None);
        let responses = io.responses.clone();
        let mut received = vec![0u8; head.len()];
        // A response in progress: its chunk is written as it is.
        let response = responses.dispatch();
        io.write_all(head).await.expect("write");
        io.flush().await.expect("flush");
        far.read_exact(&mut received).await.expect("read");
        assert_eq!(&received[..], &head[..]);
        // Ended but not yet flushed: still the response's bytes.
        drop(response);
        io.write_all(head).await.expect("write");
        far.read_exact(&mut received).await.expect("read");
        assert_eq!(&received[..], &head[..]);
        io.flush().await.expect("flush");
        // Between responses the same bytes are hyper's error head, and get the JSON body.
        assert!(responses.idle());
        let expected = json_parse_error(head).expect("rewritten");
        io.write_all(head).await.expect("write");
        let mut rewritten = vec![0u8; expected.len()];
        far.read_exact(&mut rewritten).await.expect("read");
        assert_eq!(rewritten, expected);
        // After an upgrade never again.
        responses.dispatch().upgraded();
        io.flush().await.expect("flush");
        io.write_all(head).await.expect("write");
        far.read_exact(&mut received).await.expect("read");
        assert_eq!(&received[..], &head[..]);
    }

    #[tokio::test]
    async fn the_rewrite_survives_a_socket_that_takes_a_few_bytes_at_a_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let caps = Arc::new(ConnectionCaps::new(1, 1));
        let permit = caps.try_acquire_total().expect("permit");
        // A pipe that holds 7 bytes: every write of ours is cut short and retried.
        let (near, mut far) = tokio::io::duplex(7);
        let mut io = CountedIo::new(near, permit, None);
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let expected = json_parse_error(head).expect("rewritten");
        let read = async move {
            let mut received = Vec::new();
            far.read_to_end(&mut received).await.expect("read");
            received
        };
        let write = async move {
            io.write_all(head).await.expect("write");
            io.shutdown().await.expect("shutdown");
        };
        let (received, ()) = tokio::join!(read, write);
        assert_eq!(received, expected);
        assert_eq!(caps.counts(), (0, 0));
    }
}
