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
//! - The actor unloads itself: after the grace period with no peers and nothing in flight, it
//!   removes its own hub entry, closes its inbox, and tells late joiners to retry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tandem_core::shared_doc::SnapshotRefused;
use tandem_core::{DocId, Message, PeerId, PresentUser, ProtocolError, ReceiveError, SharedDoc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use yrs::Snapshot;

use crate::connection::CloseReason;
use crate::events::Event;
use crate::hub::{DOC_INBOX_CAPACITY, DocHandle, Hub, JoinError, PeerLink};
use crate::persist::{Durability, PersistCommand};

/// The longest pause between two awareness expiry sweeps.
const MAX_AWARENESS_SWEEP: Duration = Duration::from_secs(5);

/// Everything that can be asked of a doc. The only way into a doc actor.
pub(crate) enum DocCommand {
    /// Register a peer; the reply comes once the doc is loaded and the peer will receive frames.
    Join {
        peer: PeerId,
        link: PeerLink,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Messages one peer sent in one frame, already decoded by its connection task.
    Receive {
        peer: PeerId,
        messages: Vec<Message>,
    },
    /// The peer's connection ended.
    Leave { peer: PeerId },
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
    /// A v1 update sent over HTTP by a writer (already decoded once by the handler, which
    /// checked it; the raw bytes travel so a retry on a fresh actor can resend them). The answer
    /// (whether it changed anything) waits for durability, like a broadcast.
    Apply {
        update: Bytes,
        reply: oneshot::Sender<Result<Result<bool, ProtocolError>, JoinError>>,
    },
}

/// The peer id of updates that arrive over HTTP. Connections count from 1 (`Hub::next_peer_id`),
/// so no WebSocket peer is skipped by the broadcast of an HTTP update.
pub(crate) const HTTP_PEER: PeerId = PeerId(0);

/// A doc's state as served over HTTP.
pub(crate) struct DocSnapshot {
    /// The whole doc as one v1 update.
    pub(crate) update: Vec<u8>,
    /// The root types as JSON.
    pub(crate) json: serde_json::Value,
}

/// Starts the actor of `doc` and returns its handle. The actor loads the doc before anything else.
pub(crate) fn spawn(hub: Hub, doc: DocId, generation: u64) -> DocHandle {
    let (tx, inbox) = mpsc::channel(DOC_INBOX_CAPACITY);
    let n_peers = Arc::new(AtomicUsize::new(0));
    let handle = DocHandle {
        tx,
        generation,
        n_peers: n_peers.clone(),
    };
    let span = tracing::info_span!("doc", doc = %doc, generation);
    let lifecycle = hub.lifecycle().clone();
    lifecycle.spawn(span, run(hub, doc, generation, inbox, n_peers));
    handle
}

async fn run(
    hub: Hub,
    doc: DocId,
    generation: u64,
    mut inbox: mpsc::Receiver<DocCommand>,
    n_peers: Arc<AtomicUsize>,
) {
    let started = Instant::now();
    let Loaded {
        shared,
        last_seq,
        n_log_entries,
        n_log_bytes,
    } = match load(&hub, &doc).await {
        Ok(loaded) => loaded,
        Err(reason) => {
            error!(error = %reason, "cannot load doc; refusing its peers");
            hub.remove_if_generation(&doc, generation);
            inbox.close();
            while let Some(command) = inbox.recv().await {
                refuse(command, JoinError::Unavailable);
            }
            return;
        }
    };
    info!(
        last_seq,
        load_ms = started.elapsed().as_millis() as u64,
        "doc opened"
    );
    let (durable_tx, durable_rx) = watch::channel(Durability {
        durable_seq: last_seq,
        failed: false,
    });
    let mut actor = DocActor {
        hub,
        doc,
        generation,
        shared,
        peers: HashMap::new(),
        n_peers,
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
        edits: Default::default(),
    };
    actor.run(inbox).await;
}

/// A doc as rebuilt from storage.
struct Loaded {
    shared: SharedDoc,
    last_seq: u64,
    /// Log entries after the snapshot, and their bytes.
    n_log_entries: u64,
    n_log_bytes: u64,
}

async fn load(hub: &Hub, doc: &DocId) -> Result<Loaded, String> {
    let store = hub.store().clone();
    let limits = hub.config().limits.clone();
    let name = doc.clone();
    tokio::task::spawn_blocking(move || {
        let stored = store
            .load_doc(name.as_str())
            .map_err(|error| error.to_string())?;
        let shared = SharedDoc::load(limits, stored.iter()).map_err(|error| error.to_string())?;
        Ok(Loaded {
            shared,
            last_seq: stored.last_seq,
            n_log_entries: stored.updates.len() as u64,
            n_log_bytes: stored.updates.iter().map(|u| u.len() as u64).sum(),
        })
    })
    .await
    .map_err(|error| format!("load task failed: {error}"))?
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
        DocCommand::Apply { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        DocCommand::Receive { .. } | DocCommand::Leave { .. } => {}
    }
}

/// One frame or answer waiting for durability.
enum Delivery {
    /// To one peer (sync replies, the handshake).
    ToPeer(PeerId, Bytes),
    /// To every peer but the sender (document updates) that joined before this update's seq;
    /// later joiners get it through their sync step 2.
    ToOthers(PeerId, Bytes),
    /// An HTTP snapshot.
    Snapshot(oneshot::Sender<Result<DocSnapshot, JoinError>>, DocSnapshot),
    /// An HTTP `covers` answer.
    Covers(oneshot::Sender<Result<bool, JoinError>>, bool),
    /// The answer to an HTTP update.
    Applied(
        oneshot::Sender<Result<Result<bool, ProtocolError>, JoinError>>,
        bool,
    ),
}

struct DocActor {
    hub: Hub,
    doc: DocId,
    generation: u64,
    shared: SharedDoc,
    /// Each peer's link and the `submitted_seq` when it joined.
    peers: HashMap<PeerId, (PeerLink, u64)>,
    n_peers: Arc<AtomicUsize>,
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
    /// STAND-IN (activity track): `DocChanged` reports until the history track's producer.
    edits: crate::activity::EditReports,
}

impl DocActor {
    async fn run(&mut self, mut inbox: mpsc::Receiver<DocCommand>) {
        let timeout = Duration::from_millis(self.hub.config().limits.awareness_timeout_ms);
        let sweep = (timeout / 3).clamp(Duration::from_millis(50), MAX_AWARENESS_SWEEP);
        let mut awareness_sweep = tokio::time::interval(sweep);
        awareness_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.hub.lifecycle().cancel.clone();
        let grace = self.hub.config().doc_unload_grace;
        loop {
            let unload_at = self.idle_since.map(|since| since + grace);
            tokio::select! {
                biased;
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
                _ = awareness_sweep.tick() => {
                    let now_ms = self.now_ms();
                    if let Some(frame) = self.shared.expire_awareness(now_ms) {
                        debug!("awareness states expired");
                        self.send_to_all(&frame);
                    }
                }
                () = sleep_until_opt(unload_at), if unload_at.is_some() && !self.stopping => {
                    if self.try_unload(&mut inbox).await {
                        return;
                    }
                }
            }
        }
        // The inbox is closed and drained (shutdown or storage failure): flush and stop.
        self.wait_durable().await;
        self.edits
            .publish(self.doc.as_str(), self.hub.events(), true);
        self.compact_if_worthwhile();
        self.hub.remove_if_generation(&self.doc, self.generation);
        info!(
            durable_seq = self.durable_seq,
            pending_deliveries = self.pending.len(),
            "doc flushed and closed"
        );
    }

    async fn handle(&mut self, command: DocCommand) {
        match command {
            DocCommand::Join { peer, link, reply } => {
                if self.stopping {
                    // Stopping because storage failed is not a shutdown: the peer may retry.
                    let error = if self.durable_rx.borrow().failed {
                        JoinError::Unavailable
                    } else {
                        JoinError::ShuttingDown
                    };
                    refuse(DocCommand::Join { peer, link, reply }, error);
                    return;
                }
                self.peers.insert(peer, (link, self.submitted_seq));
                self.n_peers.store(self.peers.len(), Ordering::Relaxed);
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
            DocCommand::Snapshot { reply } => {
                let snapshot = DocSnapshot {
                    update: self.shared.encode_state(),
                    json: self.shared.to_json(),
                };
                self.enqueue(Delivery::Snapshot(reply, snapshot));
            }
            DocCommand::Covers { snapshot, reply } => {
                let covers = self.shared.covers(&snapshot);
                self.enqueue(Delivery::Covers(reply, covers));
            }
            DocCommand::Presence { reply } => {
                let _ = reply.send(self.shared.present_users());
            }
            DocCommand::Apply { update, reply } => self.apply_http(update, reply).await,
        }
    }

    /// Applies an update that came over HTTP, as if from a writer peer that receives nothing.
    async fn apply_http(
        &mut self,
        raw: Bytes,
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
                if let Some(update) = effects.persist
                    && !self.append(update).await
                {
                    let _ = reply.send(Err(JoinError::Unavailable));
                    return;
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
        for message in messages {
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
                if !self.append(update).await {
                    return;
                }
                // STAND-IN (activity track): who wrote this seq, reported once it is durable.
                let actor = crate::events::Actor::from_identity(
                    access.identity.as_ref(),
                    format!("peer {peer}"),
                );
                self.edits.submitted(self.submitted_seq, actor);
            }
            for frame in effects.reply {
                self.enqueue(Delivery::ToPeer(peer, frame));
            }
            if let Some(frame) = effects.broadcast_others {
                self.enqueue(Delivery::ToOthers(peer, frame));
            }
            if let Some(frame) = effects.broadcast_all {
                self.send_to_all(&frame);
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
    async fn append(&mut self, update: Bytes) -> bool {
        self.submitted_seq += 1;
        self.n_updates_since_compact += 1;
        self.n_bytes_since_compact += update.len() as u64;
        self.n_log_entries += 1;
        let command = PersistCommand::Append {
            doc: self.doc.clone(),
            seq: self.submitted_seq,
            update,
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
        let command = PersistCommand::Compact {
            doc: self.doc.clone(),
            upto_seq: self.submitted_seq,
            snapshot,
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
        if state.failed {
            self.fail_storage();
            return;
        }
        self.durable_seq = state.durable_seq;
        while self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= self.durable_seq)
        {
            if let Some((seq, delivery)) = self.pending.pop_front() {
                self.deliver(seq, delivery);
            }
        }
        // STAND-IN (activity track): report the authors of what became durable.
        self.edits.durable(self.durable_seq);
        self.edits
            .publish(self.doc.as_str(), self.hub.events(), self.stopping);
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
                for peer in targets {
                    self.send_to(peer, frame.clone());
                }
            }
            Delivery::Snapshot(reply, snapshot) => {
                let _ = reply.send(Ok(snapshot));
            }
            Delivery::Covers(reply, covers) => {
                let _ = reply.send(Ok(covers));
            }
            Delivery::Applied(reply, applied) => {
                let _ = reply.send(Ok(Ok(applied)));
            }
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
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(%peer, capacity = self.hub.config().outbox_capacity, "slow consumer; closing it");
                self.remove_peer(peer, Some(CloseReason::SlowConsumer));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.remove_peer(peer, None),
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
        self.n_peers.store(self.peers.len(), Ordering::Relaxed);
        self.publish_presence();
        debug!(%peer, n_peers = self.peers.len(), "peer left");
        if let Some(frame) = self.shared.remove_peer(peer) {
            self.send_to_all(&frame);
        }
        if self.peers.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Waits until everything submitted is durable (or storage failed), releasing deliveries.
    async fn wait_durable(&mut self) {
        while self.durable_seq < self.submitted_seq && !self.durable_rx.borrow().failed {
            if self.durable_rx.changed().await.is_err() {
                break;
            }
            self.on_durable();
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
            Err(reason) => {
                error!(error = %reason, "cannot reload doc; closing it");
                self.fail_storage();
            }
        }
    }

    /// Storage is unusable for this doc: close every peer with 1011 and stop accepting.
    fn fail_storage(&mut self) {
        self.pending.clear();
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.remove_peer(peer, Some(CloseReason::StorageFailure));
        }
        self.hub.remove_if_generation(&self.doc, self.generation);
        self.stopping = true;
    }

    /// Unloads the doc if it is still idle and everything is durable. Returns true if it did.
    async fn try_unload(&mut self, inbox: &mut mpsc::Receiver<DocCommand>) -> bool {
        if !self.peers.is_empty() {
            self.idle_since = None;
            return false;
        }
        self.wait_durable().await;
        self.edits
            .publish(self.doc.as_str(), self.hub.events(), true);
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
        self.hub.events().publish_live(Event::DocPresence {
            doc: self.doc.to_string(),
            peers: self.peers.len(),
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
