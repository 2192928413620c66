//! The document log: where a doc actor's accepted updates go before anyone sees them, and, with
//! several nodes, where the updates other nodes accepted come from.
//!
//! The actor speaks to the log through [`LogCommand`]s on one bounded channel and hears back
//! through a `watch` of [`Durability`] per doc: "durable up to seq N". That protocol is the same
//! for every implementation of [`DocLog`]:
//! - one node: redb (`RedbLog`, beside the writer thread in `persist.rs`);
//! - cluster mode: a shared engine (`tandem-cluster`: Redis streams and Postgres snapshots),
//!   which also feeds each open doc what other nodes appended ([`RemoteInput`]) and carries
//!   presence between nodes.
//!
//! Invariants every implementation keeps:
//! - `durable_seq` reaches a seq only once the update with that seq, and every earlier one of
//!   the doc, is durable in the log (fsynced, or acknowledged by an engine configured to fsync
//!   before it acknowledges).
//! - An update handed to a doc through [`RemoteInput::Updates`] is already durable: the actor
//!   relays it at once.
//! - A load returns everything durable at the time it started, as one doc state; a doc is never
//!   served empty because its log was unreachable (the load fails instead).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tandem_core::DocId;
use tandem_store::{HistoryHead, StoredDoc, VersionRecord};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// A future a [`DocLog`] returns; boxed so the trait can be used as `dyn DocLog`.
pub type LogFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the log reports back to one doc actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durability {
    /// Every update of the doc with a seq at or below this is durable.
    pub durable_seq: u64,
    /// Every version of the doc with an id at or below this is durable.
    pub durable_version: u64,
    /// A write containing this doc's updates failed; nothing after `durable_seq` is durable.
    pub failed: bool,
    /// The failure was a storage fault (a full disk, an unreachable engine): storage is
    /// unavailable for a while, not broken. The actor drops what was refused and goes on.
    pub storage_fault: bool,
    /// The failure was this doc's stored records being damaged: the actor refuses the doc
    /// (1011 "document damaged").
    pub corrupt: bool,
}

/// A request to the log.
pub enum LogCommand {
    /// Append one update to a doc's log, with who sent it (an encoded `tandem_store::Author`,
    /// shared by all the updates of one author, so this costs no allocation per update).
    Append {
        /// The doc.
        doc: DocId,
        /// The actor's own count of the doc's updates; `report` is advanced to it once durable.
        seq: u64,
        /// The v1 update.
        update: Bytes,
        /// Who sent it.
        author: Option<Arc<[u8]>>,
        /// The doc actor's channel.
        report: watch::Sender<Durability>,
    },
    /// Store a version of a doc (metadata and state), pruning old automatic ones.
    Version {
        /// The doc.
        doc: DocId,
        /// The version's metadata.
        record: Box<VersionRecord>,
        /// The doc's whole state as one v1 update.
        state: Vec<u8>,
        /// Most versions of the record's kind kept.
        max_kept: u64,
        /// The doc actor's channel.
        report: watch::Sender<Durability>,
        /// The id the version was stored under, sent before `report` counts it durable, if the
        /// log had to pick another one than `record.id` or says so anyway (cluster mode: another
        /// node took that id). Dropped unsent means "stored as `record.id`" (redb);
        /// [`VERSION_NOT_STORED`] means the version alone was refused (the doc goes on).
        stored_id: oneshot::Sender<u64>,
    },
    /// Replace the log up to `upto_seq` by a snapshot.
    Compact {
        /// The doc.
        doc: DocId,
        /// The last of the actor's seqs the snapshot covers.
        upto_seq: u64,
        /// The doc's whole state as one v1 update.
        snapshot: Vec<u8>,
        /// The last position of a shared log the snapshot covers (cluster mode: the newest
        /// stream entry the actor had applied); `None` for redb.
        position: Option<Arc<str>>,
        /// The doc actor's channel: a compaction queued behind a failed write is dropped.
        report: watch::Sender<Durability>,
    },
    /// No doc is open any more: give back what caches can be given back.
    ReleaseMemory,
    /// Finish what is queued and stop. Sent once, after every doc actor has exited.
    Close {
        /// Answered once everything is written.
        done: oneshot::Sender<()>,
    },
}

