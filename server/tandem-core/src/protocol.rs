//! The y-websocket wire protocol: frame bytes in, typed [`Message`]s out, and the encoders for
//! every frame the server sends.
//!
//! This module owns the byte layout described in `protocol-spec/wire.md`. It performs no I/O and
//! must never panic or allocate according to a length read from the wire before that length has
//! been checked against the bytes that remain in the frame. Updates and state vectors are handed
//! to yrs only after that check, and inside `catch_unwind`, because yrs can still panic on
//! hostile input (y-crdt/y-crdt#415).
//!
//! Read next: `shared_doc.rs`, which applies decoded messages to a document.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, IdSet, Snapshot, StateVector, Update};

use crate::limits::Limits;
use crate::presence::{PresentUser, read_state};

/// Top-level tag of a Sync message (y-protocols `messageSync`).
pub const MSG_SYNC: u64 = 0;
/// Top-level tag of an Awareness message (y-protocols `messageAwareness`).
pub const MSG_AWARENESS: u64 = 1;
/// Top-level tag of an Auth message (y-protocols `messageAuth`).
pub const MSG_AUTH: u64 = 2;
/// Top-level tag of a QueryAwareness message (y-websocket `messageQueryAwareness`).
pub const MSG_QUERY_AWARENESS: u64 = 3;

/// Sync sub-tag: the sender's state vector.
pub const SYNC_STEP_1: u64 = 0;
/// Sync sub-tag: the update that answers a step 1.
pub const SYNC_STEP_2: u64 = 1;
/// Sync sub-tag: an incremental update.
pub const SYNC_UPDATE: u64 = 2;

/// Auth sub-tag: permission denied, followed by a reason string.
pub const AUTH_PERMISSION_DENIED: u64 = 0;

/// A JSON `null` awareness state: the client is gone.
pub const AWARENESS_NULL_STATE: &str = "null";

/// One decoded client-to-server message.
#[derive(Debug)]
pub enum Message {
    /// The peer's state vector; the server answers with the updates the peer lacks.
    SyncStep1(StateVector),
    /// The peer's answer to the server's step 1; applied like an update.
    SyncStep2(UpdatePayload),
    /// An incremental update.
    Update(UpdatePayload),
    /// Awareness (presence) states of one or more Yjs client ids.
    Awareness(AwarenessPayload),
    /// An Auth message from a client. Clients have nothing to say here; it is accepted and ignored.
    Auth,
    /// A request for every known awareness state.
    QueryAwareness,
}

/// A document update as it arrived: the raw v1 bytes (persisted and relayed verbatim) and the
/// decoded form (applied to the doc). Decoding happens once, in the connection task.
#[derive(Debug)]
pub struct UpdatePayload {
    /// The v1-encoded update exactly as the peer sent it.
    pub raw: Bytes,
    /// The same update, decoded and structurally valid.
    pub update: Update,
}

/// An awareness message: the raw inner payload (so it can be relayed without re-encoding when
/// every entry is accepted) and its entries.
#[derive(Debug, Clone)]
pub struct AwarenessPayload {
    /// The awareness update bytes (without the message tag and length prefix).
    pub raw: Bytes,
    /// The entries, in wire order.
    pub entries: Vec<AwarenessEntry>,
}

/// One awareness state as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    /// The Yjs client id this state belongs to.
    pub client_id: u64,
    /// Logical clock; a higher clock replaces a lower one.
    pub clock: u32,
    /// The state as JSON text; `null` removes the client.
    pub json: Arc<str>,
    /// The user the state names, read from `json` when the entry was decoded (see
    /// `presence::read_state`); `None` for removals and for states that name no user.
    /// Encoders ignore it: `json` is what travels.
    pub user: Option<PresentUser>,
}

impl AwarenessEntry {
    /// Whether this entry removes its client (a JSON `null` state).
    pub fn is_removal(&self) -> bool {
        &*self.json == AWARENESS_NULL_STATE
    }
}

