//! The redb writer: one dedicated thread that commits updates for every doc, in groups.
//!
//! redb allows one writer at a time and its API is synchronous, so all writes go through this
//! thread. Doc actors send [`PersistCommand`]s over a bounded channel. The thread takes the first
//! command, then everything else already queued (up to [`MAX_BATCH_OPS`] / [`MAX_BATCH_BYTES`]),
//! and commits the batch in one transaction with `Durability::Immediate` (fsync). While one commit
//! is in flight, new commands queue up and form the next group: this is group commit, and it is
//! what keeps throughput up with an fsync per commit.
//!
//! After the commit returns, each doc's `watch` channel is advanced to the highest seq of that doc
//! in the batch: "durable up to N". Doc actors release broadcasts and replies only up to that
//! point (invariant: nothing is sent before the commit that contains it has returned).
//! On a failed commit the channel is marked failed instead, and the actor treats the doc as
//! unavailable: nothing in the failed batch is ever broadcast.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tandem_core::DocId;
use tandem_store::{Store, VersionRecord, WriteOp};
use tokio::sync::{mpsc, oneshot, watch};

/// Capacity of the channel into the writer. When it is full, doc actors wait, which in turn
/// stops connections from reading: backpressure all the way to the sockets.
pub(crate) const PERSIST_QUEUE_CAPACITY: usize = 4096;
/// Most write operations in one transaction.
pub(crate) const MAX_BATCH_OPS: usize = 2048;
/// Most update bytes in one transaction (a large paste still commits alone).
pub(crate) const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// What the writer reports back to one doc actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Durability {
    /// Every update of the doc with a seq at or below this is committed.
    pub(crate) durable_seq: u64,
    /// Every version of the doc with an id at or below this is committed.
    pub(crate) durable_version: u64,
    /// A commit containing this doc's updates failed; nothing after `durable_seq` is on disk.
    pub(crate) failed: bool,
}

/// A request to the writer thread.
pub(crate) enum PersistCommand {
    /// Append one update to a doc's log, with who sent it (an encoded `tandem_store::Author`,
    /// shared by all the updates of one author, so this costs no allocation per update).
    Append {
        doc: DocId,
        seq: u64,
        update: Bytes,
        author: Option<Arc<[u8]>>,
        report: watch::Sender<Durability>,
    },
    /// Store a version of a doc (metadata and state), pruning old automatic ones.
    Version {
        doc: DocId,
        record: Box<VersionRecord>,
        state: Vec<u8>,
        max_kept: u64,
        report: watch::Sender<Durability>,
    },
    /// Replace the log up to `upto_seq` by a snapshot, in one transaction.
    Compact {
        doc: DocId,
        upto_seq: u64,
        snapshot: Vec<u8>,
    },
    /// No doc is open any more: commit what is queued, then drop redb's page cache.
    ReleaseMemory,
    /// Commit what is queued and stop. Sent once, after every doc actor has exited.
    Close { done: oneshot::Sender<()> },
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Commit with fsync (`Durability::Immediate`). Off only for benchmarks.
    pub fsync: bool,
    /// Upper bound of redb's page cache, in bytes.
    pub cache_bytes: usize,
}

/// Starts the writer thread; returns the sender doc actors use.
pub(crate) fn spawn_writer(
    store: Arc<Store>,
    config: PersistConfig,
) -> std::io::Result<mpsc::Sender<PersistCommand>> {
    let (tx, rx) = mpsc::channel(PERSIST_QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("tandem-redb-writer".into())
        .spawn(move || run(store, rx, &config))?;
    Ok(tx)
}

fn run(store: Arc<Store>, mut rx: mpsc::Receiver<PersistCommand>, config: &PersistConfig) {
    let mut n_commits: u64 = 0;
    let mut close: Option<oneshot::Sender<()>> = None;
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        let mut n_bytes = 0usize;
        let mut release = false;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                PersistCommand::Close { done } => {
                    close = Some(done);
                    break;
                }
                PersistCommand::ReleaseMemory => {
                    release = true;
                    break;
                }
                command => {
                    n_bytes += command.n_bytes();
                    batch.push(command);
                }
            }
            if batch.len() >= MAX_BATCH_OPS || n_bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            commit(&store, &batch, config.fsync);
            n_commits += 1;
        }
        if release && close.is_none() {
            release_memory(&store);
        }
    }
    // Close the database before reporting: whoever waits may reopen the file at once.
    drop(store);
    tracing::info!(n_commits, "redb writer stopped");
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn release_memory(store: &Store) {
    let started = std::time::Instant::now();
    match store.release_cache() {
        Ok(()) => {
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "no doc open: released the page cache"
            );
        }
        Err(error) => tracing::error!(%error, "reopening the database to release its cache failed"),
    }
}

fn commit(store: &Store, batch: &[PersistCommand], fsync: bool) {
    let ops: Vec<WriteOp<'_>> = batch
        .iter()
        .filter_map(|command| match command {
            PersistCommand::Append {
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
            PersistCommand::Version {
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
            PersistCommand::Compact {
                doc,
                upto_seq,
                snapshot,
            } => Some(WriteOp::Compact {
                doc: doc.as_str(),
                upto_seq: *upto_seq,
                snapshot,
            }),
            PersistCommand::ReleaseMemory | PersistCommand::Close { .. } => None,
        })
        .collect();
    let started = std::time::Instant::now();
    let res = store.commit(&ops, now_ms(), fsync);
    tracing::debug!(
        n_ops = ops.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "commit"
    );
    if let Err(error) = &res {
        tracing::error!(%error, n_ops = ops.len(), "commit failed; affected docs stop accepting edits");
    }
    for command in batch {
        match command {
            PersistCommand::Append { seq, report, .. } => {
                report.send_modify(|state| match res {
                    Ok(()) => state.durable_seq = state.durable_seq.max(*seq),
                    Err(_) => state.failed = true,
                });
            }
            PersistCommand::Version { record, report, .. } => {
                report.send_modify(|state| match res {
                    Ok(()) => state.durable_version = state.durable_version.max(record.id),
                    Err(_) => state.failed = true,
                });
            }
            _ => {}
        }
    }
}

impl PersistCommand {
    fn n_bytes(&self) -> usize {
        match self {
            PersistCommand::Append { update, .. } => update.len(),
            PersistCommand::Compact { snapshot, .. } => snapshot.len(),
            PersistCommand::Version { state, .. } => state.len(),
            PersistCommand::ReleaseMemory | PersistCommand::Close { .. } => 0,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, recorded as a doc's "last change".
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
