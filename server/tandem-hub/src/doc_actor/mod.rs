//! The doc actor: the one task that owns a `SharedDoc` and orders every change to it.
//!
//! Everything that touches an open doc is a [`DocCommand`] in this actor's bounded inbox. The
//! actor applies messages through `SharedDoc::receive`, sends each accepted update to the redb
//! writer, and holds every frame derived from it (broadcasts to other peers, sync step 2
//! replies, HTTP snapshots and `covers` answers) in `pending` until the writer reports the update
//! durable. Awareness frames and presence listings carry no document state and go out at once.
//!
//! Invariants:
//! - Nothing leaves the actor before the commit that contains it has returned: a delivery is
//!   queued at the seq of the newest update it may reveal and released only when
//!   `durable_seq` reaches that seq.
//! - A peer whose outbox is full is closed (slow consumer), never skipped: no peer that stays
//!   connected misses a frame.
//! - A panic or error inside yrs poisons the in-memory doc: the offending peer is closed, the
//!   actor waits until everything accepted before it is durable, and reloads from redb. Other
//!   peers stay connected and lose nothing, because they only ever saw durable updates.
//! - A commit refused for a storage fault (a full disk) drops what it held: the senders of the
//!   refused updates (and peers whose handshake reveals them) are closed with 1013 "storage
//!   full, retry later" and keep their edits for a later resync, HTTP writers get an error, and
//!   the in-memory doc is reloaded from the store, so a refused update is never broadcast,
//!   acknowledged or submitted again. Every other peer stays connected.
//! - The actor unloads itself: after the grace period with no peers and nothing in flight, it
//!   removes its own hub entry, closes its inbox, and tells late joiners to retry.
//!
//! History bookkeeping (authors, versions, restores, change reports) lives in [`history`],
//! outside the main loop; the loop only calls into it.

mod history;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tandem_core::hocuspocus::{encode_stateless, encode_sync_status};
use tandem_core::restore::RestoreError;
use tandem_core::shared_doc::SnapshotRefused;
use tandem_core::{DocId, Message, PeerId, PresentUser, ProtocolError, ReceiveError, SharedDoc};
use tandem_store::{HistoryHead, VersionKind, VersionRecord};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use yrs::Snapshot;

use crate::clock::{self, sleep_until};
use crate::event::{Actor, DocEvent};
use crate::log::{
    Durability, Feed, LoadFailure, LoadedLog, LogCommand, REMOTE_FEED_CAPACITY, RemoteInput,
};
use crate::outbox::TrySendError;
use crate::peer::CloseReason;
use crate::{DOC_INBOX_CAPACITY, Dialect, DocHandle, Hub, HubMetrics, JoinError, PeerLink};

use self::history::{ChangedRun, RestoreDone, VersionState, last_version_instant};

/// The longest pause between two awareness expiry sweeps.
const MAX_AWARENESS_SWEEP: Duration = Duration::from_secs(5);
/// Why a version or a restore was refused (the doc is unchanged, but for a restore the
/// `restore` version may be saved).
#[derive(Debug)]
pub enum RestoreRefused {
    /// The doc already has this many named versions.
    TooManyVersions(u64),
    /// The version's state or the current one does not load.
    State(RestoreError),
    /// The doc refused the update (it would exceed the size limit).
    Update(ProtocolError),
}

/// The answer to a version request: the version saved (for a restore, the one saved before it).
pub(crate) type VersionAnswer = Result<Result<VersionRecord, RestoreRefused>, JoinError>;