/// Why a frame was refused. Each variant maps to one close code through [`ProtocolError::close_frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes do not follow the framing of `protocol-spec/wire.md`.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The frame is larger than the configured limit.
    #[error("frame too large: {len} bytes, limit {max}")]
    FrameTooLarge {
        /// Size of the refused frame in bytes (as announced by its header when known).
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A WebSocket text frame; the protocol is binary only.
    #[error("text frames are not supported")]
    TextFrame,
    /// A top-level message tag the server does not know.
    #[error("unsupported message type {0}")]
    UnsupportedMessage(u64),
    /// A Sync message with an unknown sub-tag.
    #[error("unsupported sync message type {0}")]
    UnsupportedSyncMessage(u64),
    /// An update or state vector that yrs refuses to decode or apply.
    #[error("invalid update: {0}")]
    InvalidUpdate(&'static str),
    /// An awareness state that is not valid JSON.
    #[error("invalid awareness state for client {client_id}")]
    InvalidAwarenessState {
        /// The client id whose state was refused.
        client_id: u64,
    },
    /// An awareness state larger than the configured limit.
    #[error("awareness state too large: {len} bytes, limit {max}")]
    AwarenessTooLarge {
        /// Size of the refused state in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The connection tried to introduce more awareness client ids than it may own.
    #[error("too many awareness clients on one connection, limit {max}")]
    TooManyAwarenessClients {
        /// The configured limit.
        max: usize,
    },
    /// The connection sent faster than one of its rate limits allows (see `rate.rs`).
    #[error("{kind} rate limit exceeded")]
    RateLimited {
        /// Which limit.
        kind: RateKind,
        /// The configured rate per second.
        limit_per_s: u64,
        /// The average rate the peer sustained since its bucket was last full.
        observed_per_s: u64,
    },
    /// A Hocuspocus stateless message larger than its limit.
    #[error("stateless message too large: {len} bytes, limit {max}")]
    StatelessTooLarge {
        /// Size of the refused payload in bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A Hocuspocus document name (routing key) longer than its limit.
    #[error("document name too long: {len} bytes, limit {max}")]
    NameTooLong {
        /// Announced length of the name in bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An update that would take the document past its size limit; it was not applied.
    #[error("document too large")]
    DocTooLarge {
        /// Stored size of the document before the update, in bytes.
        doc_bytes: u64,
        /// Size of the refused update, in bytes.
        update_bytes: u64,
        /// The configured limit.
        max: u64,
    },
}

/// The per-connection rate limits, named as in their close reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// Messages of any kind.
    Message,
    /// Bytes of frames.
    Byte,
    /// Awareness messages.
    Awareness,
}

impl std::fmt::Display for RateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateKind::Message => "message",
            RateKind::Byte => "byte",
            RateKind::Awareness => "awareness",
        })
    }
}

/// WebSocket close code 1002: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket close code 1003: unsupported data.
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// WebSocket close code 1007: invalid payload data.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// WebSocket close code 1008: policy violation.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// WebSocket close code 1009: message too big.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// WebSocket close code 1011: internal error.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// WebSocket close code 1001: going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1013: try again later.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code 4429 (application range, after HTTP 429): a per-connection rate limit was exceeded.
/// The client may reconnect; it should send more slowly.
pub const CLOSE_RATE_LIMITED: u16 = 4429;

/// The longest close reason a WebSocket close frame can carry (125 bytes of payload minus the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

