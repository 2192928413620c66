//! Disk full is a state, not a death (issue 17).
//!
//! The bug: with the data directory on a full disk, uploads answered 500 and edits 503, and after
//! space was freed every write kept failing for as long as any document stayed open, because
//! redb needs reopening after an I/O error and was reopened only when no document was open. A
//! commit that reported an error had in one run still reached the disk, and the doc actor, which
//! had applied the update in memory, submitted it again ("append of seq 4 after seq 4").
//!
//! The fix: a failed commit makes the store read-only (logged once) and reopens the file at once;
//! refused updates are rolled back and dropped from memory; WebSocket senders get 1013 "storage
//! full, retry later" and HTTP writes 507 `insufficient_storage`; reads and deletes keep working
//! (a reserve file is released for them); writes resume by themselves once space returns.
//!
//! Two more tests damage a doc's record under the running server: a doc found damaged by a
//! commit or by the reload after a refused commit is refused as damaged, and alone.
//!
//! The tests mount a small tmpfs for the data directory, so it needs root (CI runs as root); it
//! fails loudly if the mount fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem_tests::{HttpResponse, Peer, TestServer, WAIT};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact};

/// Size of the tmpfs: the 4 MiB reserve, redb's file and a couple of dozen 1 MiB files.
const TMPFS_SIZE: &str = "32m";
/// Size of each file that fills the disk.
const FILL_FILE_BYTES: usize = 1024 * 1024;
/// Upper bound on the files it takes to fill the tmpfs (a runaway loop fails instead).
const MAX_FILL_FILES: usize = 64;

/// A tmpfs mounted for the length of a test, unmounted on drop (after the server is gone).
struct Tmpfs {
    dir: PathBuf,
    /// Holds the mount point; removed after the unmount.
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs at {} failed ({status}); this test needs root",
            dir.display()
        );
        Tmpfs {
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = |lazy: bool| {
            let mut umount = Command::new("umount");
            if lazy {
                // A failed test may leave the aborted server's files open for a moment.
                umount.arg("--lazy");
            }
            matches!(umount.arg(&self.dir).status(), Ok(status) if status.success())
        };
        if !unmounted(false) && !unmounted(true) {
            eprintln!("unmounting {} failed", self.dir.display());
        }
    }
}

