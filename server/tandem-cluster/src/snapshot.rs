//! Snapshots in Postgres: loading a doc (snapshot plus the stream after it), compaction under a
//! fenced lease, and versions.
//!
//! # Loading
//! A load reads the doc's snapshot row (its bytes and the stream position it covers), then the
//! stream entries after that position, then the row's position again. If the position moved, a
//! compaction committed a newer snapshot meanwhile and may have trimmed entries the read
//! expected, so the load starts over. A compaction trims only after its snapshot has committed,
//! so a load that saw the same position before and after its stream read saw every entry after
//! it: no time margin is needed for loaders.
//!
//! # Compaction
//! A doc actor decides when (after `compact_after_updates` updates or bytes, its own and other
//! nodes' alike) and hands over its snapshot with the newest stream position it had applied.
//! Every node with the doc open may try; one at a time wins:
//! 1. wait until the updates the snapshot covers are durable (a refused one must not be in it);
//! 2. take a fencing token (`INCR tandem:fence:<doc>`) and the lease
//!    (`SET tandem:lease:<doc> <node>:<token> NX PX 30000`); without the lease, give up;
//! 3. write the snapshot row only if its position is newer than the stored one (a compactor
//!    whose lease expired while it was paused cannot overwrite a newer snapshot: the position
//!    is the fencing token, and unlike Redis's counter it survives Redis losing its data);
//! 4. only after that commit, trim the stream below the snapshot's position, keeping entries
//!    younger than `trim_margin` for nodes whose tail is a little behind;
//! 5. release the lease if it is still ours.
//!
//! A compactor that crashes at any step leaves at worst an expiring lease and an untrimmed
//! stream; the next compaction redoes the work.

use std::sync::Arc;
use std::time::Duration;

use tandem_core::DocId;
use tandem_hub::log::Durability;
use tandem_hub::{LoadFailure, LoadedLog};
use tandem_store::{HistoryHead, StoredDoc, VersionKind, VersionRecord};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{Shared, keys};

/// How long a compaction lease lasts if its holder never releases it.
const LEASE_MS: u64 = 30_000;
/// Stream entries read per `XRANGE` while loading.
const LOAD_CHUNK: usize = 10_000;
/// Loads that met a concurrent compaction start over at most this often.
const MAX_LOAD_ATTEMPTS: usize = 8;

fn failed(what: &str, error: impl std::fmt::Display) -> LoadFailure {
    LoadFailure::Failed(format!("{what}: {error}"))
}

