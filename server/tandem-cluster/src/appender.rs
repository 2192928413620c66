//! The appender: turns the doc actors' [`LogCommand`]s into `XADD`s, in groups.
//!
//! One task takes the first command and everything else already queued (up to
//! [`MAX_BATCH_OPS`]) and sends every append of the group to Redis as one pipeline. Redis, with
//! `appendfsync always`, writes and fsyncs its append-only file once per event-loop turn before
//! it answers any command of that turn, so the whole group costs one round trip and about one
//! fsync: group commit across every doc, as the redb writer does on one node. While a group is
//! in flight, new commands queue and form the next group: a quiet doc waits for nothing but its
//! own round trip, a busy server for at most one group ahead of it.
//!
//! Once Redis has answered, each doc's `watch` is advanced to the highest seq of that doc in the
//! group: "durable up to N". If the pipeline fails (Redis down, a timeout), every doc in the
//! group is told `failed` + `storage_fault`: its actor closes the senders of what was refused
//! with 1013 and reloads; they resend on reconnect, which CRDTs make harmless even if Redis did
//! store an append whose answer was lost. Commands queued behind a failure of their doc are
//! dropped, never appended (the actor has moved on to a fresh channel).
//!
//! Versions go to Postgres on a task of their own ([`run_versions`]), in order, after the group's
//! appends, each under a timeout: a slow or unreachable Postgres never holds up the appends of
//! any doc, and a version it cannot store is refused alone (the doc actor answers that request
//! with an error; its doc and peers are untouched). Compactions run beside the appender
//! (`snapshot::compact`), each once the updates it covers are durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::DocId;
use tandem_hub::LogCommand;
use tandem_hub::log::Durability;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use crate::{Durability as ClusterDurability, Shared, keys, snapshot};

/// Most commands in one group.
const MAX_BATCH_OPS: usize = 2048;
/// Most update bytes in one group (a large paste still goes alone).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Versions waiting for Postgres; beyond this a version is refused at once.
const VERSION_QUEUE_CAPACITY: usize = 256;
/// How long storing one version may take before it is refused.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A version for the version task.
pub(crate) struct VersionJob {
    doc: DocId,
    record: Box<tandem_store::VersionRecord>,
    state: Vec<u8>,
    max_kept: u64,
    report: watch::Sender<Durability>,
    stored_id: oneshot::Sender<u64>,
}

impl VersionJob {
    /// Tells the doc actor the version was not stored, without failing its doc.
    fn refuse(self) {
        let _ = self.stored_id.send(tandem_hub::log::VERSION_NOT_STORED);
        let id = self.record.id;
        self.report.send_modify(|durability| {
            durability.durable_version = durability.durable_version.max(id);
        });
    }
}

/// Stores versions in order, each under [`VERSION_TIMEOUT`]; stops once the appender has
/// stopped and the queue is empty.
pub(crate) async fn run_versions(shared: Arc<Shared>, mut jobs: mpsc::Receiver<VersionJob>) {
    while let Some(job) = jobs.recv().await {
        if job.report.borrow().failed {
            continue;
        }
        let stored = tokio::time::timeout(
            VERSION_TIMEOUT,
            snapshot::store_version(&shared, &job.doc, &job.record, &job.state, job.max_kept),
        )
        .await
        .unwrap_or_else(|_| Err("postgres did not answer in time".into()));
        match stored {
            Ok(id) => {
                if id != job.record.id {
                    debug!(doc = %job.doc, asked = job.record.id, stored = id, "version id taken by another node");
                }
                // Before the report: the actor reads the id when it sees the version durable.
                let _ = job.stored_id.send(id);
                let asked = job.record.id;
                job.report.send_modify(|durability| {
                    durability.durable_version = durability.durable_version.max(asked);
                });
            }
            Err(error) => {
                warn!(doc = %job.doc, %error, "storing a version in postgres failed; refusing it");
                job.refuse();
            }
        }
    }
}

/// The commands of one group, gathered from the queue.
#[derive(Default)]
struct Group {
    commands: Vec<LogCommand>,
    n_bytes: usize,
    close: Option<oneshot::Sender<()>>,
}

impl Group {
    /// Whether the group can take more: not full and not closing.
    fn open(&self) -> bool {
        self.close.is_none()
            && self.commands.len() < MAX_BATCH_OPS
            && self.n_bytes < MAX_BATCH_BYTES
    }

