//! Files and history in cluster mode, with real engines: several nodes in this process share a
//! Redis, a Postgres and one blob directory, and each request may go to any of them, as behind
//! a load balancer. File metadata, uploads in progress, versions and the list of docs are in
//! Postgres (and Redis), the bytes in the shared directory; nothing may depend on which node
//! served the previous request.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_server::Config;
use tandem_tests::{Peer, TestServer, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::files::{
    create_upload, get, listed_paths, patch, put, random_bytes, sha256_hex, upload_offset,
};
use crate::history::{name_version, restore, versions};

/// Files under `dir`, recursively (names only).
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Whether some process holds a `flock` on `path`, read from `/proc/locks` (taking the lock to
/// find out would make the server's own attempt fail).
fn is_flocked(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let inode = meta.ino().to_string();
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields
                .get(5)
                .and_then(|device_inode| device_inode.rsplit(':').next())
                == Some(inode.as_str())
    })
}

async fn move_file(server: &TestServer, from: &str, to: &str) -> tandem_tests::HttpResponse {
    server
        .request(
            "POST",
            "/api/file-moves",
            &[("Content-Type", "application/json")],
            json!({ "from": from, "to": to }).to_string().as_bytes(),
        )
        .await
}

async fn doc_names(server: &TestServer) -> Vec<String> {
    let response = get(server, "/api/docs", &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["docs"]
        .as_array()
        .expect("a docs array")
        .iter()
        .map(|doc| doc["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_through_one_node_is_served_versioned_renamed_and_deleted_through_others() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let three = cluster.node(|_| {}).await;

    let first = random_bytes(3 * 1024 * 1024 + 17, 21);
    let put_first = put(&one, "team/app.bin", &first, &[]).await;
    assert_eq!(put_first.status, 201, "{}", put_first.text());
    let on_one = get(&one, "/api/files/team/app.bin", &[]).await;
    let etag = on_one.header("etag").expect("an etag").to_owned();
    for node in [&two, &three] {
        let download = get(node, "/api/files/team/app.bin", &[]).await;
        assert_eq!(download.status, 200, "{}", download.text());
        assert_eq!(sha256_hex(&download.body), sha256_hex(&first));
        assert_eq!(download.header("etag"), Some(etag.as_str()));
    }
    // The bytes are in the shared directory, not in any node's data directory.
    assert!(files_under(&cluster.blobs.path().join("blobs")).contains(&sha256_hex(&first)));
    assert!(files_under(&one.data_dir().join("blobs")).is_empty());

    // A path that is a file on another node cannot become a doc here.
    match Peer::try_connect_raw(three.addr, "team/app.bin").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 409);
        }
        other => panic!("expected a 409 refusal, got {:?}", other.map(|_| ())),
    }

    let second = random_bytes(70_000, 22);
    let put_second = put(&two, "team/app.bin", &second, &[]).await;
    assert_eq!(put_second.status, 201, "{}", put_second.text());
    assert_eq!(put_second.json()["file"]["version"], 2);
    let listed = get(&one, "/api/file-versions/team/app.bin", &[]).await;
    assert_eq!(listed.status, 200);
    let list = listed.json()["versions"].as_array().unwrap().clone();
    assert_eq!(
        list.iter()
            .map(|v| v["version"].clone())
            .collect::<Vec<_>>(),
        [json!(2), json!(1)]
    );
    assert_eq!(list[0]["sha256"], sha256_hex(&second).as_str());
    assert_eq!(
        get(&three, "/api/files/team/app.bin?version=1", &[])
            .await
            .body,
        first
    );

    let moved = move_file(&three, "team/app.bin", "archive/app.bin").await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(get(&one, "/api/files/team/app.bin", &[]).await.status, 404);
    assert_eq!(
        get(&two, "/api/files/archive/app.bin", &[]).await.body,
        second
    );
    assert_eq!(listed_paths(&one).await, ["archive/app.bin"]);
    // The old path is free again, on every node; the new one is taken on every node.
    assert_eq!(put(&one, "team/app.bin", b"new", &[]).await.status, 201);
    let taken = move_file(&two, "team/app.bin", "archive/app.bin").await;
    assert_eq!(taken.status, 409);
    assert_eq!(taken.json()["error"], "path_taken");

    let deleted = two
        .request("DELETE", "/api/files/archive/app.bin", &[], b"")
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(
        get(&one, "/api/files/archive/app.bin", &[]).await.status,
        404
    );
    assert_eq!(listed_paths(&three).await, ["team/app.bin"]);
    // Both blobs of the deleted file are gone from the shared directory; the new one stays.
    let blobs = files_under(&cluster.blobs.path().join("blobs"));
    assert_eq!(blobs, [sha256_hex(b"new")], "{blobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_quota_holds_across_nodes() {
    let cluster = Cluster::start();
    let quota = |config: &mut Config| config.files.workspace_quota_bytes = 15_000;
    let one = cluster.node(quota).await;
    let two = cluster.node(quota).await;
    assert_eq!(put(&one, "team/a.bin", &[3u8; 8000], &[]).await.status, 201);
    let full = put(&two, "team/b.bin", &[4u8; 8000], &[]).await;
    assert_eq!(full.status, 507, "{}", full.text());
    assert_eq!(full.json()["error"], "quota_exceeded");
    let moved_in = move_file(&two, "team/a.bin", "team/c.bin").await;
    assert_eq!(moved_in.status, 200, "a move within the workspace is free");
    assert_eq!(
        put(&two, "other/b.bin", &[4u8; 8000], &[]).await.status,
        201
    );
    // Deleting through one node frees the quota for the other.
    assert_eq!(
        one.request("DELETE", "/api/files/team/c.bin", &[], b"")
            .await
            .status,
        204
    );
    assert_eq!(put(&two, "team/b.bin", &[4u8; 8000], &[]).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_started_on_one_node_resumes_and_completes_on_another() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let data = random_bytes(2 * 1024 * 1024 + 5, 31);
    let sha = sha256_hex(&data);
    let location = create_upload(&one, "team/big.bin", data.len(), Some(&sha)).await;
    let half = data.len() / 2;
    let first = patch(&one, &location, 0, &data[..half]).await;
    assert_eq!(first.status, 204, "{}", first.text());
    // Its bytes so far are in the shared directory.
    assert_eq!(files_under(&cluster.blobs.path().join("uploads")).len(), 1);

    assert_eq!(
        upload_offset(&two, &location).await,
        (200, Some(half as u64))
    );
    let stale = patch(&two, &location, 0, b"again").await;
    assert_eq!(stale.status, 409, "the offset is the shared file's");
    let rest = patch(&two, &location, half, &data[half..]).await;
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(rest.header("tandem-file-version"), Some("1"));

    let download = get(&one, "/api/files/team/big.bin", &[]).await;
    assert_eq!(download.status, 200);
    assert_eq!(sha256_hex(&download.body), sha);
    assert_eq!(upload_offset(&one, &location).await.0, 404);
    assert!(files_under(&cluster.blobs.path().join("uploads")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_patch_at_a_time_writes_an_upload_across_nodes() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let data = random_bytes(1024 * 1024, 41);
    let location = create_upload(&one, "team/busy.bin", data.len(), None).await;
    // A PATCH on node one that has sent part of its body and is still receiving.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        one.addr,
        data.len()
    );
    let mut stream = TcpStream::connect(one.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&data[..300_000]).await.expect("part");
    stream.flush().await.expect("flush");
    // Once node one holds the upload's lock, node two refuses to write to it.
    let id = location.rsplit('/').next().expect("an upload id");
    let file = cluster.blobs.path().join("uploads").join(id);
    wait_until("node one locks the upload file", async || is_flocked(&file)).await;
    let busy = patch(&two, &location, 0, b"").await;
    assert_eq!(busy.status, 423, "{}", busy.text());
    assert_eq!(busy.json()["error"], "upload_busy");
    drop(stream);
    // Node one keeps what it received; node two resumes from there and completes it.
    let mut offset = 0;
    // (Its lock goes once it has synced what it received: until then node two stays refused.)
    wait_until("node one has synced the cut PATCH and let go", async || {
        if is_flocked(&file) {
            return false;
        }
        let (status, reported) = upload_offset(&two, &location).await;
        offset = reported.unwrap_or(0) as usize;
        status == 200 && offset > 0
    })
    .await;
    let rest = patch(&two, &location, offset, &data[offset..]).await;
    assert_eq!(rest.status, 204, "{}", rest.text());
    let download = get(&one, "/api/files/team/busy.bin", &[]).await;
    assert_eq!(sha256_hex(&download.body), sha256_hex(&data));
}

/// Concurrent writes through two nodes: Postgres transactions that conflict are retried, so
/// the usage of the workspace is always the sum of its versions' charges, and each blob's
/// refcount the number of versions naming it, with a file on disk for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_nodes_keep_usage_and_refcounts_exact() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let shared = random_bytes(5000, 51);
    let puts = (0..8).map(|i| {
        let node = if i % 2 == 0 { &one } else { &two };
        let path = format!("team/f{i}.bin");
        let shared = &shared;
        async move { put(node, &path, shared, &[]).await.status }
    });
    let statuses = futures_util::future::join_all(puts).await;
    assert!(statuses.iter().all(|status| *status == 201), "{statuses:?}");
    let changes = (0..8).map(|i| {
        let node = if i % 2 == 0 { &two } else { &one };
        let path = format!("team/f{i}.bin");
        async move {
            if i < 4 {
                node.request("DELETE", &format!("/api/files/{path}"), &[], b"")
                    .await
                    .status
            } else {
                put(node, &path, &random_bytes(6000, i), &[]).await.status
            }
        }
    });
    let statuses = futures_util::future::join_all(changes).await;
    assert_eq!(statuses, [204, 204, 204, 204, 201, 201, 201, 201]);

    let psql = |sql: &str| cluster.postgres.psql(sql);
    let charged =
        psql("SELECT sum(greatest(size, 4096)) FROM tandem_file_versions WHERE path LIKE 'team/%'");
    assert_eq!(
        psql("SELECT used FROM tandem_file_usage WHERE workspace = 'team'"),
        charged
    );
    assert_eq!(charged, (4 * 5000 + 4 * 6000).to_string());
    assert_eq!(
        psql(
            "SELECT count(*) FROM tandem_blobs b WHERE refcount <> \
             (SELECT count(*) FROM tandem_file_versions v WHERE v.sha256 = b.sha256)"
        ),
        "0"
    );
    let mut named: Vec<String> = psql("SELECT DISTINCT sha256 FROM tandem_file_versions")
        .lines()
        .map(str::to_owned)
        .collect();
    named.sort();
    let mut on_disk = files_under(&cluster.blobs.path().join("blobs"));
    on_disk.sort();
    assert_eq!(on_disk, named);
}

/// Two nodes with a doc open both number its versions; Postgres gives the later one the next
/// free id and the node answers with it. Regression: the actor once moved its own numbering
/// past the stored id, leaving its count of durable versions behind for good, so it never
/// unloaded; it now keeps its numbering and only reports the stored id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_shared_restorable_anywhere_and_their_ids_unique_across_nodes() {
    let cluster = Cluster::start();
    let unload_soon = |config: &mut Config| {
        config.hub.doc_unload_grace = Duration::from_millis(200);
    };
    let one = cluster.node(unload_soon).await;
    let two = cluster.node(unload_soon).await;
    let doc = "team/plan.md";
    // The doc is open on both nodes, so both actors hand out version ids.
    let mut alice = Peer::connect(one.addr, doc).await;
    let mut bob = Peer::connect(two.addr, doc).await;
    alice.append_text("first draft").await;
    bob.wait_text(|text| text == "first draft").await;

    let draft = name_version(&one, doc, "draft", None).await;
    let listed = versions(&two, doc, None).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], draft["id"]);
    assert_eq!(listed[0]["name"], "draft");

    let from_two = name_version(&two, doc, "from two", None).await;
    let from_one = name_version(&one, doc, "from one", None).await;
    let ids: Vec<Value> = [&draft, &from_two, &from_one]
        .iter()
        .map(|version| version["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3)]);
    for node in [&one, &two] {
        let names: Vec<(Value, Value)> = versions(node, doc, None)
            .await
            .iter()
            .map(|v| (v["id"].clone(), v["name"].clone()))
            .collect();
        assert_eq!(
            names,
            [
                (json!(3), json!("from one")),
                (json!(2), json!("from two")),
                (json!(1), json!("draft")),
            ]
        );
    }

    bob.append_text(" and more").await;
    alice.wait_text(|text| text == "first draft and more").await;
    let before = restore(&two, doc, &draft["id"], None).await;
    assert_eq!(before["kind"], "restore");
    assert_eq!(before["id"], 4);
    // The restore reaches the peer on the other node live.
    alice.wait_text(|text| text == "first draft").await;
    let listed = versions(&one, doc, None).await;
    assert_eq!(
        listed.iter().map(|v| v["id"].clone()).collect::<Vec<_>>(),
        [json!(4), json!(3), json!(2), json!(1)]
    );

    // Both actors unload (each storing an automatic version of the edits its peer made): an
    // actor whose versions were stored under other ids than it asked for does not wait for
    // them forever.
    drop((alice, bob));
    one.wait_unloaded(doc).await;
    two.wait_unloaded(doc).await;
    let ids: Vec<Value> = versions(&two, doc, None)
        .await
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, ids, "ids are unique: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_docs_written_on_any_node() {
    let cluster = Cluster::start();
    let compact_often = |config: &mut Config| {
        config.hub.compact_after_updates = 10;
        config.hub.doc_unload_grace = Duration::from_millis(200);
    };
    let one = cluster.node(compact_often).await;
    let two = cluster.node(compact_often).await;
    let three = cluster.node(compact_often).await;
    let mut alpha = Peer::connect(one.addr, "alpha.md").await;
    alpha.append_text("a").await;
    let mut beta = Peer::connect(two.addr, "beta.md").await;
    beta.append_text("b").await;
    let mut gamma = Peer::connect(one.addr, "gamma.md").await;
    for i in 0..25 {
        gamma.append_text(&format!("[{i}]")).await;
    }
    gamma.wait_text(|text| text.contains("[24]")).await;
    wait_until("a snapshot of gamma.md", async || {
        cluster
            .postgres
            .psql("SELECT count(*) FROM tandem_docs WHERE name = 'gamma.md'")
            == "1"
    })
    .await;
    drop(gamma);
    one.wait_unloaded("gamma.md").await;

    wait_until("three lists alpha.md and beta.md", async || {
        let names = doc_names(&three).await;
        names.iter().any(|n| n == "alpha.md") && names.iter().any(|n| n == "beta.md")
    })
    .await;
    for node in [&one, &two, &three] {
        let names = doc_names(node).await;
        assert_eq!(names, ["alpha.md", "beta.md", "gamma.md"], "{names:?}");
    }
    // Who wrote each update is read from the stream on any node, newest first, in pages.
    for i in 0..3 {
        alpha.append_text(&format!("{i}")).await;
    }
    let history = |query: String| {
        let three = &three;
        async move {
            let response = get(three, &format!("/api/docs/alpha.md/history?{query}"), &[]).await;
            assert_eq!(response.status, 200, "{}", response.text());
            response.json()["entries"]
                .as_array()
                .expect("entries")
                .clone()
        }
    };
    wait_until("node three sees alpha.md's four updates", async || {
        history("limit=10".into()).await.len() == 4
    })
    .await;
    let first = history("limit=2".into()).await;
    let before = first[1]["seq"].as_u64().expect("a seq");
    let rest = history(format!("limit=2&before_seq={before}")).await;
    let seqs: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|entry| entry["seq"].as_u64().expect("a seq"))
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] > pair[1]), "{seqs:?}");
    assert_eq!(seqs.len(), 4);
    assert!(rest.iter().all(|entry| entry["n_bytes"].as_u64() > Some(0)));
    // A doc written on another node (only in its stream) is not free for a file.
    let refused = put(&three, "alpha.md", b"bytes", &[]).await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "path_taken");
    drop((alpha, beta));
}
