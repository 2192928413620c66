//! The accept loop: every TCP connection from accept to close, before axum sees a request.
//!
//! It owns three defences that must run before any HTTP parsing, so they live here and not in
//! the router: the connection caps, the TLS handshake, and the upgrade deadline.
//!
//! - **Caps.** [`ConnectionCaps`] counts open connections in total and per remote IP. Over a cap
//!   the new connection gets a fixed `503` with `{"error":"too_many_connections"}` (best effort,
//!   bounded by [`REFUSAL_TIMEOUT`]) and is closed; nobody else notices. A [`ConnectionPermit`]
//!   lives *inside* the connection's I/O object, so it is released when the socket is dropped,
//!   which for a WebSocket is long after hyper hands the upgraded socket to `connection.rs`.
//! - **TLS.** Each handshake runs in the connection's own task, never in the accept loop, so a
//!   slow or silent client cannot stall accepting. Certificates come from `tls.rs`.
//! - **Upgrade deadline.** A connection must finish its TLS handshake and send the complete
//!   headers of its first request within `upgrade_timeout` of being accepted, or it is dropped
//!   (slowloris). Later requests on a keep-alive connection are bounded by hyper's
//!   `header_read_timeout`, set to the same value, which also closes idle keep-alive connections.
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
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, error, warn};

use crate::shutdown::Lifecycle;
use crate::tls::TlsFiles;

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
        let shared = Shared {
            app,
            tls,
            http,
            upgrade_timeout: config.upgrade_timeout,
            caps: Arc::new(ConnectionCaps::new(
                config.max_connections,
                config.max_connections_per_address,
            )),
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
        match self.shared.caps.try_acquire(remote.ip()) {
            Ok(permit) => {
                let span = tracing::info_span!("tcp", %remote);
                let shared = self.shared.clone();
                self.shared.lifecycle.spawn(
                    span,
                    serve_connection(shared, stream, remote, permit, accepted_at),
                );
            }
            Err(hit) => self.refuse(stream, remote, hit),
        }
    }

    /// Answers a connection over a cap with a 503 in its own short task, then closes it.
    fn refuse(&self, stream: TcpStream, remote: SocketAddr, hit: CapHit) {
        warn!(%remote, cap = hit.name(), max = hit.max(), "too many connections; refusing one");
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
            let answered = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                match tls {
                    None => answer_refusal(stream, hit).await,
                    Some(acceptor) => answer_refusal(acceptor.accept(stream).await?, hit).await,
                }
            })
            .await;
            if let Ok(Err(error)) = answered {
                debug!(%error, "503 not delivered");
            }
        });
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
async fn answer_refusal<S>(mut stream: S, hit: CapHit) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&refusal_response(hit)).await?;
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

/// The fixed answer to a connection over a cap (`protocol-spec/http.md`).
fn refusal_response(hit: CapHit) -> Vec<u8> {
    let message = match hit {
        CapHit::Total { max } => format!("too many open connections to this server, limit {max}"),
        CapHit::PerAddress { max } => {
            format!("too many open connections from this address, limit {max}")
        }
    };
    let body = serde_json::json!({ "error": "too_many_connections", "message": message });
    let body = body.to_string();
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

/// One accepted connection: TLS handshake (if any), then HTTP/1.1 until it closes or upgrades.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    permit: ConnectionPermit,
    accepted_at: Instant,
) {
    let deadline = accepted_at + shared.upgrade_timeout;
    let Some(acceptor) = shared.tls.clone() else {
        serve_http(&shared, CountedIo::new(stream, permit), remote, deadline).await;
        return;
    };
    let cancel = shared.lifecycle.cancel.clone();
    let handshake = tokio::select! {
        // Shutdown: a connection still in its handshake has no request to finish.
        () = cancel.cancelled() => return,
        handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(tls_stream)) => {
            serve_http(
                &shared,
                CountedIo::new(tls_stream, permit),
                remote,
                deadline,
            )
            .await;
        }
        Ok(Err(error)) => warn!(%error, "tls handshake failed"),
        Err(_elapsed) => warn!(
            upgrade_timeout = ?shared.upgrade_timeout,
            "tls handshake not finished in time; dropping connection"
        ),
    }
}

/// Serves HTTP/1.1 on `io`, with `ConnectInfo<SocketAddr>` in every request's extensions.
async fn serve_http<I>(shared: &Shared, io: CountedIo<I>, remote: SocketAddr, deadline: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set once hyper has parsed the first request's headers; disarms the upgrade deadline.
    let got_request = Arc::new(AtomicBool::new(false));
    let service = shared.app.clone().map_request({
        let got_request = got_request.clone();
        move |mut request: Request<Incoming>| {
            got_request.store(true, Ordering::Relaxed);
            request.extensions_mut().insert(ConnectInfo(remote));
            request
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

/// Accept errors that concern only the connection being accepted (as `axum::serve` decides).
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Open connections, in total and per remote IP, against their caps.
pub(crate) struct ConnectionCaps {
    max_total: usize,
    max_per_address: usize,
    /// A std mutex: held only to change two counters, never across an `.await`.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one open connection, so at most `max_total` entries.
    per_address: HashMap<IpAddr, usize>,
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapHit {
    /// `max_connections`.
    Total { max: usize },
    /// `max_connections_per_address`.
    PerAddress { max: usize },
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
            CapHit::Total { max } | CapHit::PerAddress { max } => max,
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

    /// Counts one more connection from `ip`, or says which cap that would break.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, CapHit> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(CapHit::Total {
                max: self.max_total,
            });
        }
        let from_ip = counts.per_address.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_address {
            return Err(CapHit::PerAddress {
                max: self.max_per_address,
            });
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            caps: self.clone(),
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

/// One counted connection; dropping it gives the slot back.
pub(crate) struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self
            .caps
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(from_ip) = counts.per_address.get_mut(&self.ip) {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
    }
}

/// A connection's socket (plain or TLS) carrying its [`ConnectionPermit`]. hyper moves it into
/// the upgraded WebSocket, so the permit lives exactly as long as the socket.
struct CountedIo<I> {
    io: I,
    _permit: ConnectionPermit,
}

impl<I> CountedIo<I> {
    fn new(io: I, permit: ConnectionPermit) -> CountedIo<I> {
        CountedIo {
            io,
            _permit: permit,
        }
    }
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
            Some(CapHit::PerAddress { max: 2 })
        );
        // The same client over an IPv4-mapped IPv6 address is the same address.
        assert_eq!(
            caps.try_acquire(ip("::ffff:10.0.0.1")).err(),
            Some(CapHit::PerAddress { max: 2 })
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
        let response = refusal_response(CapHit::PerAddress { max: 3 });
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
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("limit 3"))
        );
    }
}
