//! The tail: one blocking `XREAD` loop per node over the streams of every doc it has open.
//!
//! Each round reads, for every followed doc, the entries after the position it last read, and
//! hands each doc one [`RemoteInput::Updates`] with the entries other nodes appended (this
//! node's own are skipped: its actor applied them before appending) and the newest position,
//! which the doc's compactions use. The read also names this node's wake stream, to which
//! [`run_waker`] appends when the set of docs changes, so a newly opened doc is followed at once
//! rather than at the end of the block.
//!
//! A doc's feed is bounded: when it is full, the tail stops following the doc and asks its
//! actor to resync (reload from the log, merge, follow again), exactly as a slow peer is closed
//! rather than skipped. When Redis is unreachable the tail retries with a growing pause; once it
//! is back, every followed doc resyncs, because a compaction elsewhere may have trimmed entries
//! it had not read yet. So do they when the tail itself went longer than half the trim margin
//! without a round (a frozen process, a stalled connection): compactions keep entries that
//! young, so a tail that reads at least that often reads every entry before it can be trimmed.
//! (A snapshot written by a node that missed entries anyway loses nothing: compaction merges
//! the stored snapshot into it, and resyncs that node's doc; see `snapshot.rs`.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tandem_core::DocId;
use tandem_hub::RemoteInput;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{Shared, keys};

