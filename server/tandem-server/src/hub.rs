//! The hub: the registry of open docs, `DocId -> DocHandle`.
//!
//! Opening is single-flight by construction: `get_or_open` inserts the handle of a freshly
//! spawned doc actor under the `DashMap` entry lock, and that actor loads the stored state before
//! it reads its inbox. Concurrent first connections therefore share one load, and no peer is ever
//! served an empty doc while it loads (commands simply queue in the inbox).
//!
//! The hub never evicts anyone. A doc actor removes its own entry (`remove_if_generation`) when
//! it has been idle for the grace period and everything it accepted is durable; a connection that
//! raced with that removal gets `JoinError::Retry` and opens a fresh actor, which loads the state
//! the old one made durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tandem_core::{DocId, Limits, PeerAccess, PeerId, PresentUser, ProtocolError, SharedDoc};
use tandem_store::{Store, VersionRecord};
use tokio::sync::{mpsc, oneshot};
use yrs::Snapshot;

use crate::connection::Closer;
use crate::doc_actor::{
    self, ApplyCommand, DocCommand, DocSnapshot, RestoreCommand, RestoreRefused, SaveVersionCommand,
};
use crate::events::{Actor, Events};
use crate::outbox::OutboxSender;
use crate::persist::PersistCommand;
use crate::shutdown::Lifecycle;

/// Capacity of each doc actor's inbox. A full inbox makes connections stop reading their sockets.
pub(crate) const DOC_INBOX_CAPACITY: usize = 1024;
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
}

/// A cheap-clone handle to the registry.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    docs: DashMap<DocId, DocHandle>,
    store: Arc<Store>,
    persist: mpsc::Sender<PersistCommand>,
    config: HubConfig,
    lifecycle: Lifecycle,
    events: Events,
    next_generation: AtomicU64,
    next_peer: AtomicU64,
}

/// The address of one running doc actor.
#[derive(Clone)]
pub(crate) struct DocHandle {
    pub(crate) tx: mpsc::Sender<DocCommand>,
    /// Distinguishes successive actors of the same doc, so an unloading actor removes only itself.
    pub(crate) generation: u64,
    /// Live peer count, written by the actor, read by `GET /api/docs`.
    pub(crate) n_peers: Arc<AtomicUsize>,
}

/// Why a peer could not join a doc.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum JoinError {
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
}

impl Hub {
    pub(crate) fn new(
        store: Arc<Store>,
        persist: mpsc::Sender<PersistCommand>,
        config: HubConfig,
        lifecycle: Lifecycle,
        events: Events,
    ) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                docs: DashMap::new(),
                store,
                persist,
                config,
                lifecycle,
                events,
                next_generation: AtomicU64::new(1),
                next_peer: AtomicU64::new(1),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// The workspace event bus.
    pub(crate) fn events(&self) -> &Events {
        &self.inner.events
    }

    pub(crate) fn persist(&self) -> &mpsc::Sender<PersistCommand> {
        &self.inner.persist
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
        // The entry lock is held only for the spawn, which does not block or await.
        match self.inner.docs.entry(doc.clone()) {
            Entry::Occupied(entry) => Ok(entry.get().clone()),
            Entry::Vacant(entry) => {
                let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
                let handle = doc_actor::spawn(self.clone(), doc.clone(), generation);
                entry.insert(handle.clone());
                Ok(handle)
            }
        }
    }

    /// The handle of `doc`'s actor if it is open; never opens.
    pub(crate) fn get(&self, doc: &DocId) -> Option<DocHandle> {
        self.inner.docs.get(doc).map(|handle| handle.clone())
    }

    /// Removes `doc` only if its entry still belongs to actor `generation`.
    /// When that leaves no doc open, asks the writer to give memory back.
    pub(crate) fn remove_if_generation(&self, doc: &DocId, generation: u64) -> bool {
        let removed = self
            .inner
            .docs
            .remove_if(doc, |_, handle| handle.generation == generation)
            .is_some();
        if removed && self.inner.docs.is_empty() {
            crate::alloc::release();
            // Best effort: with the writer's queue full, the server is anything but idle.
            let _ = self.inner.persist.try_send(PersistCommand::ReleaseMemory);
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
    pub(crate) async fn snapshot(&self, doc: &DocId) -> Result<Option<DocSnapshot>, JoinError> {
        self.ask_stored(doc, |reply| DocCommand::Snapshot { reply })
            .await
    }

    /// Whether `doc` durably holds everything `snapshot` describes, loading the doc if needed.
    /// A doc that does not exist is answered as an empty doc, and is not created.
    pub(crate) async fn covers(&self, doc: &DocId, snapshot: Snapshot) -> Result<bool, JoinError> {
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
    pub(crate) async fn apply_update(
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
    pub(crate) async fn save_version(
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
    pub(crate) async fn restore(
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
    pub(crate) async fn present_users(
        &self,
        handle: &DocHandle,
        timeout: Duration,
    ) -> Vec<PresentUser> {
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
            let store = self.inner.store.clone();
            let name = doc.clone();
            let exists = tokio::task::spawn_blocking(move || store.doc_meta(name.as_str()))
                .await
                .map_err(|_| JoinError::Unavailable)?
                .map_err(|error| {
                    // The doc's row failed its checksum (or redb found its page corrupt): the
                    // doc exists and is damaged.
                    if error.is_damage() {
                        JoinError::Corrupt
                    } else {
                        JoinError::Unavailable
                    }
                })?
                .is_some();
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
    pub(crate) fn open_docs(&self) -> Vec<(DocId, DocHandle)> {
        self.inner
            .docs
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect()
    }
}
