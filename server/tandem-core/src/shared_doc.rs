//! `SharedDoc`: one document's CRDT state and presence, and what the server does with each
//! message a peer sends.
//!
//! `SharedDoc::receive` is a pure function of the state and the message: it returns
//! [`Effects`] (frames to reply, an update to persist, frames to broadcast) and the caller, the
//! doc actor, performs them in the order the durability invariant requires (persist, then send).
//! Applying an update runs inside `catch_unwind`; a panic or an apply error poisons the in-memory
//! state, and the caller must reload the doc from durable storage.
//!
//! Read next: `tandem-hub/src/doc_actor/mod.rs`, the owner of each `SharedDoc`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ArrayRef, Doc, GetString, MapRef, Out, ReadTxn, Snapshot, StateVector, TextRef, Transact,
    Update,
};

use crate::awareness::{AwarenessTable, PeerId};
use crate::limits::Limits;
use crate::presence::{Identity, PresentUser};
use crate::protocol::{
    AwarenessPayload, Message, ProtocolError, UpdatePayload, encode_auth_denied, encode_sync_step1,
    encode_sync_step2, encode_sync_update,
};

/// A stored snapshot merged into a newer one (cluster mode's compaction).
#[derive(Debug)]
pub struct MergedSnapshot {
    /// Both states as one v1 update.
    pub update: Vec<u8>,
    /// The stored snapshot held insertions the newer one lacked: whoever made the newer one
    /// had missed some updates.
    pub stored_had_more: bool,
}

/// Merges `stored` (a snapshot already stored) into `newer` (one about to replace it), so that
/// the replacement never loses anything the stored one held, whatever its maker had missed.
/// Both are whole-doc v1 updates; an error means one does not decode.
pub fn merge_snapshots(stored: &[u8], newer: &[u8]) -> Result<MergedSnapshot, LoadError> {
    let refused = |reason: &'static str| LoadError { index: 0, reason };
    catch_unwind(AssertUnwindSafe(|| {
        let stored_sv = Update::decode_v1(stored)
            .map_err(|_| refused("the stored snapshot does not decode"))?
            .state_vector();
        let newer_sv = Update::decode_v1(newer)
            .map_err(|_| refused("the new snapshot does not decode"))?
            .state_vector();
        let stored_had_more = stored_sv
            .iter()
            .any(|(client, clock)| *clock > newer_sv.get(client));
        let update = yrs::merge_updates_v1([stored, newer])
            .map_err(|_| refused("the snapshots do not merge"))?;
        Ok(MergedSnapshot {
            update,
            stored_had_more,
        })
    }))
    .unwrap_or_else(|_| Err(refused("the crdt engine panicked merging snapshots")))
}

/// The reason sent with the y-protocols Auth "permission denied" answer to a read-only peer's
/// update.
pub const READ_ONLY_DENIAL: &str = "read-only: this connection may not change the document";

/// A document: the yrs `Doc` and the awareness table, owned by exactly one doc actor.
pub struct SharedDoc {
    doc: Doc,
    awareness: AwarenessTable,
    limits: Limits,
    /// Bytes of the doc's stored form: what `load` read plus every update accepted since (or the
    /// snapshot that replaced them, see [`SharedDoc::set_stored_bytes`]). Checked against
    /// `Limits::max_doc_bytes` before an update is applied.
    stored_bytes: u64,
    /// The last sync step 2 sent, with the state vector it answered. Joiners that send the same
    /// state vector (every fresh client sends an empty one) share one encoding and one buffer
    /// until the doc changes: a join storm on a big doc encodes it once, not once per joiner.
    step2_cache: Option<(StateVector, Bytes)>,
}

/// What one peer may do with a doc. The server decides it at the edge, from the peer's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAccess {
    /// Whether the peer's updates are applied. A read-only peer still syncs and has presence;
    /// its updates are refused (not applied, stored or relayed) with an Auth permission-denied.
    pub can_write: bool,
    /// Who the peer verifiably is; stamped into its presence. `None` when authentication is off.
    pub identity: Option<Identity>,
}

impl PeerAccess {
    /// Full access with no verified identity: what every peer gets when authentication is off.
    pub fn anonymous_writer() -> PeerAccess {
        PeerAccess {
            can_write: true,
            identity: None,
        }
    }
}

/// What the doc actor must do after [`SharedDoc::receive`].
#[derive(Debug, Default)]
pub struct Effects {
    /// Frames for the sender. They may reveal document state, so they wait for durability.
    pub reply: Vec<Bytes>,
    /// A v1 update to append to the doc's log; nothing derived from it leaves before it commits.
    pub persist: Option<Bytes>,
    /// A frame for every other peer, sent after `persist` commits.
    pub broadcast_others: Option<Bytes>,
    /// A frame for every peer, the sender included (awareness; nothing to persist).
    pub broadcast_all: Option<Bytes>,
    /// Awareness entries dropped because another connection owns their client id.
    pub n_foreign_awareness: usize,
    /// Non-empty updates refused because the peer is read-only (answered with an Auth denial).
    pub n_denied_updates: usize,
}

