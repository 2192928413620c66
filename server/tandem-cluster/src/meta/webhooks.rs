//! Webhooks in Postgres: `tandem_webhooks` (registrations), `tandem_webhook_outbox` (deliveries
//! waiting for acknowledgement) and `tandem_webhook_log` (attempts). Removing a webhook removes
//! its outbox rows and log by `ON DELETE CASCADE`, in the same statement.
//!
//! # Claims
//!
//! Every node runs a delivery worker over the one outbox, and each delivery must be made by
//! one node only. [`WebhookTable::due_deliveries`] claims the rows it returns, in one
//! transaction: it selects due rows whose claim is absent or lapsed with `FOR UPDATE SKIP
//! LOCKED` (so two nodes asking at once never get the same row) and sets `claimed_by` to this
//! node and `claimed_until_ms` to now plus [`DELIVERY_CLAIM`]. Finishing the attempt clears the
//! claim (or deletes the row); a row claimed by a node that died becomes due again once its
//! claim lapses, and the worker of a live node wakes at that time (it is reported as the next
//! due time). A finish by a node whose claim lapsed and was taken over is not applied: the
//! other node's attempt decides (a receiver may then see the delivery twice, which the
//! delivery id lets it drop, as after a crash on one node).

use std::time::Duration;

use tandem_hub::clock::now_ms;
use tandem_store::meta::WebhookTable;
use tandem_store::{DeliveryAttempt, FinishedAttempt, OutboxDelivery, StoreError, WebhookRecord};

use super::{PgMeta, to_i64, to_u64, unavailable};

/// How long a claimed delivery belongs to the node that claimed it. It must outlast a whole
/// pass of the delivery worker, which finishes its attempts together: 256 deliveries, 8 at a
/// time, each within the attempt timeout (10 s by default) take at most 320 s.
pub(crate) const DELIVERY_CLAIM: Duration = Duration::from_secs(15 * 60);

const OUTBOX_COLUMNS: &str =
    "seq, delivery_id, webhook_id, event, body, created_ms, attempts, next_attempt_ms";

fn webhook_from_row(row: &tokio_postgres::Row) -> Result<WebhookRecord, StoreError> {
    Ok(WebhookRecord {
        id: row.try_get("id").map_err(unavailable)?,
        url: row.try_get("url").map_err(unavailable)?,
        events: row.try_get("events").map_err(unavailable)?,
        secret: row.try_get("secret").map_err(unavailable)?,
        docs: row.try_get("docs").map_err(unavailable)?,
        created_ms: to_u64(row.try_get("created_ms").map_err(unavailable)?),
    })
}

fn delivery_from_row(row: &tokio_postgres::Row) -> Result<OutboxDelivery, StoreError> {
    let attempts: i64 = row.try_get("attempts").map_err(unavailable)?;
    Ok(OutboxDelivery {
        seq: to_u64(row.try_get("seq").map_err(unavailable)?),
        delivery_id: row.try_get("delivery_id").map_err(unavailable)?,
        webhook_id: row.try_get("webhook_id").map_err(unavailable)?,
        event: row.try_get("event").map_err(unavailable)?,
        body: row.try_get("body").map_err(unavailable)?,
        created_ms: to_u64(row.try_get("created_ms").map_err(unavailable)?),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_ms: to_u64(row.try_get("next_attempt_ms").map_err(unavailable)?),
    })
}

fn attempt_from_row(row: &tokio_postgres::Row) -> Result<DeliveryAttempt, StoreError> {
    let status: Option<i32> = row.try_get("status").map_err(unavailable)?;
    Ok(DeliveryAttempt {
        delivery_id: row.try_get("delivery_id").map_err(unavailable)?,
        event: row.try_get("event").map_err(unavailable)?,
        at_ms: to_u64(row.try_get("at_ms").map_err(unavailable)?),
        status: status.and_then(|status| u16::try_from(status).ok()),
        error: row.try_get("error").map_err(unavailable)?,
        duration_ms: to_u64(row.try_get("duration_ms").map_err(unavailable)?),
        outcome: row.try_get("outcome").map_err(unavailable)?,
    })
}