impl ProtocolError {
    /// The close code and reason sent to the peer. The reason always fits in a close frame.
    pub fn close_frame(&self) -> (u16, String) {
        let code = match self {
            ProtocolError::Malformed(_) | ProtocolError::UnsupportedSyncMessage(_) => {
                CLOSE_PROTOCOL_ERROR
            }
            ProtocolError::TextFrame | ProtocolError::UnsupportedMessage(_) => {
                CLOSE_UNSUPPORTED_DATA
            }
            ProtocolError::InvalidUpdate(_) | ProtocolError::InvalidAwarenessState { .. } => {
                CLOSE_INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::AwarenessTooLarge { .. }
            | ProtocolError::DocTooLarge { .. }
            | ProtocolError::StatelessTooLarge { .. }
            | ProtocolError::NameTooLong { .. } => CLOSE_MESSAGE_TOO_BIG,
            ProtocolError::TooManyAwarenessClients { .. } => CLOSE_POLICY_VIOLATION,
            ProtocolError::RateLimited { .. } => CLOSE_RATE_LIMITED,
        };
        (code, truncate_reason(self.to_string()))
    }
}

/// Cuts a close reason to [`MAX_CLOSE_REASON_BYTES`] on a character boundary.
pub fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut cut = MAX_CLOSE_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Decodes one binary WebSocket frame into the messages it carries (at least one).
///
/// The frame size limit is checked first; everything after that is bounded by the frame.
pub fn decode_frame(frame: &Bytes, limits: &Limits) -> Result<Vec<Message>, ProtocolError> {
    if frame.len() as u64 > limits.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len: frame.len() as u64,
            max: limits.max_frame_bytes,
        });
    }
    if frame.is_empty() {
        return Err(ProtocolError::Malformed("empty frame"));
    }
    let mut reader = Reader::new(frame);
    let mut messages = Vec::new();
    while !reader.is_empty() {
        messages.push(decode_message(&mut reader, limits)?);
    }
    Ok(messages)
}

fn decode_message(reader: &mut Reader<'_>, limits: &Limits) -> Result<Message, ProtocolError> {
    match reader.read_var_u64()? {
        MSG_SYNC => decode_sync(reader),
        MSG_AWARENESS => {
            let raw = reader.read_buf()?;
            let entries = decode_awareness(&raw, limits)?;
            Ok(Message::Awareness(AwarenessPayload { raw, entries }))
        }
        MSG_AUTH => {
            // y-protocols auth: a var-uint permission type; "denied" carries a reason string.
            if reader.read_var_u64()? == AUTH_PERMISSION_DENIED {
                reader.read_string()?;
            }
            Ok(Message::Auth)
        }
        MSG_QUERY_AWARENESS => Ok(Message::QueryAwareness),
        other => Err(ProtocolError::UnsupportedMessage(other)),
    }
}

/// Decodes the body of a Sync message (its sub-tag and payload), the tag already read.
pub(crate) fn decode_sync(reader: &mut Reader<'_>) -> Result<Message, ProtocolError> {
    match reader.read_var_u64()? {
        SYNC_STEP_1 => {
            let payload = reader.read_buf()?;
            Ok(Message::SyncStep1(decode_state_vector(&payload)?))
        }
        SYNC_STEP_2 => Ok(Message::SyncStep2(decode_update(reader.read_buf()?)?)),
        SYNC_UPDATE => Ok(Message::Update(decode_update(reader.read_buf()?)?)),
        other => Err(ProtocolError::UnsupportedSyncMessage(other)),
    }
}

/// Decodes a v1 state vector after checking its entry count against the bytes present.
pub fn decode_state_vector(payload: &[u8]) -> Result<StateVector, ProtocolError> {
    let mut reader = Reader::from_slice(payload);
    let n_entries = reader.read_var_u64()?;
    // Every entry needs at least two bytes (client id and clock).
    if n_entries > reader.remaining() as u64 / 2 {
        return Err(ProtocolError::InvalidUpdate(
            "state vector count exceeds payload",
        ));
    }
    catch_unwind(|| StateVector::decode_v1(payload))
        .map_err(|_| ProtocolError::InvalidUpdate("state vector rejected by decoder"))?
        .map_err(|_| ProtocolError::InvalidUpdate("state vector rejected by decoder"))
}