/// The snapshot row's position, if the doc has one.
async fn snapshot_position(
    client: &deadpool_postgres::Client,
    doc: &DocId,
) -> Result<Option<(i64, i64)>, LoadFailure> {
    let row = client
        .query_opt(
            "SELECT position_ms, position_seq FROM tandem_docs WHERE name = $1",
            &[&doc.as_str()],
        )
        .await
        .map_err(|error| failed("reading a snapshot from postgres", error))?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Everything durable about `doc`: its snapshot and the stream after it.
pub(crate) async fn load(shared: &Shared, doc: &DocId) -> Result<LoadedLog, LoadFailure> {
    // A bounded number at a time (every open doc resyncs at once after Redis returns), so loads
    // never take all of the pool from appends' versions, compactions and the services.
    let _permit = shared
        .loads
        .acquire()
        .await
        .map_err(|error| failed("loading stopped", error))?;
    let client = shared
        .pg
        .get()
        .await
        .map_err(|error| failed("postgres unavailable", error))?;
    let stream = keys::doc_stream(doc);
    for _ in 0..MAX_LOAD_ATTEMPTS {
        let row = client
            .query_opt(
                "SELECT snapshot, position_ms, position_seq FROM tandem_docs WHERE name = $1",
                &[&doc.as_str()],
            )
            .await
            .map_err(|error| failed("reading a snapshot from postgres", error))?;
        let (snapshot, position) = match row {
            Some(row) => (
                Some(row.get::<_, Vec<u8>>(0)),
                Some((row.get::<_, i64>(1), row.get::<_, i64>(2))),
            ),
            None => (None, None),
        };
        let mut after = match position {
            Some((ms, seq)) => format!("{ms}-{seq}"),
            None => keys::STREAM_START.to_string(),
        };
        let mut updates = Vec::new();
        let mut redis = shared.redis.clone();
        loop {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(LOAD_CHUNK)
                .query_async(&mut redis)
                .await
                .map_err(|error| failed("reading a stream from redis", error))?;
            let n = reply.ids.len();
            for entry in reply.ids {
                if let Some(redis::Value::BulkString(update)) = entry.map.get("u") {
                    updates.push(update.clone());
                }
                after = entry.id;
            }
            if n < LOAD_CHUNK {
                break;
            }
        }
        if snapshot_position(&client, doc).await? != position {
            debug!(%doc, "a compaction committed during the load; loading again");
            continue;
        }
        let (last_version_id, n_named) = version_head(&client, doc).await?;
        return Ok(LoadedLog {
            stored: StoredDoc {
                snapshot,
                updates,
                last_seq: 0,
            },
            history: HistoryHead {
                last_version_id,
                ..HistoryHead::default()
            },
            n_named,
            position: Some(Arc::from(after)),
        });
    }
    Err(LoadFailure::Failed(
        "the doc kept being compacted while it loaded".into(),
    ))
}

/// The highest version id handed out for `doc` and how many named versions it has.
async fn version_head(
    client: &deadpool_postgres::Client,
    doc: &DocId,
) -> Result<(u64, u64), LoadFailure> {
    let row = client
        .query_one(
            "SELECT greatest(coalesce(max(id), 0), \
             (SELECT last_id FROM tandem_version_ids WHERE doc = $1)), \
             count(*) FILTER (WHERE kind = 'named') \
             FROM tandem_versions WHERE doc = $1",
            &[&doc.as_str()],
        )
        .await
        .map_err(|error| failed("reading versions from postgres", error))?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Whether `doc` was ever stored: it has a snapshot or a stream.
pub(crate) async fn exists(shared: &Shared, doc: &DocId) -> Result<bool, LoadFailure> {
    let mut redis = shared.redis.clone();
    let in_stream: bool = redis::cmd("EXISTS")
        .arg(keys::doc_stream(doc))
        .query_async(&mut redis)
        .await
        .map_err(|error| failed("redis unavailable", error))?;
    if in_stream {
        return Ok(true);
    }
    let client = shared
        .pg
        .get()
        .await
        .map_err(|error| failed("postgres unavailable", error))?;
    Ok(snapshot_position(&client, doc).await?.is_some())
}

/// Stores a version of `doc` and returns the id it was stored under; then, for an automatic
/// or a restore version, prunes the doc's oldest of that kind beyond `max_kept` (never the one
/// just stored), as the redb store does.
///
/// Ids are unique per doc across nodes: `tandem_version_ids` holds the highest id handed out,
/// and the version gets the actor's id if it is above that, else the next one. The counter's row
/// lock serialises two nodes storing versions of one doc; on one node the actor's ids are kept
/// as they are. The doc actor learns a changed id before it reports the version.
pub(crate) async fn store_version(
    shared: &Shared,
    doc: &DocId,
    record: &VersionRecord,
    state: &[u8],
    max_kept: u64,
) -> Result<u64, String> {
    let mut client = shared.pg.get().await.map_err(|error| error.to_string())?;
    let tx = client
        .transaction()
        .await
        .map_err(|error| error.to_string())?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO tandem_version_ids (doc, last_id) VALUES ($1, $2) \
             ON CONFLICT (doc) DO UPDATE \
             SET last_id = greatest(tandem_version_ids.last_id + 1, EXCLUDED.last_id) \
             RETURNING last_id",
            &[&doc.as_str(), &(record.id as i64)],
        )
        .await
        .map_err(|error| error.to_string())?
        .get(0);
    let kind = record.kind.as_str();
    let (author_subs, author_names): (Vec<Option<&str>>, Vec<&str>) = record
        .authors
        .iter()
        .map(|author| (author.sub.as_deref(), author.name.as_str()))
        .unzip();
    tx.execute(
        "INSERT INTO tandem_versions \
         (doc, id, node, kind, name, author_sub, author_name, created_ms, seq, size_bytes, \
          author_subs, author_names, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &doc.as_str(),
            &id,
            &shared.node.as_ref(),
            &kind,
            &record.name,
            &record.author.sub,
            &record.author.name,
            &(record.created_ms as i64),
            &(record.seq as i64),
            &(record.size_bytes as i64),
            &author_subs,
            &author_names,
            &state,
        ],
    )
    .await
    .map_err(|error| error.to_string())?;
    if record.kind != VersionKind::Named {
        let keep_older = max_kept.max(1) as i64 - 1;
        tx.execute(
            "DELETE FROM tandem_versions WHERE doc = $1 AND kind = $2 AND id < $3 AND id NOT IN \
             (SELECT id FROM tandem_versions WHERE doc = $1 AND kind = $2 AND id < $3 \
              ORDER BY id DESC LIMIT $4)",
            &[&doc.as_str(), &kind, &id, &keep_older],
        )
        .await
        .map_err(|error| error.to_string())?;
    }
    tx.commit().await.map_err(|error| error.to_string())?;
    Ok(id as u64)
}

