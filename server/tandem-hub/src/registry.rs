//! The registry of open docs: `DocId -> DocHandle`, one entry per running doc actor.
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
//!
//! The registry only maps names to handles; spawning actors, and what happens when the last doc
//! is gone, are the `Hub`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tandem_core::DocId;
use tokio::sync::mpsc;

use crate::doc_actor::DocCommand;

/// The address of one running doc actor.
#[derive(Clone)]
pub struct DocHandle {
    pub(crate) tx: mpsc::Sender<DocCommand>,
    /// Distinguishes successive actors of the same doc, so an unloading actor removes only itself.
    pub(crate) generation: u64,
    /// Live peer count, written by the actor, read by `GET /api/docs`.
    pub n_peers: Arc<AtomicUsize>,
    /// Approximate stored size of the doc in bytes (its snapshot plus the log since), written
    /// by the actor, read by the admin overview.
    pub stored_bytes: Arc<AtomicU64>,
}

/// The open docs, and the counter that tells their successive actors apart.
pub(crate) struct Registry {
    docs: DashMap<DocId, DocHandle>,
    next_generation: AtomicU64,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            docs: DashMap::new(),
            next_generation: AtomicU64::new(1),
        }
    }
}

impl Registry {
    /// The handle of `doc`, or the one `spawn` returns for a fresh generation, inserted under the
    /// entry lock so that concurrent first opens share one actor.
    pub(crate) fn get_or_insert_with(
        &self,
        doc: &DocId,
        spawn: impl FnOnce(u64) -> DocHandle,
    ) -> DocHandle {
        // The entry lock is held only for the spawn, which does not block or await.
        match self.docs.entry(doc.clone()) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let handle = spawn(generation);
                entry.insert(handle.clone());
                handle
            }
        }
    }

    /// The handle of `doc` if it is open.
    pub(crate) fn get(&self, doc: &DocId) -> Option<DocHandle> {
        self.docs.get(doc).map(|handle| handle.clone())
    }

    /// Removes `doc` only if its entry still belongs to actor `generation`; whether it did.
    pub(crate) fn remove_if_generation(&self, doc: &DocId, generation: u64) -> bool {
        self.docs
            .remove_if(doc, |_, handle| handle.generation == generation)
            .is_some()
    }

    /// Whether no doc is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The open docs and their handles.
    pub(crate) fn entries(&self) -> Vec<(DocId, DocHandle)> {
        self.docs
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect()
    }
}