/// Everything that can be asked of a doc. The only way into a doc actor.
///
/// Every slot of the inbox is as large as the largest variant, and the inbox keeps a block of
/// slots allocated for as long as the doc is open, so a variant larger than `Receive` (the hot
/// one) carries its fields in a box (`doc_command_stays_small` checks the size).
pub(crate) enum DocCommand {
    /// Register a peer; the reply comes once the doc is loaded and the peer will receive frames.
    Join {
        peer: PeerId,
        link: Box<PeerLink>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Messages one peer sent in one frame, already decoded by its connection task.
    Receive {
        peer: PeerId,
        messages: Vec<Message>,
    },
    /// The peer's connection ended.
    Leave { peer: PeerId },
    /// A Hocuspocus stateless payload from `peer`, for the doc's other Hocuspocus peers.
    Stateless(Box<(PeerId, Bytes)>),
    /// The doc's durable state, for HTTP.
    Snapshot {
        reply: oneshot::Sender<Result<DocSnapshot, JoinError>>,
    },
    /// Whether the doc holds everything `snapshot` describes. The answer waits until everything
    /// the doc accepted before it is durable, so `true` means "stored".
    Covers {
        snapshot: Arc<Snapshot>,
        reply: oneshot::Sender<Result<bool, JoinError>>,
    },
    /// The users named by the current presence states; answered at once.
    Presence {
        reply: oneshot::Sender<Vec<PresentUser>>,
    },
    /// A v1 update sent over HTTP by a writer.
    Apply(Box<ApplyCommand>),
    /// Save the current state as a named version. Answered once the version is durable.
    SaveVersion(Box<SaveVersionCommand>),
    /// Take the doc back to a version's state.
    Restore(Box<RestoreCommand>),
}

/// A v1 update sent over HTTP by a writer (already decoded once by the handler, which checked
/// it; the raw bytes travel so a retry on a fresh actor can resend them). The answer (whether it
/// changed anything) waits for durability, like a broadcast.
pub(crate) struct ApplyCommand {
    pub(crate) update: Bytes,
    /// Who sent it (the token's identity).
    pub(crate) actor: Actor,
    pub(crate) reply: oneshot::Sender<Result<Result<bool, ProtocolError>, JoinError>>,
}

/// Save the current state as a named version. Answered once the version is durable.
pub(crate) struct SaveVersionCommand {
    pub(crate) name: String,
    pub(crate) actor: Actor,
    pub(crate) reply: oneshot::Sender<VersionAnswer>,
}

/// Take the doc back to `state` (that of version `version`) by a new update on top, after
/// saving a `restore` version of the current state. Answered once both are durable.
pub(crate) struct RestoreCommand {
    pub(crate) version: u64,
    pub(crate) state: Bytes,
    pub(crate) actor: Actor,
    pub(crate) reply: oneshot::Sender<VersionAnswer>,
}

/// The peer id of updates that arrive over HTTP. Connections count from 1 (`Hub::next_peer_id`),
/// so no WebSocket peer is skipped by the broadcast of an HTTP update.
pub(crate) const HTTP_PEER: PeerId = PeerId(0);

/// A doc's state as served over HTTP.
pub struct DocSnapshot {
    /// The whole doc as one v1 update.
    pub update: Vec<u8>,
    /// The root types as JSON.
    pub json: serde_json::Value,
}

/// Starts the actor of `doc` and returns its handle. The actor loads the doc before anything else.
pub(crate) fn spawn(hub: Hub, doc: DocId, generation: u64) -> DocHandle {
    let (tx, inbox) = mpsc::channel(DOC_INBOX_CAPACITY);
    let n_peers = Arc::new(AtomicUsize::new(0));
    let stored_bytes = Arc::new(AtomicU64::new(0));
    let handle = DocHandle {
        tx,
        generation,
        n_peers: n_peers.clone(),
        stored_bytes: stored_bytes.clone(),
    };
    let span = tracing::info_span!("doc", doc = %doc, generation);
    let lifecycle = hub.lifecycle().clone();
    let stats = Stats {
        n_peers,
        stored_bytes,
        n_awareness_states: 0,
    };
    lifecycle.spawn(span, run(hub, doc, generation, inbox, stats));
    handle
}

/// The actor's task: loads the doc, then serves it until it unloads or the server stops.
///
/// Written as a plain function returning an `async move` block, with loading in an `async fn`
/// of its own: an `async fn` keeps its by-value arguments twice and a local that lived across
/// an `.await` for as long as the future lives, and this future lives as long as the doc.
fn run(
    hub: Hub,
    doc: DocId,
    generation: u64,
    inbox: mpsc::Receiver<DocCommand>,
    stats: Stats,
) -> impl Future<Output = ()> + Send {
    let mut inbox = inbox;
    async move {
        let Some(actor) = open(hub, doc, generation, &mut inbox, stats).await else {
            return;
        };
        let mut opened = OpenDoc::new(actor);
        opened.actor.run(inbox).await;
    }
}

/// A loaded doc's actor, counted in the open-docs and awareness gauges for as long as it lives:
/// the counts are taken back on drop, so an actor that panics does not inflate them for good.
struct OpenDoc {
    actor: DocActor,
    metrics: HubMetrics,
}

impl OpenDoc {
    fn new(actor: DocActor) -> OpenDoc {
        let metrics = actor.hub.config().metrics.clone();
        metrics.doc_opened();
        OpenDoc { actor, metrics }
    }
}

impl Drop for OpenDoc {
    fn drop(&mut self) {
        self.metrics
            .awareness_changed(self.actor.stats.n_awareness_states, 0);
        self.metrics.doc_closed();
    }
}

/// What the actor publishes about itself: read by the registry's readers (peer count, size) and
/// the awareness gauge, refreshed once per turn of the actor's loop.
struct Stats {
    n_peers: Arc<AtomicUsize>,
    stored_bytes: Arc<AtomicU64>,
    /// The awareness states last added to the hub's gauge.
    n_awareness_states: usize,
}

/// Loads the doc and builds its actor; if the doc does not load, refuses every command sent
/// until the inbox is closed and returns `None`.
async fn open(
    hub: Hub,
    doc: DocId,
    generation: u64,
    inbox: &mut mpsc::Receiver<DocCommand>,
    stats: Stats,
) -> Option<DocActor> {
    let started = Instant::now();
    let loaded = match load(&hub, &doc).await {
        Ok(loaded) => loaded,
        Err(failure) => {
            let refusal = match &failure {
                LoadFailure::Corrupt(reason) => {
                    error!(%doc, error = %reason, "stored doc is damaged; refusing its peers");
                    JoinError::Corrupt
                }
                LoadFailure::Failed(reason) => {
                    error!(%doc, error = %reason, "cannot load doc; refusing its peers");
                    JoinError::Unavailable
                }
            };
            hub.remove_if_generation(&doc, generation);
            inbox.close();
            while let Some(command) = inbox.recv().await {
                refuse(command, refusal);
            }
            return None;
        }
    };
    info!(
        last_seq = loaded.last_seq,
        load_ms = started.elapsed().as_millis() as u64,
        "doc opened"
    );
    Some(DocActor::new(hub, doc, generation, loaded, stats, started))
}

/// A doc as rebuilt from storage.
struct Loaded {
    shared: SharedDoc,
    last_seq: u64,
    /// Log entries after the snapshot, and their bytes.
    n_log_entries: u64,
    n_log_bytes: u64,
    /// The newest version and who wrote since.
    history: HistoryHead,
    /// How many named versions the doc has.
    n_named: u64,
    /// Where in a shared log the load ended (cluster mode).
    position: Option<Arc<str>>,
}

async fn load(hub: &Hub, doc: &DocId) -> Result<Loaded, LoadFailure> {
    let limits = hub.config().limits.clone();
    let LoadedLog {
        stored,
        history,
        n_named,
        position,
    } = hub.log().load(doc).await?;
    // Decoding a big doc is CPU work: off the runtime.
    tokio::task::spawn_blocking(move || {
        // The stored updates passed their checksums; if yrs still refuses them, they were
        // stored damaged, and serving a partial doc would be wrong content.
        let shared = SharedDoc::load(limits, stored.iter()).map_err(|error| {
            LoadFailure::Corrupt(format!("stored updates do not apply: {error}"))
        })?;
        Ok(Loaded {
            shared,
            last_seq: stored.last_seq,
            n_log_entries: stored.updates.len() as u64,
            n_log_bytes: stored.updates.iter().map(|u| u.len() as u64).sum(),
            history,
            n_named,
            position,
        })
    })
    .await
    .map_err(|error| LoadFailure::Failed(format!("load task failed: {error}")))?
}

/// Answers a command the actor cannot serve.
fn refuse(command: DocCommand, error: JoinError) {
    match command {
        DocCommand::Join { reply, link, .. } => {
            drop(link);
            let _ = reply.send(Err(error));
        }
        DocCommand::Snapshot { reply } => {
            let _ = reply.send(Err(error));
        }
        DocCommand::Covers { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        DocCommand::Presence { reply } => {
            let _ = reply.send(Vec::new());
        }
        DocCommand::Apply(apply) => {
            let _ = apply.reply.send(Err(error));
        }
        DocCommand::SaveVersion(save) => {
            let _ = save.reply.send(Err(error));
        }
        DocCommand::Restore(restore) => {
            let _ = restore.reply.send(Err(error));
        }
        DocCommand::Receive { .. } | DocCommand::Leave { .. } | DocCommand::Stateless(_) => {}
    }
}

/// One frame or answer waiting for durability. Kept small (the rare large ones are boxed):
/// `pending` holds one per frame in flight.
enum Delivery {
    /// To one peer (sync replies, the handshake).
    ToPeer(PeerId, Bytes),
    /// To every peer but the sender (document updates) that joined before this update's seq;
    /// later joiners get it through their sync step 2.
    ToOthers(PeerId, Bytes),
    /// An HTTP snapshot.
    Snapshot(
        oneshot::Sender<Result<DocSnapshot, JoinError>>,
        Box<DocSnapshot>,
    ),
    /// An HTTP `covers` answer.
    Covers(oneshot::Sender<Result<bool, JoinError>>, bool),
    /// The answer to an HTTP update.
    Applied(
        oneshot::Sender<Result<Result<bool, ProtocolError>, JoinError>>,
        bool,
    ),
    /// The answer to a restore, and its event.
    Restored(Box<RestoredDelivery>),
}

/// The answer to a restore (with the version saved before it), and its event.
struct RestoredDelivery {
    reply: oneshot::Sender<VersionAnswer>,
    record: VersionRecord,
    version: u64,
    actor: Actor,
}

struct DocActor {
    hub: Hub,
    doc: DocId,
    generation: u64,
    shared: SharedDoc,
    /// Each peer's link and the `submitted_seq` when it joined.
    peers: HashMap<PeerId, (PeerLink, u64)>,
    stats: Stats,
    /// When each submitted update arrived, while metrics are on: (seq, arrival), in seq order,
    /// for the durable-wait histogram.
    arrivals: VecDeque<(u64, Instant)>,
    /// Handed to the writer with each append; it reports "durable up to N" through it.
    durable_tx: watch::Sender<Durability>,
    durable_rx: watch::Receiver<Durability>,
    /// Highest seq handed to the writer.
    submitted_seq: u64,
    /// Highest seq the writer reported committed.
    durable_seq: u64,
    /// Deliveries waiting for `durable_seq` to reach their seq, in seq order.
    pending: VecDeque<(u64, Delivery)>,
    /// When the last peer left; `None` while peers are connected.
    idle_since: Option<Instant>,
    started: Instant,
    n_updates_since_compact: u64,
    n_bytes_since_compact: u64,
    /// Log entries after the last snapshot (stored at load, plus appended since).
    n_log_entries: u64,
    /// Shutdown began, or storage failed: no new peers, drain and stop.
    stopping: bool,
    /// The writer refused a commit for a storage fault: reload from the store before anything
    /// else (see [`Self::refuse_unstored`]).
    reload_due: bool,
    /// HTTP snapshots that waited for a refused commit: answered again after the reload.
    snapshots_after_reload: Vec<oneshot::Sender<Result<DocSnapshot, JoinError>>>,
    /// Why storage failed for this doc, once it did: the answer to every later join.
    refusal: Option<JoinError>,
    /// Everyone who wrote to this doc since it opened, with their encoded store form; an
    /// author's index here is what the hot path carries.
    authors: Vec<(Actor, Arc<[u8]>)>,
    /// Where each author of `authors` is, by its encoded form (which `(sub, name)` determines);
    /// the key shares the allocation of `authors`.
    author_index: HashMap<Arc<[u8]>, u32>,
    /// Restores being computed off the actor (`spawn_blocking`); they come back as
    /// [`RestoreDone`] and are applied like any update.
    restores: JoinSet<RestoreDone>,
    /// Each WebSocket peer's author, and the presence name it was taken from (auth off).
    peer_authors: HashMap<PeerId, (u32, Option<Arc<str>>)>,
    /// Submitted updates not yet durable: (seq, author), in seq order.
    unreported: VecDeque<(u64, u32)>,
    /// Durable updates not yet reported by `DocEvent::Changed`, one run per author.
    changed: Vec<ChangedRun>,
    /// When to report `changed`.
    changed_due: Option<Instant>,
    last_changed_report: Option<Instant>,
    history: VersionState,
    /// What other nodes did to the doc (cluster mode); `None` on one node.
    remote: Option<RemoteState>,
}

/// What a doc actor keeps about other nodes (cluster mode).
struct RemoteState {
    /// The feed from the log.
    rx: mpsc::Receiver<RemoteInput>,
    /// The sending side, kept to follow again after a resync.
    feed: Feed,
    /// The newest log position applied: a compaction's snapshot covers everything up to it.
    position: Option<Arc<str>>,
    /// The pseudo-peer standing for each other node's presence states.
    nodes: HashMap<Arc<str>, PeerId>,
    next_node_peer: u64,
    /// When to try a failed resync again.
    retry_at: Option<Instant>,
    /// Resyncs failed in a row.
    resync_failures: u32,
}

/// The first pause before a failed resync is tried again; it doubles up to [`RESYNC_RETRY_MAX`].
const RESYNC_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest pause between two resync attempts.
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

impl DocActor {
    fn new(
        hub: Hub,
        doc: DocId,
        generation: u64,
        loaded: Loaded,
        stats: Stats,
        started: Instant,
    ) -> DocActor {
        let Loaded {
            shared,
            last_seq,
            n_log_entries,
            n_log_bytes,
            history,
            n_named,
            position,
        } = loaded;
        let remote = hub.log().is_shared().then(|| {
            let (tx, rx) = mpsc::channel(REMOTE_FEED_CAPACITY);
            let feed = Feed {
                tx,
                resync: Arc::new(tokio::sync::Notify::new()),
            };
            hub.log()
                .follow(&doc, generation, position.clone(), feed.clone());
            RemoteState {
                rx,
                feed,
                position,
                nodes: HashMap::new(),
                next_node_peer: tandem_core::REMOTE_PEER_BASE,
                retry_at: None,
                resync_failures: 0,
            }
        });
        let (durable_tx, durable_rx) = watch::channel(Durability {
            durable_seq: last_seq,
            durable_version: history.last_version_id,
            ..Durability::default()
        });
        let interval = hub.config().auto_version_interval;
        let mut actor = DocActor {
            hub,
            doc,
            generation,
            shared,
            peers: HashMap::new(),
            stats,
            arrivals: VecDeque::new(),
            durable_tx,
            durable_rx,
            submitted_seq: last_seq,
            durable_seq: last_seq,
            pending: VecDeque::new(),
            idle_since: Some(Instant::now()),
            started,
            // A log left long (e.g. by kill -9 before a compaction) counts towards the next one.
            n_updates_since_compact: n_log_entries,
            n_bytes_since_compact: n_log_bytes,
            n_log_entries,
            stopping: false,
            reload_due: false,
            snapshots_after_reload: Vec::new(),
            refusal: None,
            authors: Vec::new(),
            author_index: HashMap::new(),
            restores: JoinSet::new(),
            peer_authors: HashMap::new(),
            unreported: VecDeque::new(),
            changed: Vec::new(),
            changed_due: None,
            last_changed_report: None,
            history: VersionState {
                next_id: history.last_version_id + 1,
                durable_id: history.last_version_id,
                version_seq: history.last_version.as_ref().map_or(0, |v| v.seq),
                last_at: last_version_instant(history.last_version.as_ref(), interval),
                authors_since: Vec::new(),
                auto_due: None,
                pending: VecDeque::new(),
                n_named,
            },
            remote,
        };
        actor.reset_authors_since(history.authors_since);
        if last_seq > actor.history.version_seq {
            actor.history.auto_due = Some(actor.history.last_at + interval);
        }
        actor
    }

    async fn run(&mut self, mut inbox: mpsc::Receiver<DocCommand>) {
        let timeout = Duration::from_millis(self.hub.config().limits.awareness_timeout_ms);
        let sweep = (timeout / 3).clamp(Duration::from_millis(50), MAX_AWARENESS_SWEEP);
        let mut awareness_sweep = tokio::time::interval(sweep);
        awareness_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.hub.lifecycle().cancel.clone();
        let grace = self.hub.config().doc_unload_grace;
        loop {
            self.publish_stats();
            let unload_at = self.idle_since.map(|since| since + grace);
            tokio::select! {
                biased;
                // A commit was refused: drop it from memory before handling anything else.
                () = std::future::ready(()), if self.reload_due => {
                    Box::pin(self.reload_after_refusal()).await;
                }
                // Shutdown: stop taking commands; what is already queued is still handled.
                () = cancel.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    inbox.close();
                }
                // The writer committed more of this doc: release what waited for it.
                res = self.durable_rx.changed() => {
                    if res.is_ok() {
                        self.on_durable();
                    }
                }
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                // What other nodes did (cluster mode); or the log dropped input for this doc,
                // and the actor reloads and merges what is durable.
                event = next_remote(&mut self.remote) => match event {
                    Some(input) => self.handle_remote(input),
                    None if self.stopping => {}
                    None => Box::pin(self.resync()).await,
                },
                _ = awareness_sweep.tick() => {
                    let now_ms = self.now_ms();
                    if let Some(frame) = self.shared.expire_awareness(now_ms) {
                        debug!("awareness states expired");
                        self.send_to_all(&frame);
                    }
                }
                // A restore computed off the actor: apply it like any update.
                Some(done) = self.restores.join_next(), if !self.restores.is_empty() => {
                    match done {
                        Ok(done) => Box::pin(self.finish_restore(done)).await,
                        Err(error) => error!(%error, "a restore computation failed"),
                    }
                }
                () = sleep_until(unload_at),
                    if unload_at.is_some() && !self.stopping && self.restores.is_empty() =>
                {
                    if Box::pin(self.try_unload(&mut inbox)).await {
                        return;
                    }
                }
                () = sleep_until(self.changed_due), if self.changed_due.is_some() => {
                    self.report_changes();
                }
                () = sleep_until(self.history.auto_due),
                    if self.history.auto_due.is_some() && !self.stopping =>
                {
                    self.history.auto_due = None;
                    if self.has_unversioned_edits() {
                        Box::pin(self.save_version(
                            VersionKind::Auto,
                            None,
                            Actor::server(),
                            None,
                            None,
                        ))
                        .await;
                    }
                }
            }
        }
        // The inbox is closed and drained (shutdown or storage failure): restores already
        // computing are applied (or refused, if storage failed), then flush and stop.
        while let Some(done) = self.restores.join_next().await {
            if let Ok(done) = done {
                Box::pin(self.finish_restore(done)).await;
            }
        }
        self.wait_durable().await;
        Box::pin(self.finish_history()).await;
        self.compact_if_worthwhile();
        self.hub.remove_if_generation(&self.doc, self.generation);
        info!(
            durable_seq = self.durable_seq,
            pending_deliveries = self.pending.len(),
            "doc flushed and closed"
        );
    }

    /// Refreshes what others read of this doc: its size, and the awareness gauge.
    fn publish_stats(&mut self) {
        self.stats
            .stored_bytes
            .store(self.shared.stored_bytes(), Ordering::Relaxed);
        let n_awareness_states = self.shared.n_awareness_states();
        self.hub
            .config()
            .metrics
            .awareness_changed(self.stats.n_awareness_states, n_awareness_states);
        self.stats.n_awareness_states = n_awareness_states;
    }

    async fn handle(&mut self, command: DocCommand) {
        match command {
            DocCommand::Join { peer, link, reply } => {
                if self.stopping {
                    // Stopping because storage failed is not a shutdown: the peer may retry, or
                    // the doc is damaged and stays refused.
                    let error = self.refusal.unwrap_or(if self.durable_rx.borrow().failed {
                        JoinError::Unavailable
                    } else {
                        JoinError::ShuttingDown
                    });
                    refuse(DocCommand::Join { peer, link, reply }, error);
                    return;
                }
                self.peers.insert(peer, (*link, self.submitted_seq));
                self.stats
                    .n_peers
                    .store(self.peers.len(), Ordering::Relaxed);
                self.publish_presence();
                self.idle_since = None;
                let _ = reply.send(Ok(()));
                debug!(%peer, n_peers = self.peers.len(), "peer joined");
                for frame in self.shared.handshake() {
                    self.enqueue(Delivery::ToPeer(peer, frame));
                }
            }
            DocCommand::Receive { peer, messages } => self.receive(peer, messages).await,
            DocCommand::Leave { peer } => self.remove_peer(peer, None),
            DocCommand::Stateless(stateless) => {
                let (sender, payload) = *stateless;
                self.relay_stateless(sender, &payload);
            }
            DocCommand::Snapshot { reply } => {
                let snapshot = DocSnapshot {
                    update: self.shared.encode_state(),
                    json: self.shared.to_json(),
                };
                self.enqueue(Delivery::Snapshot(reply, Box::new(snapshot)));
            }
            DocCommand::Covers { snapshot, reply } => {
                let covers = self.shared.covers(&snapshot);
                self.enqueue(Delivery::Covers(reply, covers));
            }
            DocCommand::Presence { reply } => {
                let _ = reply.send(self.shared.present_users());
            }
            DocCommand::Apply(apply) => {
                let ApplyCommand {
                    update,
                    actor,
                    reply,
                } = *apply;
                self.apply_http(update, actor, reply).await;
            }
            DocCommand::SaveVersion(save) => {
                let SaveVersionCommand { name, actor, reply } = *save;
                let max = self.hub.config().max_named_versions;
                if self.history.n_named >= max {
                    debug!(max, "named version refused: the doc has too many");
                    let _ = reply.send(Ok(Err(RestoreRefused::TooManyVersions(max))));
                    return;
                }
                self.save_version(VersionKind::Named, Some(name), actor, Some(reply), None)
                    .await;
            }
            DocCommand::Restore(restore) => {
                let RestoreCommand {
                    version,
                    state,
                    actor,
                    reply,
                } = *restore;
                self.start_restore(version, state, actor, reply);
            }
        }
    }

    /// Applies an update that came over HTTP, as if from a writer peer that receives nothing.
    async fn apply_http(
        &mut self,
        raw: Bytes,
        actor: Actor,
        reply: oneshot::Sender<Result<Result<bool, ProtocolError>, JoinError>>,
    ) {
        let payload = match tandem_core::protocol::decode_update(raw) {
            Ok(payload) => payload,
            Err(error) => {
                let _ = reply.send(Ok(Err(error)));
                return;
            }
        };
        let now_ms = self.now_ms();
        match self
            .shared
            .receive(HTTP_PEER, Message::Update(payload), now_ms)
        {
            Ok(effects) => {
                let applied = effects.persist.is_some();
                if let Some(update) = effects.persist {
                    self.hub.config().metrics.update_received(update.len());
                    let author = self.intern(actor, HTTP_PEER);
                    if !self.append(update, author).await {
                        let _ = reply.send(Err(JoinError::Unavailable));
                        return;
                    }
                }
                if let Some(frame) = effects.broadcast_others {
                    self.enqueue(Delivery::ToOthers(HTTP_PEER, frame));
                }
                self.enqueue(Delivery::Applied(reply, applied));
                self.compact_if_due();
            }
            Err(ReceiveError::Protocol(error)) => {
                let _ = reply.send(Ok(Err(error)));
            }
            Err(ReceiveError::Poisoned(error)) => {
                error!(%error, "http update poisoned the doc; reloading it from storage");
                let _ = reply.send(Ok(Err(error)));
                self.reload().await;
            }
        }
    }

    async fn receive(&mut self, peer: PeerId, messages: Vec<Message>) {
        let Some((link, _)) = self.peers.get(&peer) else {
            // Closed earlier (e.g. slow consumer); its remaining frames are discarded.
            return;
        };
        let access = link.access.clone();
        let acknowledges = link.dialect == Dialect::Hocuspocus;
        for message in messages {
            // A Hocuspocus peer gets a SyncStatus for each step 2 or update: `1` once what it
            // sent is durable (an empty one has nothing to store), `0` if it was refused.
            let ack = match &message {
                Message::SyncStep2(payload) | Message::Update(payload) if acknowledges => {
                    Some(access.can_write || payload.update.is_empty())
                }
                _ => None,
            };
            let now_ms = self.now_ms();
            let effects = match self.shared.receive_as(peer, &access, message, now_ms) {
                Ok(effects) => effects,
                Err(ReceiveError::Protocol(error)) => {
                    self.remove_peer(peer, Some(CloseReason::Protocol(error)));
                    return;
                }
                Err(ReceiveError::Poisoned(error)) => {
                    error!(%peer, %error, "update poisoned the doc; reloading it from storage");
                    self.remove_peer(peer, Some(CloseReason::Protocol(error)));
                    self.reload().await;
                    return;
                }
            };
            if effects.n_denied_updates > 0 {
                debug!(%peer, "update from a read-only peer refused");
            }
            if effects.n_foreign_awareness > 0 {
                warn!(%peer, n = effects.n_foreign_awareness, "dropped awareness entries owned by another connection");
            }
            if let Some(update) = effects.persist {
                self.hub.config().metrics.update_received(update.len());
                let author = self.author_of(peer, &access);
                if !self.append(update, author).await {
                    return;
                }
            }
            // The only reply to a refused update is y-protocols' Auth "permission denied",
            // which a Hocuspocus peer gets as SyncStatus `0` instead.
            if !(acknowledges && effects.n_denied_updates > 0) {
                for frame in effects.reply {
                    self.enqueue(Delivery::ToPeer(peer, frame));
                }
            }
            if let Some(frame) = effects.broadcast_others {
                self.enqueue(Delivery::ToOthers(peer, frame));
            }
            // Queued after the append: released only once the commit holding the update (and
            // everything accepted before it) has returned.
            if let Some(applied) = ack {
                self.enqueue(Delivery::ToPeer(peer, encode_sync_status(applied)));
            }
            if let Some(frame) = effects.broadcast_all {
                self.send_to_all(&frame);
                if self.remote.is_some() {
                    self.hub.log().publish_presence(&self.doc, &frame);
                }
            }
        }
        self.compact_if_due();
    }

    /// Compacts when the log passed a threshold.
    fn compact_if_due(&mut self) {
        if self.n_updates_since_compact >= self.hub.config().compact_after_updates
            || self.n_bytes_since_compact >= self.hub.config().compact_after_bytes
        {
            self.compact();
        }
    }

    /// Hands an accepted update to the writer. Returns false if the writer is gone.
    async fn append(&mut self, update: Bytes, author: u32) -> bool {
        self.submitted_seq += 1;
        if self.hub.config().metrics.times_durable_wait() {
            self.arrivals
                .push_back((self.submitted_seq, Instant::now()));
        }
        self.n_updates_since_compact += 1;
        self.n_bytes_since_compact += update.len() as u64;
        self.n_log_entries += 1;
        self.unreported.push_back((self.submitted_seq, author));
        if !self.history.authors_since.contains(&author) {
            self.history.authors_since.push(author);
        }
        if self.history.auto_due.is_none() {
            self.history.auto_due =
                Some(self.history.last_at + self.hub.config().auto_version_interval);
        }
        let command = LogCommand::Append {
            doc: self.doc.clone(),
            seq: self.submitted_seq,
            update,
            author: Some(self.authors[author as usize].1.clone()),
            report: self.durable_tx.clone(),
        };
        if self.hub.persist().send(command).await.is_err() {
            error!("redb writer is gone; closing the doc");
            self.fail_storage();
            return false;
        }
        true
    }

    /// Queues a snapshot of everything submitted so far; the writer drops the log it replaces.
    fn compact(&mut self) {
        let snapshot = match self.shared.encode_snapshot() {
            Ok(snapshot) => snapshot,
            Err(refused) => {
                // The log still loads (each entry was decoded on arrival); keep it.
                match refused {
                    SnapshotRefused::Pending => {
                        debug!(upto_seq = self.submitted_seq, error = %refused, "not compacting");
                    }
                    SnapshotRefused::DoesNotLoad => {
                        error!(upto_seq = self.submitted_seq, error = %refused, "not compacting; keeping the update log");
                    }
                }
                // Try again after as many updates or bytes as a compaction normally waits for.
                self.n_updates_since_compact = 0;
                self.n_bytes_since_compact = 0;
                return;
            }
        };
        let snapshot_bytes = snapshot.len() as u64;
        debug!(upto_seq = self.submitted_seq, snapshot_bytes, "compacting");
        let command = LogCommand::Compact {
            doc: self.doc.clone(),
            upto_seq: self.submitted_seq,
            snapshot,
            position: self
                .remote
                .as_ref()
                .and_then(|remote| remote.position.clone()),
            report: self.durable_tx.clone(),
        };
        // try_send: compaction is an optimisation; if the writer is busy it happens next time.
        if self.hub.persist().try_send(command).is_ok() {
            // The snapshot replaces everything stored so far: the size limit counts from it.
            self.shared.set_stored_bytes(snapshot_bytes);
            self.n_updates_since_compact = 0;
            self.n_bytes_since_compact = 0;
            self.n_log_entries = 0;
        }
    }

    fn compact_if_worthwhile(&mut self) {
        if self.n_log_entries > 1 && !self.durable_rx.borrow().failed {
            self.compact();
        }
    }

    /// Delivers now if nothing is waiting for durability, otherwise after the current seq commits.
    fn enqueue(&mut self, delivery: Delivery) {
        if self.pending.is_empty() && self.durable_seq >= self.submitted_seq {
            self.deliver(self.submitted_seq, delivery);
        } else {
            self.pending.push_back((self.submitted_seq, delivery));
        }
    }

    fn on_durable(&mut self) {
        let state = *self.durable_rx.borrow_and_update();
        if state.failed && state.corrupt {
            error!("stored doc is damaged; refusing its peers");
            self.fail_damaged();
            return;
        }
        if state.failed && state.storage_fault {
            self.refuse_unstored();
            return;
        }
        if state.failed {
            self.fail_storage();
            return;
        }
        self.durable_seq = state.durable_seq;
        if !self.arrivals.is_empty() {
            let now = Instant::now();
            while let Some((_, arrived)) = self
                .arrivals
                .front()
                .filter(|(seq, _)| *seq <= self.durable_seq)
                .copied()
            {
                self.arrivals.pop_front();
                self.hub.config().metrics.durable_after(now - arrived);
            }
        }
        self.note_durable_updates();
        self.history.durable_id = state.durable_version;
        while self
            .history
            .pending
            .front()
            .is_some_and(|pending| pending.record.id <= self.history.durable_id)
        {
            if let Some(pending) = self.history.pending.pop_front() {
                self.version_durable(pending);
            }
        }
        while self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= self.durable_seq)
        {
            if let Some((seq, delivery)) = self.pending.pop_front() {
                self.deliver(seq, delivery);
            }
        }
    }