/// 1 MiB that no other fill file shares (blobs are stored once per content).
fn fill_bytes(index: usize) -> Vec<u8> {
    let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..FILL_FILE_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A v1 update appending `text` to root text `t` of `doc`.
fn append_update(doc: &Doc, text: &str) -> Vec<u8> {
    let root = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = root.len(&txn);
    root.insert(&mut txn, len, text);
    txn.encode_update_v1()
}

async fn post_update(server: &TestServer, doc: &str, update: &[u8]) -> HttpResponse {
    server
        .request("POST", &format!("/api/docs/{doc}/update"), &[], update)
        .await
}

async fn store_health(server: &TestServer) -> serde_json::Value {
    let health = server.request("GET", "/healthz", &[], b"").await;
    assert_eq!(
        health.status, 200,
        "/healthz answers 200 whatever the store"
    );
    health.json()["store"].clone()
}

/// The text of root `t` of `doc` as the server serves it.
async fn stored_text(server: &TestServer, doc: &str) -> String {
    let fetched = server.fetch_doc(doc).await;
    let root = fetched.get_or_insert_text("t");
    root.get_string(&fetched.transact())
}

fn reserve_len(data_dir: &Path) -> Option<u64> {
    std::fs::metadata(data_dir.join("reserve"))
        .ok()
        .map(|meta| meta.len())
}

#[tokio::test]
async fn a_full_disk_refuses_writes_cleanly_and_recovers_without_a_restart() {
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let data_dir = tempfile::tempdir_in(&tmpfs.dir).expect("data dir on the tmpfs");
    let mut server = TestServer::start_in(data_dir, |_| {}).await;
    server.wait_healthy().await;
    assert_eq!(
        store_health(&server).await,
        serde_json::json!({ "writable": true, "reason": null })
    );
    assert_eq!(reserve_len(server.data_dir()), Some(4 * 1024 * 1024));

    // A browser-like peer keeps a healthy doc open the whole time.
    let mut healthy = Peer::connect(server.addr, "healthy").await;
    healthy.append_text("steady").await;
    let mut watcher = Peer::connect(server.addr, "healthy").await;
    watcher.wait_text(|text| text == "steady").await;

    // Edits acknowledged before the disk fills.
    let editor = Doc::new();
    let acked = append_update(&editor, "kept;");
    assert_eq!(post_update(&server, "notes", &acked).await.status, 200);

    // Fill the disk with uploads until one is refused.
    let mut stored_files = Vec::new();
    let refused_upload = loop {
        let index = stored_files.len();
        assert!(index < MAX_FILL_FILES, "the tmpfs never filled up");
        let res = server
            .request(
                "PUT",
                &format!("/api/files/fill/{index}.bin"),
                &[],
                &fill_bytes(index),
            )
            .await;
        match res.status {
            200 | 201 => stored_files.push(index),
            _ => break res,
        }
    };
    assert_eq!(refused_upload.status, 507, "{}", refused_upload.text());
    assert_eq!(refused_upload.json()["error"], "insufficient_storage");
    assert!(stored_files.len() >= 10, "{} files fit", stored_files.len());

    let health = store_health(&server).await;
    assert_eq!(
        health,
        serde_json::json!({ "writable": false, "reason": "disk full" })
    );
    assert_eq!(reserve_len(server.data_dir()), None, "reserve released");

    // A WebSocket writer is closed with 1013; its edit is refused, not stored.
    let mut writer = Peer::connect(server.addr, "notes").await;
    assert_eq!(writer.text(), "kept;");
    writer.append_text("refused-ws;").await;
    assert_eq!(
        writer.expect_close().await,
        (1013, "storage full, retry later".to_owned())
    );
    // An HTTP edit gets 507 (from a client that gives up: the editor's later edits must not
    // depend on it).
    let quitter = Doc::new();
    quitter
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&acked).expect("v1"))
        .expect("applies");
    let refused_edit = append_update(&quitter, "refused-http;");
    let res = post_update(&server, "notes", &refused_edit).await;
    assert_eq!(res.status, 507, "{}", res.text());
    assert_eq!(res.json()["error"], "insufficient_storage");

    // Reads keep working: the doc (without what was refused), a new reader, files, listings.
    assert_eq!(stored_text(&server, "notes").await, "kept;");
    let reader = Peer::connect(server.addr, "notes").await;
    assert_eq!(reader.text(), "kept;");
    let download = server
        .request("GET", "/api/files/fill/0.bin", &[], b"")
        .await;
    assert_eq!(download.status, 200);
    assert!(download.body == fill_bytes(0), "file 0 intact");
    assert_eq!(
        server.request("GET", "/api/files", &[], b"").await.status,
        200
    );
    assert_eq!(
        server.request("GET", "/api/docs", &[], b"").await.status,
        200
    );

    // Free space through the API: deletes work on the full disk.
    let (deleted, kept) = stored_files.split_at(stored_files.len() - 2);
    for index in deleted {
        let res = server
            .request("DELETE", &format!("/api/files/fill/{index}.bin"), &[], b"")
            .await;
        assert_eq!(res.status, 204, "delete {index}: {}", res.text());
    }

    // Writes resume by themselves within seconds: an upload, then edits.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = fill_bytes(1000);
    loop {
        let res = server
            .request("PUT", "/api/files/after.bin", &[], &after)
            .await;
        if matches!(res.status, 200 | 201) {
            break;
        }
        assert_eq!(res.status, 507, "{}", res.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store_health(&server).await,
        serde_json::json!({ "writable": true, "reason": null })
    );
    assert_eq!(reserve_len(server.data_dir()), Some(4 * 1024 * 1024));
    let resumed = append_update(&editor, "resumed;");
    let res = post_update(&server, "notes", &resumed).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // The healthy doc's peers were never closed: an edit still reaches the watcher.
    healthy.append_text(" again").await;
    watcher.wait_text(|text| text == "steady again").await;
    assert_eq!(healthy.closed, None);
    // The refused writer reconnects and resends its edits; they are stored now.
    let mut rejoined = Peer::connect(server.addr, "notes").await;
    rejoined.append_text("later;").await;
    let mut check = Peer::connect(server.addr, "notes").await;
    check.wait_text(|text| text.contains("later;")).await;
    drop((reader, rejoined, check, healthy, watcher));

    // After a restart: everything acknowledged is there, nothing refused is.
    server.restart().await;
    server.wait_healthy().await;
    let notes = stored_text(&server, "notes").await;
    assert!(notes.starts_with("kept;resumed;"), "{notes:?}");
    assert!(notes.contains("later;"), "{notes:?}");
    assert!(!notes.contains("refused"), "{notes:?}");
    assert_eq!(stored_text(&server, "healthy").await, "steady again");
    for index in kept {
        let res = server
            .request("GET", &format!("/api/files/fill/{index}.bin"), &[], b"")
            .await;
        assert_eq!(res.status, 200);
        assert!(res.body == fill_bytes(*index), "file {index} intact");
    }
    for index in deleted {
        let res = server
            .request("GET", &format!("/api/files/fill/{index}.bin"), &[], b"")
            .await;
        assert_eq!(res.status, 404, "deleted file {index} stays deleted");
    }
    let res = server
        .request("GET", "/api/files/after.bin", &[], b"")
        .await;
    assert!(
        res.status == 200 && res.body == after,
        "upload after recovery intact"
    );
    assert!(server.shutdown().await, "clean shutdown");
    drop(server);
    drop(tmpfs);
}

