//! Webhooks: registrations, the durable outbox of deliveries and the delivery log.
//!
//! A delivery is written to the outbox (by `Store::write_activity`, in the same transaction as
//! the activity it reports) before anything tries to send it, and it leaves the outbox only
//! when an attempt was acknowledged, the server gave up on it, or its webhook is gone
//! ([`Store::finish_attempts`], one transaction per pass of the delivery worker).
//! So a crash between the two repeats an attempt but never loses a delivery; receivers drop
//! repeats by the delivery id, which is fixed when the delivery is queued.
//!
//! Invariant: each webhook's log holds at most the `keep` newest attempts given to
//! `finish_attempts`; removing a webhook removes its outbox rows and its log, and no delivery
//! to a removed webhook is queued afterwards (`write_activity` checks, in its transaction).

use redb::{ReadableDatabase, ReadableTable, TableHandle};

use crate::Store;
use crate::checksum::{self, unseal_entry};
use crate::error::StoreError;
use crate::record::{Reader, put_opt_str, put_str, put_u32};
use crate::schema::{ACTIVITY_COUNTERS, NEXT_LOG_SEQ, WEBHOOK_LOG, WEBHOOK_OUTBOX, WEBHOOKS};
use crate::space::WriteKind;

/// The version byte at the start of every encoded record of this module.
const RECORD_VERSION: u8 = 1;

/// One registered webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Its id (the key).
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event names it receives.
    pub events: Vec<String>,
    /// The HMAC key of the signatures.
    pub secret: String,
    /// A doc/file pattern (`*` wildcards); only events about a matching path are delivered.
    pub docs: Option<String>,
    /// When it was registered, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A delivery waiting for acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDelivery {
    /// Its position in the outbox (the key), assigned when queued.
    pub seq: u64,
    /// The idempotency id, the same on every attempt.
    pub delivery_id: String,
    /// The webhook it goes to.
    pub webhook_id: String,
    /// The event name.
    pub event: String,
    /// The JSON body, exactly as sent (and signed).
    pub body: String,
    /// When it was queued, ms.
    pub created_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not to be attempted before this time, ms.
    pub next_attempt_ms: u64,
}

/// What became of one delivery in a pass of the delivery worker ([`Store::finish_attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedAttempt {
    /// The delivery, as read from the outbox.
    pub delivery: OutboxDelivery,
    /// The attempt to log; `None` when none was made (its webhook is gone).
    pub attempt: Option<DeliveryAttempt>,
    /// When to try again; `None` removes it from the outbox (acknowledged or given up).
    pub next_attempt_ms: Option<u64>,
}

/// One attempt at a delivery, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The delivery's idempotency id.
    pub delivery_id: String,
    /// The event name.
    pub event: String,
    /// When the attempt started, ms.
    pub at_ms: u64,
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Why no status: connection refused, timeout, ...
    pub error: Option<String>,
    /// How long the attempt took, ms.
    pub duration_ms: u64,
    /// `delivered`, `retry` or `failed` (given up).
    pub outcome: String,
}

impl WebhookRecord {
    /// Version 1: `u8 1`, `url`, `u32 n` and `n` event names, `u8 has_docs` and the pattern,
    /// `secret`, `u64 created_ms`. Strings as in `activity.rs`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        put_str(&mut out, &self.url);
        put_u32(&mut out, self.events.len());
        for event in &self.events {
            put_str(&mut out, event);
        }
        put_opt_str(&mut out, self.docs.as_deref());
        put_str(&mut out, &self.secret);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<WebhookRecord, StoreError> {
        let mut reader = versioned(bytes, "webhooks", id)?;
        let decoded = (|| {
            let url = reader.string()?;
            let n = reader.u32()?;
            let mut events = Vec::new();
            for _ in 0..n {
                events.push(reader.string()?);
            }
            let record = WebhookRecord {
                id: id.to_owned(),
                url,
                events,
                docs: reader.opt_string()?,
                secret: reader.string()?,
                created_ms: reader.u64()?,
            };
            reader.is_empty().then_some(record)
        })();
        decoded.ok_or_else(|| truncated("webhooks", id))
    }
}

