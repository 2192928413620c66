//! Black-box tests of the Hocuspocus endpoint (`GET /ws`) with a raw tokio-tungstenite client:
//! the exchange of `benches/peers/PROTOCOLS.md` section 2 byte for byte, a doc closed without
//! closing the socket, and hostile frames, each of which closes only its own socket with a
//! reason while a Hocuspocus socket and a y-websocket peer on the same doc keep working.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tandem_core::protocol::{encode_sync_step1, encode_sync_update, write_var_u64};
use tandem_server::Config;
use tandem_tests::{TestServer, WAIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::{Doc, StateVector, Text, Transact};

/// A raw Hocuspocus socket.
struct HpSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl HpSocket {
    async fn open(server: &TestServer) -> HpSocket {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .expect("hocuspocus socket opens");
        HpSocket { ws }
    }

    async fn send(&mut self, frame: Bytes) {
        self.ws
            .send(WsMessage::Binary(frame))
            .await
            .expect("frame sent");
    }

    /// The next binary frame; panics on a close or after [`WAIT`].
    async fn recv(&mut self) -> Bytes {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(frame)))) => return frame,
                Ok(Some(Ok(WsMessage::Close(close)))) => panic!("closed: {close:?}"),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    }

    /// Reads until the next frame whose bytes start with `prefix` (awareness may come between).
    async fn recv_starting(&mut self, prefix: &[u8]) -> Bytes {
        loop {
            let frame = self.recv().await;
            if frame.starts_with(prefix) {
                return frame;
            }
        }
    }

    /// Reads until the server closes, for at most [`WAIT`] in all (the server's pings must not
    /// extend the wait); the close code and reason.
    async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Close(Some(close))))) => {
                    return (u16::from(close.code), close.reason.to_string());
                }
                Ok(Some(Ok(WsMessage::Close(None)))) => return (1005, String::new()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => panic!("socket failed before a close frame: {error}"),
                Ok(None) => panic!("socket ended without a close frame"),
                Err(_) => panic!("no close in time"),
            }
        }
    }

    /// Authenticates `key` with an empty token and syncs an empty replica: the server's
    /// Authenticated, Step1 and Step2 come back, and our Step2 is acknowledged.
    async fn attach(&mut self, key: &str) {
        self.send(auth(key, "")).await;
        self.send(with_key(key, &encode_sync_step1(&StateVector::default())))
            .await;
        let authenticated = self.recv().await;
        assert_eq!(authenticated, with_key(key, b"\x02\x02\x0aread-write"));
        self.recv_starting(&with_key(key, &[0, 1])).await;
        self.send(with_key(key, &[0, 1, 2, 0, 0])).await;
        self.recv_starting(&with_key(key, &[8])).await;
    }
}

/// `[varstring key][body]`.
fn with_key(key: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    write_var_u64(&mut out, key.len() as u64);
    out.put_slice(key.as_bytes());
    out.put_slice(body);
    out.freeze()
}

/// The provider's Auth: token, then its version.
fn auth(key: &str, token: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_slice(&[2, 0]);
    write_var_u64(&mut body, token.len() as u64);
    body.put_slice(token.as_bytes());
    body.put_slice(b"\x054.7.0");
    with_key(key, &body)
}

fn text_update(content: &str) -> Vec<u8> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.push(&mut txn, content);
    txn.encode_update_v1()
}

#[tokio::test]
async fn the_handshake_is_the_verified_exchange_and_updates_are_acknowledged() {
    let server = TestServer::start().await;
    let mut socket = HpSocket::open(&server).await;
    socket
        .send(Bytes::from_static(&[0x02, b'd', b'1', 0x02, 0x00, 0x00]))
        .await;
    socket
        .send(Bytes::from_static(&[
            0x02, b'd', b'1', 0x00, 0x00, 0x01, 0x00,
        ]))
        .await;
    assert_eq!(
        socket.recv().await,
        Bytes::from_static(b"\x02d1\x02\x02\x0aread-write")
    );
    // Our Step1 (sent on attach), then the Step2 answering the client's.
    assert_eq!(
        socket.recv().await,
        Bytes::from_static(b"\x02d1\x00\x00\x01\x00")
    );
    assert_eq!(
        socket.recv().await,
        Bytes::from_static(b"\x02d1\x00\x01\x02\x00\x00")
    );
    socket
        .send(Bytes::from_static(b"\x02d1\x00\x01\x02\x00\x00"))
        .await;
    assert_eq!(socket.recv().await, Bytes::from_static(b"\x02d1\x08\x01"));
    socket
        .send(with_key("d1", &encode_sync_update(&text_update("hello"))))
        .await;
    assert_eq!(socket.recv().await, Bytes::from_static(b"\x02d1\x08\x01"));

    // A y-websocket peer of the same doc has the update, and its edits reach the socket.
    let mut peer = server.connect("d1").await;
    assert_eq!(peer.wait_text(|t| t == "hello").await, "hello");
    peer.append_text(" world").await;
    let relayed = socket.recv_starting(b"\x02d1\x00\x02").await;
    assert!(relayed.len() > 4);
}

