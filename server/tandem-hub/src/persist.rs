//! The redb writer: one dedicated thread that commits updates for every doc, in groups.
//!
//! redb allows one writer at a time and its API is synchronous, so all writes go through this
//! thread. Doc actors send [`LogCommand`]s over a bounded channel. The thread takes the first
//! command, then everything else already queued (up to [`MAX_BATCH_OPS`] / [`MAX_BATCH_BYTES`]),
//! and commits the batch in one transaction with `Durability::Immediate` (fsync). While one commit
//! is in flight, new commands queue up and form the next group: this is group commit, and it is
//! what keeps throughput up with an fsync per commit.
//!
//! A group of appends is made durable by the store's write-ahead log (`tandem_store`'s `wal.rs`:
//! one `pwrite` and one `fdatasync`, redb's own commit without fsync); anything else commits to
//! redb with fsync. After the group's reports went out, the writer asks the store to checkpoint
//! the log (one durable redb commit) when it is due, so no acknowledgement waits for one.
//!
//! A commit costs about the same whatever it holds (its page writes and fsync are mostly kernel
//! time), so a writer that commits every edit alone spends more CPU than all the connections
//! together. So a doc that keeps changing is committed at most every
//! [`PersistConfig::commit_interval`] (5 ms by default): when everything queued belongs to docs
//! that were in a commit started less than the interval ago, the writer waits out the rest of
//! the first of those intervals before it takes what is queued (sleeping, not waiting on the
//! channel, which also spares the senders a wake-up). An update of any other doc commits at once
//! with everything queued, so quiet docs get no added latency even on a busy server, and a hot
//! doc adds at most the interval. The measurements behind this are in `benches/RESULTS.md`
//! ("Figures behind design choices").
//!
//! After the commit returns, each doc's `watch` channel is advanced to the highest seq of that doc
//! in the batch: "durable up to N". Doc actors release broadcasts and replies only up to that
//! point (invariant: nothing is sent before the commit that contains it has returned).
//! On a failed commit the channel is marked failed instead: nothing in the failed batch is ever
//! broadcast or acknowledged.
//!
//! # A full disk
//!
//! A commit that fails with a storage fault (`ENOSPC` or another I/O error) makes the store
//! read-only (`tandem_store::space`); the store refuses later commits at once until space returns,
//! then resumes by itself. The writer's part:
//! - Every doc in the failed batch is rolled back to what its actor was told is durable
//!   (`Store::discard_after`), before the actor hears of the failure. redb commits are atomic, but
//!   one that fails in its last fsync may already have written its commit record; such a commit
//!   must not surface later as stored, because it was never acknowledged and its senders were told
//!   to retry. Rolling back beats keeping it: a kept commit would be on disk without having been
//!   synced successfully, and nothing was acknowledged from it, so dropping it loses nothing.
//! - The report is marked `failed` with `storage_fault`, and the channel stays failed: commands
//!   already queued behind the failure on that channel are dropped, never committed. The actor
//!   reloads its doc from the store and continues on a fresh channel.
//! - Compactions commit in a transaction of their own, after the batch's updates: a failed
//!   transaction then never holds a snapshot that would include a refused update, so the
//!   roll-back only ever removes log entries and versions.
//!
//! # A damaged doc
//!
//! A commit that fails because one doc's stored records are damaged (`StoreError::Corrupt` naming
//! that doc: its `docs` row or a version fails its checksum) is committed again without that
//! doc's commands, so the other docs of the batch, which group commit put there by chance, are
//! stored and acknowledged as if the damaged doc had not been there. Only the damaged doc's
//! channel is marked failed, with `corrupt`; its actor closes its peers with 1011 "document
//! damaged". A failed transaction stores nothing, so there is nothing to roll back for it; each
//! retry leaves out one more doc, so a batch is tried at most once per doc in it.

use crate::metrics::HubMetrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::DocId;
use tandem_store::{Store, StoreError, VersionKind, WriteOp};
use tokio::sync::{mpsc, oneshot, watch};

use crate::log::{DocLog, Durability, LoadFailure, LoadedLog, LogCommand, LogFuture};

