//! The hub on its own, without HTTP: connections run over in-memory duplex streams, with a
//! temporary redb store and a sink that records the hub's events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem_core::protocol::{decode_frame, encode_sync_step1, encode_sync_update};
use tandem_core::{DocId, Limits, Message, PeerAccess};
use tandem_hub::connection::{self, ConnectionConfig};
use tandem_hub::persist::{self, Writer};
use tandem_hub::{DocEvent, DocEventSink, Hub, HubConfig, Lifecycle, PeerAddr, PeerGrant};
use tandem_store::Store;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::Role;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

/// Longest wait for anything the hub should do at once.
const WAIT: Duration = Duration::from_secs(10);

/// Forwards every event to the test, in the order the hub published them.
struct Recorder(mpsc::UnboundedSender<DocEvent>);

impl DocEventSink for Recorder {
    fn publish(&self, event: DocEvent) {
        let _ = self.0.send(event);
    }
}

struct TestHub {
    hub: Hub,
    writer: Writer,
    lifecycle: Lifecycle,
    events: mpsc::UnboundedReceiver<DocEvent>,
    _dir: tempfile::TempDir,
}

impl TestHub {
    fn start(config: HubConfig) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("hub.redb")).unwrap());
        let writer = persist::spawn_writer(
            store.clone(),
            persist::PersistConfig {
                fsync: false,
                cache_bytes: 1 << 20,
                commit_interval: Duration::ZERO,
                reserve_bytes: 0,
            },
        )
        .unwrap();
        let lifecycle = Lifecycle::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let hub = Hub::new(
            Arc::new(tandem_hub::RedbLog::new(store, writer.clone())),
            config,
            lifecycle.clone(),
            Arc::new(Recorder(events_tx)),
        );
        TestHub {
            hub,
            writer,
            lifecycle,
            events,
            _dir: dir,
        }
    }

    /// A writer peer connected to `doc` over an in-memory stream, served by the hub's
    /// connection task; returns the client's end.
    async fn connect(&self, doc: &str) -> WebSocketStream<DuplexStream> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let grant = PeerGrant {
            access: PeerAccess::anonymous_writer(),
            expires_at: None,
            role: "Write",
        };
        let remote = PeerAddr {
            ip: [127, 0, 0, 1].into(),
            proxy: None,
        };
        let config = ConnectionConfig {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(60),
            max_docs_per_socket: 64,
        };
        self.lifecycle.spawn(
            tracing::Span::none(),
            connection::run(
                server,
                DocId::new(doc).unwrap(),
                grant,
                self.hub.clone(),
                config,
                remote,
                (),
            ),
        );
        WebSocketStream::from_raw_socket(client_io, Role::Client, None).await
    }

    /// The next event the hub published that `pick` accepts.
    async fn event<T>(&mut self, mut pick: impl FnMut(DocEvent) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.events.recv().await.expect("the hub is running");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        })
        .await
        .expect("the event comes")
    }

    async fn shutdown(self) {
        self.lifecycle.cancel.cancel();
        self.lifecycle.tracker.close();
        tokio::time::timeout(WAIT, self.lifecycle.tracker.wait())
            .await
            .expect("every task ends");
        drop(self.hub);
        self.writer.close(WAIT).await;
    }
}

/// The next message from the server that `pick` accepts, skipping the others.
async fn next_message<T>(
    client: &mut WebSocketStream<DuplexStream>,
    mut pick: impl FnMut(Message) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let frame = match client.next().await {
                Some(Ok(WsMessage::Binary(frame))) => frame,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            };
            let messages = decode_frame(&frame, &Limits::default()).unwrap();
            for message in messages {
                if let Some(found) = pick(message) {
                    return found;
                }
            }
        }
    })
    .await
    .expect("the message comes")
}

/// Sends sync step 1 with an empty state vector and returns the server's step 2 update.
async fn sync(client: &mut WebSocketStream<DuplexStream>) -> Bytes {
    let step1 = encode_sync_step1(&StateVector::default());
    client.send(WsMessage::Binary(step1)).await.unwrap();
    next_message(client, |message| match message {
        Message::SyncStep2(payload) => Some(payload.raw),
        _ => None,
    })
    .await
}

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    text.get_string(&doc.transact())
}

#[tokio::test]
async fn an_update_reaches_the_other_peer_and_is_reported() {
    let mut hub = TestHub::start(HubConfig {
        doc_changed_interval: Duration::from_millis(10),
        ..HubConfig::default()
    });
    let mut alice = hub.connect("notes").await;
    assert_eq!(text_of(&sync(&mut alice).await), "");
    let mut bob = hub.connect("notes").await;
    sync(&mut bob).await;
    hub.event(|event| match event {
        DocEvent::Presence { doc, peers: 2 } if doc == "notes" => Some(()),
        _ => None,
    })
    .await;

    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "hello");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    alice
        .send(WsMessage::Binary(encode_sync_update(&update)))
        .await
        .unwrap();

    let relayed = next_message(&mut bob, |message| match message {
        Message::Update(payload) => Some(payload.raw),
        _ => None,
    })
    .await;
    assert_eq!(&relayed[..], &update[..]);
    let (n_updates, name) = hub
        .event(|event| match event {
            DocEvent::Changed {
                doc,
                n_updates,
                actor,
                ..
            } if doc == "notes" => Some((n_updates, actor.name)),
            _ => None,
        })
        .await;
    assert_eq!((n_updates, name.as_str()), (1, "peer 1"));

    // A third peer syncs the durable state.
    let mut carol = hub.connect("notes").await;
    assert_eq!(text_of(&sync(&mut carol).await), "hello");
    hub.shutdown().await;
}
