//! The one driver of the black-box server tests: `TestServer` runs `tandem_server::run` on
//! `127.0.0.1:0` with a temporary data directory, and `Peer` is a real Yjs peer (a yrs `Doc`)
//! speaking the y-websocket protocol over tokio-tungstenite.
//!
//! Tests wait on events with timeouts, never on sleeps.
//!
//! Every helper more than one test module needs lives here, once: servers with authentication
//! and the tokens they accept (`auth.rs`: [`TestServer::start_jwt`], [`TestServer::token`],
//! [`idp_token`]), the server-sent events reader ([`EventStream`], [`TestServer::events`]), the
//! process's captured log lines (`logs.rs`), polling for state no event announces
//! ([`wait_until`]), and refused upgrades ([`upgrade_refusal`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem_core::protocol::{
    Message as YMessage, decode_frame, encode_awareness, encode_sync_step1, encode_sync_step2,
    encode_sync_update,
};
use tandem_core::{Limits, protocol::AwarenessEntry};
use tandem_server::{Config, ShutdownSummary, TlsFiles};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact};

mod auth;
pub mod engines;
mod logs;

pub use logs::{capture_logs, logged_text};

pub use auth::{
    JWT_SECRET, admin_claims, bearer, hs256, idp_token, jwt_claims, mint, own_claims, unix_now,
};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process on an ephemeral port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    data_dir: tempfile::TempDir,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<ShutdownSummary, tandem_server::ServerError>>>,
    /// Directories the settings point into (a secret file, say), kept as long as the server
    /// because a restart reads them again.
    keep: Vec<tempfile::TempDir>,
}

impl TestServer {
    /// A server with default settings.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// A cluster node on `redis` and `postgres`, with blobs in `blob_dir`, and settings adjusted
    /// by `adjust`.
    pub async fn start_node(
        redis: &engines::Redis,
        postgres: &engines::Postgres,
        blob_dir: &Path,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let blobs = tandem_server::config::BlobStorage::Dir(blob_dir.to_path_buf());
        TestServer::start_node_with(redis, postgres, blobs, adjust).await
    }

    /// A cluster node on `redis` and `postgres`, with blobs in `blobs` (a directory or an S3
    /// store), and settings adjusted by `adjust`.
    pub async fn start_node_with(
        redis: &engines::Redis,
        postgres: &engines::Postgres,
        blobs: tandem_server::config::BlobStorage,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let settings = tandem_server::config::ClusterSettings {
            engines: tandem_cluster::ClusterConfig {
                redis_url: redis.url(),
                postgres_url: postgres.url(),
                durability: tandem_cluster::Durability::Local,
                replica_timeout: Duration::from_secs(2),
                trim_margin: tandem_server::config::DEFAULT_CLUSTER_TRIM_MARGIN,
                commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
            },
            blobs,
        };
        TestServer::start_with(move |config| {
            config.cluster = Some(settings);
            adjust(config);
        })
        .await
    }

    /// [`TestServer::start_with`], once `GET /healthz` answers.
    pub async fn start_healthy(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let server = TestServer::start_with(adjust).await;
        server.wait_healthy().await;
        server
    }

