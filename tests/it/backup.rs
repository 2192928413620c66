//! Backups and data in and out, black-box: the real `tandem` binary's `backup`,
//! `restore-backup`, `export`, `import` and `check` against real servers on real redb files.
//!
//! - A backup taken while y-websocket peers and HTTP writers keep editing, restored into an empty
//!   directory, holds every update acknowledged before it began (HTTP 2xx, or a peer's state
//!   that `covers` said was stored), the files byte for byte, the accounts, webhooks and activity.
//! - Documents exported from one server and imported into a fresh one equal the originals, and
//!   a Yjs update made by yrs alone (what y-sweet's or y-websocket's stores hold) imports.
//! - `tandem check` passes a clean data directory and names a deleted blob and a damaged record,
//!   without changing a byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tandem_server::auth::Role;
use tandem_tests::{CommandOutput, Peer, TestServer, bearer, own_claims, run_tandem, wait_until};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact, WriteTxn};

/// An HTTP writer of one doc: each update appends `k<i>;` to root `content`, built on a local
/// replica so every update applies on its own.
struct HttpWriter {
    doc: Doc,
    name: String,
    token: String,
    next: usize,
}

impl HttpWriter {
    fn new(name: &str, token: &str) -> HttpWriter {
        HttpWriter {
            doc: Doc::with_client_id(4242),
            name: name.into(),
            token: token.into(),
            next: 0,
        }
    }

    /// Sends the next token; returns it if the server acknowledged it (2xx: stored).
    async fn append(&mut self, server: &TestServer) -> Option<String> {
        let token = format!("k{};", self.next);
        self.next += 1;
        let update = {
            let mut txn = self.doc.transact_mut();
            let before = txn.state_vector();
            let text = txn.get_or_insert_text("content");
            let len = text.len(&txn);
            text.insert(&mut txn, len, &token);
            txn.encode_diff_v1(&before)
        };
        let response = server
            .request(
                "POST",
                &format!("/api/docs/{}/update", self.name),
                &[("Authorization", &bearer(&self.token))],
                &update,
            )
            .await;
        (response.status == 200).then_some(token)
    }
}