/// Why `receive` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The message was refused; the doc is unchanged. Close the sender with this error.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// yrs failed or panicked half-way through an update. The in-memory doc may hold part of it:
    /// close the sender with the inner error and reload the doc from durable storage.
    #[error("doc poisoned: {0}")]
    Poisoned(ProtocolError),
}

/// Why [`SharedDoc::encode_snapshot`] gives no snapshot; the update log must be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefused {
    /// The doc holds structs back for missing dependencies; try again once they arrive.
    #[error("the doc holds structs waiting for missing dependencies")]
    Pending,
    /// The doc's encoding does not load back (left by hostile updates).
    #[error("the doc's snapshot does not load back")]
    DoesNotLoad,
}

/// A stored update that cannot be applied: the doc is corrupt on disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored update {index} cannot be applied: {reason}")]
pub struct LoadError {
    /// Position of the failing update in the load order (0 is the snapshot, if any).
    pub index: usize,
    /// What went wrong.
    pub reason: &'static str,
}

impl SharedDoc {
    /// An empty document.
    pub fn new(limits: Limits) -> SharedDoc {
        SharedDoc {
            doc: Doc::new(),
            awareness: AwarenessTable::default(),
            limits,
            stored_bytes: 0,
            step2_cache: None,
        }
    }

