//! Tandem's real-time engine: the registry of open docs, one actor task per open doc, one task
//! per WebSocket connection, the redb writer, and the lifecycle they all run under.
//!
//! The hub sits on `tandem-core` (the sans-IO protocol and doc) and `tandem-store` (redb), and
//! knows nothing of HTTP, tokens, accounts, files, activity or webhooks: it takes a
//! [`PeerGrant`] instead of a token, emits [`DocEvent`]s through a [`DocEventSink`] the server
//! provides, and serves any byte stream as a WebSocket. `tests/boundary.rs` keeps its dependency
//! list from growing past that.
//!
//! # Layout
//!
//! - this file: [`Hub`], the cheap-clone facade (join, snapshot, covers, apply, versions,
//!   restore, presence), and [`HubConfig`].
//! - `registry`: `DocId -> DocHandle`, single-flight open, removal by generation.
//! - [`connection`]: one task per WebSocket peer: read loop, bounded outbox, ping, close.
//! - `doc_actor`: the owner task of each open doc: ordering, durability gate, fan-out, unload;
//!   its `history` module keeps authors, versions, restores and change reports.
//! - [`hocuspocus`]: one task per Hocuspocus WebSocket: many docs over one socket, each joined
//!   as a peer like a y-websocket connection, with per-doc authorisation asked of the server.
//! - [`event`]: what the hub tells the world, and the sink it tells it through.
//! - `peer`: a peer's grant and address, and why and how its connection is closed.
//! - `outbox`: the bounded queue of frames from a doc actor to one connection.
//! - [`log`]: the document log the actors write through ([`DocLog`]): redb on one node, a
//!   shared engine in cluster mode; and what other nodes did to an open doc ([`RemoteInput`]).
//! - [`metrics`]: the hub's metric handles ([`HubMetrics`]), made and served by the server.
//! - [`persist`]: the redb writer thread with group commit.
//! - [`lifecycle`]: the cancellation token, task tracker and signal future.
//! - [`clock`]: wall-clock milliseconds and the optional-deadline sleep.
//! - [`alloc`]: the allocator's per-thread caches emptied once no doc is open.

pub mod alloc;
pub mod clock;
pub mod connection;
mod doc_actor;
pub mod event;
pub mod hocuspocus;
pub mod lifecycle;
pub mod log;
pub mod metrics;
mod outbox;
mod peer;
pub mod persist;
mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tandem_core::{DocId, Limits, PeerAccess, PeerId, PresentUser, ProtocolError, SharedDoc};
use tandem_store::VersionRecord;
use tokio::sync::{mpsc, oneshot};
use yrs::Snapshot;

pub use crate::connection::ConnectionConfig;
use crate::doc_actor::{ApplyCommand, DocCommand, RestoreCommand, SaveVersionCommand};
pub use crate::doc_actor::{DocSnapshot, RestoreRefused};
pub use crate::event::{Actor, DocEvent, DocEventSink};
pub use crate::lifecycle::Lifecycle;
pub use crate::log::{DocLog, Feed, LoadFailure, LoadedLog, LogCommand, RemoteInput};
pub use crate::metrics::HubMetrics;
use crate::outbox::OutboxSender;
use crate::peer::Closer;
pub use crate::peer::{PeerAddr, PeerGrant};
pub use crate::persist::PersistConfig;
pub use crate::persist::RedbLog;
pub use crate::registry::DocHandle;
use crate::registry::Registry;

/// Capacity of each doc actor's inbox. A full inbox makes connections stop reading their sockets.
pub(crate) const DOC_INBOX_CAPACITY: usize = 1024;
/// Frames queued for one peer before it is closed as a slow consumer. A group commit releases up
/// to `persist::MAX_BATCH_OPS` (2,048) deliveries to every peer of a busy doc at once, faster than
/// any connection drains them; the queue holds several such bursts, so only a peer that stops
/// reading is closed. The queue grows in blocks as it fills, so an idle peer does not pay for it.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8192;
/// Named versions per doc, and restore versions kept per doc.
pub const DEFAULT_MAX_NAMED_VERSIONS: u64 = 1000;
/// How many times a join retries when it meets a doc that is unloading.
const MAX_JOIN_ATTEMPTS: usize = 4;

