//! A doc's history, as its actor keeps it: who wrote what, versions, restores, and the
//! `DocEvent::Changed` reports.
//!
//! These are methods of the actor kept out of its main loop (`super`), which calls them where an
//! update is appended, a commit becomes durable, a timer fires or the doc unloads. They may
//! queue commands to the writer and publish events; they never answer a peer directly.
//!
//! The rules (see `protocol-spec/history.md`):
//! - Every update is credited to an author (the peer's verified identity, else the name its
//!   presence shows, else `peer N`; over HTTP the token's identity), interned once per doc so the
//!   hot path only clones an `Arc`. The writer stores it in the same transaction as the update.
//! - Durable updates are reported as `DocEvent::Changed`, per author, at most once per
//!   `HubConfig::doc_changed_interval`, and once more when the doc unloads or shuts down.
//! - Versions (named, automatic, before a restore) are queued to the writer behind the updates
//!   they include; their answers and events wait for the writer's `durable_version`.
//! - A restore is an ordinary update from the restorer, computed by `tandem_core::restore`,
//!   stored and broadcast like any other; a `restore` version of the state it replaces is
//!   saved first, so it can be undone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_core::restore::RestoreError;
use tandem_core::{Message, PeerAccess, PeerId, ReceiveError};
use tandem_store::{Author, VersionKind, VersionRecord};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{Delivery, DocActor, HTTP_PEER, RestoreRefused, RestoredDelivery, VersionAnswer};
use crate::JoinError;
use crate::clock;
use crate::event::{Actor, DocEvent};
use crate::log::LogCommand;

/// How long the text diffs of one restore may take before the rest of a text is replaced whole.
const RESTORE_DIFF_BUDGET: Duration = Duration::from_secs(1);

/// Authors an open doc remembers before it stops adding unverified ones: beyond it, a new
/// presence name is credited to `peer N` instead, so a client renaming itself on every edit adds
/// at most one entry per connection, not one per name. Verified identities are always added
/// (there are only as many as the tokens the server accepts).
const MAX_AUTHORS_PER_DOC: usize = 1024;

/// When, on the monotonic clock, the newest version was taken (at most `interval` ago).
pub(super) fn last_version_instant(last: Option<&VersionRecord>, interval: Duration) -> Instant {
    let now = Instant::now();
    let Some(last) = last else { return now };
    let wall_ms = clock::now_ms();
    let ago = Duration::from_millis(wall_ms.saturating_sub(last.created_ms)).min(interval);
    now.checked_sub(ago).unwrap_or(now)
}

/// Durable updates of one author not reported yet.
pub(super) struct ChangedRun {
    author: u32,
    first_seq: u64,
    last_seq: u64,
    n_updates: u64,
}

/// A version handed to the writer, waiting for `durable_version` to reach its id.
pub(super) struct PendingVersion {
    pub(super) record: VersionRecord,
    pub(super) actor: Actor,
    pub(super) reply: Option<oneshot::Sender<VersionAnswer>>,
    /// For a restore that changed nothing: the restored version, reported once this commits.
    pub(super) restored: Option<u64>,
    /// The id the log stored it under, if another than `record.id` (a shared log, when another
    /// node took that id meanwhile); read once the version is durable.
    pub(super) stored_id: oneshot::Receiver<u64>,
    /// The answer to the restore this version precedes, if the restore's update became durable
    /// first (a shared log stores versions after the updates of their group).
    pub(super) waiting_restore: Option<Box<RestoredDelivery>>,
}

/// The actor's view of the doc's versions.
pub(super) struct VersionState {
    /// The id the next version gets (ids grow per doc; the actor is the only one to assign them).
    pub(super) next_id: u64,
    /// Highest version id the writer reported committed.
    pub(super) durable_id: u64,
    /// The seq the newest version includes.
    pub(super) version_seq: u64,
    /// When the newest version was taken.
    pub(super) last_at: Instant,
    /// Authors (indexes into `DocActor::authors`) of the updates since the newest version.
    pub(super) authors_since: Vec<u32>,
    /// When to take an automatic version, if edits are waiting for one.
    pub(super) auto_due: Option<Instant>,
    /// Versions queued to the writer, in id order.
    pub(super) pending: VecDeque<PendingVersion>,
    /// Named versions of the doc, stored or queued (refused beyond `max_named_versions`).
    pub(super) n_named: u64,
}

