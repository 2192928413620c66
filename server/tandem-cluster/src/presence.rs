//! Presence between nodes: pub/sub per doc, heartbeats, and removing a gone node's peers.
//!
//! Presence is never written to a stream: it changes at every cursor move and is worthless a
//! minute later. Each node checks its own connections' awareness exactly as on one node
//! (ownership, stamped identity) and publishes what it accepted on the doc's channel
//! (`tandem:presence:<doc>`); the other nodes with the doc open apply it under a pseudo-peer
//! standing for the sender node. A node that opens a doc subscribes, then asks the others for
//! their current states. Pub/sub may drop a message; clients renew their state every 15 s, so
//! a lost one heals.
//!
//! Every node renews its heartbeat key (`tandem:node:<id>`, expiring after
//! [`HEARTBEAT_TTL`]) every [`HEARTBEAT_EVERY`], and checks the keys of the nodes it has heard
//! from as often: when one is gone (killed, or cut off from Redis), its peers' presence is
//! removed from every open doc and the removal broadcast, within `HEARTBEAT_TTL` plus one check.
//!
//! A message is `[kind: u8][node id length: u8][node id][frame]`; kind 1 is an awareness frame
//! (a whole y-websocket awareness message), kind 2 a query (no frame), kind 3 a workspace event
//! (the server's JSON, on the one channel `tandem:events`, for every node's live streams).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tandem_core::DocId;
use tandem_hub::{Lifecycle, RemoteInput};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{ClusterError, Shared, keys};

/// Presence messages waiting to be published; beyond this they are dropped (best effort).
pub(crate) const OUTGOING_CAPACITY: usize = 4096;
/// How often a node renews its heartbeat and checks the others'.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// How long a heartbeat lives without renewal.
pub(crate) const HEARTBEAT_TTL: Duration = Duration::from_millis(3000);
/// Most messages published in one pipeline.
const MAX_PUBLISH_BATCH: usize = 256;

/// What a presence message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Awareness = 1,
    Query = 2,
    Event = 3,
}

/// A message to publish.
pub(crate) struct Outgoing {
    /// The doc whose channel it goes to; `None` for a workspace event.
    doc: Option<DocId>,
    kind: Kind,
    frame: Bytes,
}

/// Presence state shared by the node's tasks.
#[derive(Default)]
pub(crate) struct State {
    /// The docs whose channels the subscriber should be on. A std mutex: held briefly.
    wanted: Mutex<HashSet<DocId>>,
    /// Wakes the subscriber when `wanted` changes.
    wanted_changed: Notify,
    /// Other nodes heard from, whose heartbeats are checked.
    known: Mutex<HashSet<Arc<str>>>,
    /// Where workspace events from other nodes go (bounded; dropped when full).
    events: Mutex<Option<mpsc::Sender<Bytes>>>,
}

/// Workspace events from other nodes waiting for the server; beyond this they are dropped
/// (the live streams' clients resync on their next reconnect).
pub(crate) const EVENTS_CAPACITY: usize = 1024;

/// Publishes a workspace event to every other node (best effort, like presence).
pub(crate) fn publish_event(shared: &Shared, payload: Bytes) {
    let _ = shared.presence_tx.try_send(Outgoing {
        doc: None,
        kind: Kind::Event,
        frame: payload,
    });
}

/// The workspace events other nodes publish, from now on. One receiver per process.
pub(crate) fn subscribe_events(shared: &Shared) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(EVENTS_CAPACITY);
    *shared
        .presence
        .events
        .lock()
        .expect("presence lock poisoned") = Some(tx);
    rx
}

/// Starts the publisher, the subscriber and the heartbeat.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    outgoing: mpsc::Receiver<Outgoing>,
    lifecycle: &Lifecycle,
) -> Result<(), ClusterError> {
    // The first heartbeat before anything else, so that other nodes can check it at once.
    renew_heartbeat(&shared)
        .await
        .map_err(|source| ClusterError::Redis {
            url: crate::engine::redact(&shared.config.redis_url),
            source,
        })?;
    let cancel = lifecycle.cancel.clone();
    lifecycle.spawn(
        tracing::info_span!("cluster-publish"),
        run_publisher(shared.clone(), outgoing, cancel.clone()),
    );
    lifecycle.spawn(
        tracing::info_span!("cluster-subscribe"),
        run_subscriber(shared.clone(), cancel.clone()),
    );
    lifecycle.spawn(
        tracing::info_span!("cluster-heartbeat"),
        run_heartbeat(shared, cancel),
    );
    Ok(())
}