impl OutboxDelivery {
    /// Version 1: `u8 1`, `delivery_id`, `webhook_id`, `event`, `body`, `u64 created_ms`,
    /// `u32 attempts`, `u64 next_attempt_ms`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        put_str(&mut out, &self.delivery_id);
        put_str(&mut out, &self.webhook_id);
        put_str(&mut out, &self.event);
        put_str(&mut out, &self.body);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&self.next_attempt_ms.to_le_bytes());
        out
    }

    fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxDelivery, StoreError> {
        let key = seq.to_string();
        let mut reader = versioned(bytes, "webhook_outbox", &key)?;
        let decoded = (|| {
            let delivery = OutboxDelivery {
                seq,
                delivery_id: reader.string()?,
                webhook_id: reader.string()?,
                event: reader.string()?,
                body: reader.string()?,
                created_ms: reader.u64()?,
                attempts: reader.u32()?,
                next_attempt_ms: reader.u64()?,
            };
            reader.is_empty().then_some(delivery)
        })();
        decoded.ok_or_else(|| truncated("webhook_outbox", &key))
    }
}

impl DeliveryAttempt {
    /// Version 1: `u8 1`, `delivery_id`, `event`, `u64 at_ms`, `u16 status` (0: none),
    /// `u8 has_error` and the error, `u64 duration_ms`, `outcome`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        put_str(&mut out, &self.delivery_id);
        put_str(&mut out, &self.event);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&self.status.unwrap_or(0).to_le_bytes());
        put_opt_str(&mut out, self.error.as_deref());
        out.extend_from_slice(&self.duration_ms.to_le_bytes());
        put_str(&mut out, &self.outcome);
        out
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<DeliveryAttempt, StoreError> {
        let mut reader = versioned(bytes, "webhook_log", key)?;
        let decoded = (|| {
            let delivery_id = reader.string()?;
            let event = reader.string()?;
            let at_ms = reader.u64()?;
            let status = reader.u8().zip(reader.u8())?;
            let status = u16::from_le_bytes([status.0, status.1]);
            let attempt = DeliveryAttempt {
                delivery_id,
                event,
                at_ms,
                status: (status != 0).then_some(status),
                error: reader.opt_string()?,
                duration_ms: reader.u64()?,
                outcome: reader.string()?,
            };
            reader.is_empty().then_some(attempt)
        })();
        decoded.ok_or_else(|| truncated("webhook_log", key))
    }
}

fn versioned<'a>(
    bytes: &'a [u8],
    table: &'static str,
    key: &str,
) -> Result<Reader<'a>, StoreError> {
    let mut reader = Reader::new(bytes);
    match reader.u8() {
        Some(RECORD_VERSION) => Ok(reader),
        Some(version) => Err(StoreError::CorruptEntry {
            table,
            key: key.to_owned(),
            detail: format!("unknown record version {version}"),
        }),
        None => Err(truncated(table, key)),
    }
}

fn truncated(table: &'static str, key: &str) -> StoreError {
    StoreError::CorruptEntry {
        table,
        key: key.to_owned(),
        detail: "record is truncated, has trailing bytes or is not UTF-8".into(),
    }
}

/// The outbox row `seq`, if its checksum matches and it decodes.
fn read_outbox(seq: u64, stored: &[u8]) -> Result<OutboxDelivery, StoreError> {
    OutboxDelivery::decode(seq, unseal_entry("webhook_outbox", seq, stored)?)
}

/// Opens a table for reading; a file from before webhooks existed has none, which reads empty.
macro_rules! open_or_empty {
    ($txn:expr, $table:expr, $empty:expr) => {
        match $txn.open_table($table) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok($empty),
            Err(error) => return Err(error.into()),
        }
    };
}