/// Regression: a doc found damaged while recovering from a full disk was reported as a storage
/// failure. After a refused commit the doc actor reloads the doc from the store; when that
/// reload met a damaged record (`LoadFailure::Corrupt`), its peers were closed with 1011
/// "storage failure", as if retrying could help. Now they get 1011 "document damaged", and HTTP
/// 500 `doc_corrupt`, like a doc found damaged when it opens.
#[tokio::test]
async fn a_doc_found_damaged_after_a_refused_commit_is_refused_as_damaged() {
    // The doc's last change time, a value found nowhere else in the file.
    const MARK: u64 = 0x5eed_f00d_cafe_0002;
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let data_dir = tempfile::tempdir_in(&tmpfs.dir).expect("data dir on the tmpfs");
    let db_path = data_dir.path().join(tandem_server::DB_FILE_NAME);
    {
        let store = tandem_store::Store::open(&db_path).expect("create the store");
        let update = append_update(&Doc::new(), "kept;");
        let op = tandem_store::WriteOp::Append {
            doc: "notes",
            seq: 1,
            update: &update,
            author: None,
        };
        store.commit(&[op], MARK, true).expect("store the doc");
    }
    let mut server = TestServer::start_in(data_dir, |_| {}).await;
    server.wait_healthy().await;

    let mut writer = Peer::connect(server.addr, "notes").await;
    assert_eq!(writer.text(), "kept;");
    let mut watcher = Peer::connect(server.addr, "notes").await;
    assert_eq!(watcher.text(), "kept;");

    // The doc's row goes bad on disk while the doc is open (its page is in redb's cache).
    flip_bit_of(&db_path, MARK);
    // Fill the disk: the store turns read-only and reopens the file, dropping its cache.
    fill_disk(&server).await;

    // The edit is refused (its sender retries later), and the reload meets the damaged row.
    writer.append_text("refused;").await;
    assert_eq!(
        writer.expect_close().await,
        (1013, "storage full, retry later".to_owned())
    );
    assert_eq!(
        watcher.expect_close().await,
        (1011, "document damaged".to_owned())
    );
    let res = server.request("GET", "/api/docs/notes", &[], b"").await;
    assert_eq!(res.status, 500, "{}", res.text());
    assert_eq!(res.json()["error"], "doc_corrupt");

    assert!(server.shutdown().await, "the server shuts down cleanly");
    drop(server);
    drop(tmpfs);
}

