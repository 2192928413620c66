//! `AwarenessTable`: the presence states of one document, each owned by the peer that introduced it.
//!
//! Unlike y-protocols' `Awareness`, ownership is tracked: a peer may only write or remove the
//! client ids it introduced (at most `Limits::max_awareness_clients_per_peer`), so no connection
//! can overwrite or delete another's presence. When a peer leaves, its states are removed and the
//! removal is broadcast. States not renewed within `Limits::awareness_timeout_ms` expire.
//! Time is passed in as milliseconds; this module never reads a clock.
//!
//! A state's JSON is parsed exactly once, when its frame is decoded (`presence::read_state`,
//! called by `protocol::decode_awareness`): the same pass that validates it reads `user.name`
//! and `user.color` into a [`PresentUser`]. Nothing here parses JSON again, so listing who is present
//! costs one walk over the table, however often peers renew their presence.

use std::collections::HashMap;

use bytes::Bytes;

use crate::limits::Limits;
use crate::presence::{Identity, PresentUser, vouch_state};
use crate::protocol::{
    AWARENESS_NULL_STATE, AwarenessEntry, AwarenessPayload, ProtocolError, encode_awareness,
    encode_awareness_raw,
};

/// Identifies one connection to one document. Never a Yjs client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// Peer ids from here up stand for other nodes in cluster mode (one per node per doc), never for
/// a connection: connections count up from 1 and never get this far.
pub const REMOTE_PEER_BASE: u64 = 1 << 63;