impl Store {
    /// Registers (or replaces) a webhook, durably.
    pub fn put_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        self.contain("put_webhook", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                txn.open_table(WEBHOOKS)?.insert(
                    webhook.id.as_str(),
                    checksum::seal(WEBHOOKS.name(), webhook.id.as_str(), &webhook.encode())
                        .as_slice(),
                )?;
                txn.commit()?;
                Ok(())
            })
        })
    }

    /// Removes a webhook with its pending deliveries and its log; `false` if there was none.
    pub fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.contain("remove_webhook", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let removed = {
                    let removed = txn.open_table(WEBHOOKS)?.remove(id)?.is_some();
                    let mut outbox = txn.open_table(WEBHOOK_OUTBOX)?;
                    let mut doomed = Vec::new();
                    for row in outbox.iter()? {
                        let (key, value) = row?;
                        let seq = key.value();
                        // A damaged row names no webhook for sure: it stays, refused, and the
                        // webhook (even a damaged one) is removed all the same.
                        match read_outbox(seq, value.value()) {
                            Ok(delivery) if delivery.webhook_id == id => doomed.push(seq),
                            Ok(_) => {}
                            Err(error) => {
                                self.skip_damaged(WEBHOOK_OUTBOX.name(), &seq.to_string(), &error);
                            }
                        }
                    }
                    for seq in doomed {
                        outbox.remove(seq)?;
                    }
                    txn.open_table(WEBHOOK_LOG)?
                        .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                    removed
                };
                txn.commit()?;
                Ok(removed)
            })
        })
    }

    /// Every webhook, sorted by id.
    pub fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.contain("list_webhooks", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, WEBHOOKS, Vec::new());
            let mut webhooks = Vec::new();
            for row in table.iter()? {
                let (id, value) = row?;
                let id = id.value();
                match unseal_entry("webhooks", id, value.value())
                    .and_then(|payload| WebhookRecord::decode(id, payload))
                {
                    Ok(webhook) => webhooks.push(webhook),
                    Err(error) => self.skip_damaged(WEBHOOKS.name(), id, &error),
                }
            }
            Ok(webhooks)
        })
    }

    /// How many deliveries are pending (redb keeps a table's length: no rows are read).
    pub fn count_outbox(&self) -> Result<u64, StoreError> {
        self.contain("count_outbox", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, WEBHOOK_OUTBOX, 0);
            Ok(redb::ReadableTableMetadata::len(&table)?)
        })
    }

    /// Pending deliveries in outbox order, at most `limit`.
    pub fn list_outbox(&self, limit: usize) -> Result<Vec<OutboxDelivery>, StoreError> {
        self.contain("list_outbox", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, WEBHOOK_OUTBOX, Vec::new());
            let mut deliveries = Vec::new();
            for row in table.iter()? {
                if deliveries.len() == limit {
                    break;
                }
                let (seq, value) = row?;
                let seq = seq.value();
                match read_outbox(seq, value.value()) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(error) => {
                        self.skip_damaged(WEBHOOK_OUTBOX.name(), &seq.to_string(), &error);
                    }
                }
            }
            Ok(deliveries)
        })
    }

    /// Up to `limit` deliveries due at `now_ms` (in outbox order), and the earliest time
    /// another one falls due. Reads the whole outbox, so a receiver that is down (its
    /// deliveries waiting far in the future) never holds back the others.
    pub fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxDelivery>, Option<u64>), StoreError> {
        self.contain("due_deliveries", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, WEBHOOK_OUTBOX, (Vec::new(), None));
            let mut due = Vec::new();
            let mut next_due = None::<u64>;
            for row in table.iter()? {
                let (seq, value) = row?;
                let seq = seq.value();
                let delivery = match read_outbox(seq, value.value()) {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        self.skip_damaged(WEBHOOK_OUTBOX.name(), &seq.to_string(), &error);
                        continue;
                    }
                };
                if delivery.next_attempt_ms <= now_ms && due.len() < limit {
                    due.push(delivery);
                } else {
                    let at = delivery.next_attempt_ms;
                    next_due = Some(next_due.map_or(at, |next| next.min(at)));
                }
            }
            Ok((due, next_due))
        })
    }

    /// Records an attempt at delivery `seq` in its webhook's log (keeping the `keep` newest)
    /// and either reschedules it (`next_attempt_ms`) or removes it from the outbox (`None`:
    /// acknowledged or given up). One attempt of [`Store::finish_attempts`].
    pub fn finish_attempt(
        &self,
        delivery: &OutboxDelivery,
        attempt: &DeliveryAttempt,
        next_attempt_ms: Option<u64>,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.contain("finish_attempt", || {
            self.finish_attempts(
                &[FinishedAttempt {
                    delivery: delivery.clone(),
                    attempt: Some(attempt.clone()),
                    next_attempt_ms,
                }],
                keep,
            )
            .map(|_| ())
        })
    }

    /// Records the results of one pass of the delivery worker in one durable transaction:
    /// each attempt goes into its webhook's log (keeping the `keep` newest per webhook), and
    /// its delivery is rescheduled or removed from the outbox. A delivery removed meanwhile
    /// (its webhook was deleted) is not logged; a delivery whose webhook no longer exists is
    /// removed from the outbox, whatever its result; one not attempted whose webhook exists
    /// stays as it is. Returns how many outbox rows changed.
    pub fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        keep: usize,
    ) -> Result<usize, StoreError> {
        self.contain("finish_attempts", || {
            let mut n_changed = 0;
            if finished.is_empty() {
                return Ok(n_changed);
            }
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                {
                    let webhooks = txn.open_table(WEBHOOKS)?;
                    let mut outbox = txn.open_table(WEBHOOK_OUTBOX)?;
                    let mut counters = txn.open_table(ACTIVITY_COUNTERS)?;
                    let mut log = txn.open_table(WEBHOOK_LOG)?;
                    let mut log_seq = counters.get(NEXT_LOG_SEQ)?.map_or(1, |v| v.value());
                    let mut logged: Vec<&str> = Vec::new();
                    for FinishedAttempt {
                        delivery,
                        attempt,
                        next_attempt_ms,
                    } in finished
                    {
                        if outbox.get(delivery.seq)?.is_none() {
                            continue;
                        }
                        let webhook = delivery.webhook_id.as_str();
                        if webhooks.get(webhook)?.is_none() {
                            outbox.remove(delivery.seq)?;
                            n_changed += 1;
                            continue;
                        }
                        let Some(attempt) = attempt else {
                            // Not attempted, yet its webhook exists: it stays for a later pass.
                            continue;
                        };
                        n_changed += 1;
                        match next_attempt_ms {
                            Some(next_attempt_ms) => {
                                let again = OutboxDelivery {
                                    attempts: delivery.attempts.saturating_add(1),
                                    next_attempt_ms: *next_attempt_ms,
                                    ..delivery.clone()
                                };
                                let sealed = checksum::seal(
                                    WEBHOOK_OUTBOX.name(),
                                    delivery.seq,
                                    &again.encode(),
                                );
                                outbox.insert(delivery.seq, sealed.as_slice())?;
                            }
                            None => {
                                outbox.remove(delivery.seq)?;
                            }
                        }
                        log.insert((webhook, log_seq), attempt.encode().as_slice())?;
                        log_seq += 1;
                        if !logged.contains(&webhook) {
                            logged.push(webhook);
                        }
                    }
                    counters.insert(NEXT_LOG_SEQ, log_seq)?;
                    for webhook in logged {
                        let n_rows = log.range((webhook, 0)..=(webhook, u64::MAX))?.count();
                        if n_rows > keep {
                            let mut oldest = Vec::new();
                            for row in log
                                .range((webhook, 0)..=(webhook, u64::MAX))?
                                .take(n_rows - keep)
                            {
                                let (key, _) = row?;
                                oldest.push(key.value().1);
                            }
                            for old in oldest {
                                log.remove((webhook, old))?;
                            }
                        }
                    }
                }
                txn.commit()?;
                Ok(n_changed)
            })
        })
    }

    /// The logged attempts of webhook `id`, newest first.
    pub fn list_deliveries(&self, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.contain("list_deliveries", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, WEBHOOK_LOG, Vec::new());
            let mut attempts = Vec::new();
            for row in table.range((id, 0)..=(id, u64::MAX))?.rev() {
                let (key, value) = row?;
                let key = format!("{id}/{}", key.value().1);
                match DeliveryAttempt::decode(&key, value.value()) {
                    Ok(attempt) => attempts.push(attempt),
                    Err(error) => self.skip_damaged(WEBHOOK_LOG.name(), &key, &error),
                }
            }
            Ok(attempts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActivityWrite;

    fn webhook(id: &str) -> WebhookRecord {
        WebhookRecord {
            id: id.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["doc.changed".into(), "file.uploaded".into()],
            secret: "s3cret".into(),
            docs: Some("team/*".into()),
            created_ms: 5,
        }
    }

    fn delivery(webhook_id: &str, n: u32) -> OutboxDelivery {
        OutboxDelivery {
            seq: 0,
            delivery_id: format!("d{n}"),
            webhook_id: webhook_id.into(),
            event: "doc.changed".into(),
            body: format!("{{\"n\":{n}}}"),
            created_ms: 10,
            attempts: 0,
            next_attempt_ms: 10,
        }
    }

    fn attempt(n: u64, outcome: &str) -> DeliveryAttempt {
        DeliveryAttempt {
            delivery_id: "d1".into(),
            event: "doc.changed".into(),
            at_ms: n,
            status: n.is_multiple_of(2).then_some(500),
            error: (!n.is_multiple_of(2)).then(|| "connection refused".into()),
            duration_ms: 3,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn the_outbox_survives_a_reopen_and_a_delivery_leaves_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_webhook(&webhook("wh1")).unwrap();
            let seqs = store
                .write_activity(&ActivityWrite {
                    deliveries: vec![delivery("wh1", 1), delivery("wh1", 2)],
                    ..ActivityWrite::default()
                })
                .unwrap();
            assert_eq!(seqs, vec![1, 2]);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_webhooks().unwrap(), vec![webhook("wh1")]);
        let pending = store.list_outbox(10).unwrap();
        assert_eq!(pending.len(), 2);
        store
            .finish_attempt(&pending[0], &attempt(1, "retry"), Some(99), 200)
            .unwrap();
        let pending = store.list_outbox(10).unwrap();
        assert_eq!((pending[0].attempts, pending[0].next_attempt_ms), (1, 99));
        // The one waiting does not hold back the one due.
        let (due, next_due) = store.due_deliveries(50, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].delivery_id, "d2");
        assert_eq!(next_due, Some(99));
        let (due, next_due) = store.due_deliveries(50, 0).unwrap();
        assert_eq!((due.len(), next_due), (0, Some(10)));
        assert_eq!(pending[0].delivery_id, "d1", "the id never changes");
        store
            .finish_attempt(&pending[0], &attempt(2, "delivered"), None, 200)
            .unwrap();
        assert_eq!(store.list_outbox(10).unwrap().len(), 1);
        let log = store.list_deliveries("wh1").unwrap();
        assert_eq!(log, vec![attempt(2, "delivered"), attempt(1, "retry")]);
    }

    /// Regression: one damaged webhook, outbox or log row failed every list as a whole, so the
    /// server refused to start (`list_webhooks`), the worker stopped every delivery
    /// (`due_deliveries`), and an admin could not delete the damaged webhook (`remove_webhook`
    /// decoded every outbox row). Now a damaged row is left out of lists and scans and stays
    /// refused; everything else keeps working.
    #[test]
    fn a_damaged_row_is_left_out_and_the_rest_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store.put_webhook(&webhook("wh1")).unwrap();
        store.put_webhook(&webhook("wh2")).unwrap();
        store
            .write_activity(&ActivityWrite {
                deliveries: vec![delivery("wh1", 1), delivery("wh2", 2), delivery("wh1", 3)],
                ..ActivityWrite::default()
            })
            .unwrap();
        let d3 = store.list_outbox(10).unwrap().remove(2);
        store
            .finish_attempt(&d3, &attempt(1, "retry"), Some(10), 10)
            .unwrap();
        store
            .finish_attempt(&d3, &attempt(2, "retry"), Some(10), 10)
            .unwrap();
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut webhooks = txn.open_table(WEBHOOKS).unwrap();
                let mut stored = webhooks.get("wh2").unwrap().unwrap().value().to_vec();
                stored[4] ^= 0x20;
                webhooks.insert("wh2", stored.as_slice()).unwrap();
                let mut outbox = txn.open_table(WEBHOOK_OUTBOX).unwrap();
                let mut stored = outbox.get(1).unwrap().unwrap().value().to_vec();
                stored[4] ^= 0x20;
                outbox.insert(1, stored.as_slice()).unwrap();
                let mut log = txn.open_table(WEBHOOK_LOG).unwrap();
                let key = {
                    let (first, _) = log.iter().unwrap().next().unwrap().unwrap();
                    let (webhook, seq) = first.value();
                    (webhook.to_owned(), seq)
                };
                log.insert((key.0.as_str(), key.1), [RECORD_VERSION].as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }

        assert_eq!(store.list_webhooks().unwrap(), vec![webhook("wh1")]);
        let ids = |deliveries: &[OutboxDelivery]| -> Vec<String> {
            deliveries.iter().map(|d| d.delivery_id.clone()).collect()
        };
        assert_eq!(ids(&store.list_outbox(10).unwrap()), ["d2", "d3"]);
        let (due, _) = store.due_deliveries(50, 10).unwrap();
        assert_eq!(ids(&due), ["d2", "d3"]);
        assert_eq!(
            store.list_deliveries("wh1").unwrap(),
            vec![attempt(2, "retry")]
        );
        // The damaged webhook can be deleted, with its deliveries; the damaged row stays out.
        assert!(store.remove_webhook("wh2").unwrap());
        assert!(store.list_webhooks().unwrap() == vec![webhook("wh1")]);
        assert_eq!(ids(&store.list_outbox(10).unwrap()), ["d3"]);
    }

    #[test]
    fn the_log_keeps_the_newest_attempts_and_removal_clears_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store.put_webhook(&webhook("wh1")).unwrap();
        store
            .write_activity(&ActivityWrite {
                deliveries: vec![delivery("wh1", 1)],
                ..ActivityWrite::default()
            })
            .unwrap();
        let pending = store.list_outbox(10).unwrap().remove(0);
        for n in 1..=7 {
            store
                .finish_attempt(&pending, &attempt(n, "retry"), Some(n), 3)
                .unwrap();
        }
        let log: Vec<u64> = store
            .list_deliveries("wh1")
            .unwrap()
            .iter()
            .map(|a| a.at_ms)
            .collect();
        assert_eq!(log, vec![7, 6, 5]);
        assert!(store.remove_webhook("wh1").unwrap());
        assert!(!store.remove_webhook("wh1").unwrap());
        assert!(store.list_outbox(10).unwrap().is_empty());
        assert!(store.list_deliveries("wh1").unwrap().is_empty());
        // An attempt that finishes after the removal leaves no trace.
        store
            .finish_attempt(&pending, &attempt(8, "delivered"), None, 3)
            .unwrap();
        assert!(store.list_deliveries("wh1").unwrap().is_empty());
    }

    #[test]
    fn deliveries_to_a_removed_webhook_are_never_queued_and_orphans_leave_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store.put_webhook(&webhook("wh1")).unwrap();
        store.put_webhook(&webhook("wh2")).unwrap();
        // The recorder read the registrations before wh2 was removed, and commits after.
        assert!(store.remove_webhook("wh2").unwrap());
        let seqs = store
            .write_activity(&ActivityWrite {
                deliveries: vec![delivery("wh1", 1), delivery("wh2", 2), delivery("wh1", 3)],
                ..ActivityWrite::default()
            })
            .unwrap();
        assert_eq!(seqs.len(), 2);
        let pending = store.list_outbox(10).unwrap();
        let ids: Vec<&str> = pending.iter().map(|d| d.delivery_id.as_str()).collect();
        assert_eq!(ids, ["d1", "d3"]);
        // A row whose webhook is gone (written before that check existed) and a row of a
        // webhook the worker did not know yet, both left unattempted by one pass.
        let orphan = OutboxDelivery {
            seq: 99,
            ..delivery("wh_gone", 4)
        };
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(WEBHOOK_OUTBOX)
                .unwrap()
                .insert(
                    99,
                    checksum::seal(WEBHOOK_OUTBOX.name(), 99u64, &orphan.encode()).as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        let results = vec![
            FinishedAttempt {
                delivery: pending[0].clone(),
                attempt: Some(attempt(1, "delivered")),
                next_attempt_ms: None,
            },
            FinishedAttempt {
                delivery: pending[1].clone(),
                attempt: None,
                next_attempt_ms: None,
            },
            FinishedAttempt {
                delivery: orphan,
                attempt: None,
                next_attempt_ms: None,
            },
        ];
        // One transaction for the whole pass: the delivered row and the orphan leave.
        assert_eq!(store.finish_attempts(&results, 200).unwrap(), 2);
        let left: Vec<String> = store
            .list_outbox(10)
            .unwrap()
            .into_iter()
            .map(|d| d.delivery_id)
            .collect();
        assert_eq!(left, ["d3"]);
        assert_eq!(
            store.list_deliveries("wh1").unwrap(),
            vec![attempt(1, "delivered")]
        );
        assert!(store.list_deliveries("wh_gone").unwrap().is_empty());
        // Nothing left to change: the worker must see that no progress was made.
        assert_eq!(store.finish_attempts(&results[2..], 200).unwrap(), 0);
    }

    #[test]
    fn records_decode_only_whole() {
        let bytes = webhook("w").encode();
        for len in 0..bytes.len() {
            assert!(WebhookRecord::decode("w", &bytes[..len]).is_err());
        }
        let bytes = attempt(1, "retry").encode();
        for len in 0..bytes.len() {
            assert!(DeliveryAttempt::decode("k", &bytes[..len]).is_err());
        }
        assert_eq!(
            DeliveryAttempt::decode("k", &bytes).unwrap(),
            attempt(1, "retry")
        );
    }
}
