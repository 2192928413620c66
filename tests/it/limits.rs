//! Black-box tests of the per-connection rate limits and the per-document size limit.
//!
//! Each test trips one limit from one connection and checks the exact close code and reason on
//! that connection, then that nothing else noticed: the server answers, two other peers of the
//! same doc still sync with each other, and another doc's content is unchanged.

use bytes::Bytes;
use tandem_core::protocol::{encode_query_awareness, encode_sync_update};
use tandem_server::Config;
use tandem_tests::{Peer, TestServer, WAIT};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{GetString, Text, Transact};

/// The doc the offending connection uses.
const DOC: &str = "limits/shared";
/// Another doc, which must not notice anything.
const OTHER_DOC: &str = "limits/elsewhere";

/// Two well-behaved peers of [`DOC`] and the content of [`OTHER_DOC`], set up before an attack.
struct Bystanders {
    writer: Peer,
    reader: Peer,
}

impl Bystanders {
    async fn start(server: &TestServer) -> Bystanders {
        let mut writer = server.connect(DOC).await;
        let mut reader = server.connect(DOC).await;
        writer.append_text("before;").await;
        reader.wait_text(|t| t == "before;").await;
        let mut other = server.connect(OTHER_DOC).await;
        other.append_text("other doc").await;
        // A second peer seeing it proves it is stored (persist before broadcast).
        let mut other_reader = server.connect(OTHER_DOC).await;
        other_reader.wait_text(|t| t == "other doc").await;
        other.close().await;
        other_reader.close().await;
        Bystanders { writer, reader }
    }

    /// The server is up, the bystanders still sync, and the other doc is as it was.
    async fn assert_unaffected(&mut self, server: &TestServer) {
        let (status, _) = server.http_get("/healthz", "*/*").await;
        assert_eq!(status, 200, "the server answers");
        self.writer.append_text("after;").await;
        assert_eq!(
            self.reader.wait_text(|t| t.ends_with("after;")).await,
            "before;after;",
            "the other peers of the doc still sync"
        );
        assert_eq!(self.writer.closed, None);
        assert_eq!(self.reader.closed, None);
        let json = doc_json(server, OTHER_DOC).await;
        assert_eq!(json["t"], "other doc", "the other doc is unchanged");
    }
}

async fn doc_json(server: &TestServer, doc: &str) -> serde_json::Value {
    let (status, body) = server
        .http_get(&format!("/api/docs/{doc}"), "application/json")
        .await;
    assert_eq!(status, 200, "GET /api/docs/{doc}");
    serde_json::from_slice(&body).expect("json doc")
}

/// Appends `text` to the root text `bulk` of `peer`'s replica; returns the update frame (not sent).
fn bulk_append(peer: &Peer, text: &str) -> Bytes {
    let bulk = peer.doc.get_or_insert_text("bulk");
    let mut txn = peer.doc.transact_mut();
    let len = bulk.len(&txn);
    bulk.insert(&mut txn, len, text);
    encode_sync_update(&txn.encode_update_v1())
}

/// Sends `frame` followed by a query-awareness probe. The server answers the probe only after
/// the frame was handled (and made durable), so an answer means the frame was accepted and a
/// close means it was refused. Returns whether it was accepted.
async fn send_and_probe(peer: &mut Peer, frame: Bytes) -> bool {
    peer.send_ws(WsMessage::Binary(frame)).await;
    peer.send_ws(WsMessage::Binary(encode_query_awareness()))
        .await;
    tokio::time::timeout(WAIT, peer.next_frame())
        .await
        .expect("an answer or a close in time")
        .is_some()
}

async fn start(adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(adjust).await
}

#[tokio::test]
async fn a_message_flood_closes_only_its_connection_with_4429() {
    let server = start(|config| config.hub.limits.max_messages_per_second = 20).await;
    let mut bystanders = Bystanders::start(&server).await;
    let mut flooder = server.connect(DOC).await;
    // The burst is two seconds' worth (40); 200 messages in far less than 8 s exceed it.
    for _ in 0..200 {
        flooder
            .send_ws(WsMessage::Binary(encode_query_awareness()))
            .await;
    }
    assert_eq!(
        flooder.expect_close().await,
        (4429, "message rate limit exceeded".to_string())
    );
    bystanders.assert_unaffected(&server).await;
}

#[tokio::test]
async fn a_byte_flood_closes_only_its_connection_with_4429() {
    let server = start(|config| {
        config.hub.limits.max_frame_bytes = 16 * 1024;
        config.hub.limits.max_bytes_per_second = 32 * 1024;
    })
    .await;
    let mut bystanders = Bystanders::start(&server).await;
    let mut flooder = server.connect(DOC).await;
    // Each frame fits the frame limit; ten of them (80 KB) exceed the 32 KiB burst.
    for _ in 0..10 {
        let frame = bulk_append(&flooder, &"b".repeat(8 * 1024));
        flooder.send_ws(WsMessage::Binary(frame)).await;
    }
    assert_eq!(
        flooder.expect_close().await,
        (4429, "byte rate limit exceeded".to_string())
    );
    bystanders.assert_unaffected(&server).await;
}