    /// A server on a data directory prepared beforehand (by `tandem user add`, say), with
    /// settings adjusted by `adjust`.
    pub async fn start_in(
        data_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config::for_data_dir(data_dir.path());
        adjust(&mut config);
        let mut server = TestServer {
            addr: config.addr,
            data_dir,
            config,
            stop: None,
            task: None,
            keep: Vec::new(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config.clone();
        // The test owns the server task (it plays the role of `main`), so it is not tracked by
        // the server's own lifecycle.
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move {
            tandem_server::run(config, listener, async move {
                let _ = stopped.await;
            })
            .await
        });
        self.task = Some(task);
        self.stop = Some(stop);
    }

    /// Waits until `GET /healthz` answers 200 (the server has loaded its keys and store).
    pub async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.request("GET", "/healthz", &[], b"").await.status != 200 {
            assert!(tokio::time::Instant::now() < deadline, "server up in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The data directory (holds `tandem.redb`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Graceful shutdown, as on SIGTERM. Returns whether it was clean.
    pub async fn shutdown(&mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => {
                tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .expect("shutdown within 30 s")
                    .expect("server task")
                    .expect("server result")
                    .clean
            }
            None => true,
        }
    }

    /// Graceful shutdown, then a new server on the same data directory.
    pub async fn restart(&mut self) {
        assert!(self.shutdown().await, "clean shutdown");
        self.launch().await;
    }

    /// Graceful shutdown, then a new server on the same data directory with its settings
    /// adjusted by `adjust` (as an operator restarts with other flags).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        assert!(self.shutdown().await, "clean shutdown");
        adjust(&mut self.config);
        self.launch().await;
    }

    /// `http://addr` + `path` (`https://localhost:port` when the server has TLS).
    pub fn url(&self, path: &str) -> String {
        if self.config.listener.tls.is_some() {
            format!("https://localhost:{}{}", self.addr.port(), path)
        } else {
            format!("http://{}{}", self.addr, path)
        }
    }

    /// A server with TLS on: `cert_pem` and `key_pem` are written with [`write_tls_pair`] into
    /// the data directory, then `adjust` runs.
    pub async fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        TestServer::start_with(|config| {
            let files = write_tls_pair(&config.data_dir, cert_pem, key_pem);
            config.listener.tls = Some(files);
            adjust(config);
        })
        .await
    }

    /// Overwrites the certificate and key files the server was started with (rotation).
    pub fn rotate_tls_pair(&self, cert_pem: &str, key_pem: &str) {
        let files = self.config.listener.tls.as_ref().expect("server has tls");
        std::fs::write(&files.key, key_pem).expect("write key");
        std::fs::write(&files.cert, cert_pem).expect("write cert");
    }

    /// Opens a wss connection to `doc`, trusting what `tls` trusts, and completes the handshake.
    pub async fn connect_tls(&self, doc: &str, tls: &Arc<rustls::ClientConfig>) -> Peer {
        let mut peer = Peer::connect_raw_tls(self.addr, doc, tls).await;
        peer.handshake().await;
        peer
    }

    /// Sends one HTTP/1.1 request over TLS; see [`https_request`].
    pub async fn https_request(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        https_request(self.addr, tls, method, path, headers, body).await
    }

    /// Opens a WebSocket to `doc` and completes the y-websocket handshake.
    pub async fn connect(&self, doc: &str) -> Peer {
        let mut peer = self.connect_raw(doc).await;
        peer.handshake().await;
        peer
    }

    /// Opens a WebSocket to `doc` without any protocol exchange.
    pub async fn connect_raw(&self, doc: &str) -> Peer {
        Peer::connect_raw(self.addr, doc).await
    }

    /// Opens a WebSocket to `doc` with `token` in the `token` query parameter (as y-websocket's
    /// `params` sends it) and completes the y-websocket handshake.
    pub async fn connect_with_token(&self, doc: &str, token: &str) -> Peer {
        let mut peer = self
            .try_connect_with_token(doc, token)
            .await
            .expect("upgrade accepted");
        peer.handshake().await;
        peer
    }

