//! The activity feed in Postgres: `tandem_activity` (one row per entry), `tandem_activity_paths`
//! (the paths each entry is found under, the path and folder index) and the sequence
//! `tandem_activity_ids`, which every node draws its entries' ids from, so ids are unique across
//! nodes and never reused (pruning never rewinds a sequence). Deliveries queued with a batch go
//! to `tandem_webhook_outbox` (`webhooks.rs`) in the same transaction.
//!
//! Invariants (as `tandem_store::activity`): an entry and its path rows are written in one
//! transaction, and a delivery is queued only while its webhook exists: the webhook's row is
//! locked (`FOR KEY SHARE`) before the delivery is inserted, so a concurrent removal either
//! happened before (nothing is queued) or waits for this transaction and removes the delivery
//! with the webhook (`ON DELETE CASCADE`).

use tandem_store::meta::ActivityTable;
use tandem_store::{ActivityEntry, ActivityQuery, ActivityWrite, StoreError};

use super::{PgMeta, to_i64, to_u64, unavailable};

/// Entries of one path looked at when searching for an edit session to extend (as the store).
const MAX_SESSION_SEARCH: i64 = 256;
/// Entries removed by one `prune_activity` call (as the store).
const MAX_PRUNE: i64 = 10_000;
/// Rows read per query while filling a page.
const PAGE_CHUNK: usize = 256;

const ENTRY_COLUMNS: &str = "a.id, a.kind, a.path, a.other_paths, a.actor_sub, a.actor_name, \
                             a.started_ms, a.ended_ms, a.n_updates, a.details";

fn entry_from_row(row: &tokio_postgres::Row) -> Result<ActivityEntry, StoreError> {
    let get_u64 = |column: &str| -> Result<u64, StoreError> {
        Ok(to_u64(row.try_get::<_, i64>(column).map_err(unavailable)?))
    };
    Ok(ActivityEntry {
        id: get_u64("id")?,
        kind: row.try_get("kind").map_err(unavailable)?,
        path: row.try_get("path").map_err(unavailable)?,
        other_paths: row.try_get("other_paths").map_err(unavailable)?,
        actor_sub: row.try_get("actor_sub").map_err(unavailable)?,
        actor_name: row.try_get("actor_name").map_err(unavailable)?,
        started_ms: get_u64("started_ms")?,
        ended_ms: get_u64("ended_ms")?,
        n_updates: get_u64("n_updates")?,
        details: row.try_get("details").map_err(unavailable)?,
    })
}