/// Settings of the hub and its doc actors.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a doc with no peers stays in memory before it unloads.
    pub doc_unload_grace: Duration,
    /// Compact a doc's log into a snapshot after this many appended updates.
    pub compact_after_updates: u64,
    /// ... or after this many appended bytes, whichever comes first.
    pub compact_after_bytes: u64,
    /// Capacity of each peer's outgoing queue, in frames. A full queue closes that peer.
    pub outbox_capacity: usize,
    /// A doc with unversioned edits gets an automatic version this long after its last one.
    pub auto_version_interval: Duration,
    /// Automatic versions kept per doc, at least 1 (older ones are pruned).
    pub max_auto_versions: u64,
    /// Named versions per doc (beyond it, saving one is refused with `too_many_versions`), and
    /// restore versions kept per doc (older ones are pruned).
    pub max_named_versions: u64,
    /// Per-peer and per-doc limits.
    pub limits: Limits,
    /// How often a doc reports the ongoing edits of one author ([`DocEvent::Changed`]).
    pub doc_changed_interval: Duration,
    /// What the hub counts (off by default; the server passes its own, `metrics.rs`).
    pub metrics: HubMetrics,
}

impl Default for HubConfig {
    /// The server's defaults.
    fn default() -> HubConfig {
        HubConfig {
            doc_unload_grace: Duration::from_secs(30),
            compact_after_updates: 1000,
            compact_after_bytes: 8 * 1024 * 1024,
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            auto_version_interval: Duration::from_secs(600),
            max_auto_versions: 100,
            max_named_versions: DEFAULT_MAX_NAMED_VERSIONS,
            limits: Limits::default(),
            doc_changed_interval: Duration::from_secs(1),
            metrics: HubMetrics::default(),
        }
    }
}

/// A cheap-clone handle to the registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// The open docs; see `registry` for how opening and unloading race safely.
    docs: Registry,
    /// Where updates go before anyone sees them, and where docs load from.
    log: Arc<dyn DocLog>,
    config: HubConfig,
    lifecycle: Lifecycle,
    /// Where doc actors publish their events; called synchronously, in order.
    events: Arc<dyn DocEventSink>,
    next_peer: AtomicU64,
}

/// Why a peer could not join a doc.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum JoinError {
    /// The actor was unloading; try a fresh one.
    #[error("doc is unloading")]
    Retry,
    /// The stored doc cannot be loaded.
    #[error("doc unavailable")]
    Unavailable,
    /// The stored doc is damaged (a record failed its checksum or does not decode); it stays
    /// refused until the file is repaired, and no content of it is served.
    #[error("doc damaged")]
    Corrupt,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The write was refused: the store is read-only (a full disk). Retry later.
    #[error("storage full, retry later")]
    StorageFull,
}

/// What a joining connection hands to the doc actor.
pub(crate) struct PeerLink {
    /// Frames for the peer. Bounded; the actor never waits on it (`try_send`).
    pub(crate) outbox: OutboxSender,
    /// Tells the connection to close with a reason (the first one wins).
    pub(crate) closer: Closer,
    /// What the peer may do, from its token.
    pub(crate) access: PeerAccess,
    /// Which protocol the peer speaks: what the doc actor answers its updates with.
    pub(crate) dialect: Dialect,
}

/// The protocol a peer speaks. Both get the same frames from the doc actor (a Hocuspocus
/// connection adds the routing key on the way out); they differ in how an update is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// y-websocket: no acknowledgement; a read-only peer's update gets Auth "permission denied".
    YWebsocket,
    /// Hocuspocus: every Sync step 2 or update gets a SyncStatus, sent once it is durable;
    /// `0` for a read-only peer's non-empty update.
    Hocuspocus,
}