impl PeerId {
    /// Whether this id stands for another node rather than a connection of this one.
    pub fn is_remote(self) -> bool {
        self.0 >= REMOTE_PEER_BASE
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The awareness states of one document.
#[derive(Debug, Default)]
pub struct AwarenessTable {
    states: HashMap<u64, OwnedState>,
    /// Client ids owned by each peer; the reverse index of `OwnedState::owner`.
    owned: HashMap<PeerId, Vec<u64>>,
}

#[derive(Debug)]
struct OwnedState {
    entry: AwarenessEntry,
    owner: PeerId,
    renewed_ms: u64,
}

/// What applying one awareness message did.
#[derive(Debug, Default)]
pub struct AwarenessOutcome {
    /// The frame to send to every peer of the document, the sender included (as y-websocket does,
    /// which also keeps a lone client's connection alive). `None` when nothing changed.
    pub broadcast: Option<Bytes>,
    /// Entries refused because another peer owns their client id and they would have changed
    /// its state (a newer clock). Stock y-websocket clients echo every state they receive back
    /// to the server; those echoes carry no newer clock, are ignored, and are not counted.
    pub n_foreign: usize,
}

impl AwarenessTable {
    /// Applies `payload` from `peer`, whose identity nobody vouched for (authentication off).
    /// Foreign entries are dropped; stale ones ignored.
    pub fn apply(
        &mut self,
        peer: PeerId,
        payload: &AwarenessPayload,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<AwarenessOutcome, ProtocolError> {
        self.apply_as(peer, None, payload, now_ms, limits)
    }

    /// Applies `payload` from `peer`. Foreign entries are dropped; stale ones ignored.
    ///
    /// Every state `peer` introduces or renews is made safe first ([`vouch_state`]): with an
    /// `identity`, its `user.name` and `user.sub` become the verified ones; a `user.color` or
    /// `user.colorLight` that is not a plain `#hex` colour is removed (editor bindings put it
    /// into style attributes). A state that needed no change is relayed byte for byte.
    pub fn apply_as(
        &mut self,
        peer: PeerId,
        identity: Option<&Identity>,
        payload: &AwarenessPayload,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<AwarenessOutcome, ProtocolError> {
        let mut accepted: Vec<AwarenessEntry> = Vec::with_capacity(payload.entries.len());
        let mut n_rewritten = 0;
        let mut n_foreign = 0;
        for entry in &payload.entries {
            // Is the entry accepted? Foreign and stale entries (including the echoes stock
            // clients send of everyone's state) are decided before any JSON work.
            let is_new = match self.states.get(&entry.client_id) {
                Some(state) => {
                    // y-protocols: a higher clock wins; an equal clock may still remove.
                    let newer = entry.clock > state.entry.clock
                        || (entry.clock == state.entry.clock && entry.is_removal());
                    // A state another node relayed yields to any newer clock: its client may have
                    // moved here (or to a third node) when its node went away.
                    let takeover = state.owner != peer && state.owner.is_remote() && newer;
                    if state.owner != peer && !takeover {
                        if newer {
                            n_foreign += 1;
                        }
                        continue;
                    }
                    if !newer {
                        continue;
                    }
                    if takeover && !entry.is_removal() {
                        self.remove(entry.client_id);
                        true
                    } else {
                        false
                    }
                }
                None if entry.is_removal() => continue,
                None => true,
            };
            if entry.is_removal() {
                self.remove(entry.client_id);
                accepted.push(entry.clone());
                continue;
            }
            let entry = match vouch_state(&entry.json, identity) {
                Some((json, user)) => {
                    n_rewritten += 1;
                    AwarenessEntry {
                        client_id: entry.client_id,
                        clock: entry.clock,
                        json,
                        user,
                    }
                }
                None => entry.clone(),
            };
            if is_new {
                let owned = self.owned.entry(peer).or_default();
                // Another node speaks for all of its connections: its own node checked each.
                if !peer.is_remote() && owned.len() >= limits.max_awareness_clients_per_peer {
                    return Err(ProtocolError::TooManyAwarenessClients {
                        max: limits.max_awareness_clients_per_peer,
                    });
                }
                owned.push(entry.client_id);
                self.states.insert(
                    entry.client_id,
                    OwnedState {
                        entry: entry.clone(),
                        owner: peer,
                        renewed_ms: now_ms,
                    },
                );
            } else if let Some(state) = self.states.get_mut(&entry.client_id) {
                state.entry = entry.clone();
                state.renewed_ms = now_ms;
            }
            accepted.push(entry);
        }
        let broadcast = if accepted.is_empty() {
            None
        } else if accepted.len() == payload.entries.len() && n_rewritten == 0 {
            // Everything was taken as sent: relay the original bytes, no re-encoding.
            Some(encode_awareness_raw(&payload.raw))
        } else {
            Some(encode_awareness(&accepted))
        };
        Ok(AwarenessOutcome {
            broadcast,
            n_foreign,
        })
    }

    /// Removes every state `peer` owns; returns the removal frame to broadcast, if any.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<Bytes> {
        let client_ids = self.owned.remove(&peer)?;
        let removed: Vec<AwarenessEntry> = client_ids
            .into_iter()
            .filter_map(|client_id| self.take_as_removal(client_id))
            .collect();
        (!removed.is_empty()).then(|| encode_awareness(&removed))
    }

    /// Removes states not renewed within the timeout; returns the removal frame, if any.
    pub fn expire(&mut self, now_ms: u64, limits: &Limits) -> Option<Bytes> {
        let expired: Vec<u64> = self
            .states
            .iter()
            .filter(|(_, state)| {
                now_ms.saturating_sub(state.renewed_ms) >= limits.awareness_timeout_ms
            })
            .map(|(client_id, _)| *client_id)
            .collect();
        let removed: Vec<AwarenessEntry> = expired
            .into_iter()
            .filter_map(|client_id| self.take_as_removal(client_id))
            .collect();
        (!removed.is_empty()).then(|| encode_awareness(&removed))
    }

    /// Every known state as one frame (sent on join and in answer to QueryAwareness).
    pub fn encode_all(&self) -> Bytes {
        encode_awareness(self.states.values().map(|state| &state.entry))
    }

    /// Every state owned by a connection of this node (not relayed by another node) as one
    /// frame; `None` if there is none.
    pub fn encode_local(&self) -> Option<Bytes> {
        let mut local = self
            .states
            .values()
            .filter(|state| !state.owner.is_remote())
            .map(|state| &state.entry)
            .peekable();
        local.peek()?;
        Some(encode_awareness(local))
    }

    /// Number of known client states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is known.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The user of every state that names one, sorted by name (then colour). One entry per state:
    /// a person with two tabs open appears twice.
    pub fn present_users(&self) -> Vec<PresentUser> {
        let mut users: Vec<PresentUser> = self
            .states
            .values()
            .filter_map(|state| state.entry.user.clone())
            .collect();
        users.sort_unstable();
        users
    }

    /// The user named by the first presence state `peer` owns that names one.
    pub fn user_of(&self, peer: PeerId) -> Option<&PresentUser> {
        self.owned_by(peer)
            .iter()
            .find_map(|id| self.states.get(id)?.entry.user.as_ref())
    }

    /// Client ids currently owned by `peer`.
    pub fn owned_by(&self, peer: PeerId) -> &[u64] {
        self.owned.get(&peer).map(Vec::as_slice).unwrap_or(&[])
    }

    fn remove(&mut self, client_id: u64) -> Option<OwnedState> {
        let state = self.states.remove(&client_id)?;
        if let Some(owned) = self.owned.get_mut(&state.owner) {
            owned.retain(|id| *id != client_id);
            if owned.is_empty() {
                self.owned.remove(&state.owner);
            }
        }
        Some(state)
    }

    /// Removes `client_id` and returns the entry that tells others it is gone (clock + 1, null).
    fn take_as_removal(&mut self, client_id: u64) -> Option<AwarenessEntry> {
        let state = self.remove(client_id)?;
        Some(AwarenessEntry {
            client_id,
            // Saturating: at u32::MAX an equal clock still removes (y-protocols), a wrapped 0 would not.
            clock: state.entry.clock.saturating_add(1),
            json: AWARENESS_NULL_STATE.into(),
            user: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::presence::{MAX_USER_COLOR_CHARS, MAX_USER_NAME_CHARS, is_plain_color, read_state};
    use crate::protocol::{Message, decode_frame};

    fn payload(entries: &[(u64, u32, &str)]) -> AwarenessPayload {
        let entries: Vec<AwarenessEntry> = entries
            .iter()
            .map(|(client_id, clock, json)| AwarenessEntry {
                client_id: *client_id,
                clock: *clock,
                json: (*json).into(),
                user: None,
            })
            .collect();
        let frame = encode_awareness(&entries);
        match decode_frame(&frame, &Limits::default())
            .expect("valid")
            .pop()
        {
            Some(Message::Awareness(payload)) => payload,
            other => panic!("expected awareness, got {other:?}"),
        }
    }

    fn decode(frame: &Bytes) -> Vec<AwarenessEntry> {
        match decode_frame(frame, &Limits::default())
            .expect("valid")
            .pop()
        {
            Some(Message::Awareness(payload)) => payload.entries,
            other => panic!("expected awareness, got {other:?}"),
        }
    }

    #[test]
    fn a_state_relayed_by_another_node_yields_to_a_newer_clock_here() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let node = PeerId(REMOTE_PEER_BASE);
        let local = PeerId(1);
        table
            .apply(node, &payload(&[(7, 1, r#"{"user":"moved"}"#)]), 0, &limits)
            .unwrap();
        // The client reconnected to this node: its newer state takes the id over.
        let outcome = table
            .apply(local, &payload(&[(7, 2, r#"{"user":"here"}"#)]), 0, &limits)
            .unwrap();
        assert_eq!(outcome.n_foreign, 0);
        assert!(outcome.broadcast.is_some());
        assert_eq!(table.owned_by(local), &[7]);
        assert!(table.owned_by(node).is_empty());
        // The other node's removal of its stale copy no longer touches it.
        table
            .apply(node, &payload(&[(7, 2, "null")]), 0, &limits)
            .unwrap();
        assert_eq!(&*decode(&table.encode_all())[0].json, r#"{"user":"here"}"#);
    }

    #[test]
    fn a_state_of_a_connection_here_never_yields_to_a_relayed_one() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let local = PeerId(1);
        let node = PeerId(REMOTE_PEER_BASE + 3);
        table
            .apply(local, &payload(&[(8, 1, r#"{"user":"mine"}"#)]), 0, &limits)
            .unwrap();
        let outcome = table
            .apply(
                node,
                &payload(&[(8, 9, r#"{"user":"theirs"}"#)]),
                0,
                &limits,
            )
            .unwrap();
        assert_eq!(outcome.n_foreign, 1);
        assert_eq!(table.owned_by(local), &[8]);
    }

    #[test]
    fn a_node_speaks_for_more_clients_than_one_connection_may_and_is_left_out_of_local_presence() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let node = PeerId(REMOTE_PEER_BASE);
        let n = limits.max_awareness_clients_per_peer as u64 + 3;
        let entries: Vec<(u64, u32, &str)> = (0..n).map(|id| (100 + id, 1, "{}")).collect();
        table.apply(node, &payload(&entries), 0, &limits).unwrap();
        assert_eq!(table.len() as u64, n);
        assert!(table.encode_local().is_none());
        table
            .apply(
                PeerId(5),
                &payload(&[(1, 1, r#"{"user":"local"}"#)]),
                0,
                &limits,
            )
            .unwrap();
        let local = decode(&table.encode_local().expect("one local state"));
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].client_id, 1);
    }

    #[test]
    fn a_peer_cannot_overwrite_or_remove_another_peers_state() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let alice = PeerId(1);
        let mallory = PeerId(2);
        table
            .apply(
                alice,
                &payload(&[(10, 1, r#"{"user":"alice"}"#)]),
                0,
                &limits,
            )
            .unwrap();
        let outcome = table
            .apply(
                mallory,
                &payload(&[(10, 9, r#"{"user":"mallory"}"#)]),
                0,
                &limits,
            )
            .unwrap();
        assert_eq!(outcome.n_foreign, 1);
        assert!(outcome.broadcast.is_none());
        let outcome = table
            .apply(mallory, &payload(&[(10, 9, "null")]), 0, &limits)
            .unwrap();
        assert_eq!(outcome.n_foreign, 1);
        let all = decode(&table.encode_all());
        assert_eq!(all.len(), 1);
        assert_eq!(&*all[0].json, r#"{"user":"alice"}"#);
    }

    #[test]
    fn an_echo_of_another_peers_state_is_ignored_and_not_counted_as_forged() {
        // y-websocket clients send every awareness change they receive back to the server.
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let state = r#"{"user":{"name":"alice"}}"#;
        table
            .apply(PeerId(1), &payload(&[(10, 3, state)]), 0, &limits)
            .unwrap();
        let outcome = table
            .apply(PeerId(2), &payload(&[(10, 3, state)]), 0, &limits)
            .unwrap();
        assert_eq!(outcome.n_foreign, 0);
        assert!(outcome.broadcast.is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn leaving_peer_states_are_removed_with_a_higher_clock() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        table
            .apply(PeerId(1), &payload(&[(10, 4, "{}")]), 0, &limits)
            .unwrap();
        table
            .apply(PeerId(2), &payload(&[(20, 1, "{}")]), 0, &limits)
            .unwrap();
        let removal = decode(&table.remove_peer(PeerId(1)).expect("removal frame"));
        assert_eq!(
            removal,
            vec![AwarenessEntry {
                client_id: 10,
                clock: 5,
                json: "null".into(),
                user: None,
            }]
        );
        assert_eq!(table.len(), 1);
        assert!(table.remove_peer(PeerId(1)).is_none());
    }

    #[test]
    fn per_peer_cap_is_enforced() {
        let limits = Limits {
            max_awareness_clients_per_peer: 2,
            ..Limits::default()
        };
        let mut table = AwarenessTable::default();
        let res = table.apply(
            PeerId(1),
            &payload(&[(1, 1, "{}"), (2, 1, "{}"), (3, 1, "{}")]),
            0,
            &limits,
        );
        assert_eq!(
            res.err(),
            Some(ProtocolError::TooManyAwarenessClients { max: 2 })
        );
    }

    #[test]
    fn stale_states_expire_and_renewals_keep_them() {
        let limits = Limits {
            awareness_timeout_ms: 30_000,
            ..Limits::default()
        };
        let mut table = AwarenessTable::default();
        table
            .apply(PeerId(1), &payload(&[(1, 1, "{}")]), 0, &limits)
            .unwrap();
        table
            .apply(PeerId(2), &payload(&[(2, 1, "{}")]), 0, &limits)
            .unwrap();
        table
            .apply(PeerId(2), &payload(&[(2, 2, "{}")]), 20_000, &limits)
            .unwrap();
        let removed = decode(&table.expire(30_000, &limits).expect("client 1 expired"));
        assert_eq!(
            removed.iter().map(|e| e.client_id).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(table.owned_by(PeerId(1)).is_empty());
        assert!(table.expire(49_999, &limits).is_none());
    }

    #[test]
    fn fully_accepted_messages_are_relayed_byte_for_byte() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let incoming = payload(&[(7, 3, r#"{"cursor":1}"#)]);
        let outcome = table.apply(PeerId(1), &incoming, 0, &limits).unwrap();
        assert_eq!(outcome.broadcast, Some(encode_awareness_raw(&incoming.raw)));
        // The same clock again is stale: nothing to relay.
        let outcome = table.apply(PeerId(1), &incoming, 0, &limits).unwrap();
        assert!(outcome.broadcast.is_none());
    }

    fn user(name: &str, color: Option<&str>) -> PresentUser {
        PresentUser {
            name: name.into(),
            color: color.map(Arc::from),
        }
    }

    #[test]
    fn the_user_is_read_from_user_name_and_color() {
        let cases: &[(&str, Option<PresentUser>)] = &[
            (
                r##"{"user":{"name":"Ada","color":"#30bced"},"cursor":{"anchor":1}}"##,
                Some(user("Ada", Some("#30bced"))),
            ),
            (
                r#"{"user":{"name":"Ada","color":7}}"#,
                Some(user("Ada", None)),
            ),
            (
                r#"{"user":{"name":"A\u00efda\n"}}"#,
                Some(user("A\u{ef}da\n", None)),
            ),
            // The last occurrence of a key wins, as with JSON.parse.
            (
                r#"{"user":{"name":"old"},"user":{"name":"new"}}"#,
                Some(user("new", None)),
            ),
            (r#"{"user":{"name":"x"},"user":null}"#, None),
            (r#"{"user":{"name":42}}"#, None),
            (r#"{"user":"Ada"}"#, None),
            (r#"{"user":["Ada"]}"#, None),
            (r#"{"name":"Ada"}"#, None),
            (r#"{"cursor":{"user":{"name":"nested"}}}"#, None),
            (r#"[{"user":{"name":"Ada"}}]"#, None),
            ("null", None),
            ("12.5e3", None),
            (r#""text""#, None),
        ];
        for (json, expected) in cases {
            assert_eq!(&read_state(json).expect(json), expected, "{json}");
        }
    }

    #[test]
    fn a_vouched_peer_cannot_pose_as_someone_else() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let alice = Identity {
            sub: "u-alice".into(),
            name: "Alice".into(),
        };
        let forged = r##"{"user":{"name":"Bob","sub":"u-bob","color":"#aabbcc"},"cursor":null}"##;
        let outcome = table
            .apply_as(
                PeerId(1),
                Some(&alice),
                &payload(&[(5, 1, forged)]),
                0,
                &limits,
            )
            .unwrap();
        let relayed = decode(&outcome.broadcast.expect("relayed"));
        let state: serde_json::Value = serde_json::from_str(&relayed[0].json).unwrap();
        assert_eq!(
            state,
            serde_json::json!({"user": {"name": "Alice", "sub": "u-alice", "color": "#aabbcc"}, "cursor": null})
        );
        assert_eq!(table.present_users(), vec![user("Alice", Some("#aabbcc"))]);
        // A state with no user at all is stamped too; one already right is relayed verbatim.
        let outcome = table
            .apply_as(
                PeerId(1),
                Some(&alice),
                &payload(&[(5, 2, "{}")]),
                0,
                &limits,
            )
            .unwrap();
        let relayed = decode(&outcome.broadcast.unwrap());
        assert_eq!(relayed[0].user, Some(user("Alice", None)));
        let right = payload(&[(5, 3, &relayed[0].json)]);
        let outcome = table
            .apply_as(PeerId(1), Some(&alice), &right, 0, &limits)
            .unwrap();
        assert_eq!(outcome.broadcast, Some(encode_awareness_raw(&right.raw)));
    }

    /// Regression (review): the decoder validates a state with serde's skipping, which accepts
    /// lone surrogates and any nesting depth, while vouching parses the whole state, which
    /// refuses both. A forged state that only the lenient pass accepts was relayed as sent.
    #[test]
    fn a_state_only_the_lenient_pass_accepts_cannot_carry_a_forged_user() {
        let limits = Limits::default();
        let alice = Identity {
            sub: "u-alice".into(),
            name: "Alice".into(),
        };
        let deep = format!(
            r#"{{"x":{}1{},"user":{{"name":"Bob","sub":"u-bob"}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let surrogate = r#"{"x":"\udc00","user":{"name":"Bob","sub":"u-bob","color":"red;x:y"}}"#;
        for (client_id, forged) in [(1, deep.as_str()), (2, surrogate)] {
            let mut table = AwarenessTable::default();
            let outcome = table
                .apply_as(
                    PeerId(1),
                    Some(&alice),
                    &payload(&[(client_id, 1, forged)]),
                    0,
                    &limits,
                )
                .unwrap();
            let relayed = decode(&outcome.broadcast.unwrap());
            assert_eq!(relayed[0].user, Some(user("Alice", None)), "{forged}");
            // Without an identity, an unsafe colour in such a state is not relayed either.
            let mut table = AwarenessTable::default();
            let outcome = table
                .apply(
                    PeerId(1),
                    &payload(&[(client_id, 1, surrogate)]),
                    0,
                    &limits,
                )
                .unwrap();
            let relayed = decode(&outcome.broadcast.unwrap());
            assert!(!relayed[0].json.contains("red"), "{}", relayed[0].json);
        }
    }

    #[test]
    fn colors_that_are_not_plain_hex_are_removed() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        let hostile =
            r##"{"user":{"name":"m","color":"red;background:url(//x)","colorLight":"#abc"}}"##;
        let outcome = table
            .apply(PeerId(1), &payload(&[(9, 1, hostile)]), 0, &limits)
            .unwrap();
        let relayed = decode(&outcome.broadcast.unwrap());
        let state: serde_json::Value = serde_json::from_str(&relayed[0].json).unwrap();
        assert_eq!(
            state,
            serde_json::json!({"user": {"name": "m", "colorLight": "#abc"}})
        );
        for (color, plain) in [
            ("#fff", true),
            ("#30bced33", true),
            ("#30bcedz", false),
            ("red", false),
            ("#", false),
        ] {
            assert_eq!(is_plain_color(color), plain, "{color}");
        }
    }

    #[test]
    fn long_names_are_cut_and_long_colors_dropped() {
        let name = "é".repeat(MAX_USER_NAME_CHARS + 10);
        let color = "c".repeat(MAX_USER_COLOR_CHARS + 1);
        let json = format!(r#"{{"user":{{"name":"{name}","color":"{color}"}}}}"#);
        let read = read_state(&json).unwrap().expect("a user");
        assert_eq!(read.name.chars().count(), MAX_USER_NAME_CHARS);
        assert_eq!(read.color, None);
    }

    #[test]
    fn reading_a_state_still_refuses_invalid_json() {
        for json in [
            "",
            "{",
            r#"{"user":{"name":"Ada"}"#,
            r#"{"user":{"name":"Ada"}} trailing"#,
            r#"{"user":{"name":"Ada",}}"#,
            "[1,]",
            "nul",
            r#"{"a":01}"#,
        ] {
            assert!(read_state(json).is_err(), "{json:?} was accepted");
        }
    }

    #[test]
    fn present_users_follow_the_table_sorted_by_name() {
        let limits = Limits::default();
        let mut table = AwarenessTable::default();
        table
            .apply(
                PeerId(1),
                &payload(&[
                    (1, 1, r##"{"user":{"name":"zoe","color":"#f00"}}"##),
                    (2, 1, r#"{"cursor":null}"#),
                ]),
                0,
                &limits,
            )
            .unwrap();
        table
            .apply(
                PeerId(2),
                &payload(&[(3, 1, r#"{"user":{"name":"ada"}}"#)]),
                0,
                &limits,
            )
            .unwrap();
        assert_eq!(
            table.present_users(),
            vec![user("ada", None), user("zoe", Some("#f00"))]
        );
        // A renewal that drops the user, and a departure, both show at once.
        table
            .apply(PeerId(2), &payload(&[(3, 2, "{}")]), 0, &limits)
            .unwrap();
        table.remove_peer(PeerId(1));
        assert!(table.present_users().is_empty());
    }
}