/// `prefix` as a `LIKE` pattern matching the strings that start with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl ActivityTable for PgMeta {
    /// The value the sequence hands out next (a peek: another node may take it first).
    fn next_activity_id(&self) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END
                     FROM tandem_activity_ids",
                    &[],
                )
                .await
                .map_err(unavailable)?;
            Ok(to_u64(row.try_get(0).map_err(unavailable)?))
        })
    }

    /// One id per call, from the sequence: ids then follow the order in which the nodes record
    /// their events, so the feed (newest first, by id) stays in time order across nodes.
    fn reserve_activity_ids(&self) -> Result<std::ops::Range<u64>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT nextval('tandem_activity_ids')", &[])
                .await
                .map_err(unavailable)?;
            let id = to_u64(row.try_get(0).map_err(unavailable)?);
            Ok(id..id.saturating_add(1))
        })
    }

    /// `write.next_entry_id` is not needed: the sequence is the counter.
    fn write_activity(&self, write: &ActivityWrite) -> Result<Vec<u64>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            // An entry is extended whole by the node whose recorder holds its session. Two
            // nodes can hold the same session (one author editing one doc through both, each
            // adopting the stored entry): then the times only widen and the count only grows,
            // so a race under-counts updates at worst and never moves an entry back.
            for entry in &write.entries {
                let id = to_i64(entry.id);
                tx.execute(
                    "INSERT INTO tandem_activity (id, kind, path, other_paths, actor_sub,
                         actor_name, actor_id, started_ms, ended_ms, n_updates, details)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (id) DO UPDATE SET
                         kind = EXCLUDED.kind, actor_name = EXCLUDED.actor_name,
                         started_ms = least(tandem_activity.started_ms, EXCLUDED.started_ms),
                         ended_ms = greatest(tandem_activity.ended_ms, EXCLUDED.ended_ms),
                         n_updates = greatest(tandem_activity.n_updates, EXCLUDED.n_updates),
                         details = EXCLUDED.details",
                    &[
                        &id,
                        &entry.kind,
                        &entry.path,
                        &entry.other_paths,
                        &entry.actor_sub,
                        &entry.actor_name,
                        &entry.actor_id(),
                        &to_i64(entry.started_ms),
                        &to_i64(entry.ended_ms),
                        &to_i64(entry.n_updates),
                        &entry.details,
                    ],
                )
                .await
                .map_err(unavailable)?;
                // The paths of an entry never change once written.
                tx.execute(
                    "INSERT INTO tandem_activity_paths (path, id)
                     SELECT DISTINCT p, $2::bigint FROM unnest($1::text[]) AS p
                     ON CONFLICT DO NOTHING",
                    &[
                        &std::iter::once(entry.path.as_str())
                            .chain(entry.other_paths.iter().map(String::as_str))
                            .collect::<Vec<&str>>(),
                        &id,
                    ],
                )
                .await
                .map_err(unavailable)?;
            }
            let mut seqs = Vec::with_capacity(write.deliveries.len());
            for delivery in &write.deliveries {
                let webhook = tx
                    .query_opt(
                        "SELECT 1 FROM tandem_webhooks WHERE id = $1 FOR KEY SHARE",
                        &[&delivery.webhook_id],
                    )
                    .await
                    .map_err(unavailable)?;
                if webhook.is_none() {
                    continue;
                }
                let row = tx
                    .query_one(
                        "INSERT INTO tandem_webhook_outbox (delivery_id, webhook_id, event, body,
                             created_ms, attempts, next_attempt_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         RETURNING seq",
                        &[
                            &delivery.delivery_id,
                            &delivery.webhook_id,
                            &delivery.event,
                            &delivery.body,
                            &to_i64(delivery.created_ms),
                            &i64::from(delivery.attempts),
                            &to_i64(delivery.next_attempt_ms),
                        ],
                    )
                    .await
                    .map_err(unavailable)?;
                seqs.push(to_u64(row.try_get(0).map_err(unavailable)?));
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(seqs)
        })
    }

    fn latest_activity(
        &self,
        path: &str,
        kind: &str,
        actor: &str,
    ) -> Result<Option<ActivityEntry>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {ENTRY_COLUMNS}
                         FROM (SELECT id FROM tandem_activity_paths WHERE path = $1
                               ORDER BY id DESC LIMIT $4) AS p
                         JOIN tandem_activity a ON a.id = p.id
                         WHERE a.kind = $2 AND a.actor_id = $3
                         ORDER BY a.id DESC LIMIT 1"
                    ),
                    &[&path, &kind, &actor, &MAX_SESSION_SEARCH],
                )
                .await
                .map_err(unavailable)?;
            row.as_ref().map(entry_from_row).transpose()
        })
    }

    /// The filters run in the query; `max_scan` bounds the matching rows examined (the store
    /// counts index rows, a superset), and a page cut short by it still has a cursor.
    fn list_activity(
        &self,
        query: &ActivityQuery,
        visible: &mut dyn FnMut(&ActivityEntry) -> bool,
    ) -> Result<(Vec<ActivityEntry>, Option<u64>), StoreError> {
        let path = query.path.clone();
        let prefix = query.prefix.as_deref().map(like_prefix);
        let actor = query.actor.clone();
        let since = query.since_ms.map(to_i64);
        // Entries that started before this cannot have ended at `since` or later.
        let started_floor = query
            .since_ms
            .map_or(0, |since| to_i64(since.saturating_sub(query.max_span_ms)));
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM tandem_activity a
             WHERE a.id < $1
               AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM tandem_activity_paths p
                                                WHERE p.id = a.id AND p.path = $2))
               AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM tandem_activity_paths p
                                                WHERE p.id = a.id AND p.path LIKE $3))
               AND ($4::text IS NULL OR a.actor_id = $4)
               AND ($5::bigint IS NULL OR (a.ended_ms >= $5 AND a.started_ms >= $6))
             ORDER BY a.id DESC LIMIT $7"
        );
        let mut page = Vec::new();
        let mut last_scanned = None;
        let mut n_scanned = 0;
        let mut before = query.before_id.map_or(i64::MAX, to_i64);
        loop {
            let rows = self.block(async {
                let client = self.client().await?;
                client
                    .query(
                        &sql,
                        &[
                            &before,
                            &path,
                            &prefix,
                            &actor,
                            &since,
                            &started_floor,
                            &(PAGE_CHUNK as i64),
                        ],
                    )
                    .await
                    .map_err(unavailable)
            })?;
            let n_rows = rows.len();
            for row in &rows {
                let entry = entry_from_row(row)?;
                if n_scanned >= query.max_scan {
                    // The budget ran out: the caller continues from here.
                    return Ok((page, last_scanned));
                }
                n_scanned += 1;
                last_scanned = Some(entry.id);
                before = to_i64(entry.id);
                if !visible(&entry) {
                    continue;
                }
                if page.len() == query.limit {
                    // One more exists: the page is full and has a successor.
                    let next = page.last().map(|last: &ActivityEntry| last.id);
                    return Ok((page, next));
                }
                page.push(entry);
            }
            if n_rows < PAGE_CHUNK {
                return Ok((page, None));
            }
        }
    }

    fn prune_activity(&self, cutoff_ms: u64, max_span_ms: u64) -> Result<usize, StoreError> {
        self.block(async {
            let client = self.client().await?;
            // Path rows go with their entry (`ON DELETE CASCADE`). An entry that started long
            // enough after the cutoff cannot have ended before it; the index on `ended_ms`
            // finds the rest.
            let n_removed = client
                .execute(
                    "DELETE FROM tandem_activity WHERE id IN (
                         SELECT id FROM tandem_activity
                         WHERE ended_ms < $1 AND started_ms < $2
                         ORDER BY id LIMIT $3)",
                    &[
                        &to_i64(cutoff_ms),
                        &to_i64(cutoff_ms.saturating_add(max_span_ms)),
                        &MAX_PRUNE,
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(usize::try_from(n_removed).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_matches_itself_literally() {
        assert_eq!(like_prefix("team/"), "team/%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }
}
