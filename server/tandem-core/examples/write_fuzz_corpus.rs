//! Writes the seed corpus of the fuzz targets into `server/tandem-core/fuzz/corpus/`: real frames
//! (sync steps, updates of every shared type, awareness as y-websocket sends it) for
//! `decode_frame`, and op sequences in the layout of `tandem_core::fuzzing::decode_ops` for
//! `apply_update`. Every document is made with fixed client ids, so the output is the same on
//! every run; the files are checked in, and `fuzzing::tests` runs every one of them.
//!
//! Inputs the fuzzer found crashing are checked in beside these as `regression_*.bin` (copied
//! from `fuzz/artifacts/`); this program rewrites its own seeds and leaves those alone.
//!
//! Usage: `cargo run -p tandem-core --example write_fuzz_corpus`.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tandem_core::fuzzing::{Op, encode_ops, seed_updates};
use tandem_core::protocol::{
    AwarenessEntry, encode_auth_denied, encode_awareness, encode_query_awareness,
    encode_sync_step1, encode_sync_step2, encode_sync_update,
};
use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, Map, MapPrelim, Out, ReadTxn, StateVector, Text, Transact,
    Update, WriteTxn,
};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let frames = decode_frame_seeds();
    let ops = apply_update_seeds();
    write_all(&root.join("decode_frame"), &frames)?;
    write_all(&root.join("apply_update"), &ops)?;
    println!(
        "wrote {} decode_frame and {} apply_update seeds under {}",
        frames.len(),
        ops.len(),
        root.display()
    );
    Ok(())
}

fn write_all(dir: &Path, seeds: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("{name}.bin")), bytes)?;
    }
    Ok(())
}

/// The whole state of `doc` as one v1 update.
fn full_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("a yrs update");
    doc.transact_mut().apply_update(update).expect("applies");
}

/// A doc that starts from the fuzz targets' seed document, as client `client_id`.
fn on_seed(client_id: u64) -> Doc {
    let doc = Doc::with_client_id(client_id);
    for update in seed_updates() {
        apply(&doc, &update);
    }
    doc
}

fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut)) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    f(&mut txn);
    txn.encode_update_v1()
}

fn awareness(entries: &[(u64, u32, &str)]) -> Bytes {
    let entries: Vec<AwarenessEntry> = entries
        .iter()
        .map(|&(client_id, clock, json)| AwarenessEntry {
            client_id,
            clock,
            json: json.into(),
            user: None,
        })
        .collect();
    encode_awareness(&entries)
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out.to_vec()
}

