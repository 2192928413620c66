//! `AwarenessTable`: the presence states of one document, each owned by the peer that introduced it.
//!
//! Unlike y-protocols' `Awareness`, ownership is tracked: a peer may only write or remove the
//! client ids it introduced (at most `Limits::max_awareness_clients_per_peer`), so no connection
//! can overwrite or delete another's presence. When a peer leaves, its states are removed and the
//! removal is broadcast. States not renewed within `Limits::awareness_timeout_ms` expire.
//! Time is passed in as milliseconds; this module never reads a clock.

use std::collections::HashMap;

use bytes::Bytes;

use crate::limits::Limits;
use crate::protocol::{
    AWARENESS_NULL_STATE, AwarenessEntry, AwarenessPayload, ProtocolError, encode_awareness,
    encode_awareness_raw,
};

/// Identifies one connection to one document. Never a Yjs client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

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
    /// Entries refused because another peer owns their client id.
    pub n_foreign: usize,
}

impl AwarenessTable {
    /// Applies `payload` from `peer`. Foreign entries are dropped; stale ones ignored.
    pub fn apply(
        &mut self,
        peer: PeerId,
        payload: &AwarenessPayload,
        now_ms: u64,
        limits: &Limits,
    ) -> Result<AwarenessOutcome, ProtocolError> {
        let mut accepted: Vec<&AwarenessEntry> = Vec::with_capacity(payload.entries.len());
        let mut n_foreign = 0;
        for entry in &payload.entries {
            match self.states.get_mut(&entry.client_id) {
                Some(state) if state.owner != peer => n_foreign += 1,
                Some(state) => {
                    // y-protocols: a higher clock wins; an equal clock may still remove.
                    let newer = entry.clock > state.entry.clock
                        || (entry.clock == state.entry.clock && entry.is_removal());
                    if !newer {
                        continue;
                    }
                    if entry.is_removal() {
                        self.remove(entry.client_id);
                    } else {
                        state.entry = entry.clone();
                        state.renewed_ms = now_ms;
                    }
                    accepted.push(entry);
                }
                None if entry.is_removal() => {}
                None => {
                    let owned = self.owned.entry(peer).or_default();
                    if owned.len() >= limits.max_awareness_clients_per_peer {
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
                    accepted.push(entry);
                }
            }
        }
        let broadcast = if accepted.is_empty() {
            None
        } else if accepted.len() == payload.entries.len() {
            // Everything was taken as sent: relay the original bytes, no re-encoding.
            Some(encode_awareness_raw(&payload.raw))
        } else {
            Some(encode_awareness(accepted))
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

    /// Number of known client states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no state is known.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
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
            clock: state.entry.clock.wrapping_add(1),
            json: AWARENESS_NULL_STATE.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, decode_frame};

    fn payload(entries: &[(u64, u32, &str)]) -> AwarenessPayload {
        let entries: Vec<AwarenessEntry> = entries
            .iter()
            .map(|(client_id, clock, json)| AwarenessEntry {
                client_id: *client_id,
                clock: *clock,
                json: (*json).into(),
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
                json: "null".into()
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
}
