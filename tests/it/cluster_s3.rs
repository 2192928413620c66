//! Files in cluster mode with the blobs on an S3-compatible store (`--blob-store`): several
//! nodes in this process share a Redis, a Postgres and a real S3 server (`moto_server`), and
//! no directory at all: each node has only its own data directory. What one node stored, any
//! other serves, also once the first is gone; a tus upload moves between nodes through its
//! segments in the store; unreferenced blob objects go with the versions that named them.

use std::time::Duration;

use tandem_server::Config;
use tandem_server::config::{BlobStorage, S3Location};
use tandem_tests::engines::{Postgres, Redis, S3Server, free_port};
use tandem_tests::{TestServer, WAIT, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::files::{
    create_upload, get, listed_paths, patch, put, random_bytes, sha256_hex, upload_offset,
};

/// The key prefix every node is given.
const PREFIX: &str = "team-files/eu";

/// Redis, Postgres and an S3 server with bucket `tandem`.
struct S3Cluster {
    redis: Redis,
    postgres: Postgres,
    s3: S3Server,
}

impl S3Cluster {
    fn start() -> S3Cluster {
        S3Cluster {
            redis: Redis::start(),
            postgres: Postgres::start(),
            s3: S3Server::start("tandem"),
        }
    }

    fn location(&self) -> S3Location {
        S3Location {
            options: self.s3.options(),
            ..S3Location::parse(&format!("s3://{}/{PREFIX}", self.s3.bucket)).expect("a location")
        }
    }

    async fn node(&self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let blobs = BlobStorage::S3(self.location());
        let node = TestServer::start_node_with(&self.redis, &self.postgres, blobs, adjust).await;
        node.wait_healthy().await;
        node
    }

    /// The names under `<PREFIX>/<dir>/` in the bucket.
    fn objects(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{PREFIX}/{dir}/");
        self.s3
            .keys(&prefix)
            .into_iter()
            .map(|key| key[prefix.len()..].to_owned())
            .collect()
    }

    /// How many advisory locks some session holds now (the blob lock, tus writers).
    fn advisory_locks(&self) -> String {
        self.postgres
            .psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    }
}

/// Files under `dir`, recursively (names only).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_through_one_node_downloads_identical_from_the_others_also_once_it_is_gone() {
    let cluster = S3Cluster::start();
    let mut one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let three = cluster.node(|_| {}).await;

    // Larger than a part (8 MiB), so it goes up as a multipart upload.
    let data = random_bytes(9 * 1024 * 1024 + 123, 61);
    let sha = sha256_hex(&data);
    let stored = put(&one, "team/video.bin", &data, &[]).await;
    assert_eq!(stored.status, 201, "{}", stored.text());
    // One blob object, named by its hash; nothing staged is left, nothing on any node's disk.
    assert_eq!(cluster.objects("blobs"), std::slice::from_ref(&sha));
    assert!(cluster.objects("staging").is_empty());
    for node in [&one, &two, &three] {
        assert!(files_under(node.data_dir()).iter().all(|name| name != &sha));
        assert!(files_under(&node.data_dir().join("uploads")).is_empty());
    }

    let etag = format!("\"{sha}\"");
    for node in [&two, &three] {
        let whole = get(node, "/api/files/team/video.bin", &[]).await;
        assert_eq!(whole.status, 200, "{}", whole.text());
        assert_eq!(whole.body.len(), data.len());
        assert!(whole.body == data, "byte-identical");
        assert_eq!(whole.header("etag"), Some(etag.as_str()));
        let range = get(
            node,
            "/api/files/team/video.bin",
            &[("Range", "bytes=8388600-8388700")],
        )
        .await;
        assert_eq!(range.status, 206, "{}", range.text());
        assert_eq!(
            range.header("content-range"),
            Some(format!("bytes 8388600-8388700/{}", data.len()).as_str())
        );
        assert_eq!(range.body, &data[8_388_600..=8_388_700]);
        let not_modified = get(
            node,
            "/api/files/team/video.bin",
            &[("If-None-Match", &etag)],
        )
        .await;
        assert_eq!(not_modified.status, 304);
    }

    // Node one goes away, data directory and all: the file is still there for the others.
    assert!(one.shutdown().await, "clean shutdown");
    drop(one);
    let after = get(&three, "/api/files/team/video.bin", &[]).await;
    assert_eq!(after.status, 200);
    assert!(after.body == data, "byte-identical after node one is gone");
    let tail = get(&two, "/api/files/team/video.bin", &[("Range", "bytes=-10")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &data[data.len() - 10..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_pushed_out_and_deleted_files_take_their_blob_objects_with_them() {
    let cluster = S3Cluster::start();
    let two_versions = |config: &mut Config| config.files.max_file_versions = 2;
    let one = cluster.node(two_versions).await;
    let two = cluster.node(two_versions).await;
    let (first, second, third) = (b"first".to_vec(), b"second".to_vec(), b"third".to_vec());
    assert_eq!(put(&one, "team/a.txt", &first, &[]).await.status, 201);
    assert_eq!(put(&two, "team/a.txt", &second, &[]).await.status, 201);
    // The same bytes under another path share the blob.
    assert_eq!(put(&two, "team/copy.txt", &second, &[]).await.status, 201);
    let mut both = vec![sha256_hex(&first), sha256_hex(&second)];
    both.sort();
    assert_eq!(cluster.objects("blobs"), both);
    assert_eq!(
        get(&one, "/api/files/team/a.txt?version=1", &[]).await.body,
        first
    );

    // A third version pushes the first out, and its blob object with it.
    assert_eq!(put(&one, "team/a.txt", &third, &[]).await.status, 201);
    let mut kept = vec![sha256_hex(&second), sha256_hex(&third)];
    kept.sort();
    assert_eq!(cluster.objects("blobs"), kept);

    // Deleting the file through node two removes the blob only it named; the shared one stays.
    let deleted = two
        .request("DELETE", "/api/files/team/a.txt", &[], b"")
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(cluster.objects("blobs"), [sha256_hex(&second)]);
    assert_eq!(
        get(&one, "/api/files/team/copy.txt", &[]).await.body,
        second
    );
    assert_eq!(get(&one, "/api/files/team/a.txt", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tus_upload_cut_on_one_node_resumes_and_completes_on_another() {
    let cluster = S3Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let data = random_bytes(3 * 1024 * 1024 + 7, 71);
    let sha = sha256_hex(&data);
    let location = create_upload(&one, "team/big.bin", data.len(), Some(&sha)).await;
    let id = location
        .rsplit('/')
        .next()
        .expect("an upload id")
        .to_owned();
    assert_eq!(upload_offset(&two, &location).await, (200, Some(0)));

    // A PATCH on node one sends part of its body, then the connection breaks.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        one.addr,
        data.len()
    );
    let mut stream = TcpStream::connect(one.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&data[..1_000_000]).await.expect("part");
    stream.flush().await.expect("flush");
    // While node one writes the upload, node two may not.
    wait_until("node one holds the upload's lock", async || {
        cluster.advisory_locks() == "1"
    })
    .await;
    let busy = patch(&two, &location, 0, b"").await;
    assert_eq!(busy.status, 423, "{}", busy.text());
    assert_eq!(busy.json()["error"], "upload_busy");
    drop(stream);

    // What node one received is stored as a segment, and every node reports it as the offset.
    let mut offset = 0;
    wait_until("node one stored the cut PATCH and let go", async || {
        if cluster.advisory_locks() != "0" {
            return false;
        }
        let (status, reported) = upload_offset(&two, &location).await;
        offset = reported.unwrap_or(0) as usize;
        status == 200 && offset > 0
    })
    .await;
    assert!(offset <= 1_000_000, "{offset}");
    assert_eq!(
        cluster.objects(&format!("uploads/{id}")),
        ["00000000000000000000"]
    );
    assert_eq!(
        upload_offset(&one, &location).await,
        (200, Some(offset as u64))
    );

    // Node two resumes from there: a stale offset is refused, then two PATCHes finish it.
    let stale = patch(&two, &location, 0, b"again").await;
    assert_eq!(stale.status, 409, "{}", stale.text());
    let middle = offset + 1_500_000;
    let second = patch(&two, &location, offset, &data[offset..middle]).await;
    assert_eq!(second.status, 204, "{}", second.text());
    assert_eq!(
        upload_offset(&one, &location).await,
        (200, Some(middle as u64))
    );
    let last = patch(&two, &location, middle, &data[middle..]).await;
    assert_eq!(last.status, 204, "{}", last.text());
    assert_eq!(last.header("tandem-file-version"), Some("1"));

    let download = get(&one, "/api/files/team/big.bin", &[]).await;
    assert_eq!(download.status, 200);
    assert!(download.body == data, "byte-identical");
    // The upload is gone, its segments and staging object with it; only the blob remains.
    assert_eq!(upload_offset(&one, &location).await.0, 404);
    assert!(cluster.objects("uploads").is_empty());
    assert!(cluster.objects("staging").is_empty());
    assert_eq!(cluster.objects("blobs"), [sha]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_an_unreachable_store_or_two_places_for_blobs() {
    // Both a directory and a store: refused while reading the settings.
    let args = tandem_server::cli::ServeArgs {
        redis_url: Some("redis://127.0.0.1:1/".into()),
        postgres_url: Some("postgres://postgres@127.0.0.1:1/tandem".into()),
        blob_dir: Some("/mnt/blobs".into()),
        blob_store: Some("s3://tandem".into()),
        ..tandem_server::cli::ServeArgs::default()
    };
    let refused = tandem_server::config::load(args).expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("blob_dir and blob_store are mutually exclusive"),
        "{refused}"
    );

    // A store nobody answers at: the node does not start, and says why.
    let redis = Redis::start();
    let postgres = Postgres::start();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let location = S3Location {
        options: vec![
            ("aws_endpoint".into(), nowhere),
            ("aws_allow_http".into(), "true".into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_access_key_id".into(), "testing".into()),
            ("aws_secret_access_key".into(), "testing".into()),
        ],
        ..S3Location::parse("s3://tandem/files").expect("a location")
    };
    let start = async |adjust: &dyn Fn(&mut Config)| {
        let mut config = Config::for_data_dir(tempfile::tempdir().expect("temp dir").keep());
        config.cluster = Some(tandem_server::config::ClusterSettings {
            engines: tandem_cluster::ClusterConfig {
                redis_url: redis.url(),
                postgres_url: postgres.url(),
                durability: tandem_cluster::Durability::Local,
                replica_timeout: Duration::from_secs(2),
                trim_margin: Duration::from_secs(60),
                commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
            },
            blobs: BlobStorage::S3(location.clone()),
        });
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let res = tokio::time::timeout(
            WAIT * 3,
            tandem_server::run(config, listener, std::future::pending()),
        )
        .await
        .expect("start-up ends");
        res.expect_err("refused").to_string()
    };
    let message = start(&|_| {}).await;
    assert!(
        message.contains("blob store s3://tandem/files is not reachable"),
        "{message}"
    );
    // Files larger than one server-side copy can make could never be stored.
    let message = start(&|config| config.files.max_file_bytes = 6 << 30).await;
    assert!(
        message.contains("more than the 5368709120 bytes one S3 copy can make"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_gone_requests_fail_with_503_and_nothing_is_committed() {
    let mut cluster = S3Cluster::start();
    let node = cluster.node(|_| {}).await;
    assert_eq!(put(&node, "team/kept.txt", b"kept", &[]).await.status, 201);
    let upload = create_upload(&node, "team/resumable.bin", 6, None).await;
    cluster.s3.kill();

    let refused = put(&node, "team/lost.txt", b"never stored", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "storage_unavailable");
    let paths = listed_paths(&node).await;
    assert_eq!(
        paths,
        ["team/kept.txt"],
        "nothing committed for the failed PUT"
    );
    let download = get(&node, "/api/files/team/kept.txt", &[]).await;
    assert_eq!(download.status, 503, "{}", download.text());
    assert_eq!(download.json()["error"], "storage_unavailable");
    // A PATCH fails too (its offset is the store's segments); the upload stays, for later.
    let patched = patch(&node, &upload, 0, b"abc").await;
    assert_eq!(patched.status, 503, "{}", patched.text());
    assert_eq!(patched.json()["error"], "storage_unavailable");
    let deleted = node
        .request("DELETE", "/api/files/team/kept.txt", &[], b"")
        .await;
    // The delete commits (the metadata is in Postgres); the blob object is left for the cleanup.
    assert_eq!(deleted.status, 204, "{}", deleted.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_removes_orphaned_objects_and_keeps_what_versions_and_uploads_name() {
    let cluster = S3Cluster::start();
    let node = cluster
        .node(|config| {
            // Short, but longer than any body here takes to arrive (the grace also guards the
            // node's local files of bodies being received).
            config.files.orphan_grace = Duration::from_secs(1);
            config.files.cleanup_interval = Duration::from_millis(100);
            // Objects in the store without a record wait this long: a PUT on another node may
            // still be placing its staging object.
            config.files.upload_expiry = Duration::from_secs(6);
        })
        .await;
    assert_eq!(put(&node, "team/kept.txt", b"kept", &[]).await.status, 201);
    // Left by a node that died (or, for all this node knows, still working on them): a blob no
    // version names, a staged PUT, an upload's segment.
    let orphan_sha = sha256_hex(b"");
    let dead_id = "0123456789abcdef0123456789abcdef";
    let planted = std::time::Instant::now();
    cluster
        .s3
        .put_empty(&format!("{PREFIX}/blobs/{orphan_sha}"));
    cluster.s3.put_empty(&format!("{PREFIX}/staging/{dead_id}"));
    cluster
        .s3
        .put_empty(&format!("{PREFIX}/uploads/{dead_id}/00000000000000000000"));

    // The orphaned blob goes after the orphan grace; the staging object and the segment stay
    // through many more passes, until they are as old as an upload may be.
    wait_until("the cleanup removed the orphaned blob", async || {
        !cluster.objects("blobs").contains(&orphan_sha)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(planted.elapsed())).await;
    assert!(planted.elapsed() < Duration::from_secs(5), "test too slow");
    assert_eq!(cluster.objects("staging"), [dead_id]);
    assert_eq!(
        cluster.objects("uploads"),
        [format!("{dead_id}/00000000000000000000")]
    );

    // A live upload, younger than the leftovers (it expires 6 s after it is created).
    let upload = create_upload(&node, "team/slow.bin", 10, None).await;
    assert_eq!(patch(&node, &upload, 0, b"12345").await.status, 204);
    let live_id = upload.rsplit('/').next().expect("an upload id").to_owned();
    wait_until("the cleanup removed the old leftovers", async || {
        cluster.objects("staging").is_empty() && cluster.objects("uploads").len() == 1
    })
    .await;
    assert_eq!(cluster.objects("blobs"), [sha256_hex(b"kept")]);
    assert_eq!(
        cluster.objects("uploads"),
        [format!("{live_id}/00000000000000000000")]
    );
    assert_eq!(
        get(&node, "/api/files/team/kept.txt", &[]).await.body,
        b"kept"
    );
    assert_eq!(upload_offset(&node, &upload).await, (200, Some(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_trickling_for_longer_than_the_orphan_grace_keeps_its_local_bytes() {
    let cluster = S3Cluster::start();
    let node = cluster
        .node(|config| {
            config.files.orphan_grace = Duration::from_millis(300);
            config.files.cleanup_interval = Duration::from_millis(50);
        })
        .await;
    let data = random_bytes(64 * 1024, 81);
    let location = create_upload(&node, "team/trickle.bin", data.len(), None).await;
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        node.addr,
        data.len()
    );
    let mut stream = TcpStream::connect(node.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // Small pieces stay in the node's write buffer: its local file does not change for far
    // longer than the grace, while the cleanup runs many times.
    for piece in data.chunks(8 * 1024) {
        stream.write_all(piece).await.expect("a piece");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let download = get(&node, "/api/files/team/trickle.bin", &[]).await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert!(download.body == data, "byte-identical");
    assert!(files_under(&node.data_dir().join("uploads")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_waits_for_the_writer_on_another_node() {
    let cluster = S3Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let location = create_upload(&one, "team/gone.bin", 100, None).await;
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 100\r\n\r\n",
        one.addr
    );
    let mut stream = TcpStream::connect(one.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[7; 10]).await.expect("part");
    stream.flush().await.expect("flush");
    wait_until("node one holds the upload's lock", async || {
        cluster.advisory_locks() == "1"
    })
    .await;
    let tus = [("Tus-Resumable", "1.0.0")];
    let busy = two.request("DELETE", &location, &tus, b"").await;
    assert_eq!(busy.status, 423, "{}", busy.text());
    assert_eq!(upload_offset(&two, &location).await.0, 200);
    drop(stream);
    wait_until("node one let go of the upload", async || {
        cluster.advisory_locks() == "0"
    })
    .await;
    let deleted = two.request("DELETE", &location, &tus, b"").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(upload_offset(&one, &location).await.0, 404);
    assert!(cluster.objects("uploads").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_at_most_sixteen_uploads_at_once_and_answers_busy_beyond() {
    let cluster = S3Cluster::start();
    let node = cluster.node(|_| {}).await;
    let mut writing = Vec::new();
    for n in 0..16 {
        let location = create_upload(&node, &format!("team/{n}.bin"), 100, None).await;
        let head = format!(
            "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 100\r\n\r\n",
            node.addr
        );
        let mut stream = TcpStream::connect(node.addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&[1; 10]).await.expect("part");
        stream.flush().await.expect("flush");
        writing.push(stream);
    }
    wait_until("sixteen PATCHes hold their uploads", async || {
        cluster.advisory_locks() == "16"
    })
    .await;
    // Each holds a Postgres session; a seventeenth upload has to wait its turn.
    let next = create_upload(&node, "team/next.bin", 3, None).await;
    let busy = patch(&node, &next, 0, b"abc").await;
    assert_eq!(busy.status, 423, "{}", busy.text());
    assert_eq!(busy.json()["error"], "upload_busy");
    assert_eq!(cluster.advisory_locks(), "16");

    drop(writing.pop());
    wait_until("one PATCH let go", async || {
        cluster.advisory_locks() == "15"
    })
    .await;
    let stored = patch(&node, &next, 0, b"abc").await;
    assert_eq!(stored.status, 204, "{}", stored.text());
    assert_eq!(
        get(&node, "/api/files/team/next.bin", &[]).await.body,
        b"abc"
    );
}