    /// Rebuilds a document from its stored updates (snapshot first, then the log, in order).
    pub fn load<I, B>(limits: Limits, updates: I) -> Result<SharedDoc, LoadError>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut shared = SharedDoc::new(limits);
        for (index, bytes) in updates.into_iter().enumerate() {
            let bytes = bytes.as_ref();
            shared.stored_bytes = shared.stored_bytes.saturating_add(bytes.len() as u64);
            let update = catch_unwind(|| Update::decode_v1(bytes))
                .map_err(|_| LoadError {
                    index,
                    reason: "decoder panicked",
                })?
                .map_err(|_| LoadError {
                    index,
                    reason: "not a v1 update",
                })?;
            catch_unwind(AssertUnwindSafe(|| {
                shared.doc.transact_mut().apply_update(update)
            }))
            .map_err(|_| LoadError {
                index,
                reason: "apply panicked",
            })?
            .map_err(|_| LoadError {
                index,
                reason: "apply failed",
            })?;
        }
        Ok(shared)
    }

    /// The frames a new peer receives first: Sync step 1, then every known awareness state.
    /// (y-websocket clients read one message per frame, so these are separate frames.)
    pub fn handshake(&self) -> Vec<Bytes> {
        let mut frames = vec![encode_sync_step1(&self.state_vector())];
        if !self.awareness.is_empty() {
            frames.push(self.awareness.encode_all());
        }
        frames
    }

    /// Handles one message from `peer`, with full access and no verified identity (as when
    /// authentication is off). `now_ms` is the caller's monotonic clock.
    pub fn receive(
        &mut self,
        peer: PeerId,
        message: Message,
        now_ms: u64,
    ) -> Result<Effects, ReceiveError> {
        self.receive_as(peer, &PeerAccess::anonymous_writer(), message, now_ms)
    }

    /// Handles one message from `peer`, who may do what `access` allows.
    pub fn receive_as(
        &mut self,
        peer: PeerId,
        access: &PeerAccess,
        message: Message,
        now_ms: u64,
    ) -> Result<Effects, ReceiveError> {
        let mut effects = Effects::default();
        match message {
            Message::SyncStep1(state_vector) => {
                if let Some((cached_for, frame)) = &self.step2_cache
                    && *cached_for == state_vector
                {
                    effects.reply.push(frame.clone());
                    return Ok(effects);
                }
                // Without structs held back for missing dependencies: see `encode_state`. A panic
                // in yrs poisons the doc instead of killing its actor.
                let doc = &self.doc;
                let diff = catch_unwind(AssertUnwindSafe(|| {
                    doc.transact().encode_diff_v1(&state_vector)
                }))
                .map_err(|_| {
                    ReceiveError::Poisoned(ProtocolError::InvalidUpdate(
                        "the crdt engine panicked encoding the doc",
                    ))
                })?;
                let frame = encode_sync_step2(&diff);
                self.step2_cache = Some((state_vector, frame.clone()));
                effects.reply.push(frame);
            }
            Message::SyncStep2(payload) | Message::Update(payload) if !access.can_write => {
                // An empty step 2 is how a read-only client says "I have nothing new": no denial.
                if !payload.update.is_empty() {
                    effects.reply.push(encode_auth_denied(READ_ONLY_DENIAL));
                    effects.n_denied_updates = 1;
                }
            }
            Message::SyncStep2(payload) | Message::Update(payload) => {
                if let Some(raw) = self.apply_update(payload)? {
                    effects.broadcast_others = Some(encode_sync_update(&raw));
                    effects.persist = Some(raw);
                }
            }
            Message::Awareness(payload) => {
                let outcome = self.awareness.apply_as(
                    peer,
                    access.identity.as_ref(),
                    &payload,
                    now_ms,
                    &self.limits,
                )?;
                effects.broadcast_all = outcome.broadcast;
                effects.n_foreign_awareness = outcome.n_foreign;
            }
            Message::QueryAwareness => effects.reply.push(self.awareness.encode_all()),
            Message::Auth => {}
        }
        Ok(effects)
    }

    fn apply_update(&mut self, payload: UpdatePayload) -> Result<Option<Bytes>, ReceiveError> {
        if payload.update.is_empty() {
            return Ok(None);
        }
        // The size check comes before yrs sees the update: a refused update changes nothing.
        let update_bytes = payload.raw.len() as u64;
        let new_stored_bytes = self.stored_bytes.saturating_add(update_bytes);
        if new_stored_bytes > self.limits.max_doc_bytes {
            return Err(ReceiveError::Protocol(ProtocolError::DocTooLarge {
                doc_bytes: self.stored_bytes,
                update_bytes,
                max: self.limits.max_doc_bytes,
            }));
        }
        self.step2_cache = None;
        let doc = &self.doc;
        let res = catch_unwind(AssertUnwindSafe(|| {
            doc.transact_mut().apply_update(payload.update)
        }));
        match res {
            Ok(Ok(())) => {
                self.stored_bytes = new_stored_bytes;
                Ok(Some(payload.raw))
            }
            Ok(Err(_)) => Err(ReceiveError::Poisoned(ProtocolError::InvalidUpdate(
                "update refers to an invalid parent",
            ))),
            Err(_) => Err(ReceiveError::Poisoned(ProtocolError::InvalidUpdate(
                "update made the crdt engine panic",
            ))),
        }
    }

    /// Applies an update another node already accepted and made durable (cluster mode): no
    /// size or permission check (that node made them), no persist. Returns the frame to relay
    /// to every peer.
    pub fn apply_remote(&mut self, update: &[u8]) -> Result<Bytes, ProtocolError> {
        let decoded = Update::decode_v1(update)
            .map_err(|_| ProtocolError::InvalidUpdate("a relayed update does not decode"))?;
        self.step2_cache = None;
        let doc = &self.doc;
        let res = catch_unwind(AssertUnwindSafe(|| {
            doc.transact_mut().apply_update(decoded)
        }));
        match res {
            Ok(Ok(())) => {
                self.stored_bytes = self.stored_bytes.saturating_add(update.len() as u64);
                Ok(encode_sync_update(update))
            }
            Ok(Err(_)) => Err(ProtocolError::InvalidUpdate(
                "a relayed update refers to an invalid parent",
            )),
            Err(_) => Err(ProtocolError::InvalidUpdate(
                "a relayed update made the crdt engine panic",
            )),
        }
    }

    /// Applies presence another node relayed for its peers; `peer` stands for that node
    /// ([`PeerId::is_remote`]). Returns the frame to send to this node's peers, if anything
    /// changed. Identities were stamped by that node; colours are checked again.
    pub fn receive_remote_awareness(
        &mut self,
        peer: PeerId,
        payload: &AwarenessPayload,
        now_ms: u64,
    ) -> Option<Bytes> {
        self.awareness
            .apply_as(peer, None, payload, now_ms, &self.limits)
            .ok()
            .and_then(|outcome| outcome.broadcast)
    }

    /// What the doc holds beyond `state_vector`, as an update frame to relay; `None` if nothing.
    pub fn encode_diff(&self, state_vector: &StateVector) -> Option<Bytes> {
        if self.state_vector() == *state_vector {
            return None;
        }
        let doc = &self.doc;
        let diff = catch_unwind(AssertUnwindSafe(|| {
            doc.transact().encode_diff_v1(state_vector)
        }))
        .ok()?;
        Some(encode_sync_update(&diff))
    }

    /// The presence of this node's own peers as one frame, to answer another node that asks.
    pub fn encode_local_awareness(&self) -> Option<Bytes> {
        self.awareness.encode_local()
    }

    /// Removes `peer`'s presence; returns the removal frame to send to the remaining peers.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<Bytes> {
        self.awareness.remove_peer(peer)
    }

    /// Expires presence not renewed in time; returns the removal frame, if any.
    pub fn expire_awareness(&mut self, now_ms: u64) -> Option<Bytes> {
        self.awareness.expire(now_ms, &self.limits)
    }

    /// Bytes of the doc's stored form (snapshot plus log), as counted against
    /// `Limits::max_doc_bytes`.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Records that the stored form is now `bytes` long: after a compaction replaced everything
    /// accepted so far by one snapshot of that size.
    pub fn set_stored_bytes(&mut self, bytes: u64) {
        self.stored_bytes = bytes;
    }

    /// Takes over the presence table of a doc being replaced (used after a reload).
    pub fn adopt_awareness(&mut self, previous: SharedDoc) {
        self.awareness = previous.awareness;
    }

    /// The document's state vector.
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The whole document as one v1 update (a snapshot), without the structs it holds back for
    /// missing dependencies.
    ///
    /// Those are left out on purpose. yrs' `encode_state_as_update_v1` merges them in by
    /// re-encoding and decoding them, and on hostile input that path panics (it unwraps the
    /// merge) or, worse, corrupts the doc's memory: the `decode_frame` fuzz target found a frame
    /// after which one such encoding made the next read of the doc segfault. `encode_diff_v1`
    /// never touches them. Stock clients only leave structs pending in a passing race, and the
    /// update that carried them was relayed to every peer as it arrived.
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    /// The whole document as one v1 update that is known to load back into this document: what
    /// a compaction may store in place of the update log.
    ///
    /// Refused while the doc holds structs back for missing dependencies, which the snapshot
    /// would leave out (see [`SharedDoc::encode_state`]) and the log keeps. Refused too when yrs
    /// cannot read its own encoding of this doc: hostile updates can leave such structs behind
    /// (the `apply_update` fuzz target finds them: each update decodes and re-encodes on its own,
    /// the doc they build does not). In both cases the log, every entry of which was decoded
    /// once, must be kept: storing the snapshot would lose content, or the whole doc at its next
    /// load. The check loads the snapshot, so it costs about as much as opening the doc.
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, SnapshotRefused> {
        if self.doc.transact().has_missing_updates() {
            return Err(SnapshotRefused::Pending);
        }
        let snapshot = catch_unwind(AssertUnwindSafe(|| self.encode_state()))
            .map_err(|_| SnapshotRefused::DoesNotLoad)?;
        SharedDoc::load(self.limits.clone(), [&snapshot])
            .map_err(|_| SnapshotRefused::DoesNotLoad)?;
        Ok(snapshot)
    }

    /// The number of awareness states.
    pub fn n_awareness_states(&self) -> usize {
        self.awareness.len()
    }

    /// The users named by the current presence states, sorted by name. Reads what was extracted
    /// when each state was decoded; parses nothing.
    pub fn present_users(&self) -> Vec<PresentUser> {
        self.awareness.present_users()
    }

    /// The user `peer`'s presence names, if it has one (who to credit with its edits when
    /// authentication is off).
    pub fn peer_user(&self, peer: PeerId) -> Option<&PresentUser> {
        self.awareness.user_of(peer)
    }

    /// Whether this doc holds everything `snapshot` describes: every insert its state vector
    /// counts (each client's clock is at most ours) and every deletion in its delete set.
    ///
    /// A deletion does not advance its author's clock, so the delete sets must be compared too:
    /// a replica that only deleted has the same state vector as before. Updates the doc holds
    /// but cannot integrate yet (missing dependencies) count as not held.
    pub fn covers(&self, snapshot: &Snapshot) -> bool {
        let txn = self.doc.transact();
        let held = txn.state_vector();
        let inserts_held = snapshot
            .state_map
            .iter()
            .all(|(client, clock)| *clock <= held.get(client));
        if !inserts_held {
            return false;
        }
        if snapshot.delete_set.is_empty() {
            return true;
        }
        // Building our delete set walks every block; done only when the cheap check passed.
        snapshot
            .delete_set
            .diff(&txn.snapshot().delete_set)
            .is_empty()
    }

    /// The root types as JSON. A root that no local code has typed is read as a map when it has
    /// keys, as text when it holds characters, and otherwise as an array. A root that yrs cannot
    /// read back is `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let txn = self.doc.transact();
        let mut roots = serde_json::Map::new();
        let mut names: Vec<_> = txn
            .root_refs()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, value) in names {
            // yrs asserts its own consistency while reading (`Array::to_json` panics on an array
            // whose length and items disagree, which a hostile update can leave behind). Such a
            // root reads as `null`; the binary form of the doc still carries it.
            let any = catch_unwind(AssertUnwindSafe(|| match value {
                Out::UndefinedRef(branch) => {
                    let map = MapRef::from(branch);
                    let text = TextRef::from(branch).get_string(&txn);
                    if yrs::Map::len(&map, &txn) > 0 {
                        map.to_json(&txn)
                    } else if !text.is_empty() {
                        Any::from(text)
                    } else {
                        ArrayRef::from(branch).to_json(&txn)
                    }
                }
                other => other.to_json(&txn),
            }));
            let json = any.map_or(serde_json::Value::Null, |any| any_to_json(&any));
            roots.insert(name, json);
        }
        serde_json::Value::Object(roots)
    }
}

