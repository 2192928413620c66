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
        config.hub.doc_unload_grace = Duration::from_millis(200);
    };
    let one = cluster.node(compact_often).await;
    let two = cluster.node(compact_often).await;
    let mut writer = Peer::connect(one.addr, "compacted.md").await;
    for i in 0..35 {
        writer.append_text(&format!("[{i}]")).await;
    }
    let text = writer.wait_text(|text| text.contains("[34]")).await;
    let snapshots = async || {
        cluster
            .postgres
            .psql("SELECT count(*) FROM tandem_docs WHERE name = 'compacted.md'")
            == "1"
    };
    tandem_tests::wait_until("a snapshot in postgres", snapshots).await;
    drop(writer);
    one.wait_unloaded("compacted.md").await;

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
        },
        blob_dir: blobs.path().to_path_buf(),
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