/// The provider flushes what it queued while offline (updates, awareness) before its providers
/// send their tokens: those messages wait for the token and are handled in order after it.
#[tokio::test]
async fn messages_before_the_token_are_handled_once_it_is_accepted() {
    let server = TestServer::start().await;
    let mut socket = HpSocket::open(&server).await;
    socket
        .send(with_key(
            "early",
            &encode_sync_update(&text_update("offline edit")),
        ))
        .await;
    socket.send(with_key("early", &[0, 0, 1, 0])).await;
    socket.send(auth("early", "")).await;
    assert_eq!(
        socket.recv().await,
        with_key("early", b"\x02\x02\x0aread-write")
    );
    assert_eq!(
        socket.recv_starting(&with_key("early", &[8])).await,
        with_key("early", &[8, 1]),
        "the early update is acknowledged once stored"
    );
    let step2 = socket.recv_starting(&with_key("early", &[0, 1])).await;
    assert!(
        step2.len() > 10,
        "the early step 1 is answered with the content"
    );
    let mut peer = server.connect("early").await;
    assert_eq!(
        peer.wait_text(|t| t == "offline edit").await,
        "offline edit"
    );
}

#[tokio::test]
async fn closing_one_doc_keeps_the_socket_and_its_other_docs() {
    let server = TestServer::start().await;
    let mut socket = HpSocket::open(&server).await;
    socket.attach("a").await;
    socket.attach("b").await;
    socket.send(with_key("a", &[7])).await;
    assert_eq!(
        socket.recv_starting(&with_key("a", &[7])).await,
        with_key("a", b"\x07\x12provider_initiated")
    );
    // Stray messages for the closed doc are dropped; the other doc still syncs and acks.
    socket.send(with_key("a", &[3])).await;
    socket
        .send(with_key("b", &encode_sync_update(&text_update("b text"))))
        .await;
    assert_eq!(
        socket.recv_starting(&with_key("b", &[8])).await,
        with_key("b", &[8, 1])
    );
    let mut peer = server.connect("b").await;
    assert_eq!(peer.wait_text(|t| t == "b text").await, "b text");
}

#[tokio::test]
async fn hostile_frames_close_only_their_own_socket() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.connection.max_docs_per_socket = 8;
    })
    .await;
    let mut bystander = HpSocket::open(&server).await;
    bystander.attach("shared").await;
    let mut peer = server.connect("shared").await;

    let huge_name = {
        let mut frame = BytesMut::new();
        write_var_u64(&mut frame, 1 << 20);
        frame.put_slice(&vec![b'n'; 1 << 20]);
        frame.put_slice(&[3]);
        frame.freeze()
    };
    let many_docs: Vec<Bytes> = (0..1000).map(|i| auth(&format!("doc-{i}"), "")).collect();
    let cases: Vec<(&str, Vec<Bytes>, u16, &str)> = vec![
        (
            "a document name of 1 MB",
            vec![huge_name],
            1009,
            "document name too long: 1048576 bytes, limit 512",
        ),
        (
            "a thousand documents on one socket",
            many_docs,
            1008,
            "too many documents on one connection, limit 8",
        ),
        (
            "messages for documents never opened, after an accepted token",
            std::iter::once(auth("opened", ""))
                .chain((0..1001).map(|i| with_key(&format!("never-opened-{i}"), &[3])))
                .collect(),
            1008,
            "too many messages before authentication, limit 1000 messages or 5242880 bytes",
        ),
        (
            "garbage after a valid auth",
            vec![
                auth("shared", ""),
                with_key("shared", &[0, 0, 1, 0]),
                Bytes::from_static(&[0xff, 0xff, 0xff]),
            ],
            1002,
            "malformed message: truncated var-uint",
        ),
        (
            "an unknown message type",
            vec![auth("shared", ""), with_key("shared", &[99])],
            1003,
            "unsupported message type 99",
        ),
        (
            "a client SyncStatus",
            vec![auth("shared", ""), with_key("shared", &[8, 1])],
            1003,
            "unsupported message type 8",
        ),
        (
            "a malformed update",
            vec![
                auth("shared", ""),
                with_key("shared", &[0, 2, 3, 0x7f, 0, 0]),
            ],
            1007,
            "invalid update: update client count exceeds payload",
        ),
    ];
    for (what, frames, code, reason) in cases {
        let mut attacker = HpSocket::open(&server).await;
        for frame in frames {
            // The server may close half-way through; later sends may fail.
            if attacker.ws.send(WsMessage::Binary(frame)).await.is_err() {
                break;
            }
        }
        assert_eq!(
            attacker.expect_close().await,
            (code, reason.to_owned()),
            "{what}"
        );
        // Nobody else noticed: the bystander socket and the y-websocket peer still co-edit.
        let marker = format!("[{what}]");
        peer.append_text(&marker).await;
        let update = bystander.recv_starting(&with_key("shared", &[0, 2])).await;
        assert!(
            update.len() > marker.len(),
            "{what}: the bystander got the edit"
        );
        bystander
            .send(with_key("shared", &encode_sync_update(&text_update("x"))))
            .await;
        assert_eq!(
            bystander.recv_starting(&with_key("shared", &[8])).await,
            with_key("shared", &[8, 1]),
            "{what}: the bystander is still acknowledged"
        );
    }
    assert_eq!(peer.closed, None);
}