/// An administrator token that may also write every doc.
fn full_token(server: &TestServer) -> String {
    server.mint(&tandem_server::auth::Claims {
        admin: true,
        ..own_claims("root", &[("*", Role::Write)])
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn put_file(server: &TestServer, token: &str, path: &str, body: &[u8]) {
    let response = server
        .request(
            "PUT",
            &format!("/api/files/{path}"),
            &[("Authorization", &bearer(token))],
            body,
        )
        .await;
    assert!(
        response.status == 200 || response.status == 201,
        "PUT {path}: {} {}",
        response.status,
        response.text()
    );
}

async fn get_json(server: &TestServer, token: &str, path: &str) -> Value {
    let response = server
        .request(
            "GET",
            path,
            &[
                ("Authorization", &bearer(token)),
                ("Accept", "application/json"),
            ],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

/// Whether the server has stored everything `snapshot` describes (`POST .../covers`).
async fn covers(server: &TestServer, token: &str, doc: &str, snapshot: &[u8]) -> bool {
    let response = server
        .request(
            "POST",
            &format!("/api/docs/{doc}/covers"),
            &[("Authorization", &bearer(token))],
            snapshot,
        )
        .await;
    assert_eq!(response.status, 200, "covers: {}", response.text());
    response.json()["covers"] == json!(true)
}

/// The text of root `content` as the server stores it (`GET /api/docs/{doc}`, JSON view).
async fn content_text(server: &TestServer, token: &str, doc: &str) -> String {
    get_json(server, token, &format!("/api/docs/{doc}")).await["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn arg(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

/// `tandem COMMAND PATH --server URL --token TOKEN`, as a script would run it.
async fn run_with_token(command: &str, path: &Path, url: &str, token: &str) -> CommandOutput {
    run_tandem(
        &[command, &arg(path), "--server", url, "--token", token],
        "",
    )
    .await
}

/// A backup under live editing, restored into an empty directory, holds everything
/// acknowledged before it began; a restore into a non-empty directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_everything_acknowledged_before_it() {
    let server = TestServer::start_jwt(|config| {
        config.webhooks.allow_private = true;
    })
    .await;
    let admin = full_token(&server);
    let writer_token = server.token("ada", &[("*", Role::Write)]);

    // Before the backup: acknowledged HTTP updates, peers whose state `covers` says is stored,
    // two files, an account, a webhook, and an activity entry.
    let mut writer = HttpWriter::new("load.md", &writer_token);
    let mut acked_before = Vec::new();
    for _ in 0..30 {
        acked_before.push(writer.append(&server).await.expect("acknowledged"));
    }
    let mut peer_a = server.connect_with_token("live-a.md", &writer_token).await;
    let mut peer_b = server.connect_with_token("live-b.md", &writer_token).await;
    for round in 0..20 {
        peer_a.append_text(&format!("a{round} ")).await;
        peer_b.append_text(&format!("b{round} ")).await;
    }
    let snapshot_a = peer_a.snapshot();
    let snapshot_b = peer_b.snapshot();
    wait_until("the peers' edits are stored", async || {
        covers(&server, &admin, "live-a.md", &snapshot_a).await
            && covers(&server, &admin, "live-b.md", &snapshot_b).await
    })
    .await;
    let report = b"quarterly report: bytes kept in a blob beside the database".repeat(100);
    put_file(&server, &writer_token, "team/report.bin", &report).await;
    let doomed = b"a file deleted while the backup runs".to_vec();
    put_file(&server, &writer_token, "team/doomed.bin", &doomed).await;
    let response = server
        .request(
            "PUT",
            "/api/users/grace",
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            json!({ "password": "correct horse battery", "docs": { "team/*": "write" } })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let response = server
        .request(
            "POST",
            "/api/webhooks",
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            json!({ "url": "http://127.0.0.1:9/hook", "events": ["file.uploaded"] })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let webhook_id = response.json()["webhook"]["id"]
        .as_str()
        .expect("webhook id")
        .to_owned();
    let uploaded_entry = || async {
        get_json(&server, &admin, "/api/activity?prefix=team/").await["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["kind"] == "file.uploaded")
            .cloned()
    };
    wait_until("the upload's activity entry is recorded", async || {
        uploaded_entry().await.is_some()
    })
    .await;
    let activity_entry = uploaded_entry().await.expect("entry");

    // The backup, while the writer and the peers keep editing and a file is deleted.
    let archive_dir = tempfile::tempdir().expect("temp dir");
    let archive = archive_dir.path().join("backup.tar");
    let done = AtomicBool::new(false);
    let backup = async {
        let output = run_tandem(
            &[
                "backup",
                &arg(&archive),
                "--server",
                &server.url(""),
                "--data-dir",
                &arg(server.data_dir()),
            ],
            "",
        )
        .await;
        done.store(true, Ordering::SeqCst);
        output
    };
    let load = async {
        let mut n_during = 0usize;
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        let mut deleted = false;
        while !done.load(Ordering::SeqCst) {
            pace.tick().await;
            writer.append(&server).await;
            peer_a.append_text(&format!("x{n_during} ")).await;
            peer_b.append_text(&format!("y{n_during} ")).await;
            if !deleted {
                let response = server
                    .request(
                        "DELETE",
                        "/api/files/team/doomed.bin",
                        &[("Authorization", &bearer(&writer_token))],
                        b"",
                    )
                    .await;
                assert!(response.status < 300, "{}", response.text());
                deleted = true;
            }
            n_during += 1;
        }
        n_during
    };
    let (output, n_during) = tokio::join!(backup, load);
    assert!(output.success, "tandem backup: {}", output.stderr);
    assert!(output.stdout.contains("verified"), "{}", output.stdout);
    assert!(n_during > 0, "edits went on while the backup ran");
    assert!(archive.is_file());

    // A non-empty directory is refused and left as it was.
    let occupied = tempfile::tempdir().expect("temp dir");
    std::fs::write(occupied.path().join("keep.txt"), b"mine").expect("write");
    let refused = run_tandem(
        &[
            "restore-backup",
            &arg(&archive),
            "--data-dir",
            &arg(occupied.path()),
        ],
        "",
    )
    .await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    let left: Vec<_> = std::fs::read_dir(occupied.path())
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("keep.txt")]);

    // A damaged archive (one byte of a blob flipped) is refused, and nothing is left behind.
    let mut damaged = std::fs::read(&archive).expect("read archive");
    let at = damaged
        .windows(16)
        .position(|window| window == b"quarterly report")
        .expect("the blob is in the archive");
    damaged[at] ^= 0x01;
    let damaged_archive = archive_dir.path().join("damaged.tar");
    std::fs::write(&damaged_archive, &damaged).expect("write");
    let empty = tempfile::tempdir().expect("temp dir");
    let refused = run_tandem(
        &[
            "restore-backup",
            &arg(&damaged_archive),
            "--data-dir",
            &arg(empty.path()),
        ],
        "",
    )
    .await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("SHA-256"), "{}", refused.stderr);
    assert_eq!(
        std::fs::read_dir(empty.path()).expect("dir").count(),
        0,
        "a refused restore leaves nothing"
    );

    // Restored into an empty directory, a server starts on it with everything.
    let restored_dir = tempfile::tempdir().expect("temp dir");
    let restored = run_tandem(
        &[
            "restore-backup",
            &arg(&archive),
            "--data-dir",
            &arg(restored_dir.path()),
        ],
        "",
    )
    .await;
    assert!(restored.success, "restore-backup: {}", restored.stderr);
    // The archive and the restored key and store hold secrets: owner-only, as the server
    // writes its key.
    for path in [
        archive.clone(),
        restored_dir.path().join("server-key"),
        restored_dir.path().join("tandem.redb"),
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("metadata").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let staging = restored_dir.path().parent().expect("parent").join(format!(
        ".{}.restore-tmp",
        restored_dir
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
    ));
    assert!(!staging.exists(), "the staging directory is removed");
    let restored = TestServer::start_in(restored_dir, |config| {
        config.auth.mode = tandem_server::auth::AuthMode::Jwt;
    })
    .await;
    restored.wait_healthy().await;
    // The server key came with the backup: the old tokens still work.
    let text = content_text(&restored, &admin, "load.md").await;
    for token in &acked_before {
        assert!(
            text.contains(token.as_str()),
            "{token} missing from {text:?}"
        );
    }
    assert!(covers(&restored, &admin, "live-a.md", &snapshot_a).await);
    assert!(covers(&restored, &admin, "live-b.md", &snapshot_b).await);
    let download = restored
        .request(
            "GET",
            "/api/files/team/report.bin",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(download.status, 200);
    assert_eq!(sha256_hex(&download.body), sha256_hex(&report));
    // The deleted file is in the backup or not, depending on whether its delete committed
    // before the backup's transaction began; if it is listed, its bytes are there.
    let doomed_download = restored
        .request(
            "GET",
            "/api/files/team/doomed.bin",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    match doomed_download.status {
        200 => assert_eq!(doomed_download.body, doomed),
        404 => {}
        status => panic!("doomed.bin answered {status}"),
    }
    let users = get_json(&restored, &admin, "/api/users").await;
    assert!(
        users["users"]
            .as_array()
            .expect("users")
            .iter()
            .any(|user| user["sub"] == "grace"),
        "{users}"
    );
    let webhooks = get_json(&restored, &admin, "/api/webhooks").await;
    assert!(
        webhooks["webhooks"]
            .as_array()
            .expect("webhooks")
            .iter()
            .any(|hook| hook["id"] == webhook_id.as_str()),
        "{webhooks}"
    );
    let feed = get_json(&restored, &admin, "/api/activity?prefix=team/").await;
    assert!(
        feed["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|entry| entry["id"] == activity_entry["id"]),
        "{feed}"
    );
    peer_a.close().await;
    peer_b.close().await;
}

/// `GET /api/backup` is for admins only.
#[tokio::test]
async fn a_backup_needs_an_admin_token() {
    let server = TestServer::start_jwt(|_| {}).await;
    let writer = server.token("ada", &[("*", Role::Write)]);
    let response = server
        .request(
            "GET",
            "/api/backup",
            &[("Authorization", &bearer(&writer))],
            b"",
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.text());
    let output = run_with_token(
        "backup",
        &tempfile::tempdir().expect("dir").path().join("b.tar"),
        &server.url(""),
        &writer,
    )
    .await;
    assert!(!output.success);
    assert!(output.stderr.contains("403"), "{}", output.stderr);
}

/// One update of a fresh yrs doc holding `text` in root `content` and `cards` in a map.
fn yjs_state(client_id: u64, text: &str, cards: &[(&str, &str)]) -> Vec<u8> {
    let doc = Doc::with_client_id(client_id);
    let mut txn = doc.transact_mut();
    let content = txn.get_or_insert_text("content");
    content.insert(&mut txn, 0, text);
    if !cards.is_empty() {
        let map = txn.get_or_insert_map("cards");
        for (key, value) in cards {
            map.insert(&mut txn, *key, *value);
        }
    }
    txn.encode_state_as_update_v1(&StateVector::default())
}

async fn post_update(server: &TestServer, token: &str, doc: &str, update: &[u8]) {
    let response = server
        .request(
            "POST",
            &format!("/api/docs/{doc}/update"),
            &[("Authorization", &bearer(token))],
            update,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The state vector of `doc` as the server encodes it.
async fn state_vector(server: &TestServer, token: &str, doc: &str) -> StateVector {
    let response = server
        .request(
            "GET",
            &format!("/api/docs/{doc}"),
            &[("Authorization", &bearer(token))],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "GET {doc}");
    let fetched = Doc::new();
    fetched
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&response.body).expect("a v1 update"))
        .expect("applies");
    fetched.transact().state_vector()
}

/// The files under `dir`, relative, with their bytes.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root");
                out.insert(
                    relative.to_string_lossy().replace('\\', "/"),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_exported_and_imported_into_a_fresh_server_equal_the_originals() {
    let source = TestServer::start_jwt(|_| {}).await;
    let token = full_token(&source);
    let notes = yjs_state(11, "# Notes\n\nline one\nline two\n", &[]);
    post_update(&source, &token, "team/notes.md", &notes).await;
    let board = yjs_state(12, "", &[("todo", "write tests"), ("done", "ship")]);
    post_update(&source, &token, "team/board", &board).await;
    post_update(
        &source,
        &token,
        "other/x.md",
        &yjs_state(13, "not exported", &[]),
    )
    .await;

    let out = tempfile::tempdir().expect("temp dir");
    let exported = run_tandem(
        &[
            "export",
            &arg(out.path()),
            "--prefix",
            "team/",
            "--url",
            &source.url(""),
            "--token",
            &token,
        ],
        "",
    )
    .await;
    assert!(exported.success, "export: {}", exported.stderr);
    let files = files_under(out.path());
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        vec!["team/board.yjs", "team/notes.md", "team/notes.md.yjs"],
    );
    assert_eq!(files["team/notes.md"], b"# Notes\n\nline one\nline two\n");

    // A Yjs update made by yrs alone, as y-sweet's and y-websocket's stores hold them.
    let foreign = yjs_state(99, "from another Yjs server", &[("owner", "grace")]);
    std::fs::create_dir_all(out.path().join("team/imported")).expect("mkdir");
    std::fs::write(out.path().join("team/imported/plan.md.yjs"), &foreign).expect("write");
    // A text file alone becomes a new doc's text.
    std::fs::write(out.path().join("team/new.txt"), "fresh text").expect("write");

    let target = TestServer::start_jwt(|_| {}).await;
    let target_token = full_token(&target);
    let imported = run_tandem(
        &[
            "import",
            &arg(out.path()),
            "--server",
            &target.url(""),
            "--data-dir",
            &arg(target.data_dir()),
        ],
        "",
    )
    .await;
    assert!(imported.success, "import: {}", imported.stderr);
    for doc in ["team/notes.md", "team/board"] {
        assert_eq!(
            get_json(&target, &target_token, &format!("/api/docs/{doc}")).await,
            get_json(&source, &token, &format!("/api/docs/{doc}")).await,
            "{doc}"
        );
        assert_eq!(
            state_vector(&target, &target_token, doc).await,
            state_vector(&source, &token, doc).await,
            "{doc}"
        );
    }
    let plan = get_json(&target, &target_token, "/api/docs/team/imported/plan.md").await;
    assert_eq!(plan["content"], "from another Yjs server");
    assert_eq!(plan["cards"]["owner"], "grace");
    assert_eq!(
        content_text(&target, &target_token, "team/new.txt").await,
        "fresh text"
    );
    let missing = target
        .request(
            "GET",
            "/api/docs/other/x.md",
            &[("Authorization", &bearer(&target_token))],
            b"",
        )
        .await;
    assert_eq!(missing.status, 404, "outside the prefix");

    // Importing the same files again changes nothing (a Yjs merge is idempotent).
    let again = run_with_token("import", out.path(), &target.url(""), &target_token).await;
    assert!(again.success, "import again: {}", again.stderr);
    assert_eq!(
        content_text(&target, &target_token, "team/notes.md").await,
        "# Notes\n\nline one\nline two\n"
    );

    // A text file for a doc that has other content: refused without --replace, then replaced.
    let edits = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(edits.path().join("team")).expect("mkdir");
    std::fs::write(edits.path().join("team/notes.md"), "rewritten").expect("write");
    let args = |replace: bool| {
        let mut args = vec![
            "import".to_owned(),
            arg(edits.path()),
            "--server".to_owned(),
            target.url(""),
            "--token".to_owned(),
            target_token.clone(),
        ];
        if replace {
            args.push("--replace".to_owned());
        }
        args
    };
    let refused = run_tandem(
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    )
    .await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("team/notes.md") && refused.stderr.contains("--replace"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        content_text(&target, &target_token, "team/notes.md").await,
        "# Notes\n\nline one\nline two\n"
    );
    let replaced = run_tandem(
        &args(true).iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    )
    .await;
    assert!(replaced.success, "{}", replaced.stderr);
    assert_eq!(
        content_text(&target, &target_token, "team/notes.md").await,
        "rewritten"
    );
}

/// Every file under `dir` with its bytes and modification time.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, SystemTime)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let modified = std::fs::metadata(&path)
                    .and_then(|meta| meta.modified())
                    .expect("mtime");
                out.insert(
                    path.clone(),
                    (std::fs::read(&path).expect("read"), modified),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Text unique in the file, so the test can find the records holding it.
const ALPHA_TEXT: &str = "alpha-check-5d21e8-alpha-check-5d21e8";

#[tokio::test]
async fn check_passes_a_clean_directory_and_names_a_deleted_blob_and_a_damaged_record() {
    let mut server = TestServer::start_healthy(|_| {}).await;
    let mut alpha = Peer::connect(server.addr, "team/alpha").await;
    alpha.append_text(ALPHA_TEXT).await;
    let snapshot = alpha.snapshot();
    wait_until("alpha is stored", async || {
        server
            .request("POST", "/api/docs/team/alpha/covers", &[], &snapshot)
            .await
            .json()["covers"]
            == json!(true)
    })
    .await;
    alpha.close().await;
    post_update(&server, "", "team/beta", &yjs_state(7, "beta", &[])).await;
    let kept = b"kept blob".repeat(50);
    let lost = b"lost blob".repeat(50);
    put_file(&server, "", "team/kept.bin", &kept).await;
    put_file(&server, "", "team/lost.bin", &lost).await;
    assert!(server.shutdown().await, "clean shutdown");
    let dir = server.data_dir().to_path_buf();

    let before = fingerprint(&dir);
    let clean = run_tandem(&["check", "--data-dir", &arg(&dir)], "").await;
    assert!(clean.success, "{}\n{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("0 problem(s)"), "{}", clean.stdout);
    assert_eq!(
        fingerprint(&dir),
        before,
        "check changed the data directory"
    );

    // Damage: the blob of one file gone, and the bytes of alpha's records flipped.
    let lost_sha = sha256_hex(&lost);
    std::fs::remove_file(dir.join("blobs").join(&lost_sha[..2]).join(&lost_sha)).expect("rm");
    let db = dir.join(tandem_server::DB_FILE_NAME);
    let mut bytes = std::fs::read(&db).expect("read db");
    let needle = ALPHA_TEXT.as_bytes();
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect();
    assert!(!at.is_empty(), "alpha's text is in the file");
    for at in at {
        bytes[at + 3] ^= 0x20;
    }
    std::fs::write(&db, &bytes).expect("write db");

    let before = fingerprint(&dir);
    let damaged = run_tandem(&["check", "--data-dir", &arg(&dir)], "").await;
    assert!(!damaged.success, "{}", damaged.stdout);
    let lines: Vec<&str> = damaged.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with(&format!("blob {lost_sha}: missing"))),
        "{}",
        damaged.stdout
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("\"team/alpha\"") && line.contains("checksum mismatch")),
        "{}",
        damaged.stdout
    );
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("team/beta") || line.contains(&sha256_hex(&kept))),
        "only the damage is reported: {}",
        damaged.stdout
    );
    assert_eq!(
        fingerprint(&dir),
        before,
        "check changed the data directory"
    );
}

/// In cluster mode a backup is refused with a pointer to the engines' own tools, and export
/// works against any node (it goes through the HTTP API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_backup_is_refused_and_export_goes_through_any_node() {
    let cluster = crate::cluster::Cluster::start();
    let jwt = |config: &mut tandem_server::Config| {
        config.auth.mode = tandem_server::auth::AuthMode::Jwt;
    };
    let one = cluster.node(jwt).await;
    let two = cluster.node(jwt).await;
    let token = full_token(&one);
    post_update(
        &two,
        &token,
        "team/shared.md",
        &yjs_state(21, "written on two", &[]),
    )
    .await;

    let archive_dir = tempfile::tempdir().expect("temp dir");
    let refused = run_with_token(
        "backup",
        &archive_dir.path().join("b.tar"),
        &one.url(""),
        &token,
    )
    .await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("409 cluster_mode") && refused.stderr.contains("pg_dump"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read_dir(archive_dir.path()).expect("dir").count(),
        0,
        "nothing written"
    );

    let out = tempfile::tempdir().expect("temp dir");
    let exported = run_with_token("export", out.path(), &one.url(""), &token).await;
    assert!(exported.success, "{}", exported.stderr);
    assert_eq!(
        std::fs::read_to_string(out.path().join("team/shared.md")).expect("text file"),
        "written on two"
    );
}