#[tokio::test]
async fn an_awareness_flood_closes_only_its_connection_with_4429() {
    let server = start(|config| config.hub.limits.max_awareness_per_second = 5).await;
    let mut bystanders = Bystanders::start(&server).await;
    let mut flooder = server.connect(DOC).await;
    // The burst is 10; 40 cursor moves at once exceed it. Other messages are not limited here.
    for clock in 1..=40 {
        let state = format!(r#"{{"user":{{"name":"flood"}},"cursor":{clock}}}"#);
        flooder.send_awareness(4242, clock, &state).await;
    }
    assert_eq!(
        flooder.expect_close().await,
        (4429, "awareness rate limit exceeded".to_string())
    );
    bystanders.assert_unaffected(&server).await;
}

#[tokio::test]
async fn an_oversized_awareness_state_closes_only_its_connection_with_1009() {
    let server = start(|config| config.hub.limits.max_awareness_state_bytes = 1024).await;
    let mut bystanders = Bystanders::start(&server).await;
    let mut sender = server.connect(DOC).await;
    let padding = "n".repeat(2000 - r#"{"user":{"name":""}}"#.len());
    let state = format!(r#"{{"user":{{"name":"{padding}"}}}}"#);
    assert_eq!(state.len(), 2000);
    sender.send_awareness(77, 1, &state).await;
    assert_eq!(
        sender.expect_close().await,
        (
            1009,
            "awareness state too large: 2000 bytes, limit 1024".to_string()
        )
    );
    bystanders.assert_unaffected(&server).await;
}

/// The first big update fits; the second would take the doc past its limit, so it is refused
/// before it is applied: not applied, not stored, not relayed, and its sender closed with 1009.
#[tokio::test]
async fn an_update_past_the_doc_size_limit_is_refused_and_closes_only_its_sender() {
    let server = start(|config| config.hub.limits.max_doc_bytes = 16 * 1024).await;
    let mut bystanders = Bystanders::start(&server).await;
    let mut writer = server.connect(DOC).await;
    let first = "1".repeat(9 * 1024);
    let frame = bulk_append(&writer, &first);
    assert!(send_and_probe(&mut writer, frame).await);
    let refused = "2".repeat(9 * 1024);
    let frame = bulk_append(&writer, &refused);
    assert!(!send_and_probe(&mut writer, frame).await);
    assert_eq!(
        writer.closed,
        Some((1009, "document too large".to_string()))
    );

    // Stored and served: the first update only.
    let json = doc_json(&server, DOC).await;
    assert_eq!(json["bulk"], first.as_str());
    assert_eq!(json["t"], "before;");
    // Everything stored is within the limit.
    let (_, body) = server.http_get("/api/docs", "application/json").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let row = list["docs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == DOC)
        .expect("doc listed");
    assert!(row["size_bytes"].as_u64().unwrap() <= 16 * 1024, "{row}");
    bystanders.assert_unaffected(&server).await;
    // The reader has everything relayed before "after;": the first update, not the refused one.
    let reader = &bystanders.reader;
    let bulk = reader.doc.get_or_insert_text("bulk");
    assert_eq!(bulk.get_string(&reader.doc.transact()), first);
}

/// The HTTP write path keeps the same limit: 413 with a JSON error, and nothing changes.
#[tokio::test]
async fn an_http_update_past_the_doc_size_limit_is_refused_with_413() {
    let server = start(|config| config.hub.limits.max_doc_bytes = 16 * 1024).await;
    let mut bystanders = Bystanders::start(&server).await;
    let update = {
        use yrs::{ReadTxn, StateVector};
        let replica = yrs::Doc::new();
        let bulk = replica.get_or_insert_text("bulk");
        bulk.insert(&mut replica.transact_mut(), 0, &"h".repeat(20 * 1024));
        replica
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let response = server
        .request("POST", &format!("/api/docs/{DOC}/update"), &[], &update)
        .await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"], "doc_too_large");
    let json = doc_json(&server, DOC).await;
    assert_eq!(json, serde_json::json!({ "t": "before;" }));
    bystanders.assert_unaffected(&server).await;
}

/// A y-websocket client as a person drives it: one update per keystroke at 50/s, a cursor
/// awareness update with every fifth keystroke, for three seconds. The default limits must leave
/// it alone.
#[tokio::test]
async fn a_typist_at_50_updates_per_second_is_not_closed_by_the_default_limits() {
    let server = TestServer::start().await;
    let mut typist = server.connect(DOC).await;
    let mut reader = server.connect(DOC).await;
    typist
        .send_awareness(9, 1, r##"{"user":{"name":"typist","color":"#30bced"}}"##)
        .await;
    let mut expected = String::new();
    // Paces the workload like a person; nothing waits on it for synchronisation.
    let mut keystrokes = tokio::time::interval(std::time::Duration::from_millis(20));
    for i in 0..150u32 {
        keystrokes.tick().await;
        let key = char::from(b'a' + (i % 26) as u8).to_string();
        typist.append_text(&key).await;
        expected.push_str(&key);
        if i % 5 == 0 {
            let state =
                format!(r##"{{"user":{{"name":"typist","color":"#30bced"}},"cursor":{i}}}"##);
            typist.send_awareness(9, i + 2, &state).await;
        }
    }
    assert_eq!(reader.wait_text(|t| t == expected).await, expected);
    assert!(
        send_and_probe(&mut typist, encode_query_awareness()).await,
        "the typist was closed: {:?}",
        typist.closed
    );
    assert_eq!(typist.closed, None);
}