/// Decodes a v1 update after checking its client count against the bytes present.
pub fn decode_update(raw: Bytes) -> Result<UpdatePayload, ProtocolError> {
    let mut reader = Reader::new(&raw);
    let n_clients = reader.read_var_u64()?;
    // Each client section needs at least three bytes (block count, client id, clock).
    if n_clients > reader.remaining() as u64 / 3 {
        return Err(ProtocolError::InvalidUpdate(
            "update client count exceeds payload",
        ));
    }
    // yrs reserves room for each client's struct count before reading the structs: a 15-byte
    // update claiming a billion of them made it reserve 32 GB (found by the `decode_frame` fuzz
    // target under AddressSanitizer). Every struct takes at least a byte. Only the first
    // client's count can be checked without parsing structs; yrs still trusts the others.
    if n_clients > 0 {
        let n_structs = reader
            .read_var_u64()
            .map_err(|_| ProtocolError::InvalidUpdate("update rejected by decoder"))?;
        if n_structs > reader.remaining() as u64 {
            return Err(ProtocolError::InvalidUpdate(
                "update struct count exceeds payload",
            ));
        }
    }
    let update = catch_unwind(AssertUnwindSafe(|| Update::decode_v1(&raw)))
        .map_err(|_| ProtocolError::InvalidUpdate("update rejected by decoder"))?
        .map_err(|_| ProtocolError::InvalidUpdate("update rejected by decoder"))?;
    if !survives_reencoding(&update) {
        return Err(ProtocolError::InvalidUpdate(
            "update does not survive re-encoding",
        ));
    }
    Ok(UpdatePayload { raw, update })
}

/// Whether yrs can decode what it encodes from `update`.
///
/// yrs' decoder accepts some structs it cannot write back: found by the `apply_update` fuzz
/// target, a 17-byte update with an unknown content tag decodes, applies, and is written back
/// in a form that no longer decodes. Applied, it would make the doc's own snapshot unreadable,
/// and the first compaction would store a snapshot that can never be loaded again: the whole doc
/// lost. Checked here, in the connection task, so a refusal costs the doc actor nothing and
/// closes only the sender (1007). Linear in the update.
fn survives_reencoding(update: &Update) -> bool {
    use yrs::updates::encoder::Encode;
    catch_unwind(AssertUnwindSafe(|| {
        Update::decode_v1(&update.encode_v1()).is_ok()
    }))
    .unwrap_or(false)
}

/// Most awareness entries reserved up front, whatever count a frame claims.
const MAX_AWARENESS_PREALLOC: u64 = 64;

/// Decodes the entries of an awareness update (y-protocols `encodeAwarenessUpdate` layout).
pub fn decode_awareness(
    payload: &Bytes,
    limits: &Limits,
) -> Result<Vec<AwarenessEntry>, ProtocolError> {
    let mut reader = Reader::new(payload);
    let n_entries = reader.read_var_u64()?;
    // Every entry needs at least three bytes: client id, clock, and a string length.
    if n_entries > reader.remaining() as u64 / 3 {
        return Err(ProtocolError::Malformed("awareness count exceeds payload"));
    }
    // The count is only checked against a lower bound of the bytes each entry needs, so a 16 MiB
    // frame could still ask for millions of slots: reserve a little and let the Vec grow.
    let mut entries = Vec::with_capacity(n_entries.min(MAX_AWARENESS_PREALLOC) as usize);
    for _ in 0..n_entries {
        let client_id = reader.read_var_u64()?;
        let clock = u32::try_from(reader.read_var_u64()?)
            .map_err(|_| ProtocolError::Malformed("awareness clock exceeds 32 bits"))?;
        let json = reader.read_string()?;
        if json.len() > limits.max_awareness_state_bytes {
            return Err(ProtocolError::AwarenessTooLarge {
                len: json.len(),
                max: limits.max_awareness_state_bytes,
            });
        }
        // Other clients JSON.parse this text; relaying invalid JSON would break their handlers.
        // The same single parse reads the user for `GET /api/docs`.
        let user =
            read_state(json).map_err(|_| ProtocolError::InvalidAwarenessState { client_id })?;
        entries.push(AwarenessEntry {
            client_id,
            clock,
            json: Arc::from(json),
            user,
        });
    }
    if !reader.is_empty() {
        return Err(ProtocolError::Malformed(
            "trailing bytes after awareness entries",
        ));
    }
    Ok(entries)
}

/// Encodes a Sync step 1 frame carrying `state_vector` (v1).
pub fn encode_sync_step1(state_vector: &StateVector) -> Bytes {
    use yrs::updates::encoder::Encode;
    encode_sync(SYNC_STEP_1, &state_vector.encode_v1())
}