    /// Like [`TestServer::connect_with_token`] without the handshake; a refusal comes back as
    /// `Err(Error::Http(response))` with the status and the JSON body.
    pub async fn try_connect_with_token(
        &self,
        doc: &str,
        token: &str,
    ) -> Result<Peer, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{}/ws/{doc}?token={token}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Peer::from_ws(ws))
    }

    /// Waits (bounded by [`WAIT`]) until `GET /api/docs` reports `doc` stored and unloaded.
    pub async fn wait_unloaded(&self, doc: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = self.http_get("/api/docs", "application/json").await;
            let list: serde_json::Value = serde_json::from_slice(&body).expect("json doc list");
            let unloaded = list["docs"].as_array().is_some_and(|docs| {
                docs.iter()
                    .any(|row| row["name"] == doc && row["loaded"] == false)
            });
            if unloaded {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "doc {doc} never unloaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stored state of `doc` through `GET /api/docs/{doc}` (v1 update), in a fresh yrs doc.
    pub async fn fetch_doc(&self, doc: &str) -> Doc {
        use yrs::updates::decoder::Decode;
        let (status, body) = self
            .http_get(&format!("/api/docs/{doc}"), "application/octet-stream")
            .await;
        assert_eq!(status, 200, "GET /api/docs/{doc}");
        let fetched = Doc::new();
        fetched
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&body).expect("a v1 update"))
            .expect("the stored update applies");
        fetched
    }

    /// `GET /api/events` without credentials, after its `hello`; panics unless it is answered 200.
    pub async fn events(&self) -> EventStream {
        EventStream::open(self.addr, &[])
            .await
            .unwrap_or_else(|status| panic!("GET /api/events answered {status}"))
    }

    /// Sends a raw HTTP/1.1 GET and returns (status, body).
    pub async fn http_get(&self, path: &str, accept: &str) -> (u16, Vec<u8>) {
        http_get(self.addr, path, accept).await
    }

    /// Sends one HTTP/1.1 request with `headers` and `body`; see [`http_request`].
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http_request(self.addr, method, path, headers, body).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits (bounded by [`WAIT`]) until `check` holds, polling what the server shows every 20 ms:
/// for state that no event announces (files on disk, a stored doc). `what` names it in the
/// failure.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `tandem` binary of this workspace, built once per test process (`cargo build -p
/// tandem-server --bin tandem`, a no-op when it is fresh) so command-line tests run the real
/// thing. Integration tests of another package get no `CARGO_BIN_EXE_tandem`, so the binary is
/// found next to this test executable's `deps/` directory.
pub fn tandem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executables live in target/<profile>/deps");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "tandem-server", "--bin", "tandem"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // `cargo test` runs this process with the package's variables set (`CARGO_PKG_NAME`,
        // `CARGO_MANIFEST_DIR`, `OUT_DIR`, ...). Build scripts such as ring's ask to rerun when
        // those change in cargo's own environment, so a nested cargo that inherits them rebuilt
        // ring and everything above it, and the next `cargo test` rebuilt it all back (about
        // two minutes a run on a busy machine). The nested build gets the environment a shell
        // gives cargo.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref());
            if set_by_cargo {
                build.env_remove(name.as_ref());
            }
        }
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the tandem binary failed");
        let bin = profile_dir.join(format!("tandem{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no tandem binary at {}", bin.display());
        bin
    })
    .clone()
}

/// What a run of the `tandem` binary printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the `tandem` binary with `args`, writes `stdin` to its standard input and waits (bounded
/// by three times [`WAIT`]) for it to exit. Asynchronous, so a server in this test process keeps
/// answering while the command talks to it.
pub async fn run_tandem(args: &[&str], stdin: &str) -> CommandOutput {
    use tokio::io::AsyncWriteExt;
    let bin = tokio::task::spawn_blocking(tandem_bin)
        .await
        .expect("building the binary");
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem");
    let mut input = child.stdin.take().expect("piped stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = tokio::time::timeout(WAIT * 3, child.wait_with_output())
        .await
        .expect("tandem exits in time")
        .expect("tandem output");
    CommandOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// An HTTP response as a test sees it: the body is de-chunked but not decompressed.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, with their values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as UTF-8 text; panics if it is not.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough for the API tests.
pub async fn http_get(addr: SocketAddr, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let response = http_request(addr, "GET", path, &[("Accept", accept)], &[]).await;
    (response.status, response.body)
}

/// Sends one HTTP/1.1 request on a fresh connection (`Connection: close`) and reads the whole
/// response. `Content-Length` is added when `body` is not empty.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_exchange(stream, &addr.to_string(), method, path, headers, body).await
}

/// [`http_request`] from the local address `local` (any of 127.0.0.0/8 on Linux), to play a
/// client or proxy at another address.
pub async fn http_request_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let stream = connect_from(local, addr).await.expect("connect");
    http_exchange(stream, &addr.to_string(), method, path, headers, body).await
}

