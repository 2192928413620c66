//! Black-box tests of the hub: sync, broadcast, awareness, durability, lifecycle, bad input.

use std::time::Duration;

use bytes::Bytes;
use tandem_core::protocol::{
    AwarenessEntry, decode_frame, encode_query_awareness, encode_sync_step1, encode_sync_update,
    write_var_u64,
};
use tandem_core::{Limits, Message};
use tandem_tests::{Peer, TestServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn updates_reach_every_other_peer() {
    let server = TestServer::start().await;
    let mut alice = server.connect("team/notes.md").await;
    let mut bob = server.connect("team/notes.md").await;
    alice.append_text("hello").await;
    assert_eq!(bob.wait_text(|t| t == "hello").await, "hello");
    bob.append_text(" world").await;
    assert_eq!(alice.wait_text(|t| t == "hello world").await, "hello world");
}

#[tokio::test]
async fn late_joiner_gets_the_full_state() {
    let server = TestServer::start().await;
    let mut alice = server.connect("doc").await;
    for word in ["a", "b", "c"] {
        alice.append_text(word).await;
    }
    // Bob joins afterwards and must get everything through the handshake alone.
    let mut bob = server.connect("doc").await;
    assert_eq!(bob.wait_text(|t| t == "abc").await, "abc");
}

#[tokio::test]
async fn content_survives_a_restart_and_is_served_after_load() {
    let mut server = TestServer::start().await;
    let mut alice = server.connect("persist/me").await;
    alice.append_text("durable").await;
    // A second peer seeing it proves the commit happened (persist before broadcast).
    let mut bob = server.connect("persist/me").await;
    bob.wait_text(|t| t == "durable").await;
    alice.close().await;
    bob.close().await;
    server.restart().await;
    let mut carol = server.connect_raw("persist/me").await;
    // The very first frame is step 1 with the stored state vector: never an empty doc.
    let first = carol.next_frame().await.expect("step 1");
    match decode_frame(&first, &Limits::default()).unwrap().pop() {
        Some(Message::SyncStep1(sv)) => {
            assert!(!sv.is_empty(), "server sent an empty state vector")
        }
        other => panic!("expected sync step 1, got {other:?}"),
    }
    carol
        .send(tandem_core::protocol::encode_sync_step1(&Default::default()))
        .await;
    assert_eq!(carol.wait_text(|t| t == "durable").await, "durable");
}

#[tokio::test]
async fn concurrent_first_connections_all_see_the_stored_doc() {
    let mut server = TestServer::start().await;
    let mut writer = server.connect("shared").await;
    writer.append_text("stored text").await;
    let mut check = server.connect("shared").await;
    check.wait_text(|t| t == "stored text").await;
    writer.close().await;
    check.close().await;
    server.restart().await;
    // Twenty first connections at once: they must share one load and all see the text.
    let mut peers = futures_util::future::join_all((0..20).map(|_| server.connect("shared"))).await;
    for peer in &mut peers {
        assert_eq!(peer.wait_text(|t| t == "stored text").await, "stored text");
    }
}

#[tokio::test]
async fn documents_are_isolated() {
    let server = TestServer::start().await;
    let mut a = server.connect("a").await;
    let mut ab = server.connect("a/b").await;
    a.append_text("only a").await;
    ab.append_text("only a/b").await;
    let mut a2 = server.connect("a").await;
    let mut ab2 = server.connect("a/b").await;
    assert_eq!(a2.wait_text(|t| t == "only a").await, "only a");
    assert_eq!(ab2.wait_text(|t| t == "only a/b").await, "only a/b");
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_when_its_owner_leaves() {
    let server = TestServer::start().await;
    let mut alice = server.connect("presence").await;
    let mut bob = server.connect("presence").await;
    alice
        .send_awareness(111, 1, r#"{"user":{"name":"alice"}}"#)
        .await;
    bob.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 111 && !e.is_removal()))
        .await;
    alice.close().await;
    bob.wait_awareness(|seen| {
        seen.last()
            .is_some_and(|e| e.client_id == 111 && e.is_removal())
    })
    .await;
}

#[tokio::test]
async fn a_connection_cannot_overwrite_or_delete_another_connections_presence() {
    let server = TestServer::start().await;
    let mut alice = server.connect("presence").await;
    let mut mallory = server.connect("presence").await;
    alice
        .send_awareness(111, 1, r#"{"user":{"name":"alice"}}"#)
        .await;
    mallory
        .wait_awareness(|seen| seen.iter().any(|e| e.client_id == 111))
        .await;
    mallory
        .send_awareness(111, 50, r#"{"user":{"name":"mallory"}}"#)
        .await;
    mallory.send_awareness(111, 51, "null").await;
    // A late joiner asks for everyone's presence: alice's state must be intact.
    let mut carol = server.connect("presence").await;
    carol.send(encode_query_awareness()).await;
    carol
        .wait_awareness(|seen| {
            seen.iter()
                .any(|e| e.client_id == 111 && e.clock == 1 && e.json.contains("alice"))
        })
        .await;
    assert!(
        carol
            .awareness
            .iter()
            .all(|e| !e.json.contains("mallory") && !e.is_removal()),
        "forged presence leaked: {:?}",
        carol.awareness
    );
}

#[tokio::test]
async fn a_silent_peer_is_closed_and_its_presence_removed() {
    let server = TestServer::start_with(|config| {
        config.connection.ping_interval = Duration::from_millis(100);
        config.connection.pong_timeout = Duration::from_millis(600);
    })
    .await;
    let mut ghost = server.connect("ghost").await;
    let mut bob = server.connect("ghost").await;
    ghost
        .send_awareness(7, 1, r#"{"user":{"name":"ghost"}}"#)
        .await;
    bob.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 7))
        .await;
    // The ghost stops reading (so it never answers pings); bob keeps reading.
    bob.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 7 && e.is_removal()))
        .await;
    drop(ghost);
}

