//! Cluster mode's shared service state, with real engines: accounts, the activity feed and
//! webhooks live in Postgres, so every node sees the same ones; an account made on one node
//! signs in on another, the feed of any node lists what happened on every node under distinct
//! ids, each webhook delivery is made by exactly one node, and with Postgres down the services
//! answer 503 while live editing goes on.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tandem_server::Config;
use tandem_server::auth::{AuthMode, Role};
use tandem_tests::engines::{Postgres, Redis};
use tandem_tests::{HttpResponse, Peer, TestServer, bearer, wait_until};
use tokio::net::TcpListener;

const PASSWORD: &str = "correct horse battery staple";

/// A Redis and a Postgres of the test's own, and the blob directory the nodes share.
struct Cluster {
    redis: Redis,
    postgres: Postgres,
    blobs: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster {
            redis: Redis::start(),
            postgres: Postgres::start(),
            blobs: tempfile::tempdir().expect("temp dir"),
        }
    }

    async fn node(&self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let node =
            TestServer::start_node(&self.redis, &self.postgres, self.blobs.path(), adjust).await;
        node.wait_healthy().await;
        node
    }
}

/// Authentication on (sign-in needs it), each node with its own key.
fn with_accounts(config: &mut Config) {
    config.auth.mode = AuthMode::Jwt;
}

