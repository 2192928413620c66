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
    // Each event was queued once, by the node it happened on (one edit, one upload each).
    let mut events = receipts.events.clone();
    events.sort();
    let mut expected: Vec<(String, String)> = wanted
        .iter()
        .map(|(event, path)| ((*event).to_owned(), (*path).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(events, expected);
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

/// The Postgres tables of one cluster, beside a redb store: the same calls must give the same
/// answers (the contracts of `tandem_store::meta` say "exactly what the `Store` method does").
struct Both {
    _redis: Redis,
    _postgres: Postgres,
    _dir: tempfile::TempDir,
    cluster: Arc<tandem_cluster::ClusterLog>,
    store: Arc<tandem_store::Store>,
}

impl Both {
    async fn start() -> Both {
        let redis = Redis::start();
        let postgres = Postgres::start();
        let cluster = tandem_cluster::ClusterLog::start(tandem_cluster::ClusterConfig {
            redis_url: redis.url(),
            postgres_url: postgres.url(),
            durability: tandem_cluster::Durability::Local,
            replica_timeout: Duration::from_secs(2),
            trim_margin: tandem_server::config::DEFAULT_CLUSTER_TRIM_MARGIN,
            commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
        })
        .await
        .expect("cluster starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(tandem_store::Store::open(&dir.path().join("t.redb")).expect("store"));
        Both {
            _redis: redis,
            _postgres: postgres,
            _dir: dir,
            cluster,
            store,
        }
    }

    fn pg(&self) -> &tandem_cluster::PgMeta {
        self.cluster.meta()
    }
}

/// `method path` on `node` with an admin token and a JSON `body`.
async fn admin_call(node: &TestServer, method: &str, path: String, body: &str) -> HttpResponse {
    let admin = bearer(&node.admin_token());
    node.request(
        method,
        &path,
        &[
            ("Authorization", &admin),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

/// App passwords live with the account in Postgres: made on one node, they are listed on the
/// other, survive a change of the account there, and a revocation on either holds for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_made_on_one_node_are_listed_and_revoked_on_another() {
    let cluster = Cluster::start();
    let one = cluster.node(with_accounts).await;
    let two = cluster.node(with_accounts).await;
    let created = put_user(&one, "ada", &json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let apps = || "/api/users/ada/app-passwords".to_owned();
    let made = admin_call(&one, "POST", apps(), r#"{"label":"laptop"}"#).await;
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().expect("id").to_owned();
    let kept = admin_call(&one, "POST", apps(), r#"{"label":"rclone"}"#).await;
    assert_eq!(kept.status, 201, "{}", kept.text());
    // A change of the account on the other node keeps them.
    let renamed = put_user(&two, "ada", &json!({ "name": "Ada L." })).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    let labels = |response: HttpResponse| -> Vec<String> {
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["app_passwords"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|app| app["label"].as_str().expect("label").to_owned())
            .collect()
    };
    assert_eq!(
        labels(admin_call(&two, "GET", apps(), "").await),
        ["laptop", "rclone"]
    );
    let revoked = admin_call(
        &two,
        "DELETE",
        format!("/api/users/ada/app-passwords/{id}"),
        "",
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(
        labels(admin_call(&one, "GET", apps(), "").await),
        ["rclone"]
    );
    let again = admin_call(
        &one,
        "DELETE",
        format!("/api/users/ada/app-passwords/{id}"),
        "",
    )
    .await;
    assert_eq!(again.status, 404, "{}", again.text());
    assert_eq!(again.json()["error"], "app_password_not_found");
}

fn user(sub: &str) -> tandem_store::UserRecord {
    tandem_store::UserRecord {
        sub: sub.into(),
        name: format!("{sub} the user"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        docs: [("team/*", "write"), ("team/archive/*", "read")]
            .into_iter()
            .map(|(pattern, role)| (pattern.to_owned(), role.to_owned()))
            .collect(),
        admin: sub == "root",
        created_ms: 1_795_400_000_000,
        app_passwords: (sub == "ada")
            .then(|| tandem_store::AppPasswordRecord {
                id: "a1b2c3d4e5f6".into(),
                label: "laptop".into(),
                secret_sha256: [9; 32],
                created_ms: 1_795_400_000_001,
                last_used_ms: 1_795_400_360_000,
            })
            .into_iter()
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_accounts_answer_as_the_store_does() {
    use tandem_store::meta::UserTable;
    let both = Both::start().await;
    let tables: [&dyn UserTable; 2] = [&*both.store, both.pg()];
    let mut answers = Vec::new();
    for table in tables {
        table.put_user(&user("bob")).unwrap();
        table.put_user(&user("ada")).unwrap();
        table.put_user(&user("root")).unwrap();
        let changed = tandem_store::UserRecord {
            docs: Default::default(),
            name: String::new(),
            ..user("ada")
        };
        table.put_user(&changed).unwrap();
        // A change made from what is stored, as app passwords are added and revoked.
        let added = table
            .modify_user("ada", &mut |current| {
                let mut user = current?.clone();
                user.app_passwords.push(tandem_store::AppPasswordRecord {
                    id: "0f0f0f0f0f0f".into(),
                    label: "rclone".into(),
                    secret_sha256: [3; 32],
                    created_ms: 5,
                    last_used_ms: 0,
                });
                Some(user)
            })
            .unwrap();
        let untouched = table
            .modify_user("nobody", &mut |current| current.cloned())
            .unwrap();
        answers.push((
            (added, untouched),
            table.get_user("ada").unwrap(),
            table.get_user("nobody").unwrap(),
            table.list_users().unwrap(),
            table.count_users().unwrap(),
            table.remove_user("bob").unwrap(),
            table.remove_user("bob").unwrap(),
            table.count_users().unwrap(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1].3.len(), 3);
    let ada = answers[1].1.as_ref().expect("ada");
    assert_eq!(ada.app_passwords.len(), 2);
    assert_eq!(ada.app_passwords[1].label, "rclone");
    assert_eq!(answers[1].0.1, None);
}

fn entry(id: u64, path: &str, actor: &str, started_ms: u64) -> tandem_store::ActivityEntry {
    tandem_store::ActivityEntry {
        id,
        kind: "doc.edited".into(),
        path: path.into(),
        other_paths: Vec::new(),
        actor_sub: Some(actor.into()),
        actor_name: actor.to_uppercase(),
        started_ms,
        ended_ms: started_ms + 10,
        n_updates: 3,
        details: "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_feed_pages_filters_and_prunes_as_the_store_does() {
    use tandem_store::ActivityQuery;
    use tandem_store::meta::ActivityTable;
    let both = Both::start().await;
    let tables: [&dyn ActivityTable; 2] = [&*both.store, both.pg()];
    let query = |limit: usize| ActivityQuery {
        limit,
        max_span_ms: 1000,
        max_scan: 10_000,
        ..ActivityQuery::default()
    };
    let ids = |page: &[tandem_store::ActivityEntry]| page.iter().map(|e| e.id).collect::<Vec<_>>();
    let mut answers = Vec::new();
    for table in tables {
        let mut entries: Vec<_> = (1..=7)
            .map(|id| entry(id, if id % 2 == 0 { "a" } else { "f/b" }, "ada", id * 100))
            .collect();
        entries[6].actor_sub = Some("bob".into());
        entries[6].other_paths = vec!["old/b".into()];
        entries.push(tandem_store::ActivityEntry {
            kind: "file.uploaded".into(),
            actor_sub: None,
            ..entry(8, "f/c_d", "Anon", 800)
        });
        table
            .write_activity(&tandem_store::ActivityWrite {
                entries,
                deliveries: Vec::new(),
                next_entry_id: 9,
            })
            .unwrap();
        // An extended session replaces its entry.
        let mut longer = entry(2, "a", "ada", 200);
        longer.ended_ms = 650;
        longer.n_updates = 40;
        table
            .write_activity(&tandem_store::ActivityWrite {
                entries: vec![longer],
                deliveries: Vec::new(),
                next_entry_id: 9,
            })
            .unwrap();
        let mut answer: Vec<(Vec<u64>, Option<u64>)> = Vec::new();
        let mut list = |q: ActivityQuery| {
            let (page, next) = table.list_activity(&q, &mut |_| true).unwrap();
            answer.push((ids(&page), next));
        };
        list(query(3));
        list(ActivityQuery {
            before_id: Some(6),
            ..query(3)
        });
        list(ActivityQuery {
            before_id: Some(3),
            ..query(3)
        });
        for path in ["a", "old/b", "f/b"] {
            list(ActivityQuery {
                path: Some(path.into()),
                ..query(10)
            });
        }
        for prefix in ["f/", "old/", "f/c_", "f/c%", "x"] {
            list(ActivityQuery {
                prefix: Some(prefix.into()),
                ..query(10)
            });
        }
        for actor in ["bob", "ada", "Anon"] {
            list(ActivityQuery {
                actor: Some(actor.into()),
                ..query(10)
            });
        }
        list(ActivityQuery {
            since_ms: Some(500),
            ..query(10)
        });
        list(ActivityQuery {
            max_scan: 2,
            ..query(10)
        });
        let (hidden, _) = table
            .list_activity(&query(10), &mut |e| e.path != "a")
            .unwrap();
        answer.push((ids(&hidden), None));
        let latest = table.latest_activity("a", "doc.edited", "ada").unwrap();
        let none = table.latest_activity("a", "file.uploaded", "ada").unwrap();
        let pruned = table.prune_activity(300, 1000).unwrap();
        let after = table.list_activity(&query(20), &mut |_| true).unwrap();
        answers.push((answer, latest, none, pruned, after));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1].3, 1, "only entry 1 ended before the cutoff");
    assert_eq!(answers[1].4.0.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_webhooks_queue_finish_and_log_as_the_store_does() {
    use tandem_store::meta::{ActivityTable, WebhookTable};
    use tandem_store::{DeliveryAttempt, FinishedAttempt, OutboxDelivery, WebhookRecord};
    let both = Both::start().await;
    let webhook = |id: &str| WebhookRecord {
        id: id.into(),
        url: format!("https://example.com/{id}"),
        events: vec!["doc.changed".into(), "file.uploaded".into()],
        secret: "s".into(),
        docs: (id == "wh_b").then(|| "team/*".into()),
        created_ms: 5,
    };
    let delivery = |webhook_id: &str, n: u64| OutboxDelivery {
        seq: 0,
        delivery_id: format!("dlv_{webhook_id}_{n}"),
        webhook_id: webhook_id.into(),
        event: "doc.changed".into(),
        body: format!("{{\"n\":{n}}}"),
        created_ms: 100 + n,
        attempts: 0,
        next_attempt_ms: 100 + n,
    };
    let attempt = |delivery: &OutboxDelivery, outcome: &str| DeliveryAttempt {
        delivery_id: delivery.delivery_id.clone(),
        event: delivery.event.clone(),
        at_ms: 1000,
        status: (outcome != "retry").then_some(200),
        error: (outcome == "retry").then(|| "connection refused".into()),
        duration_ms: 7,
        outcome: outcome.into(),
    };
    let store: (&dyn WebhookTable, &dyn ActivityTable) = (&*both.store, &*both.store);
    let pg: (&dyn WebhookTable, &dyn ActivityTable) = (both.pg(), both.pg());
    let mut answers = Vec::new();
    for (hooks, activity) in [store, pg] {
        hooks.put_webhook(&webhook("wh_b")).unwrap();
        hooks.put_webhook(&webhook("wh_a")).unwrap();
        let seqs = activity
            .write_activity(&tandem_store::ActivityWrite {
                entries: Vec::new(),
                deliveries: vec![
                    delivery("wh_a", 1),
                    delivery("gone", 2),
                    delivery("wh_b", 3),
                    delivery("wh_a", 4),
                ],
                next_entry_id: 1,
            })
            .unwrap();
        let outbox = hooks.list_outbox(10).unwrap();
        let (due, next_due) = hooks.due_deliveries(103, 10).unwrap();
        let finished = hooks
            .finish_attempts(
                &[
                    FinishedAttempt {
                        delivery: due[0].clone(),
                        attempt: Some(attempt(&due[0], "retry")),
                        next_attempt_ms: Some(5000),
                    },
                    FinishedAttempt {
                        delivery: due[1].clone(),
                        attempt: Some(attempt(&due[1], "delivered")),
                        next_attempt_ms: None,
                    },
                ],
                1,
            )
            .unwrap();
        let after_finish = hooks.list_outbox(10).unwrap();
        let log_a = hooks.list_deliveries("wh_a").unwrap();
        let log_b = hooks.list_deliveries("wh_b").unwrap();
        let (later, later_next) = hooks.due_deliveries(6000, 10).unwrap();
        // Not attempted, its webhook still there: it stays (and, in Postgres, is free again).
        let unattempted = hooks
            .finish_attempts(
                &later
                    .iter()
                    .map(|delivery| FinishedAttempt {
                        delivery: delivery.clone(),
                        attempt: None,
                        next_attempt_ms: None,
                    })
                    .collect::<Vec<_>>(),
                10,
            )
            .unwrap();
        let (again, _) = hooks.due_deliveries(6000, 10).unwrap();
        let removed = (
            hooks.remove_webhook("wh_a").unwrap(),
            hooks.remove_webhook("wh_a").unwrap(),
        );
        answers.push((
            (seqs, outbox, due, next_due, finished, after_finish),
            (log_a, log_b, later, later_next, unattempted, again),
            (
                removed,
                hooks.list_outbox(10).unwrap(),
                hooks.list_deliveries("wh_a").unwrap(),
                hooks.list_webhooks().unwrap(),
            ),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[1].0.0,
        vec![1, 2, 3],
        "the delivery to a missing webhook is dropped"
    );
}

/// What the one-node store never needed: a delivery one node claimed is not handed to another
/// until that node finishes it or its claim lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_delivery_is_not_due_for_another_node_until_finished() {
    use tandem_store::meta::{ActivityTable, WebhookTable};
    let cluster = Cluster::start();
    let config = || tandem_cluster::ClusterConfig {
        redis_url: cluster.redis.url(),
        postgres_url: cluster.postgres.url(),
        durability: tandem_cluster::Durability::Local,
        replica_timeout: Duration::from_secs(2),
        trim_margin: tandem_server::config::DEFAULT_CLUSTER_TRIM_MARGIN,
        commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
    };
    let one = tandem_cluster::ClusterLog::start(config()).await.unwrap();
    let two = tandem_cluster::ClusterLog::start(config()).await.unwrap();
    let (one, two) = (one.meta(), two.meta());
    one.put_webhook(&tandem_store::WebhookRecord {
        id: "wh".into(),
        url: "https://example.com/".into(),
        events: vec!["doc.changed".into()],
        secret: "s".into(),
        docs: None,
        created_ms: 1,
    })
    .unwrap();
    let queued = tandem_store::OutboxDelivery {
        seq: 0,
        delivery_id: "dlv_1".into(),
        webhook_id: "wh".into(),
        event: "doc.changed".into(),
        body: "{}".into(),
        created_ms: 1,
        attempts: 0,
        next_attempt_ms: 1,
    };
    one.write_activity(&tandem_store::ActivityWrite {
        entries: Vec::new(),
        deliveries: vec![queued],
        next_entry_id: 1,
    })
    .unwrap();
    let (claimed, _) = one.due_deliveries(u64::MAX, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    let (none, next_due) = two.due_deliveries(u64::MAX, 10).unwrap();
    assert!(none.is_empty(), "claimed by node one: {none:?}");
    let now = tandem_tests::unix_now() * 1000;
    assert!(
        next_due.is_some_and(|at| at > now + 60_000),
        "due again when the claim lapses: {next_due:?}"
    );
    // Node two cannot finish what node one claimed; node one's finish reschedules it for all.
    let retry = tandem_store::FinishedAttempt {
        delivery: claimed[0].clone(),
        attempt: Some(tandem_store::DeliveryAttempt {
            delivery_id: "dlv_1".into(),
            event: "doc.changed".into(),
            at_ms: 2,
            status: Some(500),
            error: None,
            duration_ms: 1,
            outcome: "retry".into(),
        }),
        next_attempt_ms: Some(3),
    };
    assert_eq!(
        two.finish_attempts(std::slice::from_ref(&retry), 10)
            .unwrap(),
        0
    );
    assert_eq!(one.finish_attempts(&[retry], 10).unwrap(), 1);
    let (taken_over, _) = two.due_deliveries(u64::MAX, 10).unwrap();
    assert_eq!(taken_over.len(), 1);
    assert_eq!(taken_over[0].attempts, 1);
}

/// A node that dies holding a claim: once the claim lapses, another node takes the delivery
/// over, and what the first might still report about it is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_hands_the_delivery_to_another_node() {
    use tandem_store::meta::{ActivityTable, WebhookTable};
    let cluster = Cluster::start();
    let config = || tandem_cluster::ClusterConfig {
        redis_url: cluster.redis.url(),
        postgres_url: cluster.postgres.url(),
        durability: tandem_cluster::Durability::Local,
        replica_timeout: Duration::from_secs(2),
        trim_margin: tandem_server::config::DEFAULT_CLUSTER_TRIM_MARGIN,
        commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
    };
    let one = tandem_cluster::ClusterLog::start(config()).await.unwrap();
    let two = tandem_cluster::ClusterLog::start(config()).await.unwrap();
    let (one, two) = (one.meta(), two.meta());
    one.put_webhook(&tandem_store::WebhookRecord {
        id: "wh".into(),
        url: "https://example.com/".into(),
        events: vec!["file.uploaded".into()],
        secret: "s".into(),
        docs: None,
        created_ms: 1,
    })
    .unwrap();
    one.write_activity(&tandem_store::ActivityWrite {
        entries: Vec::new(),
        deliveries: vec![tandem_store::OutboxDelivery {
            seq: 0,
            delivery_id: "dlv_1".into(),
            webhook_id: "wh".into(),
            event: "file.uploaded".into(),
            body: "{}".into(),
            created_ms: 1,
            attempts: 0,
            next_attempt_ms: 1,
        }],
        next_entry_id: 1,
    })
    .unwrap();
    let (claimed, _) = one.due_deliveries(u64::MAX, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    // Node one dies; its claim lapses (here at once, instead of after `DELIVERY_CLAIM`).
    cluster
        .postgres
        .psql("UPDATE tandem_webhook_outbox SET claimed_until_ms = 0");
    let (taken_over, _) = two.due_deliveries(u64::MAX, 10).unwrap();
    assert_eq!(taken_over, claimed, "due again once the claim lapsed");
    let (none, _) = one.due_deliveries(u64::MAX, 10).unwrap();
    assert!(none.is_empty(), "claimed by node two now: {none:?}");
    let delivered = |delivery: &tandem_store::OutboxDelivery| tandem_store::FinishedAttempt {
        delivery: delivery.clone(),
        attempt: Some(tandem_store::DeliveryAttempt {
            delivery_id: "dlv_1".into(),
            event: "file.uploaded".into(),
            at_ms: 2,
            status: Some(200),
            error: None,
            duration_ms: 1,
            outcome: "delivered".into(),
        }),
        next_attempt_ms: None,
    };
    assert_eq!(
        one.finish_attempts(&[delivered(&claimed[0])], 10).unwrap(),
        0
    );
    assert_eq!(two.list_outbox(10).unwrap().len(), 1, "still node two's");
    assert_eq!(
        two.finish_attempts(&[delivered(&taken_over[0])], 10)
            .unwrap(),
        1
    );
    assert!(one.list_outbox(10).unwrap().is_empty());
    assert_eq!(
        one.list_deliveries("wh").unwrap().len(),
        1,
        "one attempt logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_lock_whose_session_ended_reports_itself_lost_and_is_free_for_others() {
    use tandem_store::meta::SharedLocks;
    let both = Both::start().await;
    let pg = both.pg();
    let blobs = pg.lock("blobs").expect("the blob lock");
    let writer = pg.try_lock("upload:0123").expect("asked").expect("free");
    assert!(blobs.still_held());
    assert!(writer.still_held());
    assert!(pg.try_lock_brief("blobs").expect("asked").is_none());

    // Their sessions end under them (idle_session_timeout, a failover, a network blip).
    both._postgres
        .psql("SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'");
    wait_until("the sessions are gone", async || {
        both._postgres
            .psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            == "0"
    })
    .await;
    assert!(!blobs.still_held(), "the blob lock is lost");
    assert!(!writer.still_held(), "the writer lock is lost");
    let taken = pg
        .try_lock_brief("blobs")
        .expect("asked")
        .expect("free for another holder");
    assert!(taken.still_held());
    // Dropping the lost guards does not release the new holder's lock.
    drop(blobs);
    drop(writer);
    assert!(taken.still_held());
    drop(taken);
    assert!(pg.try_lock_brief("blobs").expect("asked").is_some());
}