/// Encodes a Sync step 2 frame carrying a v1 update.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    encode_sync(SYNC_STEP_2, update)
}

/// Largest Yjs client id: JavaScript numbers are exact up to 2^53, and yrs refuses larger ids.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// A Yjs snapshot that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot: {0}")]
pub struct SnapshotError(pub &'static str);

/// Decodes a Yjs snapshot in v1 encoding, as `Y.encodeSnapshot(Y.snapshot(doc))` produces it:
/// a delete set (clients, each with `(clock, len)` ranges), then a state vector. The whole
/// payload must be consumed.
///
/// Parsed here rather than by yrs so that every count is checked against the bytes that remain
/// before anything is allocated, clock ranges cannot overflow, and client ids above
/// [`MAX_CLIENT_ID`] are refused instead of tripping yrs' assertions. A client listed twice has
/// its ranges merged and keeps its highest clock, so a redundant snapshot never claims less.
pub fn decode_snapshot(payload: &[u8]) -> Result<Snapshot, SnapshotError> {
    let malformed = |error: ProtocolError| match error {
        ProtocolError::Malformed(reason) => SnapshotError(reason),
        _ => SnapshotError("malformed"),
    };
    let mut reader = Reader::from_slice(payload);
    let mut deleted: std::collections::BTreeMap<u64, Vec<std::ops::Range<u32>>> =
        std::collections::BTreeMap::new();
    let n_clients = reader.read_var_u64().map_err(malformed)?;
    // Each delete-set client needs at least two bytes: its id and a range count.
    if n_clients > reader.remaining() as u64 / 2 {
        return Err(SnapshotError("delete set count exceeds payload"));
    }
    for _ in 0..n_clients {
        let client = read_client_id(&mut reader)?;
        let n_ranges = reader.read_var_u64().map_err(malformed)?;
        // Each range needs at least two bytes: its clock and its length.
        if n_ranges > reader.remaining() as u64 / 2 {
            return Err(SnapshotError("delete range count exceeds payload"));
        }
        // No reservation by the announced count: vectors grow with the ranges actually read.
        let ranges = deleted.entry(client).or_default();
        for _ in 0..n_ranges {
            let clock = read_clock(&mut reader)?;
            let len = read_clock(&mut reader)?;
            let end = clock
                .checked_add(len)
                .ok_or(SnapshotError("delete range overflows 32-bit clocks"))?;
            ranges.push(clock..end);
        }
    }
    let n_states = reader.read_var_u64().map_err(malformed)?;
    // Each state vector entry needs at least two bytes: a client id and a clock.
    if n_states > reader.remaining() as u64 / 2 {
        return Err(SnapshotError("state vector count exceeds payload"));
    }
    let mut states: HashMap<u64, u32> = HashMap::new();
    for _ in 0..n_states {
        let client = read_client_id(&mut reader)?;
        let clock = read_clock(&mut reader)?;
        let held = states.entry(client).or_default();
        *held = (*held).max(clock);
    }
    if !reader.is_empty() {
        return Err(SnapshotError("trailing bytes after snapshot"));
    }
    // Sorted ranges take yrs' append path, so building the set stays O(n log n) for any input.
    let delete_set = IdSet::from_iter(deleted.into_iter().map(|(client, mut ranges)| {
        ranges.sort_unstable_by_key(|range| range.start);
        (ClientID::new(client), ranges)
    }));
    let state_vector = StateVector::from_iter(
        states
            .into_iter()
            .map(|(client, clock)| (ClientID::new(client), clock)),
    );
    Ok(Snapshot::new(state_vector, delete_set))
}

fn read_client_id(reader: &mut Reader<'_>) -> Result<u64, SnapshotError> {
    let client = reader
        .read_var_u64()
        .map_err(|_| SnapshotError("truncated client id"))?;
    if client > MAX_CLIENT_ID {
        return Err(SnapshotError("client id exceeds 53 bits"));
    }
    Ok(client)
}

fn read_clock(reader: &mut Reader<'_>) -> Result<u32, SnapshotError> {
    let clock = reader
        .read_var_u64()
        .map_err(|_| SnapshotError("truncated clock"))?;
    u32::try_from(clock).map_err(|_| SnapshotError("clock exceeds 32 bits"))
}

/// Encodes a Sync update frame carrying a v1 update.
pub fn encode_sync_update(update: &[u8]) -> Bytes {
    encode_sync(SYNC_UPDATE, update)
}

fn encode_sync(sub_tag: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 12);
    write_var_u64(&mut out, MSG_SYNC);
    write_var_u64(&mut out, sub_tag);
    write_buf(&mut out, payload);
    out.freeze()
}