    /// Performs `delivery`, which reveals the doc up to `seq`.
    fn deliver(&mut self, seq: u64, delivery: Delivery) {
        match delivery {
            Delivery::ToPeer(peer, frame) => self.send_to(peer, frame),
            Delivery::ToOthers(sender, frame) => {
                let targets: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(peer, (_, joined_seq))| **peer != sender && *joined_seq < seq)
                    .map(|(peer, _)| *peer)
                    .collect();
                self.hub
                    .config()
                    .metrics
                    .update_broadcast(targets.len(), frame.len());
                for peer in targets {
                    self.send_to(peer, frame.clone());
                }
            }
            Delivery::Snapshot(reply, snapshot) => {
                let _ = reply.send(Ok(*snapshot));
            }
            Delivery::Covers(reply, covers) => {
                let _ = reply.send(Ok(covers));
            }
            Delivery::Applied(reply, applied) => {
                let _ = reply.send(Ok(Ok(applied)));
            }
            Delivery::Restored(restored) => {
                // A shared log may store the `restore` version after the update (and under
                // another id): then the answer waits for the version (`version_durable`).
                let waiting = self
                    .history
                    .pending
                    .iter_mut()
                    .find(|pending| pending.record.id == restored.record.id);
                match waiting {
                    Some(pending) => pending.waiting_restore = Some(restored),
                    None => self.finish_restored(*restored),
                }
            }
        }
    }

    /// A restore is applied and its `restore` version stored: announce it and answer.
    fn finish_restored(&mut self, restored: RestoredDelivery) {
        let RestoredDelivery {
            reply,
            record,
            version,
            actor,
        } = restored;
        self.hub.events().publish(DocEvent::VersionRestored {
            doc: self.doc.to_string(),
            version,
            actor,
            at_ms: clock::now_ms(),
        });
        let _ = reply.send(Ok(Ok(record)));
    }

    /// Relays a Hocuspocus stateless payload to the doc's other Hocuspocus peers on this node, at
    /// once: it carries no document state, so there is nothing to wait for. A peer without write
    /// access may not talk to the writers: its payload is dropped, as a read-only peer's update
    /// is not relayed. Nothing crosses nodes in cluster mode (`protocol-spec/hocuspocus.md`).
    fn relay_stateless(&mut self, sender: PeerId, payload: &[u8]) {
        let Some((link, _)) = self.peers.get(&sender) else {
            return;
        };
        if !link.access.can_write {
            debug!(peer = %sender, bytes = payload.len(), "stateless message from a read-only peer dropped");
            return;
        }
        let targets: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, (link, _))| **peer != sender && link.dialect == Dialect::Hocuspocus)
            .map(|(peer, _)| *peer)
            .collect();
        if targets.is_empty() {
            return;
        }
        let frame = encode_stateless(payload);
        for peer in targets {
            self.send_to(peer, frame.clone());
        }
    }

    fn send_to_all(&mut self, frame: &Bytes) {
        let targets: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in targets {
            self.send_to(peer, frame.clone());
        }
    }

    fn send_to(&mut self, peer: PeerId, frame: Bytes) {
        let Some((link, _)) = self.peers.get(&peer) else {
            return;
        };
        match link.outbox.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full) => {
                warn!(%peer, capacity = self.hub.config().outbox_capacity, "slow consumer; closing it");
                self.remove_peer(peer, Some(CloseReason::SlowConsumer));
            }
            Err(TrySendError::Closed) => self.remove_peer(peer, None),
        }
    }

    /// Forgets `peer`, tells its connection why (if there is a reason), and broadcasts the removal
    /// of its presence to the others.
    fn remove_peer(&mut self, peer: PeerId, reason: Option<CloseReason>) {
        let Some((link, _)) = self.peers.remove(&peer) else {
            return;
        };
        if let Some(reason) = reason {
            // If the connection already has a reason, that one wins.
            link.closer.close(reason);
        }
        drop(link);
        self.peer_authors.remove(&peer);
        self.stats
            .n_peers
            .store(self.peers.len(), Ordering::Relaxed);
        self.publish_presence();
        debug!(%peer, n_peers = self.peers.len(), "peer left");
        if let Some(frame) = self.shared.remove_peer(peer) {
            self.send_to_all(&frame);
            if self.remote.is_some() {
                self.hub.log().publish_presence(&self.doc, &frame);
            }
        }
        if self.peers.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Waits until everything submitted is durable (or storage failed), releasing deliveries.
    async fn wait_durable(&mut self) {
        while (self.durable_seq < self.submitted_seq
            || self.history.durable_id + 1 < self.history.next_id)
            && !self.durable_rx.borrow().failed
        {
            if self.durable_rx.changed().await.is_err() {
                break;
            }
            self.on_durable();
            if self.reload_due {
                Box::pin(self.reload_after_refusal()).await;
            }
        }
    }

    /// The writer refused a commit (the store is read-only): answers everything that waited for
    /// it without revealing it, and schedules the reload that drops it from memory.
    ///
    /// The refused updates' senders are closed with 1013 "storage full, retry later": a client
    /// keeps its edits and sends them again when it reconnects and syncs, which CRDTs make safe.
    /// A peer with a reply waiting (its handshake may reveal the refused state) is closed alike
    /// and resyncs. Nothing after `durable_seq` is stored: the writer rolled it back.
    fn refuse_unstored(&mut self) {
        if self.reload_due {
            return;
        }
        // The store logs the full disk once; each refusal is routine.
        debug!(
            durable_seq = self.durable_seq,
            submitted_seq = self.submitted_seq,
            "storage full: updates refused; reloading the doc from storage"
        );
        self.reload_due = true;
        // HTTP writers hear 507 for a full disk, 503 for an unreachable shared log.
        let refused = if self.remote.is_some() {
            JoinError::Unavailable
        } else {
            JoinError::StorageFull
        };
        let durable_seq = self.durable_seq;
        let mut to_close: Vec<PeerId> = Vec::new();
        for (seq, delivery) in std::mem::take(&mut self.pending) {
            if seq <= durable_seq {
                self.deliver(seq, delivery);
                continue;
            }
            match delivery {
                Delivery::ToPeer(peer, _) => to_close.push(peer),
                Delivery::ToOthers(sender, _) => to_close.push(sender),
                Delivery::Snapshot(reply, _) => self.snapshots_after_reload.push(reply),
                Delivery::Covers(reply, _) => {
                    let _ = reply.send(Err(refused));
                }
                Delivery::Applied(reply, _) => {
                    let _ = reply.send(Err(refused));
                }
                Delivery::Restored(restored) => {
                    let _ = restored.reply.send(Err(refused));
                }
            }
        }
        for pending in self.history.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(refused));
            }
            if let Some(waiting) = pending.waiting_restore {
                let _ = waiting.reply.send(Err(JoinError::StorageFull));
            }
        }
        self.unreported.retain(|(seq, _)| *seq <= durable_seq);
        self.arrivals.retain(|(seq, _)| *seq <= durable_seq);
        // On one node a refusal is a full disk; in cluster mode, an unreachable log.
        let reason = if self.remote.is_some() {
            CloseReason::StorageUnavailable
        } else {
            CloseReason::StorageFull
        };
        for peer in to_close {
            if peer != HTTP_PEER {
                self.remove_peer(peer, Some(reason.clone()));
            }
        }
    }

    /// Replaces the in-memory doc by what the store holds after a refused commit, on a fresh
    /// channel to the writer (the old one stays failed, so the writer drops whatever this actor
    /// queued behind the refusal). Peers stay connected and keep their presence.
    async fn reload_after_refusal(&mut self) {
        self.reload_due = false;
        match load(&self.hub, &self.doc).await {
            Ok(loaded) => {
                let Loaded {
                    mut shared,
                    last_seq,
                    n_log_entries,
                    n_log_bytes,
                    history,
                    n_named,
                    position: _,
                } = loaded;
                let previous = std::mem::replace(
                    &mut self.shared,
                    SharedDoc::new(self.hub.config().limits.clone()),
                );
                shared.adopt_awareness(previous);
                self.shared = shared;
                let (durable_tx, durable_rx) = watch::channel(Durability {
                    durable_seq: last_seq,
                    durable_version: history.last_version_id,
                    ..Durability::default()
                });
                self.durable_tx = durable_tx;
                self.durable_rx = durable_rx;
                self.submitted_seq = last_seq;
                self.durable_seq = last_seq;
                for (_, joined_seq) in self.peers.values_mut() {
                    *joined_seq = (*joined_seq).min(last_seq);
                }
                self.n_updates_since_compact = n_log_entries;
                self.n_bytes_since_compact = n_log_bytes;
                self.n_log_entries = n_log_entries;
                self.history.next_id = history.last_version_id + 1;
                self.history.durable_id = history.last_version_id;
                self.history.version_seq = history.last_version.as_ref().map_or(0, |v| v.seq);
                self.history.n_named = n_named;
                self.reset_authors_since(history.authors_since);
                debug!(last_seq, "doc reloaded from storage after a refused commit");
                for reply in std::mem::take(&mut self.snapshots_after_reload) {
                    let snapshot = DocSnapshot {
                        update: self.shared.encode_state(),
                        json: self.shared.to_json(),
                    };
                    let _ = reply.send(Ok(snapshot));
                }
            }
            Err(LoadFailure::Corrupt(reason)) => {
                error!(error = %reason, "stored doc is damaged; refusing its peers");
                self.fail_damaged();
            }
            Err(LoadFailure::Failed(reason)) if self.remote.is_some() => {
                // Cluster mode: the shared log is unreachable. The peers come back (and resync)
                // once it is reachable again; nothing they were sent is lost.
                warn!(error = %reason, "cannot reload doc: the shared log is unreachable; closing it");
                self.fail(JoinError::Unavailable, &CloseReason::StorageUnavailable);
            }
            Err(LoadFailure::Failed(reason)) => {
                error!(error = %reason, "cannot reload doc after a refused commit; closing it");
                self.fail_storage();
            }
        }
    }

    /// Replaces a poisoned in-memory doc by its durable state, keeping presence and peers.
    async fn reload(&mut self) {
        self.wait_durable().await;
        if self.durable_rx.borrow().failed {
            return;
        }
        match load(&self.hub, &self.doc).await {
            Ok(Loaded {
                mut shared,
                last_seq,
                ..
            }) => {
                let previous = std::mem::replace(
                    &mut self.shared,
                    SharedDoc::new(self.hub.config().limits.clone()),
                );
                shared.adopt_awareness(previous);
                self.shared = shared;
                info!(
                    last_seq,
                    submitted_seq = self.submitted_seq,
                    "doc reloaded from storage"
                );
            }
            Err(LoadFailure::Corrupt(reason)) => {
                error!(error = %reason, "stored doc is damaged; refusing its peers");
                self.fail_damaged();
            }
            Err(LoadFailure::Failed(reason)) => {
                error!(error = %reason, "cannot reload doc; closing it");
                self.fail_storage();
            }
        }
    }

    /// Storage is unusable for this doc: close every peer with 1011 "storage failure", answer
    /// HTTP waiters 503, and stop accepting.
    fn fail_storage(&mut self) {
        self.fail(JoinError::Unavailable, &CloseReason::StorageFailure);
    }

    /// The doc's stored records are damaged (a commit or a reload met them): close every peer
    /// with 1011 "document damaged", answer HTTP waiters 500 `doc_corrupt`, and stop accepting.
    /// Nothing after `durable_seq` was stored: the writer left this doc's updates out.
    fn fail_damaged(&mut self) {
        self.fail(JoinError::Corrupt, &CloseReason::DocCorrupt);
    }

    /// Closes every peer with `reason`, answers whatever waits with `refusal`, and stops.
    fn fail(&mut self, refusal: JoinError, reason: &CloseReason) {
        for (_, delivery) in std::mem::take(&mut self.pending) {
            match delivery {
                Delivery::ToPeer(..) | Delivery::ToOthers(..) => {}
                Delivery::Snapshot(reply, _) => {
                    let _ = reply.send(Err(refusal));
                }
                Delivery::Covers(reply, _) => {
                    let _ = reply.send(Err(refusal));
                }
                Delivery::Applied(reply, _) => {
                    let _ = reply.send(Err(refusal));
                }
                Delivery::Restored(restored) => {
                    let _ = restored.reply.send(Err(refusal));
                }
            }
        }
        for reply in std::mem::take(&mut self.snapshots_after_reload) {
            let _ = reply.send(Err(refusal));
        }
        self.unreported.clear();
        self.arrivals.clear();
        for pending in self.history.pending.drain(..) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(refusal));
            }
            if let Some(waiting) = pending.waiting_restore {
                let _ = waiting.reply.send(Err(refusal));
            }
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.remove_peer(peer, Some(reason.clone()));
        }
        self.hub.remove_if_generation(&self.doc, self.generation);
        self.refusal = Some(refusal);
        self.stopping = true;
    }

    /// Unloads the doc if it is still idle and everything is durable. Returns true if it did.
    async fn try_unload(&mut self, inbox: &mut mpsc::Receiver<DocCommand>) -> bool {
        if !self.peers.is_empty() {
            self.idle_since = None;
            return false;
        }
        self.wait_durable().await;
        self.finish_history().await;
        self.compact_if_worthwhile();
        self.hub.remove_if_generation(&self.doc, self.generation);
        inbox.close();
        // Commands that raced with the removal: joiners retry on a fresh actor, which loads the
        // state this one made durable; questions about the doc can still be answered from
        // memory, which is all durable by now.
        while let Some(command) = inbox.recv().await {
            match command {
                DocCommand::Snapshot { reply } => {
                    let snapshot = DocSnapshot {
                        update: self.shared.encode_state(),
                        json: self.shared.to_json(),
                    };
                    let _ = reply.send(Ok(snapshot));
                }
                DocCommand::Covers { snapshot, reply } => {
                    let _ = reply.send(Ok(self.shared.covers(&snapshot)));
                }
                DocCommand::Presence { reply } => {
                    let _ = reply.send(self.shared.present_users());
                }
                other => refuse(other, JoinError::Retry),
            }
        }
        info!(durable_seq = self.durable_seq, "doc unloaded");
        true
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Tells live workspace views how many peers the doc has now.
    fn publish_presence(&self) {
        self.hub.events().publish(DocEvent::Presence {
            doc: self.doc.to_string(),
            peers: self.peers.len(),
        });
    }
}