/// A joiner whose socket is still taking a big sync step 2 has had no ping to answer: the time
/// the server spends writing to it is not the peer's silence (it used to be closed with "ping
/// timeout" right after the download, and would download again on reconnect).
#[tokio::test]
async fn a_peer_still_receiving_a_big_document_is_not_closed_for_silence() {
    let server = TestServer::start_with(|config| {
        config.connection.ping_interval = Duration::from_millis(1000);
        config.connection.pong_timeout = Duration::from_millis(600);
    })
    .await;
    let mut writer = server.connect("big").await;
    let chunk = "x".repeat(1 << 20);
    for _ in 0..12 {
        writer.append_text(&chunk).await;
    }
    let size = 12 << 20;
    let mut probe = server.connect("big").await;
    probe.wait_text(|text| text.len() == size).await;

    // The joiner asks for everything, then does not read for two seconds: 12 MB do not fit in
    // loopback's socket buffers, so the server's writer waits on it meanwhile. The sleep is the
    // behaviour under test (a peer that cannot be written to), not a wait for an event; it is
    // longer than `ping_interval + pong_timeout`, so silence counted wrongly would close it.
    let mut joiner = Peer::connect_raw(server.addr, "big").await;
    joiner
        .send(encode_sync_step1(&yrs::StateVector::default()))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    joiner.wait_text(|text| text.len() == size).await;
    // Reading again (tungstenite answers pings while reading), it stays connected.
    let quiet = tokio::time::timeout(Duration::from_secs(2), joiner.next_frame()).await;
    assert!(
        joiner.closed.is_none(),
        "closed after the download: {:?} ({quiet:?})",
        joiner.closed
    );
    writer.close().await;
}

#[tokio::test]
async fn awareness_expires_without_renewal() {
    let server = TestServer::start_with(|config| {
        config.hub.limits.awareness_timeout_ms = 300;
    })
    .await;
    let mut alice = server.connect("expiry").await;
    let mut bob = server.connect("expiry").await;
    alice
        .send_awareness(9, 1, r#"{"user":{"name":"alice"}}"#)
        .await;
    bob.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 9 && e.is_removal()))
        .await;
    alice.close().await;
}

