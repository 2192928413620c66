//! The commit path of `tandem-store`: what group commit buys.
//!
//! All variants write the same 256 typing-sized updates to a real redb file. The baseline is one
//! fsync'd transaction per update (what a server without group commit pays); the others group
//! updates into one transaction, with and without fsync. Read the results as ratios.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tandem_benches::typing_updates;
use tandem_store::{Store, WriteOp};

const N_UPDATES: usize = 256;

fn commit(c: &mut Criterion) {
    let updates = typing_updates(N_UPDATES, "hello ");
    let mut group = c.benchmark_group("commit");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N_UPDATES as u64));
    let fresh = || {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("bench.redb")).expect("open");
        (dir, store)
    };
    group.bench_function("baseline: one fsync'd commit per update", |b| {
        b.iter_batched(
            fresh,
            |(_dir, store)| {
                for (i, update) in updates.iter().enumerate() {
                    let op = WriteOp::Append {
                        doc: "d",
                        seq: i as u64 + 1,
                        update,
                        author: None,
                    };
                    store.commit(&[op], 0, true).expect("commit");
                }
            },
            BatchSize::PerIteration,
        )
    });
    for group_size in [16usize, 256] {
        for fsync in [true, false] {
            let name = format!("groups of {group_size}, fsync={fsync}");
            group.bench_function(name, |b| {
                b.iter_batched(
                    fresh,
                    |(_dir, store)| {
                        for (chunk_idx, chunk) in updates.chunks(group_size).enumerate() {
                            let ops: Vec<WriteOp<'_>> = chunk
                                .iter()
                                .enumerate()
                                .map(|(i, update)| WriteOp::Append {
                                    doc: "d",
                                    seq: (chunk_idx * group_size + i) as u64 + 1,
                                    update,
                                    author: None,
                                })
                                .collect();
                            store.commit(&ops, 0, fsync).expect("commit");
                        }
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    // What recording who sent each update costs the writer (history): the same groups of 256
    // without fsync, each update with its author. One author is a typing burst (one row per
    // group); two alternating authors are the worst case (one row per update).
    let authors = [
        tandem_store::Author {
            sub: Some("ada".into()),
            name: "Ada".into(),
        }
        .encode(),
        tandem_store::Author {
            sub: Some("bob".into()),
            name: "Bob".into(),
        }
        .encode(),
    ];
    for n_authors in [1usize, 2] {
        let name = format!("groups of 256, fsync=false, {n_authors} author(s)");
        group.bench_function(name, |b| {
            b.iter_batched(
                fresh,
                |(_dir, store)| {
                    for (chunk_idx, chunk) in updates.chunks(256).enumerate() {
                        let ops: Vec<WriteOp<'_>> = chunk
                            .iter()
                            .enumerate()
                            .map(|(i, update)| WriteOp::Append {
                                doc: "d",
                                seq: (chunk_idx * 256 + i) as u64 + 1,
                                update,
                                author: Some(&authors[i % n_authors]),
                            })
                            .collect();
                        store.commit(&ops, 0, false).expect("commit");
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
