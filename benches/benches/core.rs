//! Codec and apply costs of `tandem-core`, each beside a baseline from the same run:
//! decoding a frame vs copying its bytes; applying + re-encoding vs decoding alone.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tandem_benches::typing_updates;
use tandem_core::protocol::{decode_frame, encode_sync_update};
use tandem_core::{Limits, PeerId, SharedDoc};

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let frames: Vec<Bytes> = typing_updates(1000, "hello ")
        .iter()
        .map(|u| encode_sync_update(u))
        .collect();
    let n_bytes: usize = frames.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(n_bytes as u64));
    group.bench_function("baseline: copy frame bytes", |b| {
        b.iter(|| {
            for frame in &frames {
                black_box(frame.to_vec());
            }
        })
    });
    group.bench_function("decode_frame (update)", |b| {
        b.iter(|| {
            for frame in &frames {
                black_box(decode_frame(frame, &limits).expect("valid"));
            }
        })
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let limits = Limits::default();
    let frames: Vec<Bytes> = typing_updates(1000, "hello ")
        .iter()
        .map(|u| encode_sync_update(u))
        .collect();
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("baseline: decode only", |b| {
        b.iter(|| {
            for frame in &frames {
                black_box(decode_frame(frame, &limits).expect("valid"));
            }
        })
    });
    group.bench_function(
        "decode + SharedDoc::receive (apply, persist, broadcast frame)",
        |b| {
            b.iter(|| {
                let mut doc = SharedDoc::new(limits.clone());
                for frame in &frames {
                    for message in decode_frame(frame, &limits).expect("valid") {
                        black_box(doc.receive(PeerId(1), message, 0).expect("applies"));
                    }
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, codec, apply);
criterion_main!(benches);