/// Capacity of the channel into the writer. When it is full, doc actors wait, which in turn
/// stops connections from reading: backpressure all the way to the sockets.
pub(crate) const PERSIST_QUEUE_CAPACITY: usize = 4096;
/// Most write operations in one transaction.
pub(crate) const MAX_BATCH_OPS: usize = 2048;
/// Most update bytes in one transaction (a large paste still commits alone).
pub(crate) const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Commit with fsync (`Durability::Immediate`). Off only for benchmarks.
    pub fsync: bool,
    /// Upper bound of redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Shortest time between the starts of two commits (see the module documentation).
    pub commit_interval: Duration,
    /// Bytes of the disk-space reserve file (`tandem_store::space`); 0 for none.
    pub reserve_bytes: u64,
}

/// The address of the writer thread: cheap to clone, one per doc actor and one for shutdown.
#[derive(Clone)]
pub struct Writer {
    pub tx: mpsc::Sender<LogCommand>,
}

impl Writer {
    /// Tells the writer to commit what is queued and stop, and waits up to `timeout` for it.
    /// Sent once, after every doc actor has exited.
    pub async fn close(&self, timeout: Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .tx
            .send(LogCommand::Close { done: done_tx })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, done_rx).await;
        }
    }
}

/// Starts the writer thread; returns the handle doc actors send to.
pub fn spawn_writer(store: Arc<Store>, config: PersistConfig) -> std::io::Result<Writer> {
    spawn_writer_with_metrics(store, config, HubMetrics::default())
}

/// [`spawn_writer`], timing each commit and counting its group into `metrics`.
pub fn spawn_writer_with_metrics(
    store: Arc<Store>,
    config: PersistConfig,
    metrics: HubMetrics,
) -> std::io::Result<Writer> {
    let (tx, rx) = mpsc::channel(PERSIST_QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("tandem-redb-writer".into())
        .spawn(move || run(store, rx, &config, &metrics))?;
    Ok(Writer { tx })
}

fn run(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<LogCommand>,
    config: &PersistConfig,
    metrics: &HubMetrics,
) {
    let mut n_commits: u64 = 0;
    let mut close: Option<oneshot::Sender<()>> = None;
    // Docs whose updates were in a commit that started within the last interval: hot docs.
    let mut recent: HashMap<DocId, Instant> = HashMap::new();
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut group = Group::default();
        group.gather(Some(first), &mut rx);
        // Only hot docs queued: let the rest of their interval gather more of their updates (and
        // whatever else arrives) into this commit. Anything else commits at once.
        if group.open()
            && let Some(due) = hot_until(&group.batch, &recent, config.commit_interval)
        {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            group.gather(rx.try_recv().ok(), &mut rx);
        }
        let Group {
            batch,
            release,
            close: closing,
            ..
        } = group;
        close = closing;
        if !batch.is_empty() {
            let started = Instant::now();
            recent.retain(|_, last| started.duration_since(*last) < config.commit_interval);
            let mut previous: Option<&DocId> = None;
            for doc in batch.iter().filter_map(LogCommand::doc) {
                // Batches are runs of one doc's updates: hash each run once.
                if previous != Some(doc) {
                    recent.insert(doc.clone(), started);
                    previous = Some(doc);
                }
            }
            let commit_started = Instant::now();
            commit(&store, &batch, config.fsync);
            metrics.observe_commit(commit_started.elapsed(), batch.len());
            n_commits += 1;
            // After the group's reports went out: a checkpoint delays no acknowledgement.
            checkpoint(&store, false);
        }
        if release && close.is_none() {
            release_memory(&store);
        }
    }
    checkpoint(&store, true);
    // Close the database before reporting: whoever waits may reopen the file at once.
    drop(store);
    tracing::info!(n_commits, "redb writer stopped");
    if let Some(done) = close {
        let _ = done.send(());
    }
}

/// What the writer takes from the channel for one commit.
#[derive(Default)]
struct Group {
    batch: Vec<LogCommand>,
    n_bytes: usize,
    /// `ReleaseMemory` arrived: commit, then drop the page cache.
    release: bool,
    /// `Close` arrived: commit, then stop.
    close: Option<oneshot::Sender<()>>,
}

impl Group {
    /// Takes `next` and whatever else is queued, until the channel is empty, the group is full,
    /// or a `ReleaseMemory` or `Close` ends it.
    fn gather(&mut self, mut next: Option<LogCommand>, rx: &mut mpsc::Receiver<LogCommand>) {
        while let Some(command) = next.take() {
            match command {
                LogCommand::Close { done } => {
                    self.close = Some(done);
                    return;
                }
                LogCommand::ReleaseMemory => {
                    self.release = true;
                    return;
                }
                command => {
                    self.n_bytes += command.n_bytes();
                    self.batch.push(command);
                }
            }
            if !self.open() {
                return;
            }
            next = rx.try_recv().ok();
        }
    }