/// A restore computed off the actor, waiting to be applied.
pub(super) struct RestoreDone {
    version: u64,
    actor: Actor,
    reply: oneshot::Sender<VersionAnswer>,
    update: Result<Option<Vec<u8>>, RestoreError>,
}

impl DocActor {
    /// Replaces the authors of the edits since the newest version by those the store lists
    /// (after a load or a reload), interning each.
    pub(super) fn reset_authors_since(&mut self, authors: Vec<Author>) {
        self.history.authors_since.clear();
        for author in authors {
            let idx = self.intern(
                Actor {
                    sub: author.sub,
                    name: author.name,
                },
                HTTP_PEER,
            );
            self.history.authors_since.push(idx);
        }
    }

    /// The index of `actor` in `authors`, adding it if new. Past `MAX_AUTHORS_PER_DOC`, a new
    /// actor without a verified identity is credited to `peer N` (`peer` is who sent the update).
    pub(super) fn intern(&mut self, actor: Actor, peer: PeerId) -> u32 {
        let author = Author {
            sub: actor.sub,
            name: actor.name,
        };
        let encoded = author.encode();
        if let Some(idx) = self.author_index.get(encoded.as_slice()) {
            return *idx;
        }
        if author.sub.is_none() && self.authors.len() >= MAX_AUTHORS_PER_DOC {
            let fallback = format!("peer {peer}");
            if author.name != fallback {
                debug!(%peer, "author table full; crediting the peer id");
                return self.intern(
                    Actor {
                        sub: None,
                        name: fallback,
                    },
                    peer,
                );
            }
        }
        let idx = self.authors.len() as u32;
        let encoded: Arc<[u8]> = Arc::from(encoded);
        self.author_index.insert(encoded.clone(), idx);
        let actor = Actor {
            sub: author.sub,
            name: author.name,
        };
        self.authors.push((actor, encoded));
        idx
    }

    /// Who `peer`'s updates are credited to: its verified identity, else the name its presence
    /// shows, else `peer N`. Cached per peer; only a new presence name costs an allocation.
    pub(super) fn author_of(&mut self, peer: PeerId, access: &PeerAccess) -> u32 {
        let presence = if access.identity.is_some() {
            None
        } else {
            self.shared.peer_user(peer).map(|user| user.name.clone())
        };
        if let Some((idx, name)) = self.peer_authors.get(&peer)
            && *name == presence
        {
            return *idx;
        }
        let fallback = match &presence {
            Some(name) => name.to_string(),
            None => format!("peer {peer}"),
        };
        let idx = self.intern(
            Actor::from_identity(access.identity.as_ref(), fallback),
            peer,
        );
        self.peer_authors.insert(peer, (idx, presence));
        idx
    }

    pub(super) fn has_unversioned_edits(&self) -> bool {
        self.submitted_seq > self.history.version_seq
    }

    /// Queues a version of the current state behind everything submitted so far. Its answer
    /// and `VersionCreated` wait until the writer reports it durable.
    pub(super) async fn save_version(
        &mut self,
        kind: VersionKind,
        name: Option<String>,
        actor: Actor,
        reply: Option<oneshot::Sender<VersionAnswer>>,
        restored: Option<u64>,
    ) -> Option<VersionRecord> {
        let state = self.shared.encode_state();
        let record = VersionRecord {
            id: self.history.next_id,
            kind,
            name,
            author: Author {
                sub: actor.sub.clone(),
                name: actor.name.clone(),
            },
            created_ms: clock::now_ms(),
            seq: self.submitted_seq,
            size_bytes: state.len() as u64,
            authors: self
                .history
                .authors_since
                .iter()
                .map(|idx| {
                    let (actor, _) = &self.authors[*idx as usize];
                    Author {
                        sub: actor.sub.clone(),
                        name: actor.name.clone(),
                    }
                })
                .collect(),
        };
        let (stored_id_tx, stored_id) = oneshot::channel();
        let command = LogCommand::Version {
            doc: self.doc.clone(),
            stored_id: stored_id_tx,
            record: Box::new(record.clone()),
            state,
            // The cap of this record's kind: the store prunes automatic and restore versions
            // beyond it (`HistoryTables::put_version`); named ones are capped by refusal above.
            max_kept: match kind {
                VersionKind::Auto => self.hub.config().max_auto_versions,
                VersionKind::Named | VersionKind::Restore => self.hub.config().max_named_versions,
            },
            report: self.durable_tx.clone(),
        };
        if self.hub.persist().send(command).await.is_err() {
            error!("redb writer is gone; closing the doc");
            if let Some(reply) = reply {
                let _ = reply.send(Err(JoinError::Unavailable));
            }
            self.fail_storage();
            return None;
        }
        debug!(
            version = record.id,
            kind = kind.as_str(),
            seq = record.seq,
            "version queued"
        );
        self.history.next_id += 1;
        if kind == VersionKind::Named {
            self.history.n_named += 1;
        }
        self.history.version_seq = self.submitted_seq;
        self.history.last_at = Instant::now();
        self.history.authors_since.clear();
        self.history.auto_due = None;
        self.history.pending.push_back(PendingVersion {
            record: record.clone(),
            actor,
            reply,
            restored,
            stored_id,
            waiting_restore: None,
        });
        Some(record)
    }

