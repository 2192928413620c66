//! The test vectors of `protocol-spec/wire.md`, decoded and re-encoded with `tandem_core::protocol`.
//! A wrong vector, a codec change that breaks the wire, or a missing block fails here.

use bytes::{Bytes, BytesMut};
use tandem_core::Limits;
use tandem_core::protocol::{
    Message, decode_frame, encode_auth_denied, encode_awareness, encode_query_awareness,
    encode_sync_step1, encode_sync_step2, encode_sync_update,
};
use yrs::{Doc, GetString, Transact};

struct Vector {
    name: String,
    bytes: Bytes,
    expect: String,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol-spec/wire.md");
    let spec = std::fs::read_to_string(path).expect("protocol-spec/wire.md is readable");
    let block = spec
        .split("```vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("wire.md has a ```vectors block");
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            assert_eq!(fields.len(), 4, "vector line has four fields: {line:?}");
            let bytes: Vec<u8> = fields[2]
                .split_whitespace()
                .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
                .collect();
            assert!(matches!(fields[1], "c2s" | "s2c"), "direction of {line:?}");
            Vector {
                name: fields[0].into(),
                bytes: Bytes::from(bytes),
                expect: fields[3].into(),
            }
        })
        .collect()
}

fn text_of(update: yrs::Update) -> String {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(update)
        .expect("vector update applies");
    text.get_string(&doc.transact())
}

/// Describes a message in the expectation grammar, and re-encodes it.
fn describe(message: Message) -> (String, Bytes) {
    match message {
        Message::SyncStep1(sv) => {
            let mut pairs: Vec<(u64, u32)> = sv.iter().map(|(c, k)| (c.get(), *k)).collect();
            pairs.sort();
            let sv_text: Vec<String> = pairs.iter().map(|(c, k)| format!("{c}:{k}")).collect();
            (
                format!("step1 sv={}", sv_text.join(",")),
                encode_sync_step1(&sv),
            )
        }
        Message::SyncStep2(payload) => {
            let frame = encode_sync_step2(&payload.raw);
            (format!("step2 t={}", text_of(payload.update)), frame)
        }
        Message::Update(payload) => {
            let frame = encode_sync_update(&payload.raw);
            (format!("update t={}", text_of(payload.update)), frame)
        }
        Message::Awareness(payload) => {
            let text: Vec<String> = payload
                .entries
                .iter()
                .map(|e| format!("{}:{}:{}", e.client_id, e.clock, e.json))
                .collect();
            (
                format!("awareness {}", text.join(",")),
                encode_awareness(&payload.entries),
            )
        }
        Message::QueryAwareness => ("query-awareness".into(), encode_query_awareness()),
        Message::Auth => ("auth".into(), Bytes::new()),
    }
}

#[test]
fn every_vector_in_the_spec_decodes_and_reencodes_as_documented() {
    let vectors = vectors();
    assert!(
        vectors.len() >= 18,
        "expected at least 18 vectors, found {}",
        vectors.len()
    );
    let limits = Limits::default();
    for vector in vectors {
        if let Some(reason) = vector.expect.strip_prefix("auth-denied ") {
            assert_eq!(encode_auth_denied(reason), vector.bytes, "{}", vector.name);
            let decoded = decode_frame(&vector.bytes, &limits).expect("auth decodes");
            assert!(
                matches!(decoded.as_slice(), [Message::Auth]),
                "{}",
                vector.name
            );
            continue;
        }
        match decode_frame(&vector.bytes, &limits) {
            Ok(messages) => {
                let mut described = Vec::new();
                let mut reencoded = BytesMut::new();
                for message in messages {
                    let (text, frame) = describe(message);
                    described.push(text);
                    reencoded.extend_from_slice(&frame);
                }
                assert_eq!(described.join(" ; "), vector.expect, "{}", vector.name);
                assert_eq!(
                    reencoded.freeze(),
                    vector.bytes,
                    "{} re-encodes",
                    vector.name
                );
            }
            Err(error) => {
                assert_eq!(format!("error {error:?}"), vector.expect, "{}", vector.name);
            }
        }
    }
}
