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
//! The test mounts a small tmpfs for the data directory, so it needs root (CI runs as root); it
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