/// Regression: one damaged doc failed the whole group commit it was in. `Store::commit` decodes
/// each doc's row, so a doc whose row went bad failed the transaction for every doc that shared
/// the batch, and all their peers were closed with 1011 "storage failure", unacknowledged edits
/// dropped. Now the writer commits the batch again without the damaged doc: only its peers are
/// closed, with 1011 "document damaged", and the other docs' edits are stored and delivered.
#[tokio::test]
async fn a_doc_found_damaged_by_a_commit_is_refused_alone() {
    // The damaged doc's last change time, a value found nowhere else in the file.
    const MARK: u64 = 0x5eed_f00d_cafe_0003;
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let data_dir = tempfile::tempdir_in(&tmpfs.dir).expect("data dir on the tmpfs");
    let db_path = data_dir.path().join(tandem_server::DB_FILE_NAME);
    {
        let store = tandem_store::Store::open(&db_path).expect("create the store");
        for (doc, now_ms) in [("bad", MARK), ("good", 1)] {
            let update = append_update(&Doc::new(), &format!("{doc};"));
            let op = tandem_store::WriteOp::Append {
                doc,
                seq: 1,
                update: &update,
                author: None,
            };
            store.commit(&[op], now_ms, true).expect("store the doc");
        }
    }
    let mut server = TestServer::start_in(data_dir, |_| {}).await;
    server.wait_healthy().await;
    let mut bad = Peer::connect(server.addr, "bad").await;
    let mut bad_watcher = Peer::connect(server.addr, "bad").await;
    let mut good = Peer::connect(server.addr, "good").await;
    let mut good_watcher = Peer::connect(server.addr, "good").await;
    assert_eq!((bad.text(), good.text()), ("bad;".into(), "good;".into()));

    // The bad doc's row goes bad on disk; a full disk makes the store drop its cache, and once
    // space returns the next commits read the rows from disk.
    flip_bit_of(&db_path, MARK);
    let n_files = fill_disk(&server).await;
    for index in 0..n_files {
        let res = server
            .request("DELETE", &format!("/api/files/fill/{index}.bin"), &[], b"")
            .await;
        assert_eq!(res.status, 204, "delete {index}: {}", res.text());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while store_health(&server).await["writable"] != true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both edits at once, as group commit would batch them.
    good.append_text("more;").await;
    bad.append_text("lost;").await;
    good_watcher.wait_text(|text| text == "good;more;").await;
    assert_eq!(
        bad_watcher.expect_close().await,
        (1011, "document damaged".to_owned())
    );
    assert_eq!(
        bad.expect_close().await,
        (1011, "document damaged".to_owned())
    );
    let res = server.request("GET", "/api/docs/bad", &[], b"").await;
    assert_eq!(res.status, 500, "{}", res.text());
    assert_eq!(res.json()["error"], "doc_corrupt");
    assert_eq!(
        (good.closed.clone(), good_watcher.closed.clone()),
        (None, None)
    );
    assert_eq!(stored_text(&server, "good").await, "good;more;");

    drop((bad, bad_watcher, good, good_watcher));
    assert!(server.shutdown().await, "the server shuts down cleanly");
    drop(server);
    drop(tmpfs);
}

/// Flips one bit in the middle of every occurrence of `mark` (a record's little-endian field) in
/// the database file, in place, as a damaged disk would under a running server.
fn flip_bit_of(db_path: &Path, mark: u64) {
    use std::os::unix::fs::FileExt;
    let bytes = std::fs::read(db_path).expect("read db");
    let mark = mark.to_le_bytes();
    let found: Vec<usize> = bytes
        .windows(mark.len())
        .enumerate()
        .filter(|(_, window)| *window == mark)
        .map(|(at, _)| at)
        .collect();
    assert!(!found.is_empty(), "the record is in the file");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(db_path)
        .expect("open db");
    for at in found {
        file.write_at(&[bytes[at + 3] ^ 0x01], (at + 3) as u64)
            .expect("flip a bit");
    }
    file.sync_all().expect("sync db");
}

/// Uploads files until one is refused with 507; returns how many were stored.
async fn fill_disk(server: &TestServer) -> usize {
    let mut n_files = 0;
    loop {
        assert!(n_files < MAX_FILL_FILES, "the tmpfs never filled up");
        let res = server
            .request(
                "PUT",
                &format!("/api/files/fill/{n_files}.bin"),
                &[],
                &fill_bytes(n_files),
            )
            .await;
        match res.status {
            200 | 201 => n_files += 1,
            status => {
                assert_eq!(status, 507, "{}", res.text());
                return n_files;
            }
        }
    }
}