/// Hostile frames: each closes only its own connection with the expected code; the server stays
/// up and another document, and a peer connected to it, are untouched.
#[tokio::test]
async fn hostile_frames_close_only_their_connection() {
    let server = TestServer::start_with(|config| config.hub.limits.max_frame_bytes = 4096).await;
    let mut keeper = server.connect("precious").await;
    keeper.append_text("keep me").await;
    let mut watcher = server.connect("precious").await;
    watcher.wait_text(|t| t == "keep me").await;

    let mut huge_len = bytes::BytesMut::new();
    write_var_u64(&mut huge_len, 0);
    write_var_u64(&mut huge_len, 2);
    write_var_u64(&mut huge_len, 1 << 60);
    let cases: Vec<(&str, WsMessage, u16)> = vec![
        (
            "garbage",
            WsMessage::Binary(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef])),
            1002,
        ),
        (
            "truncated var-uint",
            WsMessage::Binary(Bytes::from_static(&[0x80])),
            1002,
        ),
        (
            "length prefix 2^60",
            WsMessage::Binary(huge_len.freeze()),
            1002,
        ),
        ("text frame", WsMessage::Text("hello".into()), 1003),
        (
            "invalid update",
            WsMessage::Binary(Bytes::from_static(&[0, 2, 3, 0x7f, 0, 0])),
            1007,
        ),
        (
            "unknown type",
            WsMessage::Binary(Bytes::from_static(&[7])),
            1003,
        ),
        (
            "oversize frame",
            WsMessage::Binary(Bytes::from(vec![0u8; 8192])),
            1009,
        ),
        (
            "awareness state that is not json",
            WsMessage::Binary(Bytes::from_static(&[1, 5, 1, 1, 1, 1, b'{'])),
            1007,
        ),
    ];
    for (name, message, code) in cases {
        let mut attacker = server.connect("victim").await;
        attacker.send_ws(message).await;
        let (got, reason) = attacker.expect_close().await;
        assert_eq!(got, code, "case {name}: reason {reason:?}");
        assert!(
            !reason.is_empty() && reason.len() <= 123,
            "case {name}: reason {reason:?}"
        );
    }
    // The server is alive, the other doc unchanged, its peers still served.
    let (status, _) = server.http_get("/healthz", "*/*").await;
    assert_eq!(status, 200);
    keeper.append_text("!").await;
    assert_eq!(watcher.wait_text(|t| t == "keep me!").await, "keep me!");
    let (status, body) = server
        .http_get("/api/docs/precious", "application/json")
        .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["t"], "keep me!");
}

#[tokio::test]
async fn bad_doc_names_are_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    for path in ["/ws/a/../b", "/ws/a%2Fb", "/ws/a//b", "/ws/a/", "/ws/%ff"] {
        let (status, body) = server.http_get(path, "*/*").await;
        assert_eq!(status, 400, "path {path}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json error body");
        assert_eq!(json["error"], "bad_doc_name", "path {path}");
    }
    // `/ws` and `/ws/` name no doc: they are the Hocuspocus endpoint, where a GET that is no
    // upgrade is refused as such.
    for path in ["/ws", "/ws/"] {
        let (status, body) = server.http_get(path, "*/*").await;
        assert_eq!(status, 400, "path {path}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json error body");
        assert_eq!(json["error"], "bad_upgrade", "path {path}");
    }
}