/// The stored id that says a version was not stored (ids count from 1): the request that
/// asked for it fails, and nothing else does.
pub const VERSION_NOT_STORED: u64 = 0;

/// A doc as its log holds it.
#[derive(Debug, Default)]
pub struct LoadedLog {
    /// The snapshot and the updates after it.
    pub stored: StoredDoc,
    /// The newest version and who wrote since.
    pub history: HistoryHead,
    /// How many named versions the doc has.
    pub n_named: u64,
    /// Where in a shared log the load ended (the newest stream entry it read); following the
    /// doc starts after it. `None` for redb.
    pub position: Option<Arc<str>>,
}

/// Why a doc did not load.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadFailure {
    /// Its stored records are damaged: a checksum failed, the log has a gap, or the stored
    /// updates do not decode. Retrying does not help.
    #[error("{0}")]
    Corrupt(String),
    /// Anything else (an I/O error, an unreachable engine, a failed task); a later open may
    /// succeed.
    #[error("{0}")]
    Failed(String),
}

impl From<tandem_store::StoreError> for LoadFailure {
    fn from(error: tandem_store::StoreError) -> Self {
        if error.is_damage() {
            LoadFailure::Corrupt(error.to_string())
        } else {
            LoadFailure::Failed(error.to_string())
        }
    }
}

/// What other nodes did to a doc this node has open (cluster mode only).
#[derive(Debug)]
pub enum RemoteInput {
    /// Updates other nodes appended, already durable, in log order; `position` is the newest
    /// entry read (this node's own entries included, which are not repeated here).
    Updates {
        /// The v1 updates.
        updates: Vec<Bytes>,
        /// The newest log position read.
        position: Arc<str>,
    },
    /// An awareness frame (a y-websocket awareness message, whole) from a peer of `node`,
    /// already checked by that node.
    Awareness {
        /// The node the frame's states belong to.
        node: Arc<str>,
        /// The frame.
        frame: Bytes,
    },
    /// Another node opened the doc and asks for the current presence of this node's peers.
    PresenceQuery,
    /// `node` stopped (its heartbeat expired, or it said goodbye): remove its peers' presence.
    NodeGone {
        /// The node.
        node: Arc<str>,
    },
}

/// Capacity of a doc's feed of [`RemoteInput`]. When it is full the log stops feeding the doc
/// and asks for a resync instead (see [`Feed`]).
pub const REMOTE_FEED_CAPACITY: usize = 1024;

/// The channel a doc actor gives the log when it starts following other nodes.
#[derive(Clone, Debug)]
pub struct Feed {
    /// Where the log sends what other nodes did. Bounded; the log never waits on it.
    pub tx: mpsc::Sender<RemoteInput>,
    /// Notified when the log had to drop input for this doc (the feed was full, or the log lost
    /// its place, e.g. after the engine was unreachable): the actor reloads the doc from the
    /// log and merges it, and follows again from the new position.
    pub resync: Arc<Notify>,
}

/// The document log the hub works on. One per process.
pub trait DocLog: Send + Sync + 'static {
    /// The channel doc actors send their [`LogCommand`]s to.
    fn sender(&self) -> &mpsc::Sender<LogCommand>;

    /// Everything durable about `doc`.
    fn load(&self, doc: &DocId) -> LogFuture<Result<LoadedLog, LoadFailure>>;

    /// Whether `doc` was ever stored (asking about a doc must not create it).
    fn exists(&self, doc: &DocId) -> LogFuture<Result<bool, LoadFailure>>;

    /// Start feeding `doc`'s actor (of `generation`) what other nodes append after `position`
    /// and their presence. One node never has anything to feed: the default does nothing.
    fn follow(&self, doc: &DocId, generation: u64, position: Option<Arc<str>>, feed: Feed) {
        let _ = (doc, generation, position, feed);
    }

    /// Stop feeding `doc`'s actor of `generation` (it unloaded).
    fn unfollow(&self, doc: &DocId, generation: u64) {
        let _ = (doc, generation);
    }

    /// Tell other nodes about an awareness frame from this node's peers of `doc` (a change, or
    /// the removal of a peer that left). Presence is never written to the durable log.
    fn publish_presence(&self, doc: &DocId, frame: &Bytes) {
        let _ = (doc, frame);
    }

    /// Whether updates of other nodes can arrive (cluster mode).
    fn is_shared(&self) -> bool {
        false
    }
}