    /// Adds `first` and then whatever else is queued, until the group is full or closing.
    /// Compactions start at once beside the appender (each waits for its own updates).
    fn gather(
        &mut self,
        shared: &Arc<Shared>,
        first: Option<LogCommand>,
        rx: &mut mpsc::Receiver<LogCommand>,
    ) {
        let mut next = first;
        while let Some(command) = next.take() {
            match command {
                LogCommand::Close { done } => {
                    self.close = Some(done);
                    return;
                }
                LogCommand::ReleaseMemory => {}
                LogCommand::Compact {
                    doc,
                    upto_seq,
                    snapshot,
                    position,
                    report,
                } => {
                    // Beside the appender: it waits for its updates, then for a lease.
                    let task_shared = shared.clone();
                    shared.lifecycle.spawn(
                        tracing::debug_span!("compact", doc = %doc),
                        async move {
                            snapshot::compact(
                                &task_shared,
                                doc,
                                upto_seq,
                                snapshot,
                                position,
                                report,
                            )
                            .await;
                        },
                    );
                }
                command => {
                    self.n_bytes += match &command {
                        LogCommand::Append { update, .. } => update.len(),
                        LogCommand::Version { state, .. } => state.len(),
                        _ => 0,
                    };
                    self.commands.push(command);
                }
            }
            if !self.open() {
                return;
            }
            next = rx.try_recv().ok();
        }
    }
}

/// When a group holding only appends of hot docs (docs in a group that started less than
/// `interval` ago) should go: the end of the first of those intervals. `None` (go at once) if
/// it holds anything else: an append of another doc, or a version.
fn hot_until(
    commands: &[LogCommand],
    recent: &HashMap<DocId, Instant>,
    interval: Duration,
) -> Option<Instant> {
    let mut due: Option<Instant> = None;
    for command in commands {
        let LogCommand::Append { doc, .. } = command else {
            return None;
        };
        let until = *recent.get(doc)? + interval;
        due = Some(due.map_or(until, |due| due.min(until)));
    }
    due
}

/// The appender's task.
///
/// A doc that keeps changing is appended at most every `commit_interval`, as on one node
/// (`tandem_hub::persist`): when everything queued belongs to docs that were in a group started
/// less than the interval ago, the task waits out the rest of the first of those intervals and
/// then takes everything queued. Each group is one Redis event-loop turn (one AOF write and
/// fsync), one wake-up of every node's tail and one batch of relays there, so a doc edited
/// hundreds of times a second costs a few hundred groups, not one per keystroke. An append of
/// any other doc goes at once with everything queued: a quiet doc adds no latency.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<LogCommand>) {
    let (versions, version_jobs) = mpsc::channel(VERSION_QUEUE_CAPACITY);
    shared.lifecycle.spawn(
        tracing::info_span!("cluster-versions"),
        run_versions(shared.clone(), version_jobs),
    );
    let interval = shared.config.commit_interval;
    // Docs whose appends were in a group that started within the last interval: hot docs.
    let mut recent: HashMap<DocId, Instant> = HashMap::new();
    let mut n_groups: u64 = 0;
    let mut close: Option<oneshot::Sender<()>> = None;
    while close.is_none() {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut group = Group::default();
        group.gather(&shared, Some(first), &mut rx);
        if group.open()
            && let Some(due) = hot_until(&group.commands, &recent, interval)
        {
            tokio::time::sleep_until(due.into()).await;
            group.gather(&shared, rx.try_recv().ok(), &mut rx);
        }
        close = group.close.take();
        if !group.commands.is_empty() {
            let started = Instant::now();
            recent.retain(|_, last| started.duration_since(*last) < interval);
            let mut previous: Option<&DocId> = None;
            for command in &group.commands {
                // Groups are runs of one doc's appends: hash each run once.
                if let LogCommand::Append { doc, .. } = command
                    && previous != Some(doc)
                {
                    recent.insert(doc.clone(), started);
                    previous = Some(doc);
                }
            }
            let n_commands = group.commands.len();
            let write_started = Instant::now();
            write_group(&shared, group.commands, &versions).await;
            shared
                .metrics
                .observe_commit(write_started.elapsed(), n_commands);
            n_groups += 1;
        }
    }
    tracing::info!(n_groups, "cluster appender stopped");
    if let Some(done) = close {
        let _ = done.send(());
    }
}