fn any_to_json(any: &Any) -> serde_json::Value {
    // Undefined has no JSON form; every other `Any` serialises losslessly.
    serde_json::to_value(any).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, encode_sync_update};
    use proptest::prelude::*;
    use yrs::{Text, WriteTxn};

    /// A simulated client: a yrs doc that speaks frames.
    struct Client {
        doc: Doc,
    }

    impl Client {
        fn new(client_id: u64) -> Client {
            Client {
                doc: Doc::with_client_id(client_id),
            }
        }

        fn edit(&self, pos: u32, insert: Option<&str>, delete: u32) -> Bytes {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            let pos = pos % (len + 1);
            if let Some(s) = insert {
                text.insert(&mut txn, pos, s);
            } else if len > pos {
                text.remove_range(&mut txn, pos, delete.min(len - pos));
            }
            encode_sync_update(&txn.encode_update_v1())
        }

        fn apply_frame(&self, frame: &Bytes) {
            for message in decode_frame(frame, &Limits::default()).expect("server frames decode") {
                if let Message::Update(p) | Message::SyncStep2(p) = message {
                    self.doc
                        .transact_mut()
                        .apply_update(p.update)
                        .expect("server updates apply");
                }
            }
        }

        fn text(&self) -> String {
            let text = self.doc.get_or_insert_text("t");
            text.get_string(&self.doc.transact())
        }
    }

    fn receive_frame(doc: &mut SharedDoc, peer: PeerId, frame: &Bytes) -> Vec<Effects> {
        decode_frame(frame, &Limits::default())
            .expect("valid")
            .into_iter()
            .map(|message| doc.receive(peer, message, 0).expect("accepted"))
            .collect()
    }

    #[test]
    fn an_update_relayed_from_another_node_applies_without_persisting_and_diffs_are_exact() {
        let mut here = SharedDoc::new(Limits::default());
        let elsewhere = Client::new(9);
        let frame = elsewhere.edit(0, Some("from afar"), 0);
        let update = match decode_frame(&frame, &Limits::default()).unwrap().pop() {
            Some(Message::Update(payload)) => payload.raw,
            other => panic!("expected an update, got {other:?}"),
        };
        let before = here.state_vector();
        let relay = here.apply_remote(&update).expect("applies");
        let reader = Client::new(3);
        reader.apply_frame(&relay);
        assert_eq!(reader.text(), "from afar");
        let diff = here.encode_diff(&before).expect("something new");
        let second = Client::new(4);
        second.apply_frame(&diff);
        assert_eq!(second.text(), "from afar");
        assert!(here.encode_diff(&here.state_vector()).is_none());
        assert!(here.apply_remote(b"not an update").is_err());
        assert_eq!(here.to_json()["t"], "from afar");
    }

    #[test]
    fn a_merged_snapshot_keeps_what_the_stored_one_held_and_says_when_the_newer_lacked_it() {
        let full = |client: &Client| {
            encode_sync_update(
                &client
                    .doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )
        };
        let raw = |frame: &Bytes| match decode_frame(frame, &Limits::default()).unwrap().pop() {
            Some(Message::Update(payload)) => payload.raw.to_vec(),
            other => panic!("expected an update, got {other:?}"),
        };
        let stored_maker = Client::new(1);
        stored_maker.edit(0, Some("kept "), 0);
        let newer_maker = Client::new(2);
        newer_maker.edit(0, Some("new"), 0);
        let stored = raw(&full(&stored_maker));
        let newer = raw(&full(&newer_maker));

        let merged = merge_snapshots(&stored, &newer).expect("merges");
        assert!(
            merged.stored_had_more,
            "the newer snapshot lacked the stored one's text"
        );
        let reader = Client::new(3);
        reader.apply_frame(&encode_sync_update(&merged.update));
        assert!(reader.text().contains("kept ") && reader.text().contains("new"));

        // A newer snapshot that already holds the stored one's content: nothing was missed.
        let caught_up = Client::new(4);
        caught_up.apply_frame(&encode_sync_update(&stored));
        caught_up.edit(0, Some("more "), 0);
        let newer = raw(&full(&caught_up));
        let merged = merge_snapshots(&stored, &newer).expect("merges");
        assert!(!merged.stored_had_more);
        assert!(merge_snapshots(b"junk", &newer).is_err());
    }

    #[test]
    fn sync_step1_is_answered_with_the_missing_state() {
        let mut doc = SharedDoc::new(Limits::default());
        let writer = Client::new(1);
        receive_frame(&mut doc, PeerId(1), &writer.edit(0, Some("hello"), 0));
        let joiner = Client::new(2);
        let step1 = crate::protocol::encode_sync_step1(&joiner.doc.transact().state_vector());
        let effects = receive_frame(&mut doc, PeerId(2), &step1);
        assert_eq!(effects[0].reply.len(), 1);
        assert!(effects[0].persist.is_none());
        joiner.apply_frame(&effects[0].reply[0]);
        assert_eq!(joiner.text(), "hello");
    }

    #[test]
    fn joiners_with_the_same_state_vector_share_one_encoding_until_the_doc_changes() {
        let mut doc = SharedDoc::new(Limits::default());
        let writer = Client::new(1);
        receive_frame(&mut doc, PeerId(1), &writer.edit(0, Some("hello"), 0));
        let step1 = crate::protocol::encode_sync_step1(&StateVector::default());
        let first = receive_frame(&mut doc, PeerId(2), &step1)
            .pop()
            .unwrap()
            .reply;
        let second = receive_frame(&mut doc, PeerId(3), &step1)
            .pop()
            .unwrap()
            .reply;
        assert_eq!(first[0].as_ptr(), second[0].as_ptr(), "one buffer, shared");

        // A joiner that already has part of the doc gets its own diff, not the cached one.
        let partial = Client::new(4);
        partial.apply_frame(&first[0]);
        let own = crate::protocol::encode_sync_step1(&partial.doc.transact().state_vector());
        let reply = receive_frame(&mut doc, PeerId(4), &own)
            .pop()
            .unwrap()
            .reply;
        assert_ne!(reply[0], first[0]);

        // After a change, a fresh joiner sees it.
        receive_frame(&mut doc, PeerId(1), &writer.edit(5, Some(" world"), 0));
        let third = receive_frame(&mut doc, PeerId(5), &step1)
            .pop()
            .unwrap()
            .reply;
        let joiner = Client::new(5);
        joiner.apply_frame(&third[0]);
        assert_eq!(joiner.text(), "hello world");
    }

    #[test]
    fn updates_are_persisted_and_broadcast_verbatim() {
        let mut doc = SharedDoc::new(Limits::default());
        let frame = Client::new(1).edit(0, Some("x"), 0);
        let effects = receive_frame(&mut doc, PeerId(1), &frame).pop().unwrap();
        assert_eq!(effects.broadcast_others.as_ref(), Some(&frame));
        assert!(effects.persist.is_some());
    }

    #[test]
    fn a_read_only_peer_syncs_but_its_updates_are_denied_and_go_nowhere() {
        let mut doc = SharedDoc::new(Limits::default());
        receive_frame(
            &mut doc,
            PeerId(1),
            &Client::new(1).edit(0, Some("kept"), 0),
        );
        let reader = PeerAccess {
            can_write: false,
            identity: None,
        };
        let viewer = Client::new(2);
        let mut receive = |frame: &Bytes| -> Vec<Effects> {
            decode_frame(frame, &Limits::default())
                .expect("valid")
                .into_iter()
                .map(|message| {
                    doc.receive_as(PeerId(2), &reader, message, 0)
                        .expect("handled")
                })
                .collect()
        };
        // Sync works: the viewer gets the content.
        let step1 = crate::protocol::encode_sync_step1(&viewer.doc.transact().state_vector());
        let effects = receive(&step1).pop().unwrap();
        viewer.apply_frame(&effects.reply[0]);
        assert_eq!(viewer.text(), "kept");
        // An empty step 2 is no write: no denial.
        let empty = crate::protocol::encode_sync_step2(&[0, 0]);
        let effects = receive(&empty).pop().unwrap();
        assert!(effects.reply.is_empty() && effects.n_denied_updates == 0);
        // A real update is denied with the y-protocols Auth message and changes nothing.
        let effects = receive(&viewer.edit(0, Some("forged "), 0)).pop().unwrap();
        assert_eq!(effects.n_denied_updates, 1);
        assert!(effects.persist.is_none() && effects.broadcast_others.is_none());
        assert_eq!(effects.reply, vec![encode_auth_denied(READ_ONLY_DENIAL)]);
        assert_eq!(doc.to_json(), serde_json::json!({ "t": "kept" }));
    }

    #[test]
    fn load_replays_snapshot_and_log() {
        let writer = Client::new(1);
        let mut stored = Vec::new();
        for (pos, word) in ["a", "b", "c"].into_iter().enumerate() {
            let frame = writer.edit(pos as u32, Some(word), 0);
            let mut doc = SharedDoc::new(Limits::default());
            let effects = receive_frame(&mut doc, PeerId(1), &frame).pop().unwrap();
            stored.push(effects.persist.unwrap());
        }
        let doc = SharedDoc::load(Limits::default(), &stored).expect("loads");
        assert_eq!(doc.to_json(), serde_json::json!({ "t": "abc" }));
    }

    fn snapshot(client: &Client) -> Snapshot {
        client.doc.transact().snapshot()
    }

    #[test]
    fn covers_needs_every_insert_and_every_deletion() {
        let mut doc = SharedDoc::new(Limits::default());
        assert!(
            doc.covers(&Snapshot::default()),
            "an empty doc covers an empty snapshot"
        );
        let client = Client::new(1);
        let insert = client.edit(0, Some("hello world"), 0);
        assert!(!doc.covers(&snapshot(&client)), "insert not sent yet");
        receive_frame(&mut doc, PeerId(1), &insert);
        assert!(doc.covers(&snapshot(&client)));

        let delete = client.edit(5, None, 6);
        assert_eq!(client.text(), "hello");
        assert_eq!(
            client.doc.transact().state_vector(),
            doc.state_vector(),
            "a deletion leaves the state vector as it was"
        );
        assert!(!doc.covers(&snapshot(&client)), "deletion not sent yet");
        receive_frame(&mut doc, PeerId(1), &delete);
        assert!(doc.covers(&snapshot(&client)));

        // Another client's edits held by the server but not the client do not matter.
        let other = Client::new(2);
        receive_frame(&mut doc, PeerId(2), &other.edit(0, Some("x"), 0));
        assert!(doc.covers(&snapshot(&client)));
        // An unknown client in the snapshot does.
        let stranger = Client::new(3);
        stranger.edit(0, Some("y"), 0);
        assert!(!doc.covers(&snapshot(&stranger)));
    }

    #[test]
    fn covers_counts_an_update_waiting_for_its_dependencies_as_missing() {
        let mut doc = SharedDoc::new(Limits::default());
        let client = Client::new(1);
        let _first = client.edit(0, Some("a"), 0);
        let second = client.edit(1, Some("b"), 0);
        // The second update alone cannot be integrated: it follows the first.
        receive_frame(&mut doc, PeerId(1), &second);
        assert!(!doc.covers(&snapshot(&client)));
    }

    #[test]
    fn present_users_come_from_the_awareness_table() {
        let mut doc = SharedDoc::new(Limits::default());
        let entry = crate::protocol::AwarenessEntry {
            client_id: 9,
            clock: 1,
            json: r##"{"user":{"name":"Ada","color":"#fff"}}"##.into(),
            user: None,
        };
        let frame = crate::protocol::encode_awareness([&entry]);
        receive_frame(&mut doc, PeerId(1), &frame);
        let users = doc.present_users();
        assert_eq!(users.len(), 1);
        assert_eq!(&*users[0].name, "Ada");
        assert_eq!(users[0].color.as_deref(), Some("#fff"));
    }

    /// The raw update a frame made by `Client::edit` carries.
    fn raw_update(frame: &Bytes) -> Bytes {
        match decode_frame(frame, &Limits::default())
            .expect("valid")
            .pop()
        {
            Some(Message::Update(payload)) => payload.raw,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    #[test]
    fn an_update_over_the_doc_size_limit_is_refused_before_it_is_applied() {
        let small = Client::new(1).edit(0, Some("small"), 0);
        let tiny = Client::new(2).edit(0, Some("y"), 0);
        let big = Client::new(3).edit(0, Some(&"x".repeat(100)), 0);
        let (small_bytes, tiny_bytes, big_bytes) = (
            raw_update(&small).len() as u64,
            raw_update(&tiny).len() as u64,
            raw_update(&big).len() as u64,
        );
        let limits = Limits {
            max_doc_bytes: small_bytes + tiny_bytes,
            ..Limits::default()
        };
        let mut doc = SharedDoc::new(limits.clone());
        receive_frame(&mut doc, PeerId(1), &small);
        assert_eq!(doc.stored_bytes(), small_bytes);

        let message = decode_frame(&big, &Limits::default())
            .unwrap()
            .pop()
            .unwrap();
        let error = doc
            .receive(PeerId(3), message, 0)
            .expect_err("over the limit");
        let ReceiveError::Protocol(error) = error else {
            panic!("a refusal, not a poisoning: {error:?}")
        };
        assert_eq!(
            error,
            ProtocolError::DocTooLarge {
                doc_bytes: small_bytes,
                update_bytes: big_bytes,
                max: small_bytes + tiny_bytes
            }
        );
        assert_eq!(
            error.close_frame(),
            (1009, "document too large".to_string())
        );
        assert_eq!(doc.to_json(), serde_json::json!({ "t": "small" }));
        assert_eq!(doc.stored_bytes(), small_bytes);

        // An update that reaches the limit exactly is accepted; nothing more is.
        let effects = receive_frame(&mut doc, PeerId(2), &tiny).pop().unwrap();
        assert!(effects.persist.is_some());
        assert_eq!(doc.stored_bytes(), limits.max_doc_bytes);
        let message = decode_frame(&Client::new(4).edit(0, Some("z"), 0), &Limits::default())
            .unwrap()
            .pop()
            .unwrap();
        assert!(matches!(
            doc.receive(PeerId(4), message, 0),
            Err(ReceiveError::Protocol(ProtocolError::DocTooLarge { .. }))
        ));

        // A reload counts what it read.
        let reloaded = SharedDoc::load(limits, [raw_update(&small), raw_update(&tiny)]).unwrap();
        assert_eq!(reloaded.stored_bytes(), small_bytes + tiny_bytes);
    }

    /// Regression, found by the `decode_frame` fuzz target in its first seconds: yrs'
    /// `apply_update` accepts this update but keeps part of it pending in a form whose encoding
    /// does not decode, and every later `encode_state_as_update_v1` (a sync step 1 reply, an HTTP
    /// snapshot, a compaction) then panicked inside yrs (`merge_pending_v1` unwraps). The update
    /// was stored, so a reload did not help: one 32-byte frame bricked the doc's actor for good.
    /// Two fixes, each tested here: the decoder refuses updates that do not survive re-encoding
    /// (this one does not), and the doc never encodes its pending structs (`encode_diff_v1`), nor
    /// compacts while it holds some.
    #[test]
    fn an_update_that_leaves_unencodable_pending_structs_breaks_nothing() {
        let frame = Bytes::from_static(&[
            0x00, 0x02, 0x1d, 0x01, 0x03, 0x10, 0x00, 0x00, 0x1d, 0x01, 0x03, 0xff, 0xff, 0xff,
            0xe8, 0x10, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfe,
            0xff, 0xff, 0xff, 0x00,
        ]);
        assert_eq!(
            decode_frame(&frame, &Limits::default()).err(),
            Some(ProtocolError::InvalidUpdate(
                "update does not survive re-encoding"
            ))
        );

        // Past the decoder (as if it let the update through), the doc still serves everyone.
        let raw = frame.slice(3..);
        let payload = UpdatePayload {
            update: Update::decode_v1(&raw).expect("yrs decodes it"),
            raw,
        };
        let mut doc = SharedDoc::new(Limits::default());
        receive_frame(
            &mut doc,
            PeerId(1),
            &Client::new(1).edit(0, Some("kept"), 0),
        );
        let effects = doc
            .receive(PeerId(2), Message::Update(payload), 0)
            .expect("held back, not refused");
        assert!(effects.persist.is_some());
        let step1 = crate::protocol::encode_sync_step1(&StateVector::default());
        let joiner = Client::new(3);
        let effects = receive_frame(&mut doc, PeerId(3), &step1);
        joiner.apply_frame(&effects[0].reply[0]);
        assert_eq!(joiner.text(), "kept");
        assert_eq!(doc.to_json(), serde_json::json!({ "t": "kept" }));
        assert_eq!(doc.encode_snapshot(), Err(SnapshotRefused::Pending));
    }

    #[test]
    fn load_reports_the_corrupt_entry() {
        let res = SharedDoc::load(Limits::default(), [vec![0xffu8, 0xff, 0xff]]);
        assert_eq!(res.err().map(|e| e.index), Some(0));
    }

    #[test]
    fn json_view_types_roots_by_content() {
        let client = Doc::with_client_id(5);
        {
            let mut txn = client.transact_mut();
            let map = txn.get_or_insert_map("m");
            yrs::Map::insert(&map, &mut txn, "k", 1.5);
            let text = txn.get_or_insert_text("t");
            text.push(&mut txn, "hi");
        }
        let update = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let doc = SharedDoc::load(Limits::default(), [update]).unwrap();
        assert_eq!(
            doc.to_json(),
            serde_json::json!({ "m": { "k": 1.5 }, "t": "hi" })
        );
    }

    proptest! {
        /// N simulated peers edit concurrently; the server relays in a random interleaving.
        /// Every peer and the server end with the same text.
        #[test]
        fn peers_converge_through_the_server(
            ops in prop::collection::vec((0usize..3, 0u32..20, prop::option::of("[a-z]{1,3}"), 1u32..4), 1..40),
            deliver_order in prop::collection::vec(0usize..3, 0..200),
        ) {
            let mut server = SharedDoc::new(Limits::default());
            let clients: Vec<Client> = (0..3).map(|i| Client::new(100 + i as u64)).collect();
            // Per-client inbox of frames not yet delivered.
            let mut inboxes: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
            for (who, pos, insert, delete) in ops {
                let frame = clients[who].edit(pos, insert.as_deref(), delete);
                for effects in receive_frame(&mut server, PeerId(who as u64), &frame) {
                    if let Some(out) = effects.broadcast_others {
                        for (other, inbox) in inboxes.iter_mut().enumerate() {
                            if other != who { inbox.push(out.clone()); }
                        }
                    }
                }
                // Interleave some deliveries.
                for &target in deliver_order.iter().take(3) {
                    if !inboxes[target].is_empty() {
                        let frame = inboxes[target].remove(0);
                        clients[target].apply_frame(&frame);
                    }
                }
            }
            for (client, inbox) in clients.iter().zip(inboxes.iter_mut()) {
                for frame in inbox.drain(..) { client.apply_frame(&frame); }
            }
            let expected = server.to_json()["t"].as_str().unwrap_or("").to_string();
            for client in &clients {
                prop_assert_eq!(client.text(), expected.clone());
            }
        }
    }
}