/// Queues a presence message for `doc` (dropped if the queue is full).
pub(crate) fn publish(shared: &Shared, doc: &DocId, kind: Kind, frame: Bytes) {
    let _ = shared.presence_tx.try_send(Outgoing {
        doc: Some(doc.clone()),
        kind,
        frame,
    });
}

/// Starts listening to `doc`'s presence (then asks the other nodes for theirs).
pub(crate) fn subscribe(shared: &Shared, doc: &DocId) {
    shared
        .presence
        .wanted
        .lock()
        .expect("presence lock poisoned")
        .insert(doc.clone());
    shared.presence.wanted_changed.notify_one();
}

/// Stops listening to `doc`'s presence.
pub(crate) fn unsubscribe(shared: &Shared, doc: &DocId) {
    shared
        .presence
        .wanted
        .lock()
        .expect("presence lock poisoned")
        .remove(doc);
    shared.presence.wanted_changed.notify_one();
}

/// Removes this node's heartbeat: the others drop its peers' presence at their next check.
pub(crate) async fn goodbye(shared: &Shared) {
    let mut redis = shared.redis.clone();
    let _: redis::RedisResult<i64> = redis::cmd("DEL")
        .arg(keys::node_heartbeat(&shared.node))
        .query_async(&mut redis)
        .await;
}

fn encode(node: &str, kind: Kind, frame: &[u8]) -> Bytes {
    let node = &node.as_bytes()[..node.len().min(255)];
    let mut message = BytesMut::with_capacity(2 + node.len() + frame.len());
    message.put_u8(kind as u8);
    message.put_u8(node.len() as u8);
    message.put_slice(node);
    message.put_slice(frame);
    message.freeze()
}

fn decode(message: &[u8]) -> Option<(Kind, &str, &[u8])> {
    let (&kind, rest) = message.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let (node, frame) = rest.split_at_checked(len as usize)?;
    let kind = match kind {
        1 => Kind::Awareness,
        2 => Kind::Query,
        3 => Kind::Event,
        _ => return None,
    };
    Some((kind, std::str::from_utf8(node).ok()?, frame))
}

async fn run_publisher(
    shared: Arc<Shared>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            first = outgoing.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        let mut pipe = redis::pipe();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(message) = next.take() {
            let channel = match &message.doc {
                Some(doc) => keys::presence_channel(doc),
                None => keys::EVENTS_CHANNEL.to_string(),
            };
            pipe.cmd("PUBLISH")
                .arg(channel)
                .arg(encode(&shared.node, message.kind, &message.frame).as_ref())
                .ignore();
            n += 1;
            if n >= MAX_PUBLISH_BATCH {
                break;
            }
            next = outgoing.try_recv().ok();
        }
        let mut redis = shared.redis.clone();
        if let Err(error) = pipe.query_async::<()>(&mut redis).await {
            debug!(%error, n, "publishing presence failed; it is renewed by the clients");
        }
    }
}

async fn run_subscriber(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let pubsub = match shared.client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                debug!(%error, "cannot reach redis for presence; retrying");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (mut sink, mut stream) = pubsub.split();
        if sink.subscribe(keys::EVENTS_CHANNEL).await.is_err() {
            continue;
        }
        let mut subscribed: HashSet<DocId> = HashSet::new();
        'connected: loop {
            // Bring the subscriptions in line with the docs open here.
            let wanted: HashSet<DocId> = shared
                .presence
                .wanted
                .lock()
                .expect("presence lock poisoned")
                .clone();
            for doc in wanted.difference(&subscribed).cloned().collect::<Vec<_>>() {
                if sink.subscribe(keys::presence_channel(&doc)).await.is_err() {
                    break 'connected;
                }
                // Subscribed: now the answers cannot be missed.
                publish(&shared, &doc, Kind::Query, Bytes::new());
                subscribed.insert(doc);
            }
            for doc in subscribed.difference(&wanted).cloned().collect::<Vec<_>>() {
                if sink
                    .unsubscribe(keys::presence_channel(&doc))
                    .await
                    .is_err()
                {
                    break 'connected;
                }
                subscribed.remove(&doc);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = shared.presence.wanted_changed.notified() => {}
                message = stream.next() => match message {
                    Some(message) => route(&shared, &message),
                    None => break 'connected,
                },
            }
        }
        warn!("lost the presence subscription; reconnecting");
    }
}