#[tokio::test]
async fn http_lists_docs_and_serves_them_as_update_or_json() {
    let server = TestServer::start().await;
    let mut alice = server.connect("folder/readme.md").await;
    alice.append_text("# hi").await;
    let mut bob = server.connect("folder/readme.md").await;
    bob.wait_text(|t| t == "# hi").await;

    let (status, body) = server.http_get("/api/docs", "application/json").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let row = list["docs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "folder/readme.md")
        .expect("doc listed");
    assert_eq!(row["peers"], 2);
    assert!(row["size_bytes"].as_u64().unwrap() > 0);
    assert!(row["updated_ms"].as_u64().unwrap() > 0);

    let doc = server.fetch_doc("folder/readme.md").await;
    let text = {
        use yrs::{GetString, Transact};
        doc.get_or_insert_text("t").get_string(&doc.transact())
    };
    assert_eq!(text, "# hi");

    let (status, _) = server
        .http_get("/api/docs/never/written", "application/json")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn several_messages_in_one_frame_are_all_handled() {
    let server = TestServer::start().await;
    let mut alice = server.connect("multi").await;
    let mut bob = server.connect("multi").await;
    let mut frame = bytes::BytesMut::new();
    for word in ["x", "y"] {
        let doc = yrs::Doc::new();
        let update = {
            use yrs::{Text, Transact};
            let text = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, word);
            txn.encode_update_v1()
        };
        frame.extend_from_slice(&encode_sync_update(&update));
    }
    frame.extend_from_slice(&encode_query_awareness());
    alice.send(frame.freeze()).await;
    let text = bob.wait_text(|t| t.len() == 2).await;
    assert!(text.contains('x') && text.contains('y'));
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_others_keep_receiving() {
    let server = TestServer::start_with(|config| config.hub.outbox_capacity = 8).await;
    let mut writer = server.connect("firehose").await;
    let mut reader = server.connect("firehose").await;
    let mut sleeper = server.connect("firehose").await;
    let chunk = "z".repeat(64 * 1024);
    let total = 200 * chunk.len();
    // The reader keeps up (the writer waits for it every 4 chunks, half its outbox); the sleeper
    // never reads, so its socket buffers fill, then its outbox, and then it is closed.
    for i in 1..=200 {
        writer.append_text(&chunk).await;
        if i % 4 == 0 {
            reader.wait_text(|t| t.len() >= i * chunk.len()).await;
        }
    }
    assert_eq!(reader.wait_text(|t| t.len() == total).await.len(), total);
    let (code, reason) = sleeper.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
}

#[tokio::test]
async fn shutdown_closes_peers_with_1001_and_flushes_everything() {
    let mut server = TestServer::start().await;
    let mut alice = server.connect("flush").await;
    let mut bob = server.connect("flush").await;
    for i in 0..50 {
        alice.append_text(&format!("{i},")).await;
    }
    bob.wait_text(|t| t.ends_with("49,")).await;
    let data_dir = server.data_dir().to_path_buf();
    assert!(server.shutdown().await);
    assert_eq!(bob.expect_close().await.0, 1001);
    // Reopen the redb file directly: everything is there.
    let store = tandem_store::Store::open(&data_dir.join(tandem_server::DB_FILE_NAME)).unwrap();
    let stored = store.load_doc("flush").unwrap();
    let doc = tandem_core::SharedDoc::load(Limits::default(), stored.iter()).unwrap();
    let json = doc.to_json();
    let text = json["t"].as_str().unwrap();
    for i in 0..50 {
        assert!(text.contains(&format!("{i},")), "missing edit {i}");
    }
}

#[tokio::test]
async fn idle_docs_unload_and_reload_with_their_content() {
    let server = TestServer::start_with(|config| {
        config.hub.doc_unload_grace = Duration::from_millis(200);
    })
    .await;
    let mut alice = server.connect("transient").await;
    for i in 0..5 {
        alice.append_text(&i.to_string()).await;
    }
    let mut bob = server.connect("transient").await;
    bob.wait_text(|t| t == "01234").await;
    alice.close().await;
    bob.close().await;
    server.wait_unloaded("transient").await;
    let mut carol = server.connect("transient").await;
    assert_eq!(carol.wait_text(|t| t == "01234").await, "01234");
}

#[tokio::test]
async fn query_awareness_returns_every_state() {
    let server = TestServer::start().await;
    let mut alice = server.connect("q").await;
    alice.send_awareness(1, 1, r#"{"n":1}"#).await;
    alice
        .wait_awareness(|seen| seen.iter().any(|e| e.client_id == 1))
        .await;
    let mut bob = server.connect("q").await;
    bob.send(encode_query_awareness()).await;
    bob.wait_awareness(|seen: &[AwarenessEntry]| seen.iter().any(|e| e.client_id == 1))
        .await;
}

/// An update whose item names, as its parent, an existing item that is not a shared type makes
/// yrs fail half-way through `apply_update` (`UpdateError::InvalidParent`). The fix under test:
/// the sender is closed with 1007, the doc reloads from redb, and every other peer stays
/// connected with the doc intact.
#[tokio::test]
async fn an_update_that_breaks_yrs_closes_only_its_sender_and_the_doc_reloads() {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Map, MapPrelim, ReadTxn, StateVector, Transact, Update, WriteTxn};

    let server = TestServer::start().await;
    let mut alice = server.connect("poison").await;
    let mut bob = server.connect("poison").await;

    // Item 7:0 on the server is a string inside root text "t".
    let honest = Doc::with_client_id(7);
    let honest_update = {
        let text = honest.get_or_insert_text("t");
        let mut txn = honest.transact_mut();
        yrs::Text::insert(&text, &mut txn, 0, "x");
        txn.encode_update_v1()
    };
    alice.send(encode_sync_update(&honest_update)).await;
    bob.wait_text(|t| t == "x").await;

    // Elsewhere, client 7's first item is a nested map; client 8 writes into it, so its update
    // names 7:0 as the parent. On the server 7:0 is a string: an invalid parent.
    let other = Doc::with_client_id(7);
    {
        let mut txn = other.transact_mut();
        let root = txn.get_or_insert_map("m");
        root.insert(&mut txn, "k", MapPrelim::default());
    }
    let forger = Doc::with_client_id(8);
    forger
        .transact_mut()
        .apply_update(
            Update::decode_v1(
                &other
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )
            .unwrap(),
        )
        .unwrap();
    let hostile_update = {
        let mut txn = forger.transact_mut();
        let root = txn.get_or_insert_map("m");
        let Some(yrs::Out::YMap(nested)) = root.get(&txn, "k") else {
            panic!("nested map")
        };
        nested.insert(&mut txn, "evil", 1);
        txn.encode_update_v1()
    };
    let mut mallory = server.connect("poison").await;
    mallory.send(encode_sync_update(&hostile_update)).await;
    let (code, reason) = mallory.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1007, "invalid update: update refers to an invalid parent")
    );

    // Bob is still connected, the doc still works and still holds exactly what was durable.
    alice.append_text("y").await;
    assert_eq!(bob.wait_text(|t| t == "xy").await, "xy");
    let (status, body) = server
        .http_get("/api/docs/poison", "application/json")
        .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["t"], "xy");
    assert!(bob.closed.is_none());
}

