//! Format-version guard: a database written by format version 1, committed in
//! `tests/fixtures/format-v1.redb`, must still open and read back exactly. A change to the
//! on-disk layout that breaks this needs a new `FORMAT_VERSION` and a migration
//! (`protocol-spec/storage.md`). Regenerate with `TANDEM_REGEN_FIXTURES=1 cargo test -p tandem-store`
//! only when adding a fixture for a new version.

use std::path::PathBuf;

use tandem_store::{FORMAT_VERSION, Store, WriteOp};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1.redb")
}

fn write_fixture_content(store: &Store) {
    let ops = [
        WriteOp::Append {
            doc: "team/notes.md",
            seq: 1,
            update: b"first",
            author: None,
        },
        WriteOp::Append {
            doc: "team/notes.md",
            seq: 2,
            update: b"second",
            author: None,
        },
        WriteOp::Append {
            doc: "team/notes.md",
            seq: 3,
            update: b"third",
            author: None,
        },
        WriteOp::Compact {
            doc: "team/notes.md",
            upto_seq: 2,
            snapshot: b"snapshot-1-2",
        },
        WriteOp::Append {
            doc: "a",
            seq: 1,
            update: b"only a",
            author: None,
        },
    ];
    store
        .commit(&ops, 1_700_000_000_000, true)
        .expect("commit fixture content");
}

#[test]
fn the_committed_format_v1_file_still_reads_back() {
    if std::env::var_os("TANDEM_REGEN_FIXTURES").is_some() {
        let _ = std::fs::remove_file(fixture_path());
        write_fixture_content(&Store::open(&fixture_path()).expect("create fixture"));
    }
    assert_eq!(
        FORMAT_VERSION, 1,
        "a new format version needs its own fixture and a migration"
    );
    // Work on a copy: opening may touch the file, and the fixture must stay as committed.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("copy.redb");
    std::fs::copy(fixture_path(), &copy).expect("fixture file is committed");
    let store = Store::open(&copy).expect("format v1 file opens");
    let notes = store.load_doc("team/notes.md").expect("load");
    assert_eq!(notes.snapshot.as_deref(), Some(&b"snapshot-1-2"[..]));
    assert_eq!(notes.updates, vec![b"third".to_vec()]);
    assert_eq!(notes.last_seq, 3);
    assert_eq!(
        store.load_doc("a").expect("load").updates,
        vec![b"only a".to_vec()]
    );
    let names: Vec<String> = store
        .list_docs()
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["a".to_string(), "team/notes.md".to_string()]);
    assert_eq!(
        store.doc_meta("a").expect("meta").map(|m| m.updated_ms),
        Some(1_700_000_000_000)
    );
}

/// The `users` table came after the fixture was written: the file has none, reads as having no
/// accounts, and takes one without a format change.
#[test]
fn the_format_v1_file_from_before_accounts_takes_accounts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("copy.redb");
    std::fs::copy(fixture_path(), &copy).expect("fixture file is committed");
    let store = Store::open(&copy).expect("format v1 file opens");
    assert_eq!(store.count_users().expect("count"), 0);
    let user = tandem_store::UserRecord {
        sub: "ada".into(),
        name: "Ada".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        docs: [("team/*".to_string(), "write".to_string())].into(),
        admin: false,
        created_ms: 1,
    };
    store.put_user(&user).expect("put");
    drop(store);
    let store = Store::open(&copy).expect("reopens");
    assert_eq!(store.get_user("ada").expect("get"), Some(user));
    assert_eq!(store.load_doc("a").expect("docs intact").last_seq, 1);
}