/// The next input from other nodes, or `None` when the log asks for a resync; never ready on
/// one node. (The actor holds the feed's sender too, so the channel never closes.)
async fn next_remote(remote: &mut Option<RemoteState>) -> Option<RemoteInput> {
    let Some(remote) = remote else {
        return std::future::pending().await;
    };
    tokio::select! {
        biased;
        // A failed resync waits out its pause; a resync asked meanwhile waits with it.
        () = sleep_until(remote.retry_at), if remote.retry_at.is_some() => {
            remote.retry_at = None;
            None
        }
        () = remote.feed.resync.notified(), if remote.retry_at.is_none() => None,
        input = remote.rx.recv() => input,
    }
}

impl DocActor {
    /// Applies what another node did to the doc.
    fn handle_remote(&mut self, input: RemoteInput) {
        match input {
            RemoteInput::Updates { updates, position } => {
                for update in &updates {
                    match self.shared.apply_remote(update) {
                        Ok(frame) => {
                            self.n_updates_since_compact += 1;
                            self.n_bytes_since_compact += update.len() as u64;
                            self.n_log_entries += 1;
                            // Durable already (another node appended it): relay at once.
                            self.send_to_all(&frame);
                        }
                        Err(error) => {
                            error!(%error, "an update relayed from another node does not apply; skipped")
                        }
                    }
                }
                if let Some(remote) = self.remote.as_mut() {
                    remote.position = Some(position);
                }
                if !updates.is_empty() {
                    debug!(n = updates.len(), "applied updates from other nodes");
                    self.compact_if_due();
                }
            }
            RemoteInput::Awareness { node, frame } => {
                let payload = match tandem_core::protocol::decode_frame(
                    &frame,
                    &self.hub.config().limits,
                ) {
                    Ok(messages) => messages.into_iter().find_map(|message| match message {
                        Message::Awareness(payload) => Some(payload),
                        _ => None,
                    }),
                    Err(error) => {
                        warn!(%error, %node, "presence relayed from another node does not decode");
                        None
                    }
                };
                let Some(payload) = payload else { return };
                let peer = self.node_peer(node);
                let now_ms = self.now_ms();
                if let Some(frame) = self.shared.receive_remote_awareness(peer, &payload, now_ms) {
                    self.send_to_all(&frame);
                }
            }
            RemoteInput::PresenceQuery => {
                if let Some(frame) = self.shared.encode_local_awareness() {
                    self.hub.log().publish_presence(&self.doc, &frame);
                }
            }
            RemoteInput::NodeGone { node } => {
                let Some(peer) = self
                    .remote
                    .as_mut()
                    .and_then(|remote| remote.nodes.remove(&node))
                else {
                    return;
                };
                debug!(%node, "another node is gone; removing its peers' presence");
                if let Some(frame) = self.shared.remove_peer(peer) {
                    self.send_to_all(&frame);
                }
            }
        }
    }