async fn login(node: &TestServer, username: &str, password: &str) -> HttpResponse {
    let body = json!({ "username": username, "password": password }).to_string();
    node.request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

async fn put_user(node: &TestServer, sub: &str, body: &Value) -> HttpResponse {
    let admin = bearer(&node.admin_token());
    node.request(
        "PUT",
        &format!("/api/users/{sub}"),
        &[
            ("Authorization", &admin),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_made_on_one_node_signs_in_on_another_and_its_removal_holds_everywhere() {
    let cluster = Cluster::start();
    let one = cluster.node(with_accounts).await;
    let two = cluster.node(with_accounts).await;

    let created = put_user(
        &one,
        "ada",
        &json!({ "name": "Ada", "password": PASSWORD, "docs": { "team/*": "write" } }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());

    let signed_in = login(&two, "ada", PASSWORD).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text());
    assert_eq!(signed_in.json()["name"], "Ada");
    let wrong = login(&two, "ada", "not the password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());

    let admin_two = bearer(&two.admin_token());
    let listed = two
        .request("GET", "/api/users", &[("Authorization", &admin_two)], b"")
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["users"][0]["sub"], "ada");

    let removed = two
        .request(
            "DELETE",
            "/api/users/ada",
            &[("Authorization", &admin_two)],
            b"",
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let refused = login(&one, "ada", PASSWORD).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.json()["error"], "bad_credentials");
}

/// Regression: failed sign-ins were counted per node, so behind a round-robin balancer N
/// nodes gave an attacker N times the guesses. The failures are counted in Postgres too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_on_every_node_count_against_one_limit() {
    let cluster = Cluster::start();
    let three_failures = |config: &mut Config| {
        with_accounts(config);
        config.accounts.max_failures_per_account = 3;
    };
    let one = cluster.node(three_failures).await;
    let two = cluster.node(three_failures).await;
    let created = put_user(
        &one,
        "ada",
        &json!({ "name": "Ada", "password": PASSWORD, "docs": { "*": "read" } }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());

    for node in [&one, &two, &one] {
        let wrong = login(node, "ada", "a guess").await;
        assert_eq!(wrong.status, 401, "{}", wrong.text());
    }
    // Node two saw one failure itself; the other two were on node one.
    let refused = login(&two, "ada", PASSWORD).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"], "too_many_attempts");
    assert!(refused.header("retry-after").is_some());
}

/// Quick edit reports, so the feed shows edits soon after they are made.
fn quick_reports(config: &mut Config) {
    config.hub.doc_changed_interval = Duration::from_millis(50);
    config.hub.doc_unload_grace = Duration::from_millis(100);
}

async fn feed(node: &TestServer) -> Vec<Value> {
    let response = node
        .request("GET", "/api/activity?limit=100", &[], b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn type_into(node: &TestServer, doc: &str, text: &str) {
    let mut peer = Peer::connect(node.addr, doc).await;
    peer.append_text(text).await;
    peer.wait_text(|got| got.contains(text)).await;
    peer.close().await;
}

/// Regression: each node's recorder counted entry ids up from the same stored value, so two
/// nodes gave their entries the same ids and one overwrote the other in the shared feed. Ids
/// now come from a Postgres sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_of_any_node_lists_edits_made_on_every_node_under_distinct_ids() {
    let cluster = Cluster::start();
    let one = cluster.node(quick_reports).await;
    let two = cluster.node(quick_reports).await;
    let three = cluster.node(quick_reports).await;

    // Both recorders have started before either records anything.
    type_into(&one, "from-one.md", "written on one").await;
    type_into(&two, "from-two.md", "written on two").await;
    type_into(&one, "also-one.md", "more on one").await;
    type_into(&two, "also-two.md", "more on two").await;

    let wanted = ["from-one.md", "from-two.md", "also-one.md", "also-two.md"];
    let mut entries = Vec::new();
    wait_until("the feed of node three lists the four edits", async || {
        entries = feed(&three).await;
        wanted
            .iter()
            .all(|doc| entries.iter().any(|entry| entry["path"] == *doc))
    })
    .await;
    let mut ids: Vec<u64> = entries
        .iter()
        .map(|entry| entry["id"].as_u64().expect("numeric id"))
        .collect();
    let n_entries = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n_entries, "distinct ids: {entries:?}");
    for entry in &entries {
        assert_eq!(entry["kind"], "doc.edited", "{entry}");
        assert!(entry["n_updates"].as_u64() >= Some(1), "{entry}");
    }
}

/// What the receiver got: requests per delivery id, and the events they carried.
#[derive(Default)]
struct Receipts {
    per_delivery: HashMap<String, u32>,
    /// `(event, path)` of each distinct delivery.
    events: Vec<(String, String)>,
}

/// Answers every request 200 after `answer_after` (a slow receiver keeps attempts in flight, so
/// the nodes' workers overlap) and records it in `receipts`. Runs until dropped; one connection
/// at a time (the server closes each).
async fn receive(listener: TcpListener, answer_after: Duration, receipts: Arc<Mutex<Receipts>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let receipts = receipts.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let receipts = receipts.clone();
            async move {
                let delivery_id = request
                    .headers()
                    .get("tandem-delivery-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                {
                    let mut receipts = receipts.lock().unwrap();
                    let n = receipts.per_delivery.entry(delivery_id).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        let path = body["data"]["doc"]
                            .as_str()
                            .or(body["data"]["path"].as_str())
                            .unwrap_or_default()
                            .to_owned();
                        let event = body["event"].as_str().unwrap_or_default().to_owned();
                        receipts.events.push((event, path));
                    }
                }
                tokio::time::sleep(answer_after).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }
}

fn quick_webhooks(config: &mut Config) {
    quick_reports(config);
    config.webhooks.allow_private = true;
    config.webhooks.debounce = Duration::from_millis(100);
    config.webhooks.max_delay = Duration::from_millis(500);
}

async fn upload(node: &TestServer, path: &str) {
    let response = node
        .request("PUT", &format!("/api/files/{path}"), &[], &[7u8; 1000])
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
}

/// Regression: every node's delivery worker read the due rows of the one outbox, so two nodes
/// could send the same delivery. `due_deliveries` now claims the rows it returns (`FOR UPDATE
/// SKIP LOCKED`), and a registration made on one node reaches the others' caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_registered_on_one_node_gets_each_event_of_every_node_exactly_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    let receiver = receive(listener, Duration::from_millis(150), receipts.clone());
    tokio::select! {
        () = receiver => unreachable!("the receiver runs until dropped"),
        () = deliver_exactly_once(&url, &receipts) => {}
    }
}

async fn deliver_exactly_once(url: &str, receipts: &Mutex<Receipts>) {
    let cluster = Cluster::start();
    let one = cluster.node(quick_webhooks).await;
    let two = cluster.node(quick_webhooks).await;
    let three = cluster.node(quick_webhooks).await;

    let body = json!({ "url": url, "events": ["doc.changed", "file.uploaded"], "secret": "s" });
    let added = one
        .request(
            "POST",
            "/api/webhooks",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let id = added.json()["webhook"]["id"]
        .as_str()
        .expect("webhook id")
        .to_owned();
    // A node answers for a webhook once its cache holds it.
    for node in [&two, &three] {
        wait_until("the registration reaches every node", async || {
            node.request("GET", &format!("/api/webhooks/{id}/deliveries"), &[], b"")
                .await
                .status
                == 200
        })
        .await;
    }

    // Events on every node at once, so the three workers' passes overlap.
    tokio::join!(
        type_into(&one, "one.md", "edit on one"),
        type_into(&two, "two.md", "edit on two"),
        upload(&two, "files/two.bin"),
        upload(&three, "files/three.bin"),
        type_into(&three, "three.md", "edit on three"),
    );
    let wanted = [
        ("doc.changed", "one.md"),
        ("doc.changed", "two.md"),
        ("doc.changed", "three.md"),
        ("file.uploaded", "files/two.bin"),
        ("file.uploaded", "files/three.bin"),
    ];
    wait_until("every event delivered", async || {
        let receipts = receipts.lock().unwrap();
        wanted.iter().all(|(event, path)| {
            receipts
                .events
                .iter()
                .any(|(got_event, got_path)| got_event == event && got_path == path)
        })
    })
    .await;
    // Each delivery is logged once its attempt is finished, and leaves the outbox.
    let mut log = Value::Null;
    wait_until("the outbox drained and every delivery logged", async || {
        let response = one
            .request("GET", &format!("/api/webhooks/{id}/deliveries"), &[], b"")
            .await;
        log = response.json();
        let n_deliveries = receipts.lock().unwrap().per_delivery.len();
        log["pending"].as_array().is_some_and(Vec::is_empty)
            && log["deliveries"]
                .as_array()
                .is_some_and(|attempts| attempts.len() >= n_deliveries)
    })
    .await;
    let receipts = receipts.lock().unwrap();
    for (delivery_id, n) in &receipts.per_delivery {
        assert_eq!(*n, 1, "delivery {delivery_id} was sent {n} times");
    }
    let attempts = log["deliveries"].as_array().expect("attempts");
    assert_eq!(attempts.len(), receipts.per_delivery.len(), "{log}");
    for attempt in attempts {
        assert_eq!(attempt["outcome"], "delivered", "{attempt}");
    }
}

/// Regression: a failure of cluster mode's Postgres answered 500 `internal`. It is 503 with
/// the JSON error shape now, the edits of open docs go on through Redis, and sign-in works
/// again once Postgres is back, without a restart of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_sign_in_answers_503_and_live_editing_goes_on() {
    let mut cluster = Cluster::start();
    let one = cluster.node(with_accounts).await;
    let two = cluster.node(with_accounts).await;
    let created = put_user(
        &one,
        "ada",
        &json!({ "name": "Ada", "password": PASSWORD, "docs": { "*": "write" } }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(login(&one, "ada", PASSWORD).await.status, 200);

    let mut alice = one
        .connect_with_token("live.md", &one.token("alice", &[("*", Role::Write)]))
        .await;
    let mut bob = two
        .connect_with_token("live.md", &two.token("bob", &[("*", Role::Write)]))
        .await;
    alice.append_text("before;").await;
    bob.wait_text(|text| text.contains("before;")).await;

    cluster.postgres.stop();
    let refused = login(&one, "ada", PASSWORD).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    assert!(body["message"].is_string(), "{body}");

    alice.append_text("during;").await;
    bob.wait_text(|text| text.contains("during;")).await;
    bob.append_text("reply;").await;
    alice.wait_text(|text| text.contains("reply;")).await;

    cluster.postgres.restart();
    wait_until("sign-in works again", async || {
        login(&one, "ada", PASSWORD).await.status == 200
    })
    .await;
    assert_eq!(login(&two, "ada", PASSWORD).await.status, 200);
}