/// A TCP connection to `addr` from the local address `local` (port chosen by the system).
pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match local {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// [`http_request`] over TLS, for the server name `localhost`, trusting what `tls` trusts.
pub async fn https_request(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let stream = tls_connect(addr, tls).await.expect("tls handshake");
    let host = format!("localhost:{}", addr.port());
    http_exchange(stream, &host, method, path, headers, body).await
}

/// A rustls client configuration that trusts exactly `trusted` (DER certificates, typically
/// self-signed ones a test made) and nothing else.
pub fn tls_client_config(trusted: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots
            .add(rustls_pki_types::CertificateDer::from(der.to_vec()))
            .expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` for the server name `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .map_err(std::io::Error::other)?
}

/// The DER leaf certificate a new TLS handshake with the server at `addr` presents.
pub async fn presented_certificate(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let stream = tls_connect(addr, tls).await.expect("tls handshake");
    let (_, connection) = stream.get_ref();
    let chain = connection.peer_certificates().expect("server certificates");
    chain.first().expect("leaf certificate").to_vec()
}

/// Writes a certificate and key as `tls/cert.pem` and `tls/key.pem` under `dir`.
pub fn write_tls_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> TlsFiles {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("tls dir");
    let files = TlsFiles {
        cert: tls_dir.join("cert.pem"),
        key: tls_dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert_pem).expect("write cert");
    std::fs::write(&files.key, key_pem).expect("write key");
    files
}

/// Sends one request (`Connection: close`) on `stream` and reads the whole response.
async fn http_exchange<S>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use std::fmt::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if !body.is_empty() {
        let _ = write!(request, "Content-Length: {}\r\n", body.len());
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("write request");
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time");
    // A TLS server may close without close_notify after `Connection: close`; what came is enough.
    if let Err(error) = read {
        assert!(
            error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty(),
            "read response: {error}"
        );
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = response[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked && !body.is_empty() {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])
                .expect("ascii")
                .trim(),
            16,
        )
        .expect("hex size");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// What a refused WebSocket upgrade answered: its status and JSON body. Panics if the upgrade
/// was accepted or failed without an HTTP answer.
pub fn upgrade_refusal<T>(
    attempt: Result<T, tokio_tungstenite::tungstenite::Error>,
) -> (u16, serde_json::Value) {
    match attempt {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .expect("JSON error body");
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// A short description of a text for failure messages (texts can be megabytes).
fn describe(text: &str) -> String {
    if text.len() <= 80 {
        format!("text is {text:?}")
    } else {
        let head: String = text.chars().take(40).collect();
        format!("text of {} bytes starting {head:?}", text.len())
    }
}

/// A y-websocket peer with its own yrs doc.
pub struct Peer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The peer's replica.
    pub doc: Doc,
    /// The close frame received, if the server closed the connection: (code, reason).
    pub closed: Option<(u16, String)>,
    /// Awareness entries received, in order.
    pub awareness: Vec<AwarenessEntry>,
}

impl Peer {
    /// Opens a WebSocket to `doc` on the server at `addr` without any protocol exchange.
    pub async fn connect_raw(addr: SocketAddr, doc: &str) -> Peer {
        Peer::try_connect_raw(addr, doc)
            .await
            .expect("websocket connects")
    }

    /// Like [`Peer::connect_raw`], but returns the error (a refusal's HTTP response, say).
    pub async fn try_connect_raw(
        addr: SocketAddr,
        doc: &str,
    ) -> Result<Peer, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{addr}/ws/{doc}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Peer::from_ws(ws))
    }

    /// Opens a WebSocket with a hand-made request (a token in the query, a header, a
    /// subprotocol) without any protocol exchange. Returns the upgrade response too, or the
    /// error (a refusal carries its HTTP response and body).
    pub async fn try_connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<
        (
            Peer,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        Ok((Peer::from_ws(ws), response))
    }

    /// Opens a wss connection to `doc` (server name `localhost`) without any protocol exchange.
    pub async fn connect_raw_tls(
        addr: SocketAddr,
        doc: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Peer {
        let url = format!("wss://localhost:{}/ws/{doc}", addr.port());
        let stream = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
        let (ws, _) =
            tokio_tungstenite::client_async_tls_with_config(url, stream, None, Some(connector))
                .await
                .expect("wss connects");
        Peer::from_ws(ws)
    }

    fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Peer {
        Peer {
            ws,
            doc: Doc::new(),
            closed: None,
            awareness: Vec::new(),
        }
    }

    /// Opens a WebSocket to `doc` on the server at `addr` and completes the handshake.
    pub async fn connect(addr: SocketAddr, doc: &str) -> Peer {
        let mut peer = Peer::connect_raw(addr, doc).await;
        peer.handshake().await;
        peer
    }

    /// Waits for the server's step 1, answers it, asks for the server's state and applies it.
    pub async fn handshake(&mut self) {
        let first = self
            .next_frame()
            .await
            .expect("server sends sync step 1 first");
        let messages = decode_frame(&first, &Limits::default()).expect("valid frame");
        let Some(YMessage::SyncStep1(server_sv)) = messages.into_iter().next() else {
            panic!("first frame must be sync step 1");
        };
        let diff = self.doc.transact().encode_state_as_update_v1(&server_sv);
        self.send(encode_sync_step2(&diff)).await;
        let own_sv = self.doc.transact().state_vector();
        self.send(encode_sync_step1(&own_sv)).await;
        self.wait_for(|frame| matches!(frame, YMessage::SyncStep2(_)))
            .await;
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: Bytes) {
        self.ws
            .send(WsMessage::Binary(frame))
            .await
            .expect("send frame");
    }

    /// Sends any WebSocket message (text frames, for instance).
    pub async fn send_ws(&mut self, message: WsMessage) {
        let _ = self.ws.send(message).await;
    }

    /// Inserts `text` at the end of root text `t` and sends the update.
    pub async fn append_text(&mut self, text: &str) {
        let update = {
            let root = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = root.len(&txn);
            root.insert(&mut txn, len, text);
            txn.encode_update_v1()
        };
        self.send(encode_sync_update(&update)).await;
    }

    /// Inserts `text` at `index` of root text `t` without sending it; returns the update.
    pub fn insert_local(&self, index: u32, text: &str) -> Vec<u8> {
        let root = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        root.insert(&mut txn, index, text);
        txn.encode_update_v1()
    }

    /// Deletes `len` characters at `index` of root text `t` without sending it; returns the update.
    pub fn delete_local(&self, index: u32, len: u32) -> Vec<u8> {
        let root = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        root.remove_range(&mut txn, index, len);
        txn.encode_update_v1()
    }

    /// Sends an update made earlier (by `insert_local` or `delete_local`).
    pub async fn send_update(&mut self, update: &[u8]) {
        self.send(encode_sync_update(update)).await;
    }

    /// Deletes `len` characters at `index` of root text `t` and sends the update.
    pub async fn delete_text(&mut self, index: u32, len: u32) {
        let update = self.delete_local(index, len);
        self.send_update(&update).await;
    }

    /// The replica's Yjs snapshot in v1 encoding, as `Y.encodeSnapshot(Y.snapshot(doc))` gives it.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc.transact().snapshot().encode_v1()
    }

    /// Sends this peer's awareness state for `client_id`.
    pub async fn send_awareness(&mut self, client_id: u64, clock: u32, json: &str) {
        // Only `json` is encoded; the server reads the user from it.
        let entry = AwarenessEntry {
            client_id,
            clock,
            json: json.into(),
            user: None,
        };
        self.send(encode_awareness([&entry])).await;
    }

    /// The content of root text `t`.
    pub fn text(&self) -> String {
        let root = self.doc.get_or_insert_text("t");
        root.get_string(&self.doc.transact())
    }

    /// Receives and applies frames until `text()` satisfies `predicate`.
    pub async fn wait_text(&mut self, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !predicate(&self.text()) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next_frame()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "connection closed while waiting; {}, close {:?}",
                    describe(&self.text()),
                    self.closed
                ),
                Err(_) => panic!("timed out waiting; {}", describe(&self.text())),
            }
        }
        self.text()
    }

    /// Receives and applies frames until one message matches.
    pub async fn wait_for(&mut self, predicate: impl Fn(&YMessage) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(left, self.next_frame_raw())
                .await
                .expect("message in time")
                .expect("connection open");
            let messages = decode_frame(&frame, &Limits::default()).expect("valid server frame");
            let mut found = false;
            for message in messages {
                found |= predicate(&message);
                self.apply(message);
            }
            if found {
                return;
            }
        }
    }

    /// Waits for awareness entries until `predicate` holds over everything received so far.
    pub async fn wait_awareness(&mut self, predicate: impl Fn(&[AwarenessEntry]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !predicate(&self.awareness) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next_frame()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("closed while waiting for awareness: {:?}", self.closed),
                Err(_) => panic!("timed out waiting for awareness; got {:?}", self.awareness),
            }
        }
    }

    /// Next binary frame, applied to the replica; `None` once closed.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.next_frame_raw().await?;
        if let Ok(messages) = decode_frame(&frame, &Limits::default()) {
            for message in messages {
                self.apply(message);
            }
        }
        Some(frame)
    }

    async fn next_frame_raw(&mut self) -> Option<Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Binary(frame))) => return Some(frame),
                Some(Ok(WsMessage::Close(frame))) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    if self.closed.is_none() {
                        self.closed = Some((1006, String::new()));
                    }
                    return None;
                }
            }
        }
    }

    fn apply(&mut self, message: YMessage) {
        match message {
            YMessage::Update(payload) | YMessage::SyncStep2(payload) => {
                self.doc
                    .transact_mut()
                    .apply_update(payload.update)
                    .expect("server update applies");
            }
            YMessage::Awareness(payload) => self.awareness.extend(payload.entries),
            _ => {}
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left, self.next_frame_raw())
                .await
                .expect("close in time");
        }
        self.closed.clone().expect("closed")
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A reader of `GET /api/events` (server-sent events) on its own connection: each `data:` line
/// parsed as JSON, in order.
pub struct EventStream {
    stream: TcpStream,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet split into lines.
    body: Vec<u8>,
}