/// Encodes an Awareness frame from an already encoded awareness update (relayed verbatim).
pub fn encode_awareness_raw(awareness_update: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(awareness_update.len() + 11);
    write_var_u64(&mut out, MSG_AWARENESS);
    write_buf(&mut out, awareness_update);
    out.freeze()
}

/// Encodes an Awareness frame from entries.
pub fn encode_awareness<'a>(entries: impl IntoIterator<Item = &'a AwarenessEntry>) -> Bytes {
    let entries: Vec<&AwarenessEntry> = entries.into_iter().collect();
    let mut inner = BytesMut::new();
    write_var_u64(&mut inner, entries.len() as u64);
    for entry in entries {
        write_var_u64(&mut inner, entry.client_id);
        write_var_u64(&mut inner, u64::from(entry.clock));
        write_buf(&mut inner, entry.json.as_bytes());
    }
    encode_awareness_raw(&inner)
}

/// Encodes an Auth "permission denied" frame with `reason`.
pub fn encode_auth_denied(reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(reason.len() + 4);
    write_var_u64(&mut out, MSG_AUTH);
    write_var_u64(&mut out, AUTH_PERMISSION_DENIED);
    write_buf(&mut out, reason.as_bytes());
    out.freeze()
}

/// Encodes a QueryAwareness frame.
pub fn encode_query_awareness() -> Bytes {
    let mut out = BytesMut::with_capacity(1);
    write_var_u64(&mut out, MSG_QUERY_AWARENESS);
    out.freeze()
}