/// Appends a group's updates in one pipeline, stores its versions, and reports.
async fn write_group(shared: &Shared, group: Vec<LogCommand>, jobs: &mpsc::Sender<VersionJob>) {
    // Commands of a doc whose channel already failed are dropped (see the module docs).
    let live = |report: &watch::Sender<Durability>| !report.borrow().failed;
    let mut pipe = redis::pipe();
    // One command's error (a key that is not a stream, Redis out of memory) comes back as that
    // command's reply, so it fails only its own doc, never the others grouped with it.
    pipe.ignore_errors();
    // The doc of each XADD, in pipeline order.
    let mut order: Vec<DocId> = Vec::new();
    let mut n_appends = 0usize;
    // Per doc: the highest seq appended in this group, and its channel.
    let mut appended: HashMap<DocId, (u64, watch::Sender<Durability>)> = HashMap::new();
    let mut versions = Vec::new();
    for command in group {
        match command {
            LogCommand::Append {
                doc,
                seq,
                update,
                author,
                report,
            } => {
                if !live(&report) {
                    continue;
                }
                let xadd = pipe
                    .cmd("XADD")
                    .arg(keys::doc_stream(&doc))
                    .arg("*")
                    .arg("u")
                    .arg(update.as_ref())
                    .arg("n")
                    .arg(shared.node.as_ref());
                if let Some(author) = &author {
                    xadd.arg("a").arg(author.as_ref());
                }
                n_appends += 1;
                order.push(doc.clone());
                let entry = appended.entry(doc).or_insert((seq, report));
                entry.0 = entry.0.max(seq);
            }
            LogCommand::Version {
                doc,
                record,
                state,
                max_kept,
                report,
                stored_id,
            } if live(&report) => versions.push((doc, record, state, max_kept, report, stored_id)),
            _ => {}
        }
    }
    if n_appends > 0 {
        if shared.config.durability == ClusterDurability::Replica {
            pipe.cmd("WAIT")
                .arg(1)
                .arg(shared.config.replica_timeout.as_millis() as u64);
        }
        let started = std::time::Instant::now();
        let mut redis = shared.redis.clone();
        let res: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut redis).await;
        let res = res
            .map_err(|error| error.to_string())
            .and_then(|replies| check_replies(&replies, &order, shared.config.durability));
        match res {
            Ok(refused) => {
                // Docs whose own appends Redis refused: only they fail, with what came back.
                for (doc, error) in refused {
                    error!(%doc, %error, "redis refused an append of this doc; refusing its updates");
                    if let Some((_, report)) = appended.remove(&doc) {
                        report.send_modify(|durability| {
                            durability.failed = true;
                            durability.storage_fault = true;
                        });
                    }
                    for (_, _, _, _, report, _) in
                        versions.iter().filter(|version| version.0 == doc)
                    {
                        report.send_modify(|durability| {
                            durability.failed = true;
                            durability.storage_fault = true;
                        });
                    }
                }
                debug!(
                    n_appends,
                    n_docs = appended.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "group appended"
                );
                for (_, (seq, report)) in appended {
                    report.send_modify(|durability| {
                        durability.durable_seq = durability.durable_seq.max(seq);
                    });
                }
            }
            Err(error) => {
                warn!(%error, n_appends, "appending to redis failed; refusing the group's updates");
                for (_, (_, report)) in appended {
                    report.send_modify(|durability| {
                        durability.failed = true;
                        durability.storage_fault = true;
                    });
                }
                // Versions queued behind refused updates would describe state nobody has.
                for (_, _, _, _, report, _) in versions.drain(..) {
                    report.send_modify(|durability| {
                        durability.failed = true;
                        durability.storage_fault = true;
                    });
                }
            }
        }
    }
    for (doc, record, state, max_kept, report, stored_id) in versions {
        if !live(&report) {
            continue;
        }
        let job = VersionJob {
            doc,
            record,
            state,
            max_kept,
            report,
            stored_id,
        };
        if let Err(error) = jobs.try_send(job) {
            let job = match error {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            warn!(doc = %job.doc, "too many versions waiting for postgres; refusing one");
            job.refuse();
        }
    }
}

/// The docs whose appends Redis refused (each with the error), given the pipeline's replies in
/// the order of `order`; too few replicas (or a failed `WAIT`) fails the whole group.
fn check_replies(
    replies: &[redis::Value],
    order: &[DocId],
    durability: ClusterDurability,
) -> Result<Vec<(DocId, String)>, String> {
    if durability == ClusterDurability::Replica {
        match replies.get(order.len()) {
            Some(redis::Value::Int(n_replicas)) if *n_replicas >= 1 => {}
            Some(redis::Value::Int(_)) => {
                return Err("no replica acknowledged the appends in time".into());
            }
            other => return Err(format!("WAIT answered {other:?}")),
        }
    }
    let mut refused: Vec<(DocId, String)> = Vec::new();
    for (doc, reply) in order.iter().zip(replies) {
        if let redis::Value::ServerError(error) = reply
            && !refused.iter().any(|(seen, _)| seen == doc)
        {
            refused.push((doc.clone(), format!("{error:?}")));
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn append(doc: &DocId) -> LogCommand {
        let (report, _) = watch::channel(Durability::default());
        LogCommand::Append {
            doc: doc.clone(),
            seq: 1,
            update: Bytes::from_static(b"u"),
            author: None,
            report,
        }
    }

    #[test]
    fn only_a_group_of_hot_docs_waits_and_only_until_the_first_interval_ends() {
        let interval = Duration::from_millis(5);
        let hot = DocId::new("team/hot.md").unwrap();
        let warm = DocId::new("team/warm.md").unwrap();
        let cold = DocId::new("team/cold.md").unwrap();
        let now = Instant::now();
        let recent = HashMap::from([
            (hot.clone(), now),
            (warm.clone(), now - Duration::from_millis(3)),
        ]);
        assert_eq!(
            hot_until(&[append(&hot)], &recent, interval),
            Some(now + interval)
        );
        // The earliest end among the docs queued.
        assert_eq!(
            hot_until(&[append(&hot), append(&warm)], &recent, interval),
            Some(now + Duration::from_millis(2))
        );
        // A doc not appended lately goes at once, and takes the hot ones with it.
        assert_eq!(
            hot_until(&[append(&hot), append(&cold)], &recent, interval),
            None
        );
    }
}
