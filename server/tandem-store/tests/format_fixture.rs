//! Format-version guard: a database written by each format version, committed in
//! `tests/fixtures/format-v<N>.redb`, must still open and read back exactly; an older version is
//! migrated on open (`protocol-spec/storage.md`). A change to the on-disk layout that breaks this
//! needs a new `FORMAT_VERSION`, a migration and a new fixture. Regenerate the current version's
//! fixture with `TANDEM_REGEN_FIXTURES=1 cargo test -p tandem-store --test format_fixture` only
//! when adding it; the fixtures of older versions were written by older builds and stay as they are.

use std::path::PathBuf;

use tandem_store::{FORMAT_VERSION, Store, WriteOp};

fn fixture_path(version: u64) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-v{version}.redb"))
}

/// A copy of the committed fixture of `version`: opening may touch the file, and the fixture
/// must stay as committed.
fn copy_of_fixture(version: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("copy.redb");
    std::fs::copy(fixture_path(version), &copy).expect("fixture file is committed");
    (dir, copy)
}

/// The content both fixtures hold (the v1 file was written with the v1 build's `commit`).
fn assert_fixture_content(store: &Store) {
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
    let meta = store.doc_meta("team/notes.md").expect("meta").expect("row");
    assert_eq!((meta.n_log_entries, meta.last_seq), (1, 3));
}

fn ada() -> tandem_store::UserRecord {
    tandem_store::UserRecord {
        sub: "ada".into(),
        name: "Ada".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        docs: [("team/*".to_string(), "write".to_string())].into(),
        admin: false,
        created_ms: 1,
        app_passwords: Vec::new(),
    }
}

/// A version of `team/notes.md`, written into the v2 fixture beside the v1 content.
fn named_version() -> tandem_store::VersionRecord {
    tandem_store::VersionRecord {
        id: 1,
        kind: tandem_store::VersionKind::Named,
        name: Some("draft".into()),
        author: tandem_store::Author {
            sub: Some("ada".into()),
            name: "Ada".into(),
        },
        created_ms: 1_700_000_000_000,
        seq: 3,
        size_bytes: 5,
        authors: Vec::new(),
    }
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

/// Format version 1 stored values without checksums and the `docs` row as a redb tuple. The
/// committed v1 file is migrated to version 2 on open, in one transaction, and reads back the
/// same; the migrated file opens again without migrating and takes new writes.
#[test]
fn the_committed_format_v1_file_migrates_to_v2_and_reads_back() {
    assert_eq!(
        FORMAT_VERSION, 2,
        "a new format version needs its own fixture and a migration"
    );
    let (_dir, copy) = copy_of_fixture(1);
    let store = Store::open(&copy).expect("format v1 file opens");
    assert_eq!(store.migrated_from(), Some(1));
    assert_fixture_content(&store);
    drop(store);
    let store = Store::open(&copy).expect("migrated file reopens");
    assert_eq!(store.migrated_from(), None);
    assert_fixture_content(&store);
    store
        .commit(
            &[WriteOp::Append {
                doc: "a",
                seq: 2,
                update: b"after",
                author: None,
            }],
            1_700_000_000_001,
            true,
        )
        .expect("write after migration");
    assert_eq!(
        store.load_doc("a").expect("load").updates,
        vec![b"only a".to_vec(), b"after".to_vec()]
    );
}

/// The `users` table came after the v1 fixture was written: the file has none, reads as having
/// no accounts after the migration, and takes one.
#[test]
fn the_format_v1_file_from_before_accounts_takes_accounts() {
    let (_dir, copy) = copy_of_fixture(1);
    let store = Store::open(&copy).expect("format v1 file opens");
    assert_eq!(store.count_users().expect("count"), 0);
    store.put_user(&ada()).expect("put");
    drop(store);
    let store = Store::open(&copy).expect("reopens");
    assert_eq!(store.get_user("ada").expect("get"), Some(ada()));
    assert_eq!(store.load_doc("a").expect("docs intact").last_seq, 1);
}

#[test]
fn the_committed_format_v2_file_still_reads_back() {
    if std::env::var_os("TANDEM_REGEN_FIXTURES").is_some() {
        let _ = std::fs::remove_file(fixture_path(2));
        let store = Store::open(&fixture_path(2)).expect("create fixture");
        write_fixture_content(&store);
        store
            .commit(
                &[WriteOp::Version {
                    doc: "team/notes.md",
                    record: &named_version(),
                    state: b"state",
                    max_kept: 10,
                }],
                1_700_000_000_000,
                true,
            )
            .expect("commit fixture version");
        store.put_user(&ada()).expect("put fixture user");
    }
    let (_dir, copy) = copy_of_fixture(2);
    let store = Store::open(&copy).expect("format v2 file opens");
    assert_eq!(store.migrated_from(), None);
    assert_fixture_content(&store);
    assert_eq!(
        store.version("team/notes.md", 1).expect("version"),
        Some((named_version(), b"state".to_vec()))
    );
    assert_eq!(store.get_user("ada").expect("get"), Some(ada()));
}
