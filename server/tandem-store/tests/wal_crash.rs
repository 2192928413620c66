//! A process that dies right after its commits returned: every acknowledged append is there when
//! the file is opened again. Appends go to redb without fsync and to the write-ahead log with it
//! (`wal.rs`), so only the log's replay can bring back the ones after the last checkpoint.
//!
//! The dying process is this test binary run again with `TANDEM_WAL_CRASH_DIR` set: it commits,
//! prints how far it got and aborts (no destructors, no redb close, as with `kill -9`).

use std::path::Path;
use std::process::Command;

use tandem_store::{Author, Store, WriteOp};

const CHILD_ENV: &str = "TANDEM_WAL_CRASH_DIR";

fn update(seq: u64) -> Vec<u8> {
    format!("update {seq} ")
        .repeat(1 + (seq as usize % 7))
        .into_bytes()
}

/// The child's part: `n` appends to two docs, some with an author, a durable compaction in the
/// middle (a checkpoint), then an abort without closing anything.
fn crash_after_commits(dir: &Path, n: u64) -> ! {
    let store = Store::open(&dir.join("tandem.redb")).expect("open");
    let alice = Author {
        sub: Some("alice".into()),
        name: "Alice".into(),
    }
    .encode();
    for seq in 1..=n {
        let a = update(seq);
        let b = update(seq + 1000);
        let ops = [
            WriteOp::Append {
                doc: "team/a.md",
                seq,
                update: &a,
                author: (seq % 2 == 0).then_some(alice.as_slice()),
            },
            WriteOp::Append {
                doc: "team/b.md",
                seq,
                update: &b,
                author: None,
            },
        ];
        store.commit(&ops, 1_000 + seq, true).expect("commit");
        if seq == n / 2 {
            store
                .commit(
                    &[WriteOp::Compact {
                        doc: "team/b.md",
                        upto_seq: seq,
                        snapshot: b"snapshot of b",
                    }],
                    1_000 + seq,
                    true,
                )
                .expect("compact");
        }
    }
    println!("committed {n}");
    std::process::abort();
}

#[test]
fn wal_crash_child() {
    // Does nothing unless run by the test below as the process that dies.
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        crash_after_commits(Path::new(&dir), 40);
    }
}

/// Runs [`wal_crash_child`] in a process of its own on `dir` and waits for it to die.
fn run_crashing_child(dir: &Path) -> std::process::Output {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "wal_crash_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, dir)
        .output()
        .expect("run the child")
}

#[test]
fn acknowledged_appends_survive_an_abort_through_the_write_ahead_log() {
    let dir = tempfile::tempdir().expect("dir");
    let output = run_crashing_child(dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("committed 40"),
        "the child committed everything before it died: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the child aborted");
    // The log holds what the last checkpoint does not cover.
    let wal = std::fs::metadata(dir.path().join("tandem.redb.wal")).expect("the log exists");
    assert!(wal.len() > 0);

    let store = Store::open(&dir.path().join("tandem.redb")).expect("reopen");
    let a = store.load_doc("team/a.md").expect("load a");
    assert_eq!(a.last_seq, 40);
    let expected: Vec<Vec<u8>> = (1..=40).map(update).collect();
    assert_eq!(a.updates, expected, "every update of a, in order");
    let b = store.load_doc("team/b.md").expect("load b");
    assert_eq!(b.last_seq, 40);
    assert_eq!(b.snapshot.as_deref(), Some(&b"snapshot of b"[..]));
    let expected: Vec<Vec<u8>> = (21..=40).map(|seq| update(seq + 1000)).collect();
    assert_eq!(b.updates, expected, "b's updates after its snapshot");
    let authors = store.update_authors("team/a.md", 41, 100).expect("authors");
    assert_eq!(
        authors.len(),
        20,
        "every authored update's author: {authors:?}"
    );
    assert!(
        authors
            .iter()
            .all(|a| a.seq % 2 == 0 && a.author.name == "Alice")
    );

    // Replayed once: opening again changes nothing, and appending goes on from seq 41.
    drop(store);
    let store = Store::open(&dir.path().join("tandem.redb")).expect("reopen again");
    assert_eq!(store.load_doc("team/a.md").expect("load").updates.len(), 40);
    let next = update(41);
    store
        .commit(
            &[WriteOp::Append {
                doc: "team/a.md",
                seq: 41,
                update: &next,
                author: None,
            }],
            2_000,
            true,
        )
        .expect("append after the replay");
}

#[test]
fn a_log_left_without_its_database_is_not_replayed_into_a_new_one() {
    let dir = tempfile::tempdir().expect("dir");
    let output = run_crashing_child(dir.path());
    assert!(String::from_utf8_lossy(&output.stdout).contains("committed 40"));
    // The operator deletes the database to start over; the log stays behind.
    std::fs::remove_file(dir.path().join("tandem.redb")).expect("remove the database");
    assert!(dir.path().join("tandem.redb.wal").exists());

    let store = Store::open(&dir.path().join("tandem.redb")).expect("open a new store");
    assert!(
        store.list_docs().expect("list").is_empty(),
        "nothing of the old store came back"
    );
    assert_eq!(store.load_doc("team/a.md").expect("load").last_seq, 0);
}

#[test]
fn a_store_closed_in_order_holds_every_append_in_the_database_file_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tandem.redb");
    {
        let store = Store::open(&path).expect("open");
        for seq in 1..=5 {
            let update = update(seq);
            store
                .commit(
                    &[WriteOp::Append {
                        doc: "d",
                        seq,
                        update: &update,
                        author: None,
                    }],
                    seq,
                    true,
                )
                .expect("commit");
        }
    }
    // Without the log, the database file alone has them (what `tandem check` reads).
    std::fs::remove_file(dir.path().join("tandem.redb.wal")).expect("remove the log");
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.load_doc("d").expect("load").updates.len(), 5);
}
