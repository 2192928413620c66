//! The janitor: trims the streams of docs nobody is editing any more.
//!
//! A compaction trims its stream only below `now - trim_margin`, so the last edits of a doc stay
//! in Redis after its last node unloaded it, with no compaction to come. Every
//! [`JANITOR_EVERY`], each node claims the snapshot rows whose position is older than the margin
//! (on Redis's clock, the clock of stream ids) and not trimmed since (`UPDATE ... SET trimmed = true ... RETURNING`, so two nodes never claim
//! the same row) and trims each stream below its snapshot's position: every entry there is in
//! the snapshot, and older than the margin, which is exactly what a compaction would have
//! trimmed had it run that late. A compaction that writes a newer snapshot clears the mark.
//! A doc's stream then holds only what came after its last snapshot, and Redis's memory follows
//! the edits of the last minute rather than every doc ever edited.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{Shared, keys};

/// How often a node looks for streams to trim.
const JANITOR_EVERY: Duration = Duration::from_secs(30);
/// Most rows claimed per round.
const MAX_ROWS: i64 = 500;

/// The janitor's task.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let every = JANITOR_EVERY.min(shared.config.trim_margin.max(Duration::from_secs(1)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match sweep(&shared).await {
            Ok(0) => {}
            Ok(n) => info!(n_streams = n, "trimmed the streams of docs nobody edits"),
            Err(error) => debug!(%error, "janitor round skipped"),
        }
    }
}

/// One round: claims rows and trims their streams. Returns how many it trimmed.
async fn sweep(shared: &Shared) -> Result<usize, String> {
    let margin_ms = shared.config.trim_margin.as_millis() as i64;
    // Redis's clock, which stream ids (and so snapshot positions) come from.
    let mut redis = shared.redis.clone();
    let now_ms = crate::snapshot::redis_now_ms(&mut redis)
        .await
        .map_err(|error| error.to_string())?;
    let cutoff = now_ms as i64 - margin_ms;
    let client = shared.pg.get().await.map_err(|error| error.to_string())?;
    let rows = client
        .query(
            "UPDATE tandem_docs SET trimmed = true WHERE name IN ( \
               SELECT name FROM tandem_docs WHERE NOT trimmed AND position_ms < $1 \
               LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING name, position_ms, position_seq",
            &[&cutoff, &MAX_ROWS],
        )
        .await
        .map_err(|error| error.to_string())?;
    let mut n = 0;
    for row in rows {
        let name: String = row.get(0);
        let (ms, seq): (i64, i64) = (row.get(1), row.get(2));
        let Ok(doc) = tandem_core::DocId::new(&name) else {
            continue;
        };
        let trimmed: redis::RedisResult<u64> = redis::cmd("XTRIM")
            .arg(keys::doc_stream(&doc))
            .arg("MINID")
            .arg(format!("{ms}-{}", seq + 1))
            .query_async(&mut redis)
            .await;
        match trimmed {
            Ok(_) => n += 1,
            // The mark stays: a later compaction clears it, or the stream keeps a few entries.
            Err(error) => debug!(%doc, %error, "janitor could not trim a stream"),
        }
    }
    Ok(n)
}