    /// The pseudo-peer that owns `node`'s presence states in this doc.
    fn node_peer(&mut self, node: Arc<str>) -> PeerId {
        let remote = self
            .remote
            .as_mut()
            .expect("remote input arrives only in cluster mode");
        *remote.nodes.entry(node).or_insert_with(|| {
            let peer = PeerId(remote.next_node_peer);
            remote.next_node_peer += 1;
            peer
        })
    }

    /// The log dropped input for this doc (its feed was full, or the log lost its place): load
    /// what is durable, merge it into the doc, relay the difference, and follow again from the
    /// position the load ended at.
    async fn resync(&mut self) {
        let loaded = match self.hub.log().load(&self.doc).await {
            Ok(loaded) => loaded,
            Err(error) => {
                // Try again later, from the actor's loop (which goes on serving the peers, who
                // keep what they have); said once per run of failures.
                if let Some(remote) = self.remote.as_mut() {
                    if remote.resync_failures == 0 {
                        warn!(%error, "cannot resync the doc from the log; retrying");
                    }
                    remote.resync_failures = remote.resync_failures.saturating_add(1);
                    let backoff = RESYNC_RETRY_MIN
                        .saturating_mul(1 << remote.resync_failures.min(6))
                        .min(RESYNC_RETRY_MAX);
                    remote.retry_at = Some(Instant::now() + backoff);
                }
                return;
            }
        };
        if let Some(remote) = self.remote.as_mut() {
            remote.resync_failures = 0;
        }
        let before = self.shared.state_vector();
        let mut merged = 0usize;
        for update in loaded.stored.iter() {
            if self.shared.apply_remote(update).is_ok() {
                merged += 1;
            }
        }
        let diff = self.shared.encode_diff(&before);
        if let Some(frame) = diff {
            self.send_to_all(&frame);
        }
        if let Some(remote) = self.remote.as_mut() {
            // Drop the updates the old feed still holds (the load covered them); keep presence.
            let mut kept = Vec::new();
            while let Ok(input) = remote.rx.try_recv() {
                if !matches!(input, RemoteInput::Updates { .. }) {
                    kept.push(input);
                }
            }
            remote.position = loaded.position.clone();
            self.hub.log().follow(
                &self.doc,
                self.generation,
                loaded.position,
                remote.feed.clone(),
            );
            for input in kept {
                self.handle_remote(input);
            }
        }
        info!(merged, "doc resynced from the log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every inbox slot and every pending delivery is as large as the largest variant: a big
    /// variant added unboxed would cost every open doc (the many-docs memory row).
    #[test]
    fn doc_command_stays_small() {
        let word = std::mem::size_of::<usize>();
        assert!(std::mem::size_of::<DocCommand>() <= 5 * word);
        assert!(std::mem::size_of::<Delivery>() <= 6 * word);
    }
}