impl Hub {
    /// The registry over `log` (a [`RedbLog`] on one node), running its tasks under
    /// `lifecycle` and publishing to `events`.
    pub fn new(
        log: Arc<dyn DocLog>,
        config: HubConfig,
        lifecycle: Lifecycle,
        events: Arc<dyn DocEventSink>,
    ) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                docs: Registry::default(),
                log,
                config,
                lifecycle,
                events,
                next_peer: AtomicU64::new(1),
            }),
        }
    }

    /// The log docs load from and write through.
    pub(crate) fn log(&self) -> &dyn DocLog {
        &*self.inner.log
    }

    /// The settings it runs with.
    pub(crate) fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The token and tracker its tasks run under.
    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// Where doc actors publish their events.
    pub(crate) fn events(&self) -> &dyn DocEventSink {
        &*self.inner.events
    }

    pub(crate) fn persist(&self) -> &mpsc::Sender<LogCommand> {
        self.inner.log.sender()
    }

    /// A fresh connection id, unique for the life of the process.
    pub(crate) fn next_peer_id(&self) -> PeerId {
        PeerId(self.inner.next_peer.fetch_add(1, Ordering::Relaxed))
    }

    /// The handle of `doc`'s actor, spawning (and so loading) it if the doc is not open.
    pub(crate) fn get_or_open(&self, doc: &DocId) -> Result<DocHandle, JoinError> {
        if self.inner.lifecycle.is_shutting_down() {
            return Err(JoinError::ShuttingDown);
        }
        Ok(self.inner.docs.get_or_insert_with(doc, |generation| {
            doc_actor::spawn(self.clone(), doc.clone(), generation)
        }))
    }

    /// The handle of `doc`'s actor if it is open; never opens.
    pub fn get(&self, doc: &DocId) -> Option<DocHandle> {
        self.inner.docs.get(doc)
    }

    /// Removes `doc` only if its entry still belongs to actor `generation`.
    /// When that leaves no doc open, asks the writer to give memory back.
    pub(crate) fn remove_if_generation(&self, doc: &DocId, generation: u64) -> bool {
        let removed = self.inner.docs.remove_if_generation(doc, generation);
        if removed {
            self.inner.log.unfollow(doc, generation);
        }
        if removed && self.inner.docs.is_empty() {
            alloc::release();
            // Best effort: with the writer's queue full, the server is anything but idle.
            let _ = self.persist().try_send(LogCommand::ReleaseMemory);
        }
        removed
    }

    /// Joins `peer` to `doc`. Returns once the doc is loaded and the peer is registered.
    pub(crate) async fn join(
        &self,
        doc: &DocId,
        peer: PeerId,
        link: PeerLink,
    ) -> Result<DocHandle, JoinError> {
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let handle = self.get_or_open(doc)?;
            let (reply, joined) = oneshot::channel();
            let command = DocCommand::Join {
                peer,
                link: Box::new(PeerLink {
                    outbox: link.outbox.clone(),
                    closer: link.closer.clone(),
                    access: link.access.clone(),
                    dialect: link.dialect,
                }),
                reply,
            };
            if handle.tx.send(command).await.is_err() {
                // The actor is gone (unloaded or failed): forget it and open afresh.
                self.remove_if_generation(doc, handle.generation);
                continue;
            }
            match joined.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(JoinError::Retry)) | Err(_) => {
                    self.remove_if_generation(doc, handle.generation);
                }
                Ok(Err(error)) => return Err(error),
            }
        }
        Err(JoinError::Unavailable)
    }

    /// The doc's current state, loading it if needed. `None` if it does not exist.
    pub async fn snapshot(&self, doc: &DocId) -> Result<Option<DocSnapshot>, JoinError> {
        self.ask_stored(doc, |reply| DocCommand::Snapshot { reply })
            .await
    }

    /// Whether `doc` durably holds everything `snapshot` describes, loading the doc if needed.
    /// A doc that does not exist is answered as an empty doc, and is not created.
    pub async fn covers(&self, doc: &DocId, snapshot: Snapshot) -> Result<bool, JoinError> {
        let snapshot = Arc::new(snapshot);
        let answer = self
            .ask_stored(doc, |reply| DocCommand::Covers {
                snapshot: snapshot.clone(),
                reply,
            })
            .await?;
        Ok(answer
            .unwrap_or_else(|| SharedDoc::new(self.inner.config.limits.clone()).covers(&snapshot)))
    }

    /// Applies a v1 update sent over HTTP to `doc`, opening (or creating) it. `Ok(Ok(changed))`
    /// once it is durable and relayed to the doc's peers; `Ok(Err(_))` if the update was refused.
    pub async fn apply_update(
        &self,
        doc: &DocId,
        update: Bytes,
        actor: Actor,
    ) -> Result<Result<bool, ProtocolError>, JoinError> {
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let handle = self.get_or_open(doc)?;
            let (reply, answer) = oneshot::channel();
            let command = DocCommand::Apply(Box::new(ApplyCommand {
                update: update.clone(),
                actor: actor.clone(),
                reply,
            }));
            if handle.tx.send(command).await.is_err() {
                self.remove_if_generation(doc, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(JoinError::Retry)) | Err(_) => {
                    self.remove_if_generation(doc, handle.generation);
                }
                Ok(Err(error)) => return Err(error),
            }
        }
        Err(JoinError::Unavailable)
    }

    /// Saves `doc`'s current state as a version named `name`, once durable; refused when the
    /// doc has `max_named_versions` already. `None` if the doc does not exist.
    pub async fn save_version(
        &self,
        doc: &DocId,
        name: String,
        actor: Actor,
    ) -> Result<Option<Result<VersionRecord, RestoreRefused>>, JoinError> {
        self.ask_stored(doc, |reply| {
            DocCommand::SaveVersion(Box::new(SaveVersionCommand {
                name: name.clone(),
                actor: actor.clone(),
                reply,
            }))
        })
        .await
    }

    /// Takes `doc` back to `state` (that of version `version`) by a new update from `actor`;
    /// returns the `restore` version saved just before. `None` if the doc does not exist.
    pub async fn restore(
        &self,
        doc: &DocId,
        version: u64,
        state: Bytes,
        actor: Actor,
    ) -> Result<Option<Result<VersionRecord, RestoreRefused>>, JoinError> {
        self.ask_stored(doc, |reply| {
            DocCommand::Restore(Box::new(RestoreCommand {
                version,
                state: state.clone(),
                actor: actor.clone(),
                reply,
            }))
        })
        .await
    }

    /// The users present in an open doc, or nothing if its actor does not answer within `timeout`
    /// (a busy or unloading doc must not stall whoever asks about many docs).
    pub async fn present_users(&self, handle: &DocHandle, timeout: Duration) -> Vec<PresentUser> {
        let ask = async {
            let (reply, users) = oneshot::channel();
            handle.tx.send(DocCommand::Presence { reply }).await.ok()?;
            users.await.ok()
        };
        tokio::time::timeout(timeout, ask)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Sends the command `make` builds to `doc`'s actor and waits for its answer, opening the doc
    /// if it is stored but not open. `None` if the doc was never stored and is not open: asking
    /// must not create it. Retries on a fresh actor if it meets one that is unloading.
    async fn ask_stored<T>(
        &self,
        doc: &DocId,
        make: impl Fn(oneshot::Sender<Result<T, JoinError>>) -> DocCommand,
    ) -> Result<Option<T>, JoinError> {
        if self.get(doc).is_none() {
            let exists = self
                .inner
                .log
                .exists(doc)
                .await
                .map_err(|error| match error {
                    // The doc's row failed its checksum (or redb found its page corrupt): the doc
                    // exists and is damaged.
                    LoadFailure::Corrupt(_) => JoinError::Corrupt,
                    LoadFailure::Failed(_) => JoinError::Unavailable,
                })?;
            if !exists {
                return Ok(None);
            }
        }
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let handle = self.get_or_open(doc)?;
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(make(reply)).await.is_err() {
                self.remove_if_generation(doc, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(answer)) => return Ok(Some(answer)),
                Ok(Err(JoinError::Retry)) | Err(_) => {
                    self.remove_if_generation(doc, handle.generation);
                }
                Ok(Err(error)) => return Err(error),
            }
        }
        Err(JoinError::Unavailable)
    }

    /// The open docs and their actors' handles (each carries its live peer count).
    pub fn open_docs(&self) -> Vec<(DocId, DocHandle)> {
        self.inner.docs.entries()
    }
}