/// Writes a lib0 var-uint: 7 bits per byte, least significant group first, high bit = more.
pub fn write_var_u64(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn write_buf(out: &mut BytesMut, payload: &[u8]) {
    write_var_u64(out, payload.len() as u64);
    out.put_slice(payload);
}

/// A bounds-checked cursor over one frame. Every read fails with `Malformed` instead of panicking.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    source: Option<&'a Bytes>,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a shared frame; byte strings are returned as zero-copy slices of it.
    pub(crate) fn new(frame: &'a Bytes) -> Self {
        Reader {
            bytes: frame,
            source: Some(frame),
            pos: 0,
        }
    }

    /// A reader over a borrowed slice; byte strings are copied out.
    fn from_slice(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            source: None,
            pos: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn read_u8(&mut self) -> Result<u8, ProtocolError> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or(ProtocolError::Malformed("truncated var-uint"))?;
        self.pos += 1;
        Ok(byte)
    }

    /// lib0 var-uint of at most ten bytes whose value fits 64 bits; longer or overflowing
    /// encodings are refused. Redundant zero groups (`0x80 0x00` for 0) are accepted, as lib0
    /// accepts them.
    pub(crate) fn read_var_u64(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.read_u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(ProtocolError::Malformed("var-uint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtocolError::Malformed("var-uint longer than ten bytes"))
    }

    /// A length-prefixed byte string. The length is checked against the remaining bytes before
    /// anything is sliced or allocated.
    pub(crate) fn read_buf(&mut self) -> Result<Bytes, ProtocolError> {
        let len = self.read_var_u64()?;
        if len > self.remaining() as u64 {
            return Err(ProtocolError::Malformed("length prefix exceeds frame"));
        }
        let start = self.pos;
        let end = start + len as usize;
        self.pos = end;
        Ok(match self.source {
            Some(source) => source.slice(start..end),
            None => Bytes::copy_from_slice(&self.bytes[start..end]),
        })
    }

    pub(crate) fn read_string(&mut self) -> Result<&'a str, ProtocolError> {
        let len = self.read_var_u64()?;
        if len > self.remaining() as u64 {
            return Err(ProtocolError::Malformed("length prefix exceeds frame"));
        }
        let start = self.pos;
        self.pos += len as usize;
        std::str::from_utf8(&self.bytes[start..self.pos])
            .map_err(|_| ProtocolError::Malformed("string is not utf-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text, Transact};

    fn limits() -> Limits {
        Limits::default()
    }

    fn text_update(content: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.push(&mut txn, content);
        txn.encode_update_v1()
    }

    #[test]
    fn var_uint_round_trips_at_the_edges() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = BytesMut::new();
            write_var_u64(&mut out, value);
            let bytes = out.freeze();
            let mut reader = Reader::new(&bytes);
            assert_eq!(reader.read_var_u64(), Ok(value));
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn several_messages_in_one_frame_are_all_decoded() {
        let update = text_update("hello");
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&encode_sync_update(&update));
        frame.extend_from_slice(&encode_query_awareness());
        frame.extend_from_slice(&encode_sync_step1(&StateVector::default()));
        let messages = decode_frame(&frame.freeze(), &limits()).expect("valid frame");
        assert_eq!(messages.len(), 3);
        let Message::Update(payload) = &messages[0] else {
            panic!("expected update")
        };
        assert_eq!(&payload.raw[..], &update[..]);
        assert!(matches!(messages[1], Message::QueryAwareness));
        assert!(matches!(messages[2], Message::SyncStep1(_)));
    }

    #[test]
    fn decoded_update_applies_to_a_doc() {
        let update = text_update("hello");
        let messages = decode_frame(&encode_sync_update(&update), &limits()).expect("valid");
        let Some(Message::Update(payload)) = messages.into_iter().next() else {
            panic!("expected update")
        };
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut()
            .apply_update(payload.update)
            .expect("applies");
        assert_eq!(text.get_string(&doc.transact()), "hello");
    }

    /// A table of hostile frames, each with the exact error it must produce.
    #[test]
    fn hostile_frames_map_to_exact_errors() {
        let mut huge_len = BytesMut::new();
        write_var_u64(&mut huge_len, MSG_SYNC);
        write_var_u64(&mut huge_len, SYNC_UPDATE);
        write_var_u64(&mut huge_len, 1 << 60);
        let cases: Vec<(&str, Vec<u8>, ProtocolError)> = vec![
            ("empty", vec![], ProtocolError::Malformed("empty frame")),
            (
                "truncated var-uint",
                vec![0x80],
                ProtocolError::Malformed("truncated var-uint"),
            ),
            (
                "eleven-byte var-uint",
                vec![0xff; 11],
                ProtocolError::Malformed("var-uint overflows 64 bits"),
            ),
            (
                "unknown type",
                vec![7],
                ProtocolError::UnsupportedMessage(7),
            ),
            (
                "unknown sync type",
                vec![0, 9],
                ProtocolError::UnsupportedSyncMessage(9),
            ),
            (
                "length prefix 2^60",
                huge_len.to_vec(),
                ProtocolError::Malformed("length prefix exceeds frame"),
            ),
            (
                "update of garbage",
                vec![0, 2, 3, 0x7f, 0, 0],
                ProtocolError::InvalidUpdate("update client count exceeds payload"),
            ),
            (
                "state vector count 2^31",
                vec![0, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x08],
                ProtocolError::InvalidUpdate("state vector count exceeds payload"),
            ),
            (
                "awareness with invalid json",
                vec![1, 5, 1, 1, 1, 1, b'{'],
                ProtocolError::InvalidAwarenessState { client_id: 1 },
            ),
            (
                "awareness count exceeds payload",
                vec![1, 2, 0xff, 0x01],
                ProtocolError::Malformed("awareness count exceeds payload"),
            ),
        ];
        for (name, bytes, expected) in cases {
            let res = decode_frame(&Bytes::from(bytes), &limits());
            assert_eq!(res.err(), Some(expected), "case {name}");
        }
    }

    #[test]
    fn oversize_frame_is_refused_before_decoding() {
        let limits = Limits {
            max_frame_bytes: 4,
            ..Limits::default()
        };
        let res = decode_frame(&Bytes::from_static(&[0, 2, 3, 0, 0, 0]), &limits);
        assert_eq!(
            res.err(),
            Some(ProtocolError::FrameTooLarge { len: 6, max: 4 })
        );
    }

    #[test]
    fn close_reasons_fit_in_a_close_frame() {
        let long = truncate_reason("é".repeat(200));
        assert!(long.len() <= MAX_CLOSE_REASON_BYTES);
        let (code, reason) = ProtocolError::TextFrame.close_frame();
        assert_eq!(code, CLOSE_UNSUPPORTED_DATA);
        assert_eq!(reason, "text frames are not supported");
    }

    fn snapshot_of(doc: &Doc) -> Vec<u8> {
        use yrs::ReadTxn;
        use yrs::updates::encoder::Encode;
        doc.transact().snapshot().encode_v1()
    }

    #[test]
    fn snapshots_decode_as_yrs_encodes_them() {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        text.push(&mut doc.transact_mut(), "hello world");
        text.remove_range(&mut doc.transact_mut(), 2, 3);
        text.remove_range(&mut doc.transact_mut(), 4, 1);
        let expected = {
            use yrs::ReadTxn;
            doc.transact().snapshot()
        };
        assert!(!expected.delete_set.is_empty());
        assert_eq!(decode_snapshot(&snapshot_of(&doc)), Ok(expected));
        // An empty doc: no deletions, no clients (`Y.encodeSnapshot` gives the same two bytes).
        assert_eq!(snapshot_of(&Doc::new()), vec![0, 0]);
        assert_eq!(decode_snapshot(&[0, 0]), Ok(Snapshot::default()));
    }

    #[test]
    fn hostile_snapshots_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "truncated var-uint"),
            (&[0], "truncated var-uint"),
            (&[0, 0, 0], "trailing bytes after snapshot"),
            // A billion delete-set clients announced in five bytes.
            (
                &[0x80, 0x94, 0xeb, 0xdc, 0x03, 0],
                "delete set count exceeds payload",
            ),
            (
                &[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0],
                "client id exceeds 53 bits",
            ),
            // Client 1 deleted [u32::MAX - 1, +2): past the end of the clock space.
            (
                &[1, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 2, 0],
                "delete range overflows 32-bit clocks",
            ),
            (
                &[0, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x10],
                "clock exceeds 32 bits",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                decode_snapshot(bytes),
                Err(SnapshotError(reason)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn a_snapshot_listing_a_client_twice_keeps_the_most_it_claims() {
        // Deletes of client 1: [0,2) and [5,6), listed separately; clocks 3 and 9 for client 2.
        let bytes = [2, 1, 1, 5, 1, 1, 1, 0, 2, 2, 2, 3, 2, 9];
        let snapshot = decode_snapshot(&bytes).expect("decodes");
        assert_eq!(snapshot.state_map.get(&ClientID::new(2)), 9);
        let deleted = IdSet::from_iter([(ClientID::new(1), [0..2, 5..6])]);
        assert_eq!(snapshot.delete_set, deleted);
    }

    proptest::proptest! {
        /// Any bytes decode to a snapshot or an error, never a panic or an abort.
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_snapshot(&bytes);
        }

        /// Any bytes decode to Ok or Err, never a panic or an abort.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_frame(&Bytes::from(bytes), &Limits::default());
        }

        /// Mutating a valid frame never panics either.
        #[test]
        fn mutated_update_frames_never_panic(flip in 0usize..64, value in proptest::num::u8::ANY) {
            let mut frame = encode_sync_update(&text_update("hello world")).to_vec();
            let idx = flip % frame.len();
            frame[idx] = value;
            let _ = decode_frame(&Bytes::from(frame), &Limits::default());
        }
    }
}