    /// Whether more commands may join: not full, and not ended by `ReleaseMemory` or `Close`.
    fn open(&self) -> bool {
        !self.release
            && self.close.is_none()
            && self.batch.len() < MAX_BATCH_OPS
            && self.n_bytes < MAX_BATCH_BYTES
    }
}

/// When a batch whose every update belongs to a hot doc (one in a commit that started less than
/// `interval` ago) should commit: as soon as the first of those docs' intervals ends. `None`
/// (commit now) when the batch holds anything else: an update of a quiet doc, a version, a
/// compaction.
fn hot_until(
    batch: &[LogCommand],
    recent: &HashMap<DocId, Instant>,
    interval: Duration,
) -> Option<Instant> {
    let mut due: Option<Instant> = None;
    for command in batch {
        let LogCommand::Append { doc, .. } = command else {
            return None;
        };
        let until = *recent.get(doc)? + interval;
        due = Some(due.map_or(until, |due| due.min(until)));
    }
    due
}

/// Moves the write-ahead log's checkpoint when it is due (or, with `force`, whenever the log
/// holds anything). A failure loses nothing (the log still holds every acknowledged append, and
/// the next group tries again), so it is only logged.
fn checkpoint(store: &Store, force: bool) {
    match store.checkpoint_if_due(force) {
        // A read-only store logged its state once when it became so.
        Ok(()) | Err(StoreError::ReadOnly { .. }) => {}
        Err(error) => {
            tracing::warn!(%error, "write-ahead log checkpoint failed; retried after the next group");
        }
    }
}

fn release_memory(store: &Store) {
    // The cache is dropped by closing the file: make the log's appends durable in it first.
    checkpoint(store, true);
    let started = std::time::Instant::now();
    let released = store.release_cache();
    crate::alloc::release_this_thread();
    match released {
        Ok(()) => {
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "no doc open: released the page cache"
            );
        }
        Err(error) => tracing::error!(%error, "reopening the database to release its cache failed"),
    }
}