    /// Starts taking the doc back to `state`: the update that does it is computed on a
    /// blocking thread from the current state encoded now, while the actor goes on serving
    /// peers; [`Self::finish_restore`] applies it when it comes back.
    ///
    /// Edits that arrive meanwhile are not lost: the update is a CRDT diff against the state
    /// at encoding time, so it deletes only what existed then and merges with later edits like
    /// any concurrent update. Text typed meanwhile stays (next to the restored text); a map
    /// key or array changed meanwhile is settled by the CRDT's tie-break between the two
    /// edits. The `restore` version is saved when the update is applied, so it holds those
    /// edits too and undoing the restore loses nothing.
    pub(super) fn start_restore(
        &mut self,
        version: u64,
        state: Bytes,
        actor: Actor,
        reply: oneshot::Sender<VersionAnswer>,
    ) {
        // A fresh client id for the restore's own structs (53 bits, as Yjs clients use).
        let client_id = rand::random::<u64>() & ((1 << 53) - 1);
        let current = self.shared.encode_state();
        self.restores.spawn_blocking(move || {
            let deadline = std::time::Instant::now() + RESTORE_DIFF_BUDGET;
            let update =
                tandem_core::restore::restore_update(&current, &state, client_id, Some(deadline));
            RestoreDone {
                version,
                actor,
                reply,
                update,
            }
        });
    }

    /// Applies a restore computed by [`Self::start_restore`], after saving a `restore` version
    /// of the current state, credited to `actor`.
    pub(super) async fn finish_restore(&mut self, done: RestoreDone) {
        let RestoreDone {
            version,
            actor,
            reply,
            update,
        } = done;
        let update = match update {
            Ok(update) => update,
            Err(error) => {
                error!(version, %error, "cannot compute the restore");
                let _ = reply.send(Ok(Err(RestoreRefused::State(error))));
                return;
            }
        };
        let name = Some(format!("before restoring version {version}"));
        let Some(update) = update else {
            // Nothing to change: the answer waits for the `restore` version only.
            self.save_version(
                VersionKind::Restore,
                name,
                actor,
                Some(reply),
                Some(version),
            )
            .await;
            return;
        };
        let Some(record) = self
            .save_version(VersionKind::Restore, name, actor.clone(), None, None)
            .await
        else {
            let _ = reply.send(Err(JoinError::Unavailable));
            return;
        };
        let payload = match tandem_core::protocol::decode_update(Bytes::from(update)) {
            Ok(payload) => payload,
            Err(error) => {
                error!(version, %error, "the restore update does not decode");
                let _ = reply.send(Ok(Err(RestoreRefused::Update(error))));
                return;
            }
        };
        let author = self.intern(actor.clone(), HTTP_PEER);
        let now_ms = self.now_ms();
        match self
            .shared
            .receive(HTTP_PEER, Message::Update(payload), now_ms)
        {
            Ok(effects) => {
                if let Some(update) = effects.persist
                    && !self.append(update, author).await
                {
                    let _ = reply.send(Err(JoinError::Unavailable));
                    return;
                }
                if let Some(frame) = effects.broadcast_others {
                    self.enqueue(Delivery::ToOthers(HTTP_PEER, frame));
                }
                info!(version, restore_version = record.id, "restore applied");
                self.enqueue(Delivery::Restored(Box::new(RestoredDelivery {
                    reply,
                    record,
                    version,
                    actor,
                })));
                self.compact_if_due();
            }
            Err(ReceiveError::Protocol(error)) => {
                let _ = reply.send(Ok(Err(RestoreRefused::Update(error))));
            }
            Err(ReceiveError::Poisoned(error)) => {
                error!(%error, "the restore poisoned the doc; reloading it from storage");
                let _ = reply.send(Ok(Err(RestoreRefused::Update(error))));
                self.reload().await;
            }
        }
    }