impl EventStream {
    /// Opens the stream with `headers` (e.g. an Authorization header); returns the status and,
    /// if it is 200, the stream (after its `hello`).
    pub async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<EventStream, u16> {
        EventStream::open_at(addr, "/api/events", headers).await
    }

    /// [`EventStream::open`] on `path` (to pass the token as a query parameter).
    pub async fn open_at(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<EventStream, u16> {
        use std::fmt::Write;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("response head in time")
                .expect("read");
            assert!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        if status != 200 {
            return Err(status);
        }
        assert!(
            head.to_ascii_lowercase().contains("text/event-stream"),
            "not an event stream: {head}"
        );
        raw.drain(..head_end + 4);
        let mut events = EventStream {
            stream,
            raw,
            body: Vec::new(),
        };
        let hello = events.next().await.expect("hello");
        assert_eq!(hello["type"], "hello");
        Ok(events)
    }

    /// The next event, or `None` when the stream ends. Fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        use tokio::io::AsyncReadExt;
        loop {
            // Complete lines of the body: `data: <json>` is an event, others are ignored.
            while let Some(end) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    return Some(serde_json::from_str(data.trim_start()).expect("event JSON"));
                }
            }
            // De-chunk what arrived: `<hex size>\r\n<bytes>\r\n`, until a size-0 chunk.
            if let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.raw[..line_end])
                        .expect("ascii")
                        .trim(),
                    16,
                )
                .expect("hex chunk size");
                if size == 0 {
                    return None;
                }
                if self.raw.len() >= line_end + 2 + size + 2 {
                    self.body
                        .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
                    self.raw.drain(..line_end + 2 + size + 2);
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("an event in time")
                .expect("read");
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips events until one satisfies `predicate`, and returns it.
    pub async fn next_matching(
        &mut self,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let event = self.next().await.expect("stream ended");
            if predicate(&event) {
                return event;
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> serde_json::Value {
        self.next_matching(|event| event["type"] == kind).await
    }

    /// [`EventStream::next_matching`] that fails the test unless the event comes `within` (a
    /// promise of the server's, tighter than [`WAIT`]).
    pub async fn next_matching_within(
        &mut self,
        within: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        tokio::time::timeout(within, self.next_matching(predicate))
            .await
            .unwrap_or_else(|_| panic!("no matching event within {within:?}"))
    }
}
