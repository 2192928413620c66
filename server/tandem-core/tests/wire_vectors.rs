//! The test vectors of `protocol-spec/wire.md`, checked against `tandem_core::protocol`.
//!
//! The vectors live in the spec itself, in the fenced block whose info string is `vectors`, so
//! the document a client author reads is the one the codec is tested against. The grammar of a
//! vector line and of its expectation is defined in wire.md, section "Test vectors".
//! A wrong vector, a codec change that alters the wire, or a missing or shortened block fails here.

use bytes::{Bytes, BytesMut};
use tandem_core::protocol::{
    MAX_CLOSE_REASON_BYTES, Message, decode_frame, encode_auth_denied, encode_awareness,
    encode_awareness_raw, encode_query_awareness, encode_sync_step1, encode_sync_step2,
    encode_sync_update,
};
use tandem_core::{Limits, ProtocolError};
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact};

/// Path of the spec, relative to this crate.
const WIRE_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol-spec/wire.md");

/// The opening fence of the vectors block.
const VECTORS_FENCE: &str = "```vectors";

/// Fewer vectors than this means the block was lost or cut short.
const MIN_VECTORS: usize = 30;

/// Which way a frame travels; server-to-client frames carry exactly one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// One line of the vectors block.
#[derive(Debug)]
struct Vector {
    /// 1-based line number in wire.md, for error messages.
    line: usize,
    name: String,
    direction: Direction,
    bytes: Bytes,
    expect: String,
}

#[test]
fn spec_has_a_vectors_block_with_enough_vectors() {
    let vectors = read_vectors();
    assert!(
        vectors.len() >= MIN_VECTORS,
        "wire.md has {} vectors, expected at least {MIN_VECTORS}",
        vectors.len()
    );
    let mut names: Vec<&str> = vectors.iter().map(|vector| vector.name.as_str()).collect();
    names.sort_unstable();
    let n_names = names.len();
    names.dedup();
    assert_eq!(names.len(), n_names, "vector names in wire.md are unique");
    for wanted in [
        "error ",
        "step1 ",
        "step2 ",
        "update ",
        "awareness",
        "auth-denied ",
    ] {
        assert!(
            vectors.iter().any(|vector| vector.expect.contains(wanted)),
            "wire.md has a vector whose expectation contains {wanted:?}"
        );
    }
}