/// How long one `XREAD` blocks when nothing arrives.
const BLOCK: Duration = Duration::from_millis(2000);
/// Most entries read per stream per round.
const COUNT: usize = 1000;
/// The longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The tail's task.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let wake_key = keys::node_wake(&shared.node);
    let mut wake_position = keys::STREAM_START.to_string();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut lost = false;
    let mut backoff = Duration::from_millis(50);
    let stall = (shared.config.trim_margin / 2).max(BLOCK * 3);
    let mut last_round = std::time::Instant::now();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let mut connection = match conn.take() {
            Some(connection) => connection,
            None => match connect(&shared).await {
                Ok(connection) => connection,
                Err(error) => {
                    if !lost {
                        warn!(%error, "cannot reach redis to follow docs; retrying");
                    }
                    lost = true;
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        // The docs to read, with where each was, and the epoch of its follow.
        let targets: Vec<(DocId, String, Arc<str>, u64)> = {
            let follows = shared.follows.lock().expect("follows lock poisoned");
            follows
                .iter()
                .map(|(doc, follow)| {
                    (
                        doc.clone(),
                        keys::doc_stream(doc),
                        follow.position.clone(),
                        follow.epoch,
                    )
                })
                .collect()
        };
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (_, key, _, _) in &targets {
            command.arg(key);
        }
        command.arg(&wake_key);
        for (_, _, position, _) in &targets {
            command.arg(position.as_ref());
        }
        command.arg(&wake_position);
        let reply: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
            () = cancel.cancelled() => break,
            reply = command.query_async(&mut connection) => reply,
        };
        let reply = match reply {
            Ok(reply) => reply,
            // Redis answered with an error about the command (one key holds something that is
            // not a stream): find the key and stop following its doc, so that one damaged doc
            // never stops the fan-out of every other doc on this node.
            Err(error) if error.code().is_some() => {
                let keys: Vec<&str> = targets.iter().map(|(_, key, _, _)| key.as_str()).collect();
                let bad = not_streams(&mut connection, &keys).await;
                conn = Some(connection);
                if bad.is_empty() {
                    warn!(%error, "reading streams from redis failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    for (doc, key, _, _) in
                        targets.iter().filter(|(_, key, _, _)| bad.contains(key))
                    {
                        error!(%doc, key, "the doc's stream is not a stream; no longer following it");
                        evict(&shared, doc);
                    }
                }
                continue;
            }
            Err(error) => {
                if !lost {
                    warn!(%error, "reading streams from redis failed; retrying");
                }
                lost = true;
                // Also while Redis loads its append-only file after a restart: no hot loop.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        conn = Some(connection);
        backoff = Duration::from_millis(50);
        let stalled = last_round.elapsed() > stall;
        last_round = std::time::Instant::now();
        if lost || stalled {
            if stalled && !lost {
                warn!(
                    stalled_ms = stall.as_millis() as u64,
                    "the tail went too long without reading; docs resync"
                );
            }
            lost = false;
            resync_all(&shared);
            continue;
        }
        let Some(reply) = reply else {
            continue;
        };
        for stream in reply.keys {
            if stream.key == wake_key {
                if let Some(last) = stream.ids.last() {
                    wake_position = last.id.clone();
                }
                continue;
            }
            let Some(name) = keys::doc_of_stream(&stream.key) else {
                continue;
            };
            let Some((doc, _, _, epoch)) = targets.iter().find(|(doc, ..)| doc.as_str() == name)
            else {
                continue;
            };
            let Some(last) = stream
                .ids
                .last()
                .map(|entry| Arc::<str>::from(entry.id.as_str()))
            else {
                continue;
            };
            let updates: Vec<Bytes> = stream
                .ids
                .iter()
                .filter(|entry| !is_from(entry, &shared.node))
                .filter_map(|entry| match entry.map.get("u") {
                    Some(redis::Value::BulkString(update)) => Some(Bytes::from(update.clone())),
                    _ => None,
                })
                .collect();
            deliver(&shared, doc, *epoch, updates, last);
        }
    }
    debug!("tail stopped");
}

/// Whether a stream entry was appended by `node`.
fn is_from(entry: &redis::streams::StreamId, node: &str) -> bool {
    matches!(entry.map.get("n"), Some(redis::Value::BulkString(n)) if n.as_slice() == node.as_bytes())
}

/// Hands a doc what was read for it, unless it was re-followed meanwhile.
fn deliver(shared: &Shared, doc: &DocId, epoch: u64, updates: Vec<Bytes>, position: Arc<str>) {
    let mut follows = shared.follows.lock().expect("follows lock poisoned");
    let Some(follow) = follows.get_mut(doc) else {
        return;
    };
    if follow.epoch != epoch {
        return;
    }
    follow.position = position.clone();
    match follow
        .feed
        .tx
        .try_send(RemoteInput::Updates { updates, position })
    {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            warn!(%doc, "doc is behind the log; it resyncs");
            let feed = follows.remove(doc).map(|follow| follow.feed);
            drop(follows);
            if let Some(feed) = feed {
                feed.resync.notify_one();
            }
        }
        Err(TrySendError::Closed(_)) => {
            follows.remove(doc);
            drop(follows);
            crate::presence::unsubscribe(shared, doc);
        }
    }
}

/// The keys of `keys` that hold something other than a stream (a missing key is fine: a doc
/// not written yet).
async fn not_streams(connection: &mut MultiplexedConnection, keys: &[&str]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("TYPE").arg(*key);
    }
    let types: Vec<String> = match pipe.query_async(connection).await {
        Ok(types) => types,
        Err(_) => return Vec::new(),
    };
    keys.iter()
        .zip(types)
        .filter(|(_, kind)| kind != "stream" && kind != "none")
        .map(|(key, _)| (*key).to_owned())
        .collect()
}

/// Stops following `doc` and asks its actor to resync: its load fails while the key is bad,
/// and the actor refuses its peers (1013) rather than serve a doc it cannot store.
fn evict(shared: &Shared, doc: &DocId) {
    let feed = shared
        .follows
        .lock()
        .expect("follows lock poisoned")
        .remove(doc)
        .map(|follow| follow.feed);
    if let Some(feed) = feed {
        feed.resync.notify_one();
    }
    crate::presence::unsubscribe(shared, doc);
}

/// Asks `doc`'s actor to reload and merge what is durable (it missed updates).
pub(crate) fn resync(shared: &Shared, doc: &DocId) {
    let follows = shared.follows.lock().expect("follows lock poisoned");
    if let Some(follow) = follows.get(doc) {
        follow.feed.resync.notify_one();
    }
}

/// After Redis was unreachable: every followed doc reloads and merges what is durable.
fn resync_all(shared: &Shared) {
    let follows = shared.follows.lock().expect("follows lock poisoned");
    for follow in follows.values() {
        follow.feed.resync.notify_one();
    }
    debug!(n_docs = follows.len(), "redis is back; docs resync");
}

async fn connect(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    // Its own connection: a blocked XREAD holds up every later command on its connection.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(BLOCK + crate::engine::REDIS_RESPONSE_TIMEOUT));
    shared
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Appends to this node's wake stream whenever the set of followed docs changes, which ends the
/// tail's blocked read so that the next one includes the change.
pub(crate) async fn run_waker(shared: Arc<Shared>, cancel: CancellationToken) {
    let key = keys::node_wake(&shared.node);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.follows_changed.notified() => {}
        }
        let mut redis = shared.redis.clone();
        let res: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(16)
            .arg("*")
            .arg("w")
            .arg(1)
            .query_async(&mut redis)
            .await;
        if let Err(error) = res {
            debug!(%error, "cannot wake the tail; it picks the change up within its block");
        }
    }
    let mut redis = shared.redis.clone();
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut redis).await;
}