/// Connections that arrive while their doc is unloading must neither lose edits nor see a
/// half-unloaded doc: with a 1 ms grace period the doc unloads between almost every pair of
/// connections, so joins regularly race with an unload and take the retry path.
#[tokio::test]
async fn connections_racing_an_unload_lose_nothing() {
    let server = TestServer::start_with(|config| {
        config.hub.doc_unload_grace = Duration::from_millis(1);
    })
    .await;
    let mut expected = String::new();
    for i in 0..40 {
        let mut peer = server.connect("racy").await;
        assert_eq!(
            peer.wait_text(|t| t == expected).await,
            expected,
            "round {i} sees every earlier edit"
        );
        let word = format!("{i},");
        peer.append_text(&word).await;
        expected.push_str(&word);
        // A second peer proves the edit is durable before the first one leaves.
        let mut check = server.connect("racy").await;
        check.wait_text(|t| t == expected).await;
        peer.close().await;
        check.close().await;
    }
}

#[tokio::test]
async fn an_unloading_doc_compacts_its_log_into_one_snapshot() {
    let mut server = TestServer::start_with(|config| {
        config.hub.doc_unload_grace = Duration::from_millis(100);
        config.hub.compact_after_updates = 10_000;
    })
    .await;
    let mut alice = server.connect("compact/me").await;
    for i in 0..20 {
        alice.append_text(&format!("{i};")).await;
    }
    let mut bob = server.connect("compact/me").await;
    bob.wait_text(|t| t.ends_with("19;")).await;
    alice.close().await;
    bob.close().await;
    server.wait_unloaded("compact/me").await;
    let data_dir = server.data_dir().to_path_buf();
    assert!(server.shutdown().await);
    let store = tandem_store::Store::open(&data_dir.join(tandem_server::DB_FILE_NAME)).unwrap();
    let meta = store.doc_meta("compact/me").unwrap().expect("stored");
    assert_eq!((meta.n_log_entries, meta.last_seq), (0, 20));
    let stored = store.load_doc("compact/me").unwrap();
    assert!(stored.snapshot.is_some() && stored.updates.is_empty());
    let doc = tandem_core::SharedDoc::load(Limits::default(), stored.iter()).unwrap();
    let expected: String = (0..20).map(|i| format!("{i};")).collect();
    assert_eq!(doc.to_json()["t"], expected.as_str());
}