/// Hands a presence message to its doc's actor.
fn route(shared: &Shared, message: &redis::Msg) {
    let Some((kind, node, frame)) = decode(message.get_payload_bytes()) else {
        return;
    };
    if node == shared.node.as_ref() {
        return;
    }
    if kind == Kind::Event {
        let events = shared
            .presence
            .events
            .lock()
            .expect("presence lock poisoned");
        if let Some(events) = events.as_ref() {
            let _ = events.try_send(Bytes::copy_from_slice(frame));
        }
        return;
    }
    let Some(doc) = keys::doc_of_presence(message.get_channel_name()) else {
        return;
    };
    let node: Arc<str> = {
        let mut known = shared
            .presence
            .known
            .lock()
            .expect("presence lock poisoned");
        match known.get(node) {
            Some(node) => node.clone(),
            None => {
                let node: Arc<str> = Arc::from(node);
                known.insert(node.clone());
                node
            }
        }
    };
    let input = match kind {
        Kind::Awareness => RemoteInput::Awareness {
            node,
            frame: Bytes::copy_from_slice(frame),
        },
        Kind::Query => RemoteInput::PresenceQuery,
        Kind::Event => return,
    };
    let Ok(doc) = DocId::new(doc) else {
        return;
    };
    let follows = shared.follows.lock().expect("follows lock poisoned");
    if let Some(follow) = follows.get(&doc) {
        // Best effort: a doc too busy to take presence gets the next renewal.
        let _ = follow.feed.tx.try_send(input);
    }
}

async fn renew_heartbeat(shared: &Shared) -> redis::RedisResult<()> {
    let mut redis = shared.redis.clone();
    redis::cmd("SET")
        .arg(keys::node_heartbeat(&shared.node))
        .arg(tandem_hub::clock::now_ms())
        .arg("PX")
        .arg(HEARTBEAT_TTL.as_millis() as u64)
        .query_async(&mut redis)
        .await
}

async fn run_heartbeat(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(error) = renew_heartbeat(&shared).await {
            debug!(%error, "cannot renew the heartbeat");
            continue;
        }
        let known: Vec<Arc<str>> = shared
            .presence
            .known
            .lock()
            .expect("presence lock poisoned")
            .iter()
            .cloned()
            .collect();
        if known.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for node in &known {
            pipe.cmd("EXISTS").arg(keys::node_heartbeat(node));
        }
        let mut redis = shared.redis.clone();
        let alive: Vec<bool> = match pipe.query_async(&mut redis).await {
            Ok(alive) => alive,
            Err(error) => {
                debug!(%error, "cannot check other nodes' heartbeats");
                continue;
            }
        };
        for (node, alive) in known.into_iter().zip(alive) {
            if alive {
                continue;
            }
            shared
                .presence
                .known
                .lock()
                .expect("presence lock poisoned")
                .remove(&node);
            info!(%node, "a node is gone; removing its peers' presence");
            let follows = shared.follows.lock().expect("follows lock poisoned");
            for follow in follows.values() {
                let _ = follow
                    .feed
                    .tx
                    .try_send(RemoteInput::NodeGone { node: node.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let message = encode("0123456789abcdef", Kind::Awareness, b"\x01\x02");
        assert_eq!(
            decode(&message),
            Some((Kind::Awareness, "0123456789abcdef", &b"\x01\x02"[..]))
        );
        let query = encode("n", Kind::Query, b"");
        assert_eq!(decode(&query), Some((Kind::Query, "n", &b""[..])));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x01\x09short"), None);
        assert_eq!(decode(b"\x07\x00"), None);
    }
}
