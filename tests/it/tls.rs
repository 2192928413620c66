//! TLS built in: wss and https on the one port, certificate rotation without a restart, and the
//! handshake under the upgrade deadline. Certificates are made by rcgen at test time.

use std::time::Duration;

use tandem_tests::{TestServer, WAIT, presented_certificate, tls_client_config, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key.
struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl TestCert {
    fn generate() -> TestCert {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
        TestCert {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            der: certified.cert.der().to_vec(),
        }
    }
}

#[tokio::test]
async fn wss_peers_sync_a_doc_edit() {
    let cert = TestCert::generate();
    let server = TestServer::start_tls(&cert.cert_pem, &cert.key_pem, |_| {}).await;
    let tls = tls_client_config(&[&cert.der]);
    let mut alice = server.connect_tls("secure", &tls).await;
    let mut bob = server.connect_tls("secure", &tls).await;
    alice.append_text("over tls").await;
    assert_eq!(bob.wait_text(|text| text == "over tls").await, "over tls");
    bob.append_text(", both ways").await;
    alice.wait_text(|text| text == "over tls, both ways").await;
    assert!(server.url("/").starts_with("https://"));
}

/// Messages over 64 KiB skip tungstenite and are written straight to the connection's stream:
/// over TLS that stream encrypts, so a big update and a big sync step 2 must arrive intact, with
/// the small frames around them in order.
#[tokio::test]
async fn wss_delivers_big_messages_between_small_ones() {
    let cert = TestCert::generate();
    let server = TestServer::start_tls(&cert.cert_pem, &cert.key_pem, |_| {}).await;
    let tls = tls_client_config(&[&cert.der]);
    let mut alice = server.connect_tls("big", &tls).await;
    let mut bob = server.connect_tls("big", &tls).await;
    alice.append_text("a").await;
    bob.wait_text(|text| text == "a").await;
    let big: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    alice.append_text(&big).await;
    alice.append_text("z").await;
    let expected = format!("a{big}z");
    assert_eq!(
        bob.wait_text(|text| text.len() == expected.len()).await,
        expected
    );
    let mut carol = server.connect_tls("big", &tls).await;
    assert_eq!(
        carol.wait_text(|text| text.len() == expected.len()).await,
        expected
    );
    carol.append_text("!").await;
    alice.wait_text(|text| text.ends_with("z!")).await;
}

#[tokio::test]
async fn https_serves_healthz_and_plain_http_on_the_tls_port_harms_nobody() {
    let cert = TestCert::generate();
    let server = TestServer::start_tls(&cert.cert_pem, &cert.key_pem, |_| {}).await;
    let tls = tls_client_config(&[&cert.der]);
    let mut peer = server.connect_tls("doc", &tls).await;
    peer.append_text("kept").await;

    let response = server
        .https_request(&tls, "GET", "/healthz", &[], &[])
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["status"], "ok");

    // Plain HTTP to the TLS port: the handshake fails and the connection closes, with no HTTP
    // response and no effect on anyone else.
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
        .await
        .expect("plain connection closed in time");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "no HTTP answer on a TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let again = server
        .https_request(&tls, "GET", "/healthz", &[], &[])
        .await;
    assert_eq!(again.status, 200);
    let mut late = server.connect_tls("doc", &tls).await;
    assert_eq!(late.wait_text(|text| text == "kept").await, "kept");
    peer.append_text("!").await;
    late.wait_text(|text| text == "kept!").await;
}

/// How often the rotation test's server checks its certificate files.
const POLL: Duration = Duration::from_millis(100);

#[tokio::test]
async fn a_rotated_certificate_is_served_and_a_broken_one_is_ignored() {
    let first = TestCert::generate();
    let second = TestCert::generate();
    let third = TestCert::generate();
    // The files are checked every 100 ms here instead of every 2 s.
    let server = TestServer::start_tls(&first.cert_pem, &first.key_pem, |config| {
        config.listener.tls_poll_interval = POLL;
    })
    .await;
    let tls = tls_client_config(&[&first.der, &second.der, &third.der]);
    assert_eq!(presented_certificate(server.addr, &tls).await, first.der);

    server.rotate_tls_pair(&second.cert_pem, &second.key_pem);
    wait_for_certificate(&server, &tls, &second.der).await;

    // Garbage where the certificate was: the reload fails and the last good pair stays. The
    // window covers several polls of the files (`POLL`); every handshake in it must succeed
    // with the second certificate, so the window itself is what is tested and there is no
    // event to wait on.
    server.rotate_tls_pair("-----BEGIN GARBAGE-----\nnot pem at all\n", &second.key_pem);
    let window_end = tokio::time::Instant::now() + 5 * POLL;
    while tokio::time::Instant::now() < window_end {
        assert_eq!(presented_certificate(server.addr, &tls).await, second.der);
        tokio::time::sleep(POLL / 4).await;
    }
    // A key from another pair (it does not match the certificate) is refused the same way.
    server.rotate_tls_pair(&third.cert_pem, &first.key_pem);
    let window_end = tokio::time::Instant::now() + 5 * POLL;
    while tokio::time::Instant::now() < window_end {
        assert_eq!(presented_certificate(server.addr, &tls).await, second.der);
        tokio::time::sleep(POLL / 4).await;
    }

    // The reload task is still alive: a good pair is picked up again.
    server.rotate_tls_pair(&third.cert_pem, &third.key_pem);
    wait_for_certificate(&server, &tls, &third.der).await;
    let mut peer = server.connect_tls("after-rotation", &tls).await;
    peer.append_text("fine").await;
    let mut other = server.connect_tls("after-rotation", &tls).await;
    other.wait_text(|text| text == "fine").await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_before_its_tls_handshake_and_others_are_served() {
    let cert = TestCert::generate();
    let server = TestServer::start_tls(&cert.cert_pem, &cert.key_pem, |config| {
        config.listener.upgrade_timeout = Duration::from_secs(1);
    })
    .await;
    let tls = tls_client_config(&[&cert.der]);
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Meanwhile a real client gets through: the handshake runs in the connection's own task.
    let healthz = server
        .https_request(&tls, "GET", "/healthz", &[], &[])
        .await;
    assert_eq!(healthz.status, 200);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed within a few seconds");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without data: {read:?}"
    );
}

#[tokio::test]
async fn a_connection_over_the_cap_gets_the_503_over_tls() {
    let cert = TestCert::generate();
    let server = TestServer::start_tls(&cert.cert_pem, &cert.key_pem, |config| {
        config.listener.max_connections = 1;
    })
    .await;
    let tls = tls_client_config(&[&cert.der]);
    let peer = server.connect_tls("doc", &tls).await;
    let response = server
        .https_request(&tls, "GET", "/healthz", &[], &[])
        .await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"], "too_many_connections");
    drop(peer);
    // The slot comes back once the server has seen the WebSocket close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = server
            .https_request(&tls, "GET", "/healthz", &[], &[])
            .await;
        if response.status == 200 {
            break;
        }
        assert_eq!(response.status, 503);
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded by [`WAIT`]) until new handshakes present `der`.
async fn wait_for_certificate(
    server: &TestServer,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    der: &[u8],
) {
    wait_until("the new certificate is served", async || {
        presented_certificate(server.addr, tls).await == der
    })
    .await;
}