fn decode_frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let typist = on_seed(2_001);
    let text = typist.get_or_insert_text("t");
    let insert = edit(&typist, |txn| text.insert(txn, 5, ", dear"));
    let delete = edit(&typist, |txn| text.remove_range(txn, 0, 2));
    let unicode = edit(&typist, |txn| text.insert(txn, 1, "é漢🙂"));
    let formatted = edit(&typist, |txn| {
        let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
        text.insert_with_attributes(txn, 0, "bold", bold);
    });
    let map = typist.get_or_insert_map("m");
    let nested = edit(&typist, |txn| {
        if let Some(Out::YMap(inner)) = map.get(txn, "nested") {
            inner.insert(txn, "inner", "value");
        }
        map.insert(txn, "list", ArrayPrelim::from([1, 2, 3]));
    });
    let array = typist.get_or_insert_array("a");
    let array_edit = edit(&typist, |txn| {
        array.insert(txn, 0, MapPrelim::from([("k", "v")]));
        array.push_back(txn, 42);
    });
    // A chain of two updates from a fresh client: the second alone waits for the first.
    let fresh = Doc::with_client_id(2_002);
    let fresh_text = fresh.get_or_insert_text("t");
    let _first = edit(&fresh, |txn| fresh_text.insert(txn, 0, "a"));
    let second = edit(&fresh, |txn| fresh_text.insert(txn, 1, "b"));

    let seed_doc = on_seed(2_003);
    let cursor = r##"{"user":{"name":"Ada","color":"#30bced","colorLight":"#30bced33"},"cursor":{"anchor":{"type":{"client":1001,"clock":0},"tname":null,"item":{"client":1001,"clock":3},"assoc":0},"head":{"type":{"client":1001,"clock":0},"tname":null,"item":{"client":1001,"clock":3},"assoc":0}}}"##;
    vec![
        (
            "sync_step1_empty",
            encode_sync_step1(&StateVector::default()).to_vec(),
        ),
        (
            "sync_step1_seed_doc",
            encode_sync_step1(&seed_doc.transact().state_vector()).to_vec(),
        ),
        (
            "sync_step2_empty_update",
            encode_sync_step2(&[0, 0]).to_vec(),
        ),
        (
            "sync_step2_full_doc",
            encode_sync_step2(&full_state(&typist)).to_vec(),
        ),
        ("update_text_insert", encode_sync_update(&insert).to_vec()),
        ("update_text_delete", encode_sync_update(&delete).to_vec()),
        ("update_text_unicode", encode_sync_update(&unicode).to_vec()),
        (
            "update_text_formatted",
            encode_sync_update(&formatted).to_vec(),
        ),
        ("update_map_nested", encode_sync_update(&nested).to_vec()),
        ("update_array", encode_sync_update(&array_edit).to_vec()),
        (
            "update_missing_dependency",
            encode_sync_update(&second).to_vec(),
        ),
        (
            "awareness_codemirror_cursor",
            awareness(&[(3_631_934_587, 7, cursor)]).to_vec(),
        ),
        (
            "awareness_two_states",
            awareness(&[(1, 3, r#"{"user":{"name":"Ada"}}"#), (300, 1, "{}")]).to_vec(),
        ),
        ("awareness_removal", awareness(&[(1, 4, "null")]).to_vec()),
        ("query_awareness", encode_query_awareness().to_vec()),
        ("auth_denied", encode_auth_denied("read-only").to_vec()),
        (
            "several_messages",
            concat(&[
                encode_sync_update(&insert),
                encode_query_awareness(),
                encode_sync_step1(&StateVector::default()),
                awareness(&[(5, 1, r#"{"user":{"name":"Bo"}}"#)]),
            ]),
        ),
    ]
}

/// Client 7's first item is a string in root text `t`; client 8 writes into what it believes is
/// a nested map with that id. Applying the second after the first makes yrs fail half-way
/// (`InvalidParent`): the doc is poisoned and must reload.
fn invalid_parent_pair() -> (Vec<u8>, Vec<u8>) {
    let honest = Doc::with_client_id(7);
    let honest_text = honest.get_or_insert_text("t");
    let honest_update = edit(&honest, |txn| honest_text.insert(txn, 0, "x"));
    let other = Doc::with_client_id(7);
    {
        let mut txn = other.transact_mut();
        let root = txn.get_or_insert_map("m2");
        root.insert(&mut txn, "k", MapPrelim::default());
    }
    let forger = Doc::with_client_id(8);
    apply(&forger, &full_state(&other));
    let hostile = {
        let mut txn = forger.transact_mut();
        let root = txn.get_or_insert_map("m2");
        let Some(Out::YMap(nested)) = root.get(&txn, "k") else {
            panic!("nested map")
        };
        nested.insert(&mut txn, "evil", 1);
        txn.encode_update_v1()
    };
    (honest_update, hostile)
}

fn apply_update_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let edit_op = |peer, kind, pos, len| Op::Edit {
        peer,
        kind,
        pos,
        len,
    };
    let typing: Vec<Op> = (0..24u8)
        .flat_map(|i| {
            let peer = i % 3;
            let mut ops = vec![edit_op(peer, 0, i.wrapping_mul(7), i)];
            if i % 4 == 3 {
                ops.push(Op::Sync { peer });
            }
            ops
        })
        .collect();
    let every_kind: Vec<Op> = (0..12u8)
        .flat_map(|i| {
            [
                edit_op(i % 4, i, i.wrapping_mul(13), 3),
                Op::Sync { peer: (i + 1) % 4 },
            ]
        })
        .chain([Op::Inspect { peer: 0 }, Op::Inspect { peer: 3 }])
        .collect();
    let mutated: Vec<Op> = (0..8u8)
        .flat_map(|i| {
            [
                edit_op(i % 2, i % 6, i, 5),
                Op::Mutate {
                    peer: i % 2,
                    index: u16::from(i) * 3 + 1,
                    value: 0xff - i,
                },
            ]
        })
        .chain([Op::Sync { peer: 0 }, Op::Inspect { peer: 1 }])
        .collect();

    let chain = Doc::with_client_id(3_001);
    let chain_text = chain.get_or_insert_text("t");
    let first = edit(&chain, |txn| chain_text.insert(txn, 0, "first "));
    let second = edit(&chain, |txn| chain_text.insert(txn, 6, "second"));
    let raw_updates = vec![
        Op::Update {
            peer: 0,
            bytes: second.clone(),
        },
        Op::Inspect { peer: 0 },
        Op::Update {
            peer: 1,
            bytes: first,
        },
        Op::Sync { peer: 2 },
        Op::Update {
            peer: 1,
            bytes: second,
        },
        Op::Inspect { peer: 2 },
    ];

    let frames = vec![
        Op::Frame {
            peer: 0,
            bytes: awareness(&[(11, 1, r#"{"user":{"name":"Ada"}}"#)]).to_vec(),
        },
        Op::Frame {
            peer: 1,
            bytes: awareness(&[(11, 9, r#"{"user":{"name":"Mallory"}}"#)]).to_vec(),
        },
        Op::Frame {
            peer: 1,
            bytes: concat(&[
                encode_query_awareness(),
                encode_sync_step1(&StateVector::default()),
            ]),
        },
        Op::Leave { peer: 0 },
        Op::Frame {
            peer: 2,
            bytes: awareness(&[(12, 1, "{}"), (13, 1, "{}"), (14, 1, "null")]).to_vec(),
        },
        edit_op(2, 0, 1, 1),
        Op::Leave { peer: 2 },
    ];

    let big = Doc::with_client_id(3_002);
    let big_text = big.get_or_insert_text("big");
    let big_first = edit(&big, |txn| big_text.insert(txn, 0, &"a".repeat(2_500)));
    let big_second = edit(&big, |txn| big_text.insert(txn, 0, &"b".repeat(2_500)));
    let doc_size = vec![
        Op::Update {
            peer: 0,
            bytes: big_first,
        },
        Op::Update {
            peer: 0,
            bytes: big_second,
        },
        edit_op(1, 0, 0, 7),
        Op::Sync { peer: 1 },
    ];

    let (honest, hostile) = invalid_parent_pair();
    let poison = vec![
        Op::Update {
            peer: 0,
            bytes: honest,
        },
        edit_op(1, 0, 0, 3),
        Op::Update {
            peer: 2,
            bytes: hostile,
        },
        edit_op(1, 0, 2, 3),
        Op::Sync { peer: 3 },
        Op::Inspect { peer: 3 },
    ];

    vec![
        ("three_peers_typing", encode_ops(&typing)),
        ("every_edit_kind", encode_ops(&every_kind)),
        ("mutated_edits", encode_ops(&mutated)),
        ("raw_updates_out_of_order", encode_ops(&raw_updates)),
        ("awareness_frames_and_leaves", encode_ops(&frames)),
        ("doc_size_limit", encode_ops(&doc_size)),
        ("invalid_parent_poisons_and_reloads", encode_ops(&poison)),
    ]
}