fn commit(store: &Store, batch: &[LogCommand], fsync: bool) {
    // Commands queued behind a failed commit of their doc actor: dropped (see the module docs).
    let live = |command: &&LogCommand| {
        command
            .report()
            .is_none_or(|report| !report.borrow().failed)
    };
    let ops: Vec<WriteOp<'_>> = batch
        .iter()
        .filter(live)
        .filter_map(|command| match command {
            LogCommand::Append {
                doc,
                seq,
                update,
                author,
                ..
            } => Some(WriteOp::Append {
                doc: doc.as_str(),
                seq: *seq,
                update,
                author: author.as_deref(),
            }),
            LogCommand::Version {
                doc,
                record,
                state,
                max_kept,
                ..
            } => Some(WriteOp::Version {
                doc: doc.as_str(),
                record,
                state,
                max_kept: *max_kept,
            }),
            LogCommand::Compact { .. } | LogCommand::ReleaseMemory | LogCommand::Close { .. } => {
                None
            }
        })
        .collect();
    let compactions: Vec<WriteOp<'_>> = batch
        .iter()
        .filter(live)
        .filter_map(|command| match command {
            LogCommand::Compact {
                doc,
                upto_seq,
                snapshot,
                ..
            } => Some(WriteOp::Compact {
                doc: doc.as_str(),
                upto_seq: *upto_seq,
                snapshot,
            }),
            _ => None,
        })
        .collect();
    let started = std::time::Instant::now();
    let (res, damaged) = commit_without_damaged(store, &ops, fsync);
    tracing::debug!(
        n_ops = ops.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "commit"
    );
    let is_damaged = |doc: &DocId| damaged.iter().any(|name| name == doc.as_str());
    let storage_fault = match &res {
        Ok(()) => false,
        Err(error) => {
            let fault = error.read_only_reason();
            match fault {
                // The store logged the transition to read-only once; each refusal is routine.
                Some(_) => tracing::debug!(%error, n_ops = ops.len(), "commit refused"),
                None => tracing::error!(
                    %error,
                    n_ops = ops.len(),
                    "commit failed; affected docs stop accepting edits"
                ),
            }
            fault.is_some()
        }
    };
    // One report per doc actor per commit: the actor wakes once and sees the whole commit.
    let mut reports: Vec<(&DocId, &watch::Sender<Durability>, Durability)> = Vec::new();
    let mut by_doc: HashMap<&DocId, usize> = HashMap::new();
    for command in batch.iter().filter(live) {
        let (doc, report, seq, version) = match command {
            LogCommand::Append {
                doc, seq, report, ..
            } => (doc, report, *seq, 0),
            LogCommand::Version {
                doc,
                record,
                report,
                ..
            } => (doc, report, 0, record.id),
            _ => continue,
        };
        // Two actors of one doc (an unload and a reload) may share a batch: match the channel.
        let found = match by_doc.get(doc) {
            Some(&i) if reports[i].1.same_channel(report) => Some(i),
            Some(_) => reports.iter().position(|(_, r, _)| r.same_channel(report)),
            None => None,
        };
        let slot = found.unwrap_or_else(|| {
            reports.push((doc, report, Durability::default()));
            by_doc.insert(doc, reports.len() - 1);
            reports.len() - 1
        });
        let highest = &mut reports[slot].2;
        highest.durable_seq = highest.durable_seq.max(seq);
        highest.durable_version = highest.durable_version.max(version);
    }
    if res.is_err() {
        // Before any actor hears of the failure (and reloads): nothing of it stays stored. A doc
        // with two actors' channels in the batch keeps the higher of what each was told.
        let mut durable_by_doc: HashMap<&DocId, Durability> = HashMap::new();
        for (doc, report, _) in reports.iter().filter(|(doc, _, _)| !is_damaged(doc)) {
            let told = *report.borrow();
            let durable = durable_by_doc.entry(doc).or_default();
            durable.durable_seq = durable.durable_seq.max(told.durable_seq);
            durable.durable_version = durable.durable_version.max(told.durable_version);
        }
        for (doc, durable) in durable_by_doc {
            roll_back(store, doc, durable);
        }
    }
    for (doc, report, highest) in reports {
        if is_damaged(doc) {
            report.send_modify(|state| {
                state.failed = true;
                state.corrupt = true;
            });
            continue;
        }
        report.send_modify(|state| match res {
            Ok(()) => {
                state.durable_seq = state.durable_seq.max(highest.durable_seq);
                state.durable_version = state.durable_version.max(highest.durable_version);
            }
            Err(_) => {
                state.failed = true;
                state.storage_fault = storage_fault;
            }
        });
    }
    let compactions: Vec<WriteOp<'_>> = compactions
        .into_iter()
        .filter(|op| !damaged.iter().any(|name| name == op_doc(op)))
        .collect();
    if res.is_ok() && !compactions.is_empty() {
        // A failed compaction loses nothing: the log it would have replaced stays.
        match store.commit(&compactions, crate::clock::now_ms(), fsync) {
            Ok(()) => {}
            // Read-only: logged once by the store; the next compaction covers these logs too.
            Err(error) if error.read_only_reason().is_some() => {
                tracing::debug!(%error, n_ops = compactions.len(), "compaction refused");
            }
            Err(error) => {
                tracing::warn!(%error, n_ops = compactions.len(), "compaction failed; the logs stay");
            }
        }
    }
}

/// Commits `ops`; while that fails because the stored records of one doc in it are damaged,
/// commits again without that doc's ops (see the module documentation). Returns the result of
/// the last try and the damaged docs left out.
fn commit_without_damaged(
    store: &Store,
    ops: &[WriteOp<'_>],
    fsync: bool,
) -> (Result<(), StoreError>, Vec<String>) {
    let mut damaged: Vec<String> = Vec::new();
    let mut kept: Vec<WriteOp<'_>> = ops.to_vec();
    loop {
        if kept.is_empty() {
            return (Ok(()), damaged);
        }
        let res = store.commit(&kept, crate::clock::now_ms(), fsync);
        let doc = match &res {
            Err(error @ StoreError::Corrupt { doc, .. }) if error.is_damage() => doc,
            _ => return (res, damaged),
        };
        let before = kept.len();
        kept.retain(|op| op_doc(op) != doc);
        if kept.len() == before {
            // Not a doc of this batch: nothing to leave out.
            return (res, damaged);
        }
        if let Err(error) = &res {
            tracing::error!(
                doc = %doc,
                %error,
                n_ops = kept.len(),
                "stored doc is damaged; committing the rest of the batch without it"
            );
        }
        damaged.push(doc.clone());
    }
}

/// The doc an op writes to.
fn op_doc<'a>(op: &WriteOp<'a>) -> &'a str {
    match *op {
        WriteOp::Append { doc, .. }
        | WriteOp::Compact { doc, .. }
        | WriteOp::Version { doc, .. } => doc,
    }
}