/// Compacts `doc`'s stream into `snapshot` (see the module docs).
pub(crate) async fn compact(
    shared: &Shared,
    doc: DocId,
    upto_seq: u64,
    snapshot: Vec<u8>,
    position: Option<Arc<str>>,
    report: watch::Sender<Durability>,
) {
    // 1. The updates it covers are durable.
    let mut durable = report.subscribe();
    let covered = durable
        .wait_for(|d| d.durable_seq >= upto_seq || d.failed)
        .await
        .map(|d| !d.failed)
        .unwrap_or(false);
    drop(durable);
    drop(report);
    if !covered {
        return;
    }
    let Some((ms, seq)) = position.as_deref().and_then(keys::parse_stream_id) else {
        return;
    };
    if (ms, seq) == (0, 0) {
        return;
    }
    let mut redis = shared.redis.clone();
    // 2. A fencing token, then the lease.
    let fence: i64 = match redis::cmd("INCR")
        .arg(keys::compaction_fence(&doc))
        .query_async(&mut redis)
        .await
    {
        Ok(fence) => fence,
        Err(error) => {
            debug!(%doc, %error, "no compaction: redis unavailable");
            return;
        }
    };
    let token = format!("{}:{fence}", shared.node);
    let lease = keys::compaction_lease(&doc);
    let acquired: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(LEASE_MS)
        .query_async(&mut redis)
        .await
        .unwrap_or(None);
    if acquired.is_none() {
        debug!(%doc, "another node is compacting");
        return;
    }
    // 3. The snapshot, merged with the stored one, written only if its position is newer.
    let written = write_snapshot(shared, &doc, &snapshot, (ms, seq), fence).await;
    match written {
        Ok(Written::Newer { stored_had_more }) => {
            if stored_had_more {
                // The stored snapshot holds updates this doc lacks: usually the compacting
                // node's own appends after its snapshot's position, which the tail brings here
                // soon; or updates this node missed (its tail fell behind a trim). The
                // snapshot keeps them either way; the open doc reloads so that it shows them.
                info!(%doc, "the stored snapshot holds updates this node has not applied; resyncing the doc");
                crate::tail::resync(shared, &doc);
            }
            // 4. Trim, only now that the snapshot has committed; the margin is measured on
            // Redis's clock, the clock the stream ids come from.
            match redis_now_ms(&mut redis).await {
                Ok(now_ms) => {
                    let margin_ms = shared.config.trim_margin.as_millis() as u64;
                    let keep_from = now_ms.saturating_sub(margin_ms);
                    let min_id = if ms < keep_from {
                        // Everything up to and including the snapshot's position goes.
                        format!("{ms}-{}", seq + 1)
                    } else {
                        format!("{keep_from}-0")
                    };
                    let trimmed: redis::RedisResult<u64> = redis::cmd("XTRIM")
                        .arg(keys::doc_stream(&doc))
                        .arg("MINID")
                        .arg(&min_id)
                        .query_async(&mut redis)
                        .await;
                    match trimmed {
                        Ok(n) => {
                            info!(%doc, snapshot_bytes = snapshot.len(), trimmed = n, fence, "compacted")
                        }
                        Err(error) => {
                            warn!(%doc, %error, "snapshot stored but trimming failed; the next compaction trims")
                        }
                    }
                }
                Err(error) => {
                    warn!(%doc, %error, "snapshot stored but redis's clock unreadable; the next compaction trims")
                }
            }
        }
        Ok(Written::Older) => debug!(%doc, fence, "a newer snapshot is stored; nothing to do"),
        Err(error) => warn!(%doc, %error, "storing a snapshot in postgres failed"),
    }
    // 5. Release the lease if it is still ours.
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    );
    let _: redis::RedisResult<i64> = release
        .key(&lease)
        .arg(&token)
        .invoke_async(&mut redis)
        .await;
}