#[tokio::test]
async fn a_refused_token_answers_permission_denied_and_keeps_the_socket() {
    let server = TestServer::start_jwt(|_| {}).await;
    let mut socket = HpSocket::open(&server).await;
    socket.send(auth("team/a.md", "not a jwt")).await;
    let denied = socket.recv().await;
    let expected_head = with_key("team/a.md", &[2, 1]);
    assert!(denied.starts_with(&expected_head), "{denied:?}");
    assert!(String::from_utf8_lossy(&denied).contains("invalid token"));
    // Its sync and awareness, sent right behind the token, are dropped quietly.
    socket.send(with_key("team/a.md", &[0, 0, 1, 0])).await;
    let token = server.token("ada", &[("team/*", tandem_server::auth::Role::Read)]);
    socket.send(auth("team/b.md", &token)).await;
    assert_eq!(
        socket.recv().await,
        with_key("team/b.md", b"\x02\x02\x08readonly")
    );
}

#[tokio::test]
async fn stateless_messages_reach_the_docs_other_hocuspocus_peers_only() {
    let server = TestServer::start().await;
    let mut sender = HpSocket::open(&server).await;
    let mut receiver = HpSocket::open(&server).await;
    sender.attach("room").await;
    receiver.attach("room").await;
    let mut peer = server.connect("room").await;
    sender.send(with_key("room", b"\x05\x05hello")).await;
    assert_eq!(
        receiver.recv_starting(&with_key("room", &[5])).await,
        with_key("room", b"\x05\x05hello")
    );
    // The sender gets no echo: the next frame it sees for the room is the ack of its update.
    sender
        .send(with_key("room", &encode_sync_update(&text_update("after"))))
        .await;
    let next = sender.recv().await;
    assert_eq!(next, with_key("room", &[8, 1]));
    // The y-websocket peer got the update and nothing it could not read.
    assert_eq!(peer.wait_text(|t| t == "after").await, "after");
    assert_eq!(peer.closed, None);
}