#[test]
fn every_vector_decodes_and_reencodes_as_specified() {
    let limits = Limits::default();
    let failures: Vec<String> = read_vectors()
        .iter()
        .filter_map(|vector| {
            check(vector, &limits)
                .err()
                .map(|failure| format!("wire.md:{} `{}`: {failure}", vector.line, vector.name))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Parses the vectors block of wire.md. Panics when the block is missing or a line is malformed.
fn read_vectors() -> Vec<Vector> {
    let spec = std::fs::read_to_string(WIRE_MD)
        .unwrap_or_else(|error| panic!("cannot read {WIRE_MD}: {error}"));
    let mut lines = spec.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, line)| line.trim_end() == VECTORS_FENCE)
        .unwrap_or_else(|| panic!("wire.md has no {VECTORS_FENCE} block"));
    let mut vectors = Vec::new();
    let mut closed = false;
    for (idx, line) in lines {
        if line.trim_start().starts_with("```") {
            closed = true;
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        vectors.push(parse_vector(idx + 1, line));
    }
    assert!(closed, "the {VECTORS_FENCE} block in wire.md is not closed");
    assert_eq!(
        spec.matches(VECTORS_FENCE).count(),
        1,
        "wire.md has exactly one {VECTORS_FENCE} block"
    );
    vectors
}

/// `name | direction | hex | expectation`; the expectation may itself contain `|`.
fn parse_vector(line_no: usize, line: &str) -> Vector {
    let fields: Vec<&str> = line.splitn(4, '|').map(str::trim).collect();
    let [name, direction, hex, expect] = fields[..] else {
        panic!("wire.md:{line_no}: a vector has four `|`-separated fields: {line:?}");
    };
    let direction = match direction {
        "c2s" => Direction::ClientToServer,
        "s2c" => Direction::ServerToClient,
        other => panic!("wire.md:{line_no}: direction is c2s or s2c, not {other:?}"),
    };
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|byte| {
            assert_eq!(
                byte.len(),
                2,
                "wire.md:{line_no}: {byte:?} is not one hex byte"
            );
            u8::from_str_radix(byte, 16)
                .unwrap_or_else(|_| panic!("wire.md:{line_no}: {byte:?} is not one hex byte"))
        })
        .collect();
    assert!(!name.is_empty(), "wire.md:{line_no}: a vector has a name");
    assert!(
        !expect.is_empty(),
        "wire.md:{line_no}: a vector has an expectation"
    );
    Vector {
        line: line_no,
        name: name.to_owned(),
        direction,
        bytes: Bytes::from(bytes),
        expect: expect.to_owned(),
    }
}

/// Decodes `vector`, compares the result with its expectation and, where the spec asks for it,
/// re-encodes the messages and compares the bytes.
fn check(vector: &Vector, limits: &Limits) -> Result<(), String> {
    let decoded = decode_frame(&vector.bytes, limits);
    if let Some(expected_error) = vector.expect.strip_prefix("error ") {
        if vector.direction == Direction::ServerToClient {
            return Err("a server-to-client vector must be valid".into());
        }
        let error = match decoded {
            Ok(messages) => return Err(format!("decoded {messages:?}, expected an error")),
            Err(error) => error,
        };
        check_close_reason(&error)?;
        let (code, _) = error.close_frame();
        let actual = format!("{code} {error:?}");
        if actual != expected_error {
            return Err(format!("expected error {expected_error}, got {actual}"));
        }
        return Ok(());
    }

    let messages = decoded.map_err(|error| format!("decoding failed with {error:?}"))?;
    let expected: Vec<&str> = vector.expect.split(" ; ").collect();
    if messages.len() != expected.len() {
        return Err(format!(
            "decoded {} messages, the expectation lists {}",
            messages.len(),
            expected.len()
        ));
    }
    if vector.direction == Direction::ServerToClient && messages.len() != 1 {
        return Err("the server sends exactly one message per frame".into());
    }
    // `None` as soon as one message has no encoder (a client's `auth`).
    let mut reencoded = Some(BytesMut::new());
    for (message, expected) in messages.into_iter().zip(expected) {
        let (description, frame) = describe(message, expected)?;
        if description != expected {
            return Err(format!("expected `{expected}`, decoded `{description}`"));
        }
        match (frame, reencoded.as_mut()) {
            (Some(frame), Some(out)) => out.extend_from_slice(&frame),
            _ => reencoded = None,
        }
    }
    match reencoded {
        Some(out) if out[..] != vector.bytes[..] => {
            Err(format!("re-encoding gives other bytes: {}", hex(&out)))
        }
        Some(_) => Ok(()),
        None if vector.direction == Direction::ServerToClient => {
            Err("a server-to-client vector must re-encode".into())
        }
        None => Ok(()),
    }
}

/// Bytes in the hex notation of the vectors block.
fn hex(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    pairs.join(" ")
}

/// Close reasons are lower-case sentences without a full stop, within the close-frame budget.
fn check_close_reason(error: &ProtocolError) -> Result<(), String> {
    let (_, reason) = error.close_frame();
    let starts_lower = !reason.starts_with(|c: char| c.is_uppercase());
    if reason.is_empty()
        || reason.len() > MAX_CLOSE_REASON_BYTES
        || !starts_lower
        || reason.ends_with('.')
    {
        return Err(format!("bad close reason {reason:?}"));
    }
    Ok(())
}

/// Describes one message in the expectation grammar of wire.md and re-encodes it with the
/// matching `encode_*` function (`None` when there is none).
///
/// The decoder keeps no detail of an Auth message, so for `auth-denied <reason>` the reason is
/// taken from `expected` and checked by re-encoding, which every such vector does.
fn describe(message: Message, expected: &str) -> Result<(String, Option<Bytes>), String> {
    Ok(match message {
        Message::SyncStep1(state_vector) => (
            format!("step1 sv={}", describe_state_vector(&state_vector)),
            Some(encode_sync_step1(&state_vector)),
        ),
        Message::SyncStep2(payload) => {
            let frame = encode_sync_step2(&payload.raw);
            (
                format!("step2 {}", describe_update(payload.update)?),
                Some(frame),
            )
        }
        Message::Update(payload) => {
            let frame = encode_sync_update(&payload.raw);
            (
                format!("update {}", describe_update(payload.update)?),
                Some(frame),
            )
        }
        Message::Awareness(payload) => {
            let frame = encode_awareness(&payload.entries);
            if frame != encode_awareness_raw(&payload.raw) {
                return Err("encode_awareness and encode_awareness_raw disagree".into());
            }
            let entries: String = payload
                .entries
                .iter()
                .map(|entry| format!(" {}:{}:{}", entry.client_id, entry.clock, entry.json))
                .collect();
            (format!("awareness{entries}"), Some(frame))
        }
        Message::QueryAwareness => ("query-awareness".into(), Some(encode_query_awareness())),
        Message::Auth => match expected.strip_prefix("auth-denied ") {
            Some(reason) => (expected.to_owned(), Some(encode_auth_denied(reason))),
            None => ("auth".into(), None),
        },
    })
}

/// `client:clock,...`, sorted by client id.
fn describe_state_vector(state_vector: &StateVector) -> String {
    let mut pairs: Vec<(u64, u32)> = state_vector
        .iter()
        .map(|(client, clock)| (client.get(), *clock))
        .collect();
    pairs.sort_unstable();
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(client, clock)| format!("{client}:{clock}"))
        .collect();
    pairs.join(",")
}

/// `sv=<state vector> t=<text>` of an empty document after applying `update`.
fn describe_update(update: yrs::Update) -> Result<String, String> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(update)
        .map_err(|error| format!("the update does not apply to an empty document: {error}"))?;
    let txn = doc.transact();
    Ok(format!(
        "sv={} t={}",
        describe_state_vector(&txn.state_vector()),
        text.get_string(&txn)
    ))
}