impl WebhookTable for PgMeta {
    fn put_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO tandem_webhooks (id, url, events, secret, docs, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET
                         url = EXCLUDED.url, events = EXCLUDED.events, secret = EXCLUDED.secret,
                         docs = EXCLUDED.docs, created_ms = EXCLUDED.created_ms",
                    &[
                        &webhook.id,
                        &webhook.url,
                        &webhook.events,
                        &webhook.secret,
                        &webhook.docs,
                        &to_i64(webhook.created_ms),
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n_removed = client
                .execute("DELETE FROM tandem_webhooks WHERE id = $1", &[&id])
                .await
                .map_err(unavailable)?;
            Ok(n_removed > 0)
        })
    }

    fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, url, events, secret, docs, created_ms FROM tandem_webhooks
                     ORDER BY id",
                    &[],
                )
                .await
                .map_err(unavailable)?;
            rows.iter().map(webhook_from_row).collect()
        })
    }

    fn list_outbox(&self, limit: usize) -> Result<Vec<OutboxDelivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {OUTBOX_COLUMNS} FROM tandem_webhook_outbox
                         ORDER BY seq LIMIT $1"
                    ),
                    &[&limit],
                )
                .await
                .map_err(unavailable)?;
            rows.iter().map(delivery_from_row).collect()
        })
    }

    fn count_outbox(&self) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT count(*) FROM tandem_webhook_outbox", &[])
                .await
                .map_err(unavailable)?;
            let count: i64 = row.try_get(0).map_err(unavailable)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    /// Claims what it returns for this node (see the module's "Claims"). A row claimed by
    /// another node counts as due when its claim lapses.
    fn due_deliveries(
        &self,
        due_at_ms: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxDelivery>, Option<u64>), StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = now_ms();
        let claim_until = now.saturating_add(DELIVERY_CLAIM.as_millis() as u64);
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {OUTBOX_COLUMNS} FROM tandem_webhook_outbox
                         WHERE next_attempt_ms <= $1
                           AND (claimed_until_ms IS NULL OR claimed_until_ms <= $2)
                         ORDER BY seq LIMIT $3
                         FOR UPDATE SKIP LOCKED"
                    ),
                    &[&to_i64(due_at_ms), &to_i64(now), &limit],
                )
                .await
                .map_err(unavailable)?;
            let due = rows
                .iter()
                .map(delivery_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let seqs: Vec<i64> = due.iter().map(|delivery| to_i64(delivery.seq)).collect();
            if !seqs.is_empty() {
                tx.execute(
                    "UPDATE tandem_webhook_outbox SET claimed_by = $1, claimed_until_ms = $2
                     WHERE seq = ANY($3)",
                    &[&self.node.as_ref(), &to_i64(claim_until), &seqs],
                )
                .await
                .map_err(unavailable)?;
            }
            let next_due: Option<i64> = tx
                .query_one(
                    "SELECT min(CASE WHEN claimed_until_ms > $1
                                     THEN greatest(next_attempt_ms, claimed_until_ms)
                                     ELSE next_attempt_ms END)
                     FROM tandem_webhook_outbox WHERE NOT (seq = ANY($2))",
                    &[&to_i64(now), &seqs],
                )
                .await
                .map_err(unavailable)?
                .try_get(0)
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok((due, next_due.map(to_u64)))
        })
    }

    fn finish_attempt(
        &self,
        delivery: &OutboxDelivery,
        attempt: &DeliveryAttempt,
        next_attempt_ms: Option<u64>,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.finish_attempts(
            &[FinishedAttempt {
                delivery: delivery.clone(),
                attempt: Some(attempt.clone()),
                next_attempt_ms,
            }],
            keep,
        )
        .map(|_| ())
    }

    /// Applies only to rows this node claimed (or that nobody claimed), in seq order, so two
    /// nodes finishing at once lock rows in the same order.
    fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        keep: usize,
    ) -> Result<usize, StoreError> {
        if finished.is_empty() {
            return Ok(0);
        }
        let mut ordered: Vec<&FinishedAttempt> = finished.iter().collect();
        ordered.sort_by_key(|finished| finished.delivery.seq);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let mut n_changed = 0;
            let mut logged: Vec<&str> = Vec::new();
            for FinishedAttempt {
                delivery,
                attempt,
                next_attempt_ms,
            } in ordered
            {
                let seq = to_i64(delivery.seq);
                // A row that is gone was removed with its webhook (or finished by another
                // node): nothing to log, as in the store.
                let Some(row) = tx
                    .query_opt(
                        "SELECT claimed_by FROM tandem_webhook_outbox WHERE seq = $1
                         FOR UPDATE",
                        &[&seq],
                    )
                    .await
                    .map_err(unavailable)?
                else {
                    continue;
                };
                let claimed_by: Option<String> = row.try_get(0).map_err(unavailable)?;
                if claimed_by.is_some_and(|node| node != *self.node) {
                    // Our claim lapsed and another node took the delivery over.
                    continue;
                }
                let Some(attempt) = attempt else {
                    // Not attempted, yet its webhook exists: it stays for a later pass, free for
                    // any node.
                    tx.execute(
                        "UPDATE tandem_webhook_outbox
                         SET claimed_by = NULL, claimed_until_ms = NULL WHERE seq = $1",
                        &[&seq],
                    )
                    .await
                    .map_err(unavailable)?;
                    continue;
                };
                n_changed += 1;
                match next_attempt_ms {
                    Some(next_attempt_ms) => {
                        tx.execute(
                            "UPDATE tandem_webhook_outbox
                             SET attempts = $2, next_attempt_ms = $3,
                                 claimed_by = NULL, claimed_until_ms = NULL
                             WHERE seq = $1",
                            &[
                                &seq,
                                &i64::from(delivery.attempts.saturating_add(1)),
                                &to_i64(*next_attempt_ms),
                            ],
                        )
                        .await
                        .map_err(unavailable)?;
                    }
                    None => {
                        tx.execute("DELETE FROM tandem_webhook_outbox WHERE seq = $1", &[&seq])
                            .await
                            .map_err(unavailable)?;
                    }
                }
                tx.execute(
                    "INSERT INTO tandem_webhook_log (webhook_id, delivery_id, event, at_ms,
                         status, error, duration_ms, outcome)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &delivery.webhook_id,
                        &attempt.delivery_id,
                        &attempt.event,
                        &to_i64(attempt.at_ms),
                        &attempt.status.map(i32::from),
                        &attempt.error,
                        &to_i64(attempt.duration_ms),
                        &attempt.outcome,
                    ],
                )
                .await
                .map_err(unavailable)?;
                if !logged.contains(&delivery.webhook_id.as_str()) {
                    logged.push(&delivery.webhook_id);
                }
            }
            for webhook in logged {
                tx.execute(
                    "DELETE FROM tandem_webhook_log WHERE webhook_id = $1 AND seq NOT IN (
                         SELECT seq FROM tandem_webhook_log WHERE webhook_id = $1
                         ORDER BY seq DESC LIMIT $2)",
                    &[&webhook, &keep],
                )
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(n_changed)
        })
    }

    fn list_deliveries(&self, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT delivery_id, event, at_ms, status, error, duration_ms, outcome
                     FROM tandem_webhook_log WHERE webhook_id = $1 ORDER BY seq DESC",
                    &[&id],
                )
                .await
                .map_err(unavailable)?;
            rows.iter().map(attempt_from_row).collect()
        })
    }
}