/// Removes whatever of a failed commit reached the file for `doc`.
fn roll_back(store: &Store, doc: &DocId, durable: Durability) {
    match store.discard_after(doc.as_str(), durable.durable_seq, durable.durable_version) {
        Ok(false) => {}
        Ok(true) => tracing::warn!(
            doc = %doc,
            durable_seq = durable.durable_seq,
            "a failed commit had reached the file; rolled back"
        ),
        // The doc stays as the store has it; its actor reloads whatever that is.
        Err(error) => tracing::error!(doc = %doc, %error, "rolling back a failed commit failed"),
    }
}

impl LogCommand {
    /// The doc actor's channel, for the commands that carry one.
    fn report(&self) -> Option<&watch::Sender<Durability>> {
        match self {
            LogCommand::Append { report, .. }
            | LogCommand::Version { report, .. }
            | LogCommand::Compact { report, .. } => Some(report),
            LogCommand::ReleaseMemory | LogCommand::Close { .. } => None,
        }
    }

    fn doc(&self) -> Option<&DocId> {
        match self {
            LogCommand::Append { doc, .. }
            | LogCommand::Version { doc, .. }
            | LogCommand::Compact { doc, .. } => Some(doc),
            LogCommand::ReleaseMemory | LogCommand::Close { .. } => None,
        }
    }

    fn n_bytes(&self) -> usize {
        match self {
            LogCommand::Append { update, .. } => update.len(),
            LogCommand::Compact { snapshot, .. } => snapshot.len(),
            LogCommand::Version { state, .. } => state.len(),
            LogCommand::ReleaseMemory | LogCommand::Close { .. } => 0,
        }
    }
}

/// The one-node log: redb, written by the writer thread of this module.
pub struct RedbLog {
    store: Arc<Store>,
    writer: Writer,
}

impl RedbLog {
    /// The log over `store`, writing through `writer` (from [`spawn_writer`]).
    pub fn new(store: Arc<Store>, writer: Writer) -> RedbLog {
        RedbLog { store, writer }
    }
}

impl DocLog for RedbLog {
    fn sender(&self) -> &mpsc::Sender<LogCommand> {
        &self.writer.tx
    }