    /// Unload and shutdown: an automatic version of unversioned edits, then the last
    /// `DocChanged` reports once everything is durable.
    pub(super) async fn finish_history(&mut self) {
        if self.durable_rx.borrow().failed {
            return;
        }
        if self.has_unversioned_edits() {
            self.save_version(VersionKind::Auto, None, Actor::server(), None, None)
                .await;
            self.wait_durable().await;
        }
        self.report_changes();
    }

    /// Moves durable updates from `unreported` into the per-author runs.
    pub(super) fn note_durable_updates(&mut self) {
        while let Some(&(seq, author)) = self.unreported.front() {
            if seq > self.durable_seq {
                break;
            }
            self.unreported.pop_front();
            match self.changed.iter_mut().find(|run| run.author == author) {
                Some(run) => {
                    run.last_seq = seq;
                    run.n_updates += 1;
                }
                None => self.changed.push(ChangedRun {
                    author,
                    first_seq: seq,
                    last_seq: seq,
                    n_updates: 1,
                }),
            }
        }
        if !self.changed.is_empty() && self.changed_due.is_none() {
            let now = Instant::now();
            self.changed_due = Some(self.last_changed_report.map_or(now, |at| {
                (at + self.hub.config().doc_changed_interval).max(now)
            }));
        }
    }

    /// Publishes one `DocChanged` per author with durable updates not reported yet.
    pub(super) fn report_changes(&mut self) {
        self.changed_due = None;
        if self.changed.is_empty() {
            return;
        }
        self.last_changed_report = Some(Instant::now());
        let at_ms = clock::now_ms();
        for run in self.changed.drain(..) {
            let (actor, _) = &self.authors[run.author as usize];
            self.hub.events().publish(DocEvent::Changed {
                doc: self.doc.to_string(),
                actor: actor.clone(),
                first_seq: run.first_seq,
                last_seq: run.last_seq,
                n_updates: run.n_updates,
                at_ms,
            });
        }
    }

    /// A version is on disk: announce it and answer whoever asked for it.
    pub(super) fn version_durable(&mut self, pending: PendingVersion) {
        let PendingVersion {
            mut record,
            actor,
            reply,
            restored,
            mut stored_id,
            waiting_restore,
        } = pending;
        // The log sends the stored id before it reports the version durable. The actor's own
        // numbering (`next_id`, `durable_id`) goes on unchanged: it only orders what is queued.
        if let Ok(id) = stored_id.try_recv() {
            if id == crate::log::VERSION_NOT_STORED {
                // Cluster mode's Postgres could not store it: only this request fails.
                warn!(
                    version = record.id,
                    "the version was not stored; refusing the request"
                );
                if let Some(waiting) = waiting_restore {
                    // The restore itself is an update, stored and seen; its undo point is not.
                    self.hub.events().publish(DocEvent::VersionRestored {
                        doc: self.doc.to_string(),
                        version: waiting.version,
                        actor: waiting.actor.clone(),
                        at_ms: clock::now_ms(),
                    });
                    let _ = waiting.reply.send(Err(JoinError::Unavailable));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Err(JoinError::Unavailable));
                }
                return;
            }
            record.id = id;
        }
        let at_ms = clock::now_ms();
        self.hub.events().publish(DocEvent::VersionCreated {
            doc: self.doc.to_string(),
            version: record.id,
            name: record.name.clone(),
            kind: record.kind,
            actor: actor.clone(),
            at_ms,
        });
        if let Some(version) = restored {
            self.hub.events().publish(DocEvent::VersionRestored {
                doc: self.doc.to_string(),
                version,
                actor,
                at_ms,
            });
        }
        if let Some(mut waiting) = waiting_restore {
            waiting.record.id = record.id;
            self.finish_restored(*waiting);
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(Ok(record)));
        }
    }
}
