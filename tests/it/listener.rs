//! The accept loop's defences: connection caps answered with a 503, and the upgrade deadline
//! against clients that trickle their headers (slowloris). `proxy.rs` tests the client address
//! behind proxies and the PROXY protocol.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_tests::{Peer, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

/// One client's WebSocket through the local (trusted) proxy: the per-address cap counts the
/// client `X-Forwarded-For` names, since a local process is not counted per address.
fn forwarded_request(server: &TestServer, doc: &str) -> tungstenite::handshake::client::Request {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws/{doc}", server.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "x-forwarded-for",
        tungstenite::http::HeaderValue::from_static(CLIENT),
    );
    request
}

/// The client every capped connection of the first test belongs to.
const CLIENT: &str = "203.0.113.7";

#[tokio::test]
async fn a_connection_over_the_per_address_cap_gets_503_and_nobody_else_notices() {
    let server = TestServer::start_with(|config| {
        config.listener.max_connections_per_address = 3;
        // The held connections must outlive the test, not the keep-alive header timeout.
        config.listener.upgrade_timeout = Duration::from_secs(60);
    })
    .await;
    let mut writer = server.connect("kept").await;
    writer.append_text("unchanged").await;
    let mut witness = server.connect("kept").await;
    witness.wait_text(|text| text == "unchanged").await;
    writer.close().await;
    witness.close().await;

    // Three WebSockets of one client fill its cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (peer, _) = Peer::try_connect_request(forwarded_request(&server, "kept"))
            .await
            .expect("under the cap");
        held.push(peer);
    }

    // Its fourth request is answered 503 with the JSON error.
    let forwarded = [("X-Forwarded-For", CLIENT)];
    let response = server.request("GET", "/api/docs", &forwarded, &[]).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["error"], "too_many_connections");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit 3")),
        "{body}"
    );
    // A WebSocket request gets the same answer.
    match Peer::try_connect_request(forwarded_request(&server, "kept")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        Err(error) => panic!("expected a 503, got {error}"),
        Ok(_) => panic!("expected a 503, got a WebSocket"),
    }
    // Nobody else notices.
    assert_eq!(server.http_get("/healthz", "application/json").await.0, 200);

    // One WebSocket leaves; the client gets in again and finds the doc as it was.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut reader = loop {
        match Peer::try_connect_request(forwarded_request(&server, "kept")).await {
            Ok((peer, _)) => break peer,
            Err(tungstenite::Error::Http(response)) if response.status().as_u16() == 503 => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("connect: {error}"),
        }
    };
    reader.handshake().await;
    assert_eq!(reader.text(), "unchanged");
    reader.append_text("!").await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_dropped_while_peers_keep_syncing() {
    let server = TestServer::start_with(|config| {
        config.listener.upgrade_timeout = Duration::from_secs(1);
    })
    .await;
    let mut alice = server.connect("doc").await;
    let mut bob = server.connect("doc").await;

    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /ws/doc HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    alice.append_text("a").await;
    bob.wait_text(|text| text == "a").await;
    expect_closed_within(&mut slow, Duration::from_secs(5)).await;

    // The peers have now been connected longer than the deadline: upgraded connections are
    // not subject to it.
    bob.append_text("b").await;
    alice.wait_text(|text| text == "ab").await;
    let mut late = server.connect("doc").await;
    late.wait_text(|text| text == "ab").await;
}

#[tokio::test]
async fn a_keep_alive_connection_cannot_trickle_its_next_request() {
    let server = TestServer::start_with(|config| {
        config.listener.upgrade_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = open_idle_connection(server.addr)
        .await
        .expect("first request served");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    expect_closed_within(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(server.http_get("/healthz", "application/json").await.0, 200);
}

/// Opens a connection, does one keep-alive `GET /healthz` on it and returns it, open and idle.
/// `None` if the server answered something other than 200 (a 503 over the cap, say).
async fn open_idle_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let (head_len, content_length) = loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a response");
        response.extend_from_slice(&buf[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .expect("content-length");
            break (end + 4, length);
        }
    };
    while response.len() < head_len + content_length {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read");
        assert!(n > 0, "closed before the body");
        response.extend_from_slice(&buf[..n]);
    }
    response.starts_with(b"HTTP/1.1 200 ").then_some(stream)
}

/// Reads until the server closes `stream`; fails if that takes longer than `within`.
async fn expect_closed_within(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("the server closes the connection in time");
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
