//! Cluster mode with real engines: a Redis and a Postgres of the test's own, and several nodes in
//! this process sharing them. Each node is a whole server; peers connect to one node each.
//! (Killing nodes needs processes: the Node suite's `cluster/` tests do that.)

use std::time::Duration;

use tandem_server::Config;
use tandem_tests::engines::{Postgres, Redis};
use tandem_tests::{Peer, TestServer, WAIT};

/// Two nodes on one pair of engines, and the blob directory they share.
pub(crate) struct Cluster {
    pub(crate) redis: Redis,
    pub(crate) postgres: Postgres,
    pub(crate) blobs: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn start() -> Cluster {
        Cluster {
            redis: Redis::start(),
            postgres: Postgres::start(),
            blobs: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) async fn node(&self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let node =
            TestServer::start_node(&self.redis, &self.postgres, self.blobs.path(), adjust).await;
        node.wait_healthy().await;
        node
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_cross_nodes_and_a_late_joiner_on_either_gets_everything() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let mut alice = Peer::connect(one.addr, "team/notes.md").await;
    let mut bob = Peer::connect(two.addr, "team/notes.md").await;
    alice.append_text("from one;").await;
    bob.wait_text(|text| text.contains("from one;")).await;
    bob.append_text("from two;").await;
    alice.wait_text(|text| text.contains("from two;")).await;
    for i in 0..20 {
        alice.append_text(&format!("a{i};")).await;
        bob.append_text(&format!("b{i};")).await;
    }
    let wanted = |text: &str| text.contains("a19;") && text.contains("b19;");
    let on_one = alice.wait_text(wanted).await;
    let on_two = bob.wait_text(|text| text == on_one).await;
    assert_eq!(on_one, on_two);

    // A fresh peer on each node gets the same text.
    let mut late_one = Peer::connect(one.addr, "team/notes.md").await;
    let mut late_two = Peer::connect(two.addr, "team/notes.md").await;
    assert_eq!(late_one.wait_text(|text| text == on_one).await, on_one);
    assert_eq!(late_two.wait_text(|text| text == on_one).await, on_one);

    // Nothing of it is on either node's disk: it is in Redis.
    let stream_len: u64 = cluster
        .redis
        .cli(&["XLEN", "tandem:doc:team/notes.md"])
        .parse()
        .expect("XLEN answers a number");
    assert!(
        stream_len >= 42,
        "the stream holds every update (has {stream_len})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doc_loads_from_its_snapshot_plus_the_stream_after_it_on_any_node() {
    let cluster = Cluster::start();
    let compact_often = |config: &mut Config| {
        config.hub.compact_after_updates = 10;
        if let Some(cluster) = config.cluster.as_mut() {
            // Trim everything a snapshot covers at once: the load must come from it.
            cluster.engines.trim_margin = Duration::ZERO;
        }
    };
    let one = cluster.node(compact_often).await;
    let two = cluster.node(compact_often).await;
    let mut writer = Peer::connect(one.addr, "compacted.md").await;
    // A steady writer: each compaction covers what the node's tail had read by then, so the
    // stream is trimmed as the tail keeps up.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut n_written = 0u64;
    let trimmed_below = |n_written: u64| {
        let len: u64 = cluster
            .redis
            .cli(&["XLEN", "tandem:doc:compacted.md"])
            .parse()
            .unwrap_or(u64::MAX);
        len + 10 < n_written
    };
    while !trimmed_below(n_written) {
        assert!(n_written < 500, "the stream was never trimmed");
        pace.tick().await;
        writer.append_text(&format!("[{n_written}]")).await;
        n_written += 1;
    }
    let last = format!("[{}]", n_written - 1);
    let text = writer.wait_text(|text| text.contains(&last)).await;
    assert_eq!(
        cluster
            .postgres
            .psql("SELECT count(*) FROM tandem_docs WHERE name = 'compacted.md'"),
        "1",
        "the snapshot is in postgres"
    );

    // Node two never had the doc open: it loads the snapshot and the entries after it.
    let mut reader = Peer::connect(two.addr, "compacted.md").await;
    assert_eq!(reader.wait_text(|loaded| loaded == text).await, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_leaves_with_its_connection() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let mut bob = Peer::connect(two.addr, "presence.md").await;
    let mut alice = Peer::connect(one.addr, "presence.md").await;
    alice
        .send_awareness(4242, 1, r##"{"user":{"name":"alice","color":"#ff0000"}}"##)
        .await;
    let started = std::time::Instant::now();
    bob.wait_awareness(|entries| {
        entries
            .iter()
            .any(|entry| entry.client_id == 4242 && entry.json.contains("alice"))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "presence took {:?} to cross nodes",
        started.elapsed()
    );
    // A node that opens the doc later asks the others for their presence.
    let three = cluster.node(|_| {}).await;
    let mut carol = Peer::connect(three.addr, "presence.md").await;
    carol
        .wait_awareness(|entries| entries.iter().any(|entry| entry.client_id == 4242))
        .await;
    drop(alice);
    bob.wait_awareness(|entries| {
        entries
            .iter()
            .any(|entry| entry.client_id == 4242 && &*entry.json == "null")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_would_ack_before_fsync_is_refused_at_start() {
    let redis = Redis::start_with(&["--appendfsync", "everysec"]);
    let postgres = Postgres::start();
    let blobs = tempfile::tempdir().expect("temp dir");
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
        blobs: tandem_server::config::BlobStorage::Dir(blobs.path().to_path_buf()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let res = tokio::time::timeout(
        WAIT,
        tandem_server::run(config, listener, std::future::pending()),
    )
    .await
    .expect("start-up ends");
    let message = res.expect_err("refused").to_string();
    assert!(
        message.contains("appendfsync everysec") && message.contains("appendfsync always"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_happens_on_one_node_reaches_the_live_streams_of_the_others() {
    let cluster = Cluster::start();
    let one = cluster
        .node(|config| {
            config.hub.doc_changed_interval = Duration::from_millis(50);
        })
        .await;
    let two = cluster.node(|_| {}).await;
    let mut events = two.events().await;
    let mut writer = Peer::connect(one.addr, "live/tree.md").await;
    writer.append_text("seen everywhere").await;
    let changed = events
        .next_matching(|event| event["type"] == "doc_changed" && event["doc"] == "live/tree.md")
        .await;
    assert_eq!(changed["n_updates"], 1, "{changed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_open_docs_keep_editing_and_cold_loads_wait_for_it() {
    let mut cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let mut alice = Peer::connect(one.addr, "pg-down/open.md").await;
    let mut bob = Peer::connect(two.addr, "pg-down/open.md").await;
    alice.append_text("before;").await;
    bob.wait_text(|text| text == "before;").await;

    cluster.postgres.stop();
    // The doc is open on both nodes: editing goes on through Redis alone.
    alice.append_text("during;").await;
    bob.wait_text(|text| text == "before;during;").await;
    bob.append_text("back;").await;
    alice.wait_text(|text| text == "before;during;back;").await;
    // Someone reconnecting to the open doc gets in, and sees everything.
    let mut back = Peer::connect(two.addr, "pg-down/open.md").await;
    back.wait_text(|text| text == "before;during;back;").await;
    // A version needs Postgres: that request alone fails, and the doc goes on.
    let response = one
        .request(
            "POST",
            "/api/docs/pg-down/open.md/versions",
            &[("Content-Type", "application/json")],
            br#"{"name": "while postgres is down"}"#,
        )
        .await;
    assert_eq!(response.status, 503, "{}", response.text());
    alice.append_text("still;").await;
    bob.wait_text(|text| text == "before;during;back;still;")
        .await;
    assert!(alice.closed.is_none() && bob.closed.is_none());
    // A doc nobody has open needs Postgres (is the path a file? its snapshot): refused, to be
    // retried, with a clear answer.
    let (status, body) =
        tandem_tests::upgrade_refusal(Peer::try_connect_raw(two.addr, "pg-down/cold.md").await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "storage_unavailable", "{body}");

    cluster.postgres.restart();
    let reachable = async || {
        let Ok(mut retry) = Peer::try_connect_raw(two.addr, "pg-down/cold.md").await else {
            return false;
        };
        retry.append_text("loaded").await;
        tokio::time::timeout(
            Duration::from_millis(500),
            retry.wait_text(|t| t == "loaded"),
        )
        .await
        .is_ok()
            && retry.closed.is_none()
    };
    tandem_tests::wait_until("a cold load once postgres is back", reachable).await;
    let mut late = Peer::connect(one.addr, "pg-down/open.md").await;
    late.wait_text(|text| text == "before;during;back;still;")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_durability_acknowledges_only_what_a_replica_received() {
    let primary = Redis::start();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let synced = async || {
        primary
            .cli(&["INFO", "replication"])
            .contains("connected_slaves:1")
    };
    tandem_tests::wait_until("the replica attached", synced).await;
    let postgres = Postgres::start();
    let blobs = tempfile::tempdir().expect("temp dir");
    let replicated = |config: &mut Config| {
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.engines.durability = tandem_cluster::Durability::Replica;
            cluster.engines.replica_timeout = Duration::from_millis(300);
        }
    };
    let one = TestServer::start_node(&primary, &postgres, blobs.path(), replicated).await;
    one.wait_healthy().await;
    let two = TestServer::start_node(&primary, &postgres, blobs.path(), replicated).await;
    two.wait_healthy().await;
    let mut alice = Peer::connect(one.addr, "replicated.md").await;
    let mut bob = Peer::connect(two.addr, "replicated.md").await;
    alice.append_text("on two machines").await;
    bob.wait_text(|text| text == "on two machines").await;
    let on_replica = async || replica.cli(&["XLEN", "tandem:doc:replicated.md"]) == "1";
    tandem_tests::wait_until("the update on the replica", on_replica).await;

    // Without a replica to wait for, the sender's update is refused: not acknowledged, not
    // relayed by its node, and the sender is told to retry.
    drop(replica);
    alice.append_text(" and one").await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1013, "storage unavailable, retry later")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_of_a_doc_nobody_edits_any_more_is_trimmed_to_nothing() {
    let cluster = Cluster::start();
    let quick = |config: &mut Config| {
        config.hub.doc_unload_grace = Duration::from_millis(100);
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.engines.trim_margin = Duration::from_secs(1);
        }
    };
    let one = cluster.node(quick).await;
    let mut writer = Peer::connect(one.addr, "quiet.md").await;
    for i in 0..25 {
        writer.append_text(&format!("<{i}>")).await;
    }
    let text = writer.wait_text(|text| text.contains("<24>")).await;
    writer.close().await;
    // The doc unloads (its last compaction keeps the young entries), then the janitor trims.
    let empty = async || cluster.redis.cli(&["XLEN", "tandem:doc:quiet.md"]) == "0";
    tandem_tests::wait_until("the stream trimmed to nothing", empty).await;
    let mut reader = Peer::connect(one.addr, "quiet.md").await;
    assert_eq!(reader.wait_text(|loaded| loaded == text).await, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_one_node_signs_is_good_on_every_node() {
    let cluster = Cluster::start();
    let jwt = |config: &mut Config| config.auth.mode = tandem_server::auth::AuthMode::Jwt;
    let one = cluster.node(jwt).await;
    let two = cluster.node(jwt).await;
    let claims = tandem_tests::own_claims("ada", &[("team/*", tandem_server::auth::Role::Write)]);
    // Signed with node one's key file, which holds the key the cluster shares.
    let token = one.mint(&claims);
    let mut on_two = two.connect_with_token("team/plan.md", &token).await;
    on_two.append_text("signed on one, used on two").await;
    let mut on_one = one.connect_with_token("team/plan.md", &token).await;
    on_one
        .wait_text(|text| text == "signed on one, used on two")
        .await;
    assert_eq!(
        std::fs::read(one.data_dir().join("server-key")).expect("node one's key"),
        std::fs::read(two.data_dir().join("server-key")).expect("node two's key"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_redis_fails_its_health_check_until_redis_is_back() {
    let mut cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let health = async |node: &TestServer| {
        let (status, body) = node.http_get("/healthz", "application/json").await;
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        (status, body)
    };
    let (status, body) = health(&one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cluster"]["redis"], true, "{body}");
    assert_eq!(body["cluster"]["postgres"], true, "{body}");

    cluster.redis.kill();
    let (status, body) = health(&one).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["cluster"]["redis"], false, "{body}");

    cluster.redis.restart();
    let healthy = async || health(&one).await.0 == 200;
    tandem_tests::wait_until("healthy again once redis is back", healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_user_add_writes_the_clusters_accounts_without_any_node_running() {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::start();
    let bin = tokio::task::spawn_blocking(tandem_tests::tandem_bin)
        .await
        .expect("building the binary");
    let empty_dir = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(bin)
        .args([
            "user",
            "add",
            "ada",
            "--doc",
            "team/*=write",
            "--password-stdin",
        ])
        .arg("--data-dir")
        .arg(empty_dir.path())
        .args(["--redis-url", &cluster.redis.url()])
        .args(["--postgres-url", &cluster.postgres.url()])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem user add");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"correct horse battery staple\n")
        .await
        .expect("write the password");
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("tandem user add ends")
        .expect("its output");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A node started afterwards, on a data directory of its own, signs the account in.
    let node = cluster
        .node(|config| config.auth.mode = tandem_server::auth::AuthMode::Jwt)
        .await;
    let body = serde_json::json!({ "username": "ada", "password": "correct horse battery staple" });
    let response = node
        .request(
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

/// A key damaged in Redis (here, a doc's stream replaced by a string) once made a node's one
/// blocking read fail for every doc it follows (the failure y/hub's issue 61 describes). The
/// node now finds the key, stops following that doc alone, and refuses its writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stream_stops_only_its_own_doc() {
    let cluster = Cluster::start();
    let one = cluster.node(|_| {}).await;
    let two = cluster.node(|_| {}).await;
    let mut writer = Peer::connect(one.addr, "fine.md").await;
    let mut reader = Peer::connect(two.addr, "fine.md").await;
    let mut unlucky = Peer::connect(two.addr, "damaged.md").await;
    unlucky.append_text("before").await;
    let written = async || cluster.redis.cli(&["XLEN", "tandem:doc:damaged.md"]) == "1";
    tandem_tests::wait_until("the damaged doc's first update stored", written).await;
    writer.append_text("one;").await;
    reader.wait_text(|text| text == "one;").await;

    cluster.redis.cli(&["DEL", "tandem:doc:damaged.md"]);
    cluster
        .redis
        .cli(&["SET", "tandem:doc:damaged.md", "not a stream"]);
    writer.append_text("two;").await;
    reader.wait_text(|text| text == "one;two;").await;
    // The damaged doc's writer is refused, not acknowledged.
    unlucky.append_text(" after").await;
    let (code, _) = unlucky.expect_close().await;
    assert_eq!(code, 1013);
    writer.append_text("three;").await;
    reader.wait_text(|text| text == "one;two;three;").await;
}