/// What [`write_snapshot`] did.
pub(crate) enum Written {
    /// The row now holds the new snapshot merged with the one it replaced.
    Newer {
        /// The replaced snapshot held insertions the new one lacked.
        stored_had_more: bool,
    },
    /// A snapshot at this position or a later one is stored; nothing was written.
    Older,
}

/// Stores `snapshot` as the doc's snapshot at stream position `(ms, seq)`, unless one at that
/// position or later is stored. The stream position is the fencing token that decides: a
/// snapshot holds everything up to its position, so only a newer position may replace it,
/// whoever writes it and however late (Redis's fence counter, which restarts if Redis loses its
/// data, only names the lease and is kept for diagnosis). The stored snapshot is merged into
/// the new one under the row's lock, so a replacement never drops what the stored one held,
/// even if the compacting node's tail had missed updates a trim removed.
async fn write_snapshot(
    shared: &Shared,
    doc: &DocId,
    snapshot: &[u8],
    (ms, seq): (u64, u64),
    fence: i64,
) -> Result<Written, String> {
    let mut client = tokio::time::timeout(Duration::from_secs(5), shared.pg.get())
        .await
        .map_err(|_| "postgres did not answer".to_string())?
        .map_err(|error| error.to_string())?;
    let tx = client
        .transaction()
        .await
        .map_err(|error| error.to_string())?;
    let stored = tx
        .query_opt(
            "SELECT snapshot, position_ms, position_seq FROM tandem_docs WHERE name = $1 FOR UPDATE",
            &[&doc.as_str()],
        )
        .await
        .map_err(|error| error.to_string())?;
    let (update, stored_had_more) = match stored {
        Some(row) => {
            let stored_position = (row.get::<_, i64>(1), row.get::<_, i64>(2));
            if stored_position >= (ms as i64, seq as i64) {
                return Ok(Written::Older);
            }
            let stored: Vec<u8> = row.get(0);
            let newer = snapshot.to_vec();
            // CPU work proportional to the doc: off the runtime.
            let merged =
                tokio::task::spawn_blocking(move || tandem_core::merge_snapshots(&stored, &newer))
                    .await
                    .map_err(|error| error.to_string())?
                    .map_err(|error| error.to_string())?;
            (merged.update, merged.stored_had_more)
        }
        None => (snapshot.to_vec(), false),
    };
    tx.execute(
        "INSERT INTO tandem_docs (name, snapshot, position_ms, position_seq, fence, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (name) DO UPDATE SET snapshot = EXCLUDED.snapshot, \
           position_ms = EXCLUDED.position_ms, position_seq = EXCLUDED.position_seq, \
           fence = EXCLUDED.fence, updated_ms = EXCLUDED.updated_ms, trimmed = false",
        &[
            &doc.as_str(),
            &update,
            &(ms as i64),
            &(seq as i64),
            &fence,
            &(tandem_hub::clock::now_ms() as i64),
        ],
    )
    .await
    .map_err(|error| error.to_string())?;
    tx.commit().await.map_err(|error| error.to_string())?;
    Ok(Written::Newer { stored_had_more })
}

/// Redis's own clock, in milliseconds: the clock stream ids are made from.
pub(crate) async fn redis_now_ms(
    redis: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<u64> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await?;
    Ok(seconds * 1000 + micros / 1000)
}