#[tokio::test]
async fn writers_flooding_a_busy_doc_keep_receiving_and_are_not_closed() {
    // Four peers each send 3,000 updates as fast as they can while reading everything the
    // others send: one task per connection both reads and writes, and the doc's inbox fills, so
    // connections wait for room while the doc keeps broadcasting to them. Nothing may stall,
    // nothing may be lost, nobody may be closed.
    use futures_util::{SinkExt, StreamExt};
    use yrs::{GetString, Text, Transact};

    const WRITERS: usize = 4;
    const EDITS: usize = 3_000;
    let server = TestServer::start_with(|config| {
        // A flood is what this test is about, not the rate limits.
        config.hub.limits.max_messages_per_second = 0;
        config.hub.limits.max_bytes_per_second = 0;
    })
    .await;
    let url = format!("ws://{}/ws/flood", server.addr);
    // Everyone joins (the server's sync step 1 has arrived) before anyone writes, so every
    // update is broadcast to all three others.
    let mut sockets = Vec::new();
    for _ in 0..WRITERS {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connects");
        let first = ws.next().await.expect("a frame").expect("a frame");
        let first = decode_frame(&first.into_data(), &Limits::default()).unwrap();
        assert!(matches!(first[0], Message::SyncStep1(_)));
        sockets.push(ws);
    }
    let mut tasks = Vec::new();
    for ws in sockets {
        let (mut sink, mut stream) = ws.split();
        let reader = async move {
            let mut updates = 0usize;
            while updates < (WRITERS - 1) * EDITS {
                match stream.next().await {
                    Some(Ok(WsMessage::Binary(frame))) => {
                        let messages = decode_frame(&frame, &Limits::default()).unwrap();
                        updates += messages
                            .iter()
                            .filter(|m| matches!(m, Message::Update(_)))
                            .count();
                    }
                    Some(Ok(WsMessage::Close(frame))) => return Err(format!("closed: {frame:?}")),
                    Some(Ok(_)) => {}
                    other => return Err(format!("stream ended: {other:?}")),
                }
            }
            Ok(updates)
        };
        let frames: Vec<Bytes> = {
            let doc = yrs::Doc::new();
            let text = doc.get_or_insert_text("t");
            (0..EDITS)
                .map(|i| {
                    let mut txn = doc.transact_mut();
                    text.insert(&mut txn, i as u32, "x");
                    encode_sync_update(&txn.encode_update_v1())
                })
                .collect()
        };
        let writer = async move {
            for frame in frames {
                sink.feed(WsMessage::Binary(frame)).await.expect("feed");
            }
            sink.flush().await.expect("flush");
            sink
        };
        tasks.push(futures_util::future::join(writer, reader));
    }
    let ends = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("every update arrives in time");
    let mut sinks = Vec::new();
    for (sink, received) in ends {
        assert_eq!(received, Ok((WRITERS - 1) * EDITS));
        sinks.push(sink);
    }
    // And the doc holds every edit.
    let doc = server.fetch_doc("flood").await;
    let text = doc.get_or_insert_text("t");
    assert_eq!(text.get_string(&doc.transact()).len(), WRITERS * EDITS);
    drop(sinks);
}

/// Starts the real binary with `--log-format format`, stops it with SIGTERM, and returns its
/// standard error (where the logs go).
async fn logs_of_a_run(format: &str) -> String {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let bin = tokio::task::spawn_blocking(tandem_tests::tandem_bin)
        .await
        .expect("building the binary");
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--port",
            "0",
            "--log",
            "info",
            "--log-format",
            format,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            if line.contains("http://") {
                return;
            }
        }
        panic!("tandem exited before listening");
    })
    .await
    .expect("tandem listens in time");
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tandem stops in time after SIGTERM")
        .expect("tandem output");
    assert!(output.status.success(), "a clean shutdown exits 0");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn json_logs_are_one_json_object_per_line_with_level_target_and_message() {
    let stderr = logs_of_a_run("json").await;
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.is_empty()).collect();
    let mut messages = Vec::new();
    for line in &lines {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("a log line is not JSON ({error}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(record[key].is_string(), "no {key} in {line}");
        }
        let message = record["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message in {line}"));
        messages.push(message.to_owned());
    }
    // Start-up and shutdown both logged, with their structured fields kept as JSON values.
    assert!(messages.iter().any(|m| m == "listening"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m == "shutdown complete"),
        "{messages:?}"
    );
    let shutdown = lines
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("checked above"))
        .find(|record| record["fields"]["message"] == "shutdown complete")
        .expect("checked above");
    assert_eq!(shutdown["fields"]["clean"], serde_json::Value::Bool(true));

    // The default format is for people: the same run logs lines that are not JSON.
    let pretty = logs_of_a_run("pretty").await;
    assert!(pretty.contains("listening"), "{pretty}");
    assert!(
        pretty
            .lines()
            .filter(|line| !line.is_empty())
            .all(|line| serde_json::from_str::<serde_json::Value>(line).is_err()),
        "{pretty}"
    );
}