#[tokio::test]
async fn a_session_aware_key_is_answered_with_that_key_for_the_named_doc() {
    let server = TestServer::start().await;
    let mut socket = HpSocket::open(&server).await;
    let key = "team/doc.md\0s3ss10n";
    socket.attach(key).await;
    socket
        .send(with_key(
            key,
            &encode_sync_update(&text_update("via session")),
        ))
        .await;
    assert_eq!(
        socket.recv_starting(&with_key(key, &[8])).await,
        with_key(key, &[8, 1])
    );
    let mut peer = server.connect("team/doc.md").await;
    assert_eq!(peer.wait_text(|t| t == "via session").await, "via session");
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_with_4401() {
    let server = TestServer::start_jwt(|config: &mut Config| {
        config.auth.leeway = std::time::Duration::ZERO;
    })
    .await;
    let mut claims = tandem_tests::own_claims("ada", &[("*", tandem_server::auth::Role::Write)]);
    claims.exp = tandem_tests::unix_now() + 2;
    let token = server.mint(&claims);
    let mut socket = HpSocket::open(&server).await;
    socket.send(auth("short", &token)).await;
    assert_eq!(
        socket.recv().await,
        with_key("short", b"\x02\x02\x0aread-write")
    );
    assert_eq!(
        socket.expect_close().await,
        (4401, "token expired".to_owned())
    );
}

/// A socket whose client stopped reading used to block its task in a write for good: deaf to
/// its closer and its pings, it kept a ghost peer on its other docs, which never unloaded. Every
/// write is now bounded by the pong timeout. The sleeper here never reads again until the end,
/// so nothing but that bound can detach it.
#[tokio::test]
async fn a_socket_that_stops_reading_is_dropped_and_its_other_docs_unload() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.hub.outbox_capacity = 8;
        config.hub.doc_unload_grace = std::time::Duration::from_millis(100);
        config.connection.ping_interval = std::time::Duration::from_millis(500);
        config.connection.pong_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let mut writer = server.connect("firehose").await;
    let mut reader = server.connect("firehose").await;
    let mut sleeper = HpSocket::open(&server).await;
    sleeper.attach("quiet-doc").await;
    sleeper
        .send(with_key(
            "quiet-doc",
            &encode_sync_update(&text_update("kept")),
        ))
        .await;
    sleeper.recv_starting(&with_key("quiet-doc", &[8])).await;
    sleeper.attach("firehose").await;
    let chunk = "z".repeat(64 * 1024);
    let total = 200 * chunk.len();
    // The reader keeps up; the sleeper never reads, so its socket buffers fill, then the
    // outbox of its "firehose" attachment.
    for i in 1..=200 {
        writer.append_text(&chunk).await;
        if i % 4 == 0 {
            reader.wait_text(|t| t.len() >= i * chunk.len()).await;
        }
    }
    assert_eq!(reader.wait_text(|t| t.len() == total).await.len(), total);
    // The doc only the sleeper had open loses its last peer and unloads.
    server.wait_unloaded("quiet-doc").await;
    // The server hung up: what the socket still holds ends without a close frame (a write
    // was abandoned half done), well within the wait.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match sleeper.ws.next().await {
                Some(Ok(WsMessage::Close(close))) => break Some(close),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        }
    })
    .await;
    assert_eq!(ended.expect("the server hangs up"), None);
}

/// Before its first accepted token, a socket may hold only a few messages: with authentication
/// on, an anonymous socket used to hold 1000 decoded messages or 5 MiB by never sending a token.
#[tokio::test]
async fn a_socket_without_a_token_may_hold_only_a_few_messages() {
    let server = TestServer::start_jwt(|config: &mut Config| {
        config.hub.limits.max_messages_per_second = 100_000;
    })
    .await;
    let mut socket = HpSocket::open(&server).await;
    for _ in 0..65 {
        socket.send(with_key("never-authed", &[0, 0, 1, 0])).await;
    }
    assert_eq!(
        socket.expect_close().await,
        (
            1008,
            "too many messages before authentication, limit 64 messages or 65536 bytes".to_owned()
        )
    );
    // Bytes count as well: two updates of 40 KiB are over 64 KiB.
    let mut socket = HpSocket::open(&server).await;
    let big = encode_sync_update(&text_update(&"b".repeat(40 * 1024)));
    socket.send(with_key("never-authed", &big)).await;
    socket.send(with_key("never-authed", &big)).await;
    assert_eq!(
        socket.expect_close().await.0,
        1008,
        "over the bytes an anonymous socket may hold"
    );
}