    fn load(&self, doc: &DocId) -> LogFuture<Result<LoadedLog, LoadFailure>> {
        let store = self.store.clone();
        let name = doc.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let stored = store.load_doc(name.as_str())?;
                let history = store.history_head(name.as_str())?;
                let n_named = store
                    .list_versions(name.as_str())?
                    .iter()
                    .filter(|v| v.kind == VersionKind::Named)
                    .count() as u64;
                Ok::<_, LoadFailure>(LoadedLog {
                    stored,
                    history,
                    n_named,
                    position: None,
                })
            })
            .await
            .map_err(|error| LoadFailure::Failed(format!("load task failed: {error}")))?
        })
    }

    fn exists(&self, doc: &DocId) -> LogFuture<Result<bool, LoadFailure>> {
        let store = self.store.clone();
        let name = doc.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.doc_meta(name.as_str()))
                .await
                .map_err(|error| LoadFailure::Failed(format!("lookup task failed: {error}")))?
                .map(|meta| meta.is_some())
                .map_err(LoadFailure::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn append(doc: &DocId, seq: u64, report: &watch::Sender<Durability>) -> LogCommand {
        LogCommand::Append {
            doc: doc.clone(),
            seq,
            update: Bytes::from_static(&[0, 0]),
            author: None,
            report: report.clone(),
        }
    }

    /// A writer with fsync on a fresh store; keep the directory for as long as the store.
    fn start_writer(
        commit_interval: Duration,
    ) -> (tempfile::TempDir, Arc<Store>, mpsc::Sender<LogCommand>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.redb")).unwrap());
        let config = PersistConfig {
            fsync: true,
            cache_bytes: 1 << 20,
            commit_interval,
            reserve_bytes: 0,
        };
        let writer = spawn_writer(store.clone(), config).unwrap().tx;
        (dir, store, writer)
    }

    async fn stop_writer(writer: &mpsc::Sender<LogCommand>) {
        let (done, closed) = oneshot::channel();
        writer.send(LogCommand::Close { done }).await.unwrap();
        closed.await.unwrap();
    }

    /// A busy writer waits out the interval and commits what arrived meanwhile as one group,
    /// reported once; an idle one commits at once. The bounds only catch a writer that is early,
    /// or one that waits a whole interval before its very first commit, so a slow machine
    /// cannot fail them.
    #[tokio::test]
    async fn a_busy_writer_groups_what_arrives_within_the_interval() {
        let interval = Duration::from_secs(3);
        let (_dir, store, writer) = start_writer(interval);
        let doc = DocId::new("grouped").unwrap();
        let (report, mut durable) = watch::channel(Durability::default());

        let started = Instant::now();
        writer.send(append(&doc, 1, &report)).await.unwrap();
        durable.changed().await.unwrap();
        assert_eq!(durable.borrow_and_update().durable_seq, 1);
        assert!(
            started.elapsed() < interval,
            "the first commit waited for the interval"
        );

        // Three more right away: the writer is busy, so they wait for the interval together.
        let sent = Instant::now();
        for seq in 2..=4 {
            writer.send(append(&doc, seq, &report)).await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), durable.changed())
                .await
                .is_err(),
            "committed before the interval ended"
        );
        durable.changed().await.unwrap();
        assert_eq!(
            durable.borrow_and_update().durable_seq,
            4,
            "one report for the whole group"
        );
        assert!(sent.elapsed() >= Duration::from_millis(500));
        let loaded = store.load_doc(doc.as_str()).unwrap();
        assert_eq!(loaded.updates.len(), 4);

        stop_writer(&writer).await;
    }

    /// The interval is per doc: right after a commit of one doc, an update of another doc commits
    /// at once, while a second update of the first waits for the rest of its interval.
    #[tokio::test]
    async fn a_quiet_doc_commits_at_once_beside_a_busy_one() {
        let interval = Duration::from_secs(3);
        let (_dir, _store, writer) = start_writer(interval);
        let busy = DocId::new("busy").unwrap();
        let quiet = DocId::new("quiet").unwrap();
        let (busy_report, mut busy_durable) = watch::channel(Durability::default());
        let (quiet_report, mut quiet_durable) = watch::channel(Durability::default());

        writer.send(append(&busy, 1, &busy_report)).await.unwrap();
        busy_durable.changed().await.unwrap();
        let sent = Instant::now();
        writer.send(append(&quiet, 1, &quiet_report)).await.unwrap();
        quiet_durable.changed().await.unwrap();
        assert_eq!(quiet_durable.borrow_and_update().durable_seq, 1);
        assert!(
            sent.elapsed() < interval / 2,
            "the quiet doc waited for the busy doc's interval"
        );

        writer.send(append(&busy, 2, &busy_report)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), busy_durable.changed())
                .await
                .is_err(),
            "the busy doc committed again before its interval ended"
        );
        busy_durable.changed().await.unwrap();
        assert_eq!(busy_durable.borrow_and_update().durable_seq, 2);

        stop_writer(&writer).await;
    }

    /// Regression: a batch holding a doc whose stored `docs` row is damaged failed as a whole
    /// (`Store::commit` decodes each doc's row), so group commit failed every healthy doc that
    /// happened to share the batch, and their peers were closed with "storage failure". Now the
    /// writer commits the batch again without the damaged doc, and only that doc's channel
    /// fails, marked `corrupt`.
    #[tokio::test]
    async fn a_damaged_doc_fails_only_itself_and_the_rest_of_its_batch_commits() {
        // The damaged doc's last change time, a value found nowhere else in the file.
        const MARK: u64 = 0x5eed_f00d_cafe_0001;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path).unwrap();
            let op = WriteOp::Append {
                doc: "bad",
                seq: 1,
                update: &[0, 0],
                author: None,
            };
            store.commit(&[op], MARK, true).unwrap();
        }
        // Flip one bit of the stored row, as a damaged disk would.
        let mut bytes = std::fs::read(&path).unwrap();
        let mark = MARK.to_le_bytes();
        let found: Vec<usize> = bytes
            .windows(mark.len())
            .enumerate()
            .filter(|(_, window)| *window == mark)
            .map(|(at, _)| at)
            .collect();
        assert!(!found.is_empty(), "the row is in the file");
        for at in found {
            bytes[at + 3] ^= 0x01;
        }
        std::fs::write(&path, bytes).unwrap();
        let store = Arc::new(Store::open(&path).unwrap());
        assert!(store.doc_meta("bad").is_err_and(|error| error.is_damage()));

        let config = PersistConfig {
            fsync: true,
            cache_bytes: 1 << 20,
            commit_interval: Duration::from_secs(2),
            reserve_bytes: 0,
        };
        let writer = spawn_writer(store.clone(), config).unwrap().tx;
        let good = DocId::new("good").unwrap();
        let bad = DocId::new("bad").unwrap();
        let (good_report, mut good_durable) = watch::channel(Durability::default());
        let (bad_report, mut bad_durable) = watch::channel(Durability::default());
        writer.send(append(&good, 1, &good_report)).await.unwrap();
        good_durable.changed().await.unwrap();
        // `good` is now busy: its next update waits for the interval, and the update of `bad`
        // sent meanwhile joins the same batch.
        writer.send(append(&good, 2, &good_report)).await.unwrap();
        writer.send(append(&bad, 2, &bad_report)).await.unwrap();
        good_durable.changed().await.unwrap();
        assert_eq!(
            *good_durable.borrow(),
            Durability {
                durable_seq: 2,
                ..Durability::default()
            }
        );
        bad_durable.changed().await.unwrap();
        assert_eq!(
            *bad_durable.borrow(),
            Durability {
                failed: true,
                corrupt: true,
                ..Durability::default()
            }
        );
        assert_eq!(store.load_doc("good").unwrap().last_seq, 2);

        stop_writer(&writer).await;
    }

    /// A tmpfs mounted for one test (needs root, as CI has), unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mounting a tmpfs failed; this test needs root"
            );
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            for args in [&[][..], &["--lazy"][..]] {
                let status = std::process::Command::new("umount")
                    .args(args)
                    .arg(self.0.path())
                    .status();
                if matches!(status, Ok(status) if status.success()) {
                    return;
                }
            }
        }
    }

    /// A commit refused on a full disk fails its channel with `storage_fault`, and the channel
    /// stays failed: an update queued on it later is dropped even once space returned (the
    /// actor reloads and goes on on a fresh channel, which commits the same seq).
    #[tokio::test]
    async fn a_refused_commit_fails_its_channel_for_good() {
        let tmpfs = Tmpfs::mount("4m");
        let store = Arc::new(Store::open(&tmpfs.0.path().join("t.redb")).unwrap());
        let config = PersistConfig {
            fsync: true,
            cache_bytes: 1 << 20,
            commit_interval: Duration::ZERO,
            reserve_bytes: 0,
        };
        let writer = spawn_writer(store.clone(), config).unwrap().tx;
        let doc = DocId::new("full").unwrap();
        let filler = tmpfs.0.path().join("filler");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&filler).unwrap();
            while file.write_all(&[1u8; 64 * 1024]).is_ok() {}
        }
        let (old_report, mut old_durable) = watch::channel(Durability::default());
        let big = |seq| LogCommand::Append {
            doc: doc.clone(),
            seq,
            update: Bytes::from(vec![7u8; 512 * 1024]),
            author: None,
            report: old_report.clone(),
        };
        writer.send(big(1)).await.unwrap();
        old_durable.changed().await.unwrap();
        let state = *old_durable.borrow_and_update();
        assert!(state.failed && state.storage_fault, "{state:?}");
        assert!(!store.health().writable);

        std::fs::remove_file(&filler).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.try_resume() {
            assert!(Instant::now() < deadline, "writes never resumed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Queued behind the refusal on the failed channel: dropped.
        writer.send(big(2)).await.unwrap();
        let (new_report, mut new_durable) = watch::channel(Durability::default());
        writer
            .send(LogCommand::Append {
                doc: doc.clone(),
                seq: 1,
                update: Bytes::from_static(b"fresh"),
                author: None,
                report: new_report.clone(),
            })
            .await
            .unwrap();
        new_durable.changed().await.unwrap();
        assert_eq!(
            *new_durable.borrow(),
            Durability {
                durable_seq: 1,
                ..Durability::default()
            }
        );
        let stored = store.load_doc(doc.as_str()).unwrap();
        assert_eq!(stored.updates, vec![b"fresh".to_vec()]);
        assert_eq!(stored.last_seq, 1);

        stop_writer(&writer).await;
        drop(store);
        drop(tmpfs);
    }
}