/// With authentication on, an anonymous socket answering pings used to stay open for good. A
/// socket with no accepted token within the pong timeout is closed; one with a token stays.
#[tokio::test]
async fn a_socket_with_no_accepted_token_is_closed_after_the_pong_timeout() {
    let server = TestServer::start_jwt(|config: &mut Config| {
        config.connection.pong_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let token = server.token("ada", &[("*", tandem_server::auth::Role::Write)]);
    let mut anonymous = HpSocket::open(&server).await;
    let mut member = HpSocket::open(&server).await;
    member.send(auth("kept", &token)).await;
    assert_eq!(
        member.recv().await,
        with_key("kept", b"\x02\x02\x0aread-write")
    );
    anonymous.send(auth("kept", "not a jwt")).await;
    assert!(
        anonymous
            .recv()
            .await
            .starts_with(&with_key("kept", &[2, 1]))
    );
    assert_eq!(
        anonymous.expect_close().await,
        (1008, "no document authenticated in time".to_owned())
    );
    // The pong timeout has passed for the member too, which keeps working.
    member
        .send(with_key(
            "kept",
            &encode_sync_update(&text_update("still here")),
        ))
        .await;
    assert_eq!(
        member.recv_starting(&with_key("kept", &[8])).await,
        with_key("kept", &[8, 1])
    );
}

/// A read-only peer could talk to every writer of a doc through stateless messages; they are
/// dropped now. The read-only peer's awareness, sent right behind on the same socket, goes
/// through the same doc actor in order, so the writer seeing it first proves the drop.
#[tokio::test]
async fn stateless_messages_from_a_read_only_peer_are_dropped() {
    let server = TestServer::start_jwt(|_| {}).await;
    let write = server.token("ada", &[("*", tandem_server::auth::Role::Write)]);
    let read = server.token("bob", &[("*", tandem_server::auth::Role::Read)]);
    let mut writer = HpSocket::open(&server).await;
    writer.send(auth("room", &write)).await;
    assert_eq!(
        writer.recv().await,
        with_key("room", b"\x02\x02\x0aread-write")
    );
    let mut reader = HpSocket::open(&server).await;
    reader.send(auth("room", &read)).await;
    assert_eq!(
        reader.recv().await,
        with_key("room", b"\x02\x02\x08readonly")
    );
    reader.send(with_key("room", b"\x05\x03spy")).await;
    let state = br#"{"user":{"name":"bob"}}"#;
    let mut awareness = BytesMut::new();
    write_var_u64(&mut awareness, 1);
    write_var_u64(&mut awareness, 4242);
    write_var_u64(&mut awareness, 1);
    write_var_u64(&mut awareness, state.len() as u64);
    awareness.put_slice(state);
    let mut body = BytesMut::from(&[1u8][..]);
    write_var_u64(&mut body, awareness.len() as u64);
    body.put_slice(&awareness);
    reader.send(with_key("room", &body)).await;
    loop {
        let frame = writer.recv().await;
        assert!(
            !frame.starts_with(&with_key("room", &[5])),
            "a read-only peer's stateless message reached a writer"
        );
        if frame.starts_with(&with_key("room", &[1])) && frame.windows(3).any(|w| w == b"bob") {
            break;
        }
    }
}

/// The socket remembered only the first 256 refused or closed keys: strays for any key closed
/// later waited for a token that would never come, until the socket was closed for holding too
/// many. The latest keys are remembered now, the oldest forgotten first.
#[tokio::test]
async fn strays_for_a_key_closed_after_many_others_are_dropped() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.hub.limits.max_messages_per_second = 100_000;
    })
    .await;
    let mut socket = HpSocket::open(&server).await;
    let n_keys = 300;
    for i in 0..n_keys {
        let key = format!("closed-{i}");
        socket.send(auth(&key, "")).await;
        socket.send(with_key(&key, &[7])).await;
        socket
            .recv_starting(&with_key(&key, b"\x07\x12provider_initiated"))
            .await;
    }
    let last = format!("closed-{}", n_keys - 1);
    for _ in 0..1001 {
        socket.send(with_key(&last, &[3])).await;
    }
    socket.send(auth("anchor", "")).await;
    assert_eq!(
        socket.recv_starting(&with_key("anchor", &[2])).await,
        with_key("anchor", b"\x02\x02\x0aread-write")
    );
}

/// A server that cannot check a token now (Postgres down in cluster mode, so it cannot tell a
/// doc from a file's path) used to answer permission-denied, which the provider takes as final.
/// It closes the socket with 1013 now, as a y-websocket upgrade answers 503: the provider
/// reconnects and tries again.
#[tokio::test]
async fn a_token_that_cannot_be_checked_now_closes_the_socket_with_1013() {
    let mut postgres = tandem_tests::engines::Postgres::start();
    let redis = tandem_tests::engines::Redis::start();
    let blobs = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start_node(&redis, &postgres, blobs.path(), |_| {}).await;
    let mut socket = HpSocket::open(&server).await;
    socket.attach("open-before").await;
    postgres.stop();
    socket.send(auth("new-doc", "")).await;
    assert_eq!(
        socket.expect_close().await,
        (1013, "storage unavailable, retry later".to_owned())
    );
}

#[tokio::test]
async fn the_message_rate_counts_per_socket_across_its_docs() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.hub.limits.max_messages_per_second = 5;
    })
    .await;
    let mut socket = HpSocket::open(&server).await;
    // Two docs, each well under the burst of 10 on its own, together over it.
    for i in 0..12 {
        let key = if i % 2 == 0 { "rate-a" } else { "rate-b" };
        if socket
            .ws
            .send(WsMessage::Binary(auth(key, "")))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        socket.expect_close().await,
        (4429, "message rate limit exceeded".to_owned())
    );
}
