//! Webhooks, black-box: a receiver in the test (hyper on 127.0.0.1:0) gets signed deliveries
//! from the real server after real WebSocket edits; failures are retried with the same
//! delivery id, a delivery waiting in the outbox survives a restart, and `tandem webhook ...`
//! works offline and through a running server.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tandem_server::Config;
use tandem_tests::{TestServer, WAIT, admin_claims, bearer, run_tandem};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Answers each request with the next status of `answers` (200 when empty) and reports it on
/// `received`. Runs until dropped; one connection at a time (the server closes each).
async fn serve(
    listener: TcpListener,
    answers: Arc<Mutex<VecDeque<u16>>>,
    received: mpsc::UnboundedSender<Received>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answers = answers.clone();
        let received = received.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let answers = answers.clone();
            let received = received.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            value.to_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                let _ = received.send(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }
}

/// A server (authentication off, as on loopback by default) with quick webhook timings. Its
/// receivers listen on 127.0.0.1, so private targets are allowed (`--webhook-allow-private`);
/// `http_edges.rs` shows the default refusing them.
async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_healthy(|config| {
        config.webhooks.allow_private = true;
        config.hub.doc_unload_grace = Duration::from_millis(100);
        config.webhooks.debounce = Duration::from_millis(1000);
        config.webhooks.retry_base = Duration::from_millis(100);
        adjust(config);
    })
    .await
}

async fn add_webhook(server: &TestServer, url: &str, events: &[&str], secret: &str) -> String {
    let body = json!({ "url": url, "events": events, "secret": secret }).to_string();
    let response = server
        .request(
            "POST",
            "/api/webhooks",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["secret"], secret);
    answer["webhook"]["id"].as_str().unwrap().to_owned()
}

async fn deliveries(server: &TestServer, id: &str) -> Value {
    let response = server
        .request("GET", &format!("/api/webhooks/{id}/deliveries"), &[], b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Polls the delivery log (bounded by [`WAIT`]) until `done` holds.
async fn wait_deliveries(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = deliveries(server, id).await;
        if done(&log) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery log never matched: {log}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn next_request(received: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("a delivery in time")
        .expect("the receiver runs")
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Checks `Tandem-Signature: t=<ts>,v1=<hex>` the way a receiver would.
fn assert_signed(request: &Received, secret: &str) {
    let signature = request.header("tandem-signature");
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature header {signature:?}"));
    assert_eq!(t, request.header("tandem-timestamp"));
    assert_eq!(v1, hmac_hex(secret, &format!("{t}.{}", request.body)));
    assert_ne!(
        v1,
        hmac_hex("wrong secret", &format!("{t}.{}", request.body))
    );
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_one_signed_logical_delivery_of_a_typing_burst() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
    let answers = Arc::new(Mutex::new(VecDeque::from([500, 500])));
    let (sender, mut received) = mpsc::unbounded_channel();
    let server = server_with(|_| {}).await;
    let test = async {
        let id = add_webhook(&server, &url, &["doc.changed"], "topsecret").await;
        let mut peer = server.connect("notes").await;
        for i in 0..30 {
            peer.append_text(&format!("{i} ")).await;
        }
        peer.close().await;
        let attempts = [
            next_request(&mut received).await,
            next_request(&mut received).await,
            next_request(&mut received).await,
        ];
        let delivery_id = attempts[0].header("tandem-delivery-id").to_owned();
        assert!(delivery_id.starts_with("dlv_"), "{delivery_id}");
        for attempt in &attempts {
            assert_eq!(attempt.header("tandem-delivery-id"), delivery_id);
            assert_eq!(attempt.header("tandem-webhook-id"), id);
            assert_eq!(attempt.header("tandem-event"), "doc.changed");
            assert_eq!(attempt.header("content-type"), "application/json");
            assert_signed(attempt, "topsecret");
        }
        let body: Value = serde_json::from_str(&attempts[2].body).unwrap();
        assert_eq!(body["id"], delivery_id.as_str());
        assert_eq!(body["event"], "doc.changed");
        assert_eq!(body["webhook"], id.as_str());
        let data = &body["data"];
        assert_eq!(data["doc"], "notes");
        assert_eq!(
            data["n_updates"], 30,
            "the whole burst in one delivery: {data}"
        );
        assert_eq!(
            (data["first_seq"].as_u64(), data["last_seq"].as_u64()),
            (Some(1), Some(30))
        );
        assert_eq!(data["authors"].as_array().unwrap().len(), 1);

        let log = wait_deliveries(&server, &id, |log| {
            log["deliveries"].as_array().unwrap().len() == 3
                && log["pending"].as_array().unwrap().is_empty()
        })
        .await;
        let summary: Vec<(Value, Value)> = log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["status"].clone(), a["outcome"].clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (json!(200), json!("delivered")),
                (json!(500), json!("retry")),
                (json!(500), json!("retry"))
            ]
        );
        // Acknowledged once: nothing more arrives (longer than the debounce and the retries).
        // The sleep is what is tested: there is no event for "no delivery".
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            received.try_recv().is_err(),
            "no delivery after the acknowledgement"
        );
    };
    tokio::select! {
        () = serve(listener, answers, sender) => unreachable!("the receiver runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn a_delivery_waiting_in_the_outbox_survives_a_restart() {
    // A port with nobody listening, for now.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut server = server_with(|config| {
        config.webhooks.debounce = Duration::from_millis(200);
        config.webhooks.retry_max = Duration::from_millis(300);
    })
    .await;
    let id = add_webhook(&server, &url, &["doc.changed"], "s").await;
    let mut peer = server.connect("notes").await;
    peer.append_text("hello").await;
    peer.close().await;
    let log = wait_deliveries(&server, &id, |log| {
        log["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "retry" && a["status"].is_null())
    })
    .await;
    let delivery_id = log["pending"][0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(log["deliveries"][0]["delivery_id"], delivery_id.as_str());

    server.restart().await;
    server.wait_healthy().await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (sender, mut received) = mpsc::unbounded_channel();
    let test = async {
        let request = next_request(&mut received).await;
        assert_eq!(request.header("tandem-delivery-id"), delivery_id);
        assert_signed(&request, "s");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["data"]["doc"], "notes");
        wait_deliveries(&server, &id, |log| {
            log["pending"].as_array().unwrap().is_empty()
                && log["deliveries"][0]["outcome"] == "delivered"
        })
        .await;
    };
    tokio::select! {
        () = serve(listener, Arc::default(), sender) => unreachable!("the receiver runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn the_admin_api_refuses_bad_registrations_and_unknown_webhooks() {
    let server = server_with(|_| {}).await;
    for (body, code) in [
        (
            json!({"url": "ftp://x/y", "events": ["doc.changed"]}),
            "bad_webhook",
        ),
        (
            json!({"url": "http://x/y", "events": ["doc.typed"]}),
            "bad_webhook",
        ),
        (json!({"url": "http://x/y", "events": []}), "bad_webhook"),
        (json!({"url": "http://x/y"}), "bad_webhook"),
        (
            json!({"url": "http://user:pass@127.0.0.1:9/", "events": ["doc.changed"]}),
            "bad_webhook",
        ),
    ] {
        let response = server
            .request("POST", "/api/webhooks", &[], body.to_string().as_bytes())
            .await;
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(response.json()["error"], code);
    }
    let missing = server
        .request("DELETE", "/api/webhooks/wh_none", &[], b"")
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "webhook_not_found");
    let list = server.request("GET", "/api/webhooks", &[], b"").await;
    assert_eq!(list.json(), json!({"webhooks": []}));
}

#[tokio::test]
async fn webhook_commands_work_offline_and_through_a_running_server() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_str().unwrap().to_owned();
    let added = run_tandem(
        &[
            "webhook",
            "add",
            "http://127.0.0.1:9/hook",
            "--events",
            "doc.changed,file.uploaded",
            "--docs",
            "team/*",
            "--data-dir",
            &dir,
        ],
        "",
    )
    .await;
    assert!(added.success, "{added:?}");
    let mut lines = added.stdout.lines();
    let id = lines
        .next()
        .and_then(|line| line.strip_prefix("added webhook "))
        .expect("the id")
        .to_owned();
    let secret = lines
        .next()
        .and_then(|line| line.strip_prefix("secret "))
        .expect("the secret");
    assert!(
        id.starts_with("wh_") && secret.starts_with("whsec_"),
        "{added:?}"
    );

    let server = TestServer::start_in(data_dir, |config| {
        config.webhooks.allow_private = true;
    })
    .await;
    server.wait_healthy().await;
    let target = server.url("");
    let cli = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        all.extend([
            "--data-dir".into(),
            dir.clone(),
            "--server".into(),
            target.clone(),
        ]);
        all
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tandem(&args, "").await
    };
    let listed = run(cli(&["webhook", "list"])).await;
    assert!(listed.success, "{listed:?}");
    assert_eq!(
        listed.stdout.trim(),
        format!("{id}  http://127.0.0.1:9/hook  doc.changed,file.uploaded  team/*")
    );
    let api = server
        .request("GET", "/api/webhooks", &[], b"")
        .await
        .json();
    assert_eq!(api["webhooks"][0]["id"], id.as_str());
    assert!(api["webhooks"][0].get("secret").is_none(), "{api}");

    let through_server = run(cli(&[
        "webhook",
        "add",
        "http://127.0.0.1:9/other",
        "--events",
        "file.deleted",
        "--secret",
        "mine",
    ]))
    .await;
    assert!(through_server.success, "{through_server:?}");
    assert!(
        through_server.stdout.contains("through the server"),
        "{through_server:?}"
    );
    assert!(
        through_server.stdout.contains("secret mine"),
        "{through_server:?}"
    );
    let refused = run(cli(&[
        "webhook",
        "add",
        "http://x/",
        "--events",
        "doc.typed",
    ]))
    .await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("bad_webhook"), "{refused:?}");
    let with_password = run(cli(&[
        "webhook",
        "add",
        "http://user:pass@127.0.0.1:9/",
        "--events",
        "file.deleted",
    ]))
    .await;
    assert!(!with_password.success, "{with_password:?}");
    assert!(
        with_password.stderr.contains("user name or password"),
        "{with_password:?}"
    );

    let log = run(cli(&["webhook", "log", &id])).await;
    assert_eq!(log.stdout.trim(), "no deliveries yet", "{log:?}");
    let removed = run(cli(&["webhook", "remove", &id])).await;
    assert_eq!(removed.stdout.trim(), format!("removed webhook {id}"));
    let again = run(cli(&["webhook", "remove", &id])).await;
    assert!(!again.success);
    assert!(again.stderr.contains("no webhook"), "{again:?}");
    let api = server
        .request("GET", "/api/webhooks", &[], b"")
        .await
        .json();
    assert_eq!(api["webhooks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_administrators_manage_webhooks_when_authentication_is_on() {
    use tandem_server::auth::{AuthMode, Claims};
    let server = server_with(|config| config.auth.mode = AuthMode::Jwt).await;
    let token = |admin: bool| {
        let sub = if admin { "root" } else { "ada" };
        bearer(&server.mint(&Claims {
            admin,
            ..admin_claims(sub)
        }))
    };
    let body = json!({"url": "http://127.0.0.1:9/", "events": ["file.uploaded"]}).to_string();
    let anonymous = server
        .request("POST", "/api/webhooks", &[], body.as_bytes())
        .await;
    assert_eq!(anonymous.status, 401);
    let user = token(false);
    for (method, path) in [
        ("POST", "/api/webhooks"),
        ("GET", "/api/webhooks"),
        ("DELETE", "/api/webhooks/wh_x"),
        ("GET", "/api/webhooks/wh_x/deliveries"),
    ] {
        let refused = server
            .request(method, path, &[("Authorization", &user)], body.as_bytes())
            .await;
        assert_eq!(refused.status, 403, "{method} {path}");
        assert_eq!(refused.json()["error"], "not_admin");
    }
    let admin = token(true);
    let created = server
        .request(
            "POST",
            "/api/webhooks",
            &[("Authorization", &admin)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["webhook"]["id"].as_str().unwrap().to_owned();
    let log = server
        .request(
            "GET",
            &format!("/api/webhooks/{id}/deliveries"),
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_eq!(log.json(), json!({"deliveries": [], "pending": []}));
    let removed = server
        .request(
            "DELETE",
            &format!("/api/webhooks/{id}"),
            &[("Authorization", &admin)],
            b"",
        )
        .await;
    assert_eq!(removed.status, 204);
}

#[tokio::test]
async fn a_delivery_never_acknowledged_is_given_up_and_logged_as_failed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answers = Arc::new(Mutex::new(VecDeque::from([503; 100])));
    let (sender, mut received) = mpsc::unbounded_channel();
    let server = server_with(|config| {
        config.webhooks.debounce = Duration::from_millis(100);
        config.webhooks.retry_base = Duration::from_millis(50);
        config.webhooks.give_up = Duration::from_millis(400);
    })
    .await;
    let test = async {
        let id = add_webhook(&server, &url, &["doc.changed"], "s").await;
        let mut peer = server.connect("notes").await;
        peer.append_text("x").await;
        peer.close().await;
        let log = wait_deliveries(&server, &id, |log| {
            log["deliveries"][0]["outcome"] == "failed"
        })
        .await;
        assert_eq!(log["pending"], json!([]));
        let attempts = log["deliveries"].as_array().unwrap();
        assert!(attempts.len() >= 2, "{log}");
        assert!(attempts.iter().all(|a| a["status"] == 503), "{log}");
        let first = next_request(&mut received).await;
        let delivery_id = first.header("tandem-delivery-id").to_owned();
        assert!(
            attempts
                .iter()
                .all(|a| a["delivery_id"] == delivery_id.as_str())
        );
    };
    tokio::select! {
        () = serve(listener, answers, sender) => unreachable!("the receiver runs until dropped"),
        () = test => {}
    }
}

#[tokio::test]
async fn automatic_versions_reach_webhooks_though_the_feed_leaves_them_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sender, mut received) = mpsc::unbounded_channel();
    // The doc unloads 100 ms after its last peer left, keeping its edits in an automatic
    // version.
    let server = server_with(|_| {}).await;
    let test = async {
        let id = add_webhook(&server, &url, &["version.created"], "s").await;
        let mut peer = server.connect("notes").await;
        peer.append_text("kept in an automatic version").await;
        peer.close().await;
        let request = next_request(&mut received).await;
        assert_eq!(request.header("tandem-event"), "version.created");
        assert_eq!(request.header("tandem-webhook-id"), id);
        assert_signed(&request, "s");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["data"]["doc"], "notes");
        assert_eq!(body["data"]["kind"], "auto", "{body}");
        // Stored, so the feed has everything of that batch: the edit, not the version.
        wait_deliveries(&server, &id, |log| {
            log["deliveries"][0]["outcome"] == "delivered"
        })
        .await;
        let feed = server.request("GET", "/api/activity", &[], b"").await;
        assert_eq!(feed.status, 200, "{}", feed.text());
        let kinds: Vec<Value> = feed.json()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["kind"].clone())
            .collect();
        assert_eq!(kinds, [json!("doc.edited")]);
    };
    tokio::select! {
        () = serve(listener, Arc::default(), sender) => unreachable!("the receiver runs until dropped"),
        () = test => {}
    }
}

/// Regression: one damaged webhook row disabled every webhook. `Store::list_webhooks` failed as
/// a whole, so the server refused to start; a damaged outbox row stopped every delivery, and
/// the admin could not delete the damaged webhook (its removal decoded every outbox row). Now
/// the damaged row is left out (and logged once): the server starts, lists and delivers to the
/// other webhooks, and deletes the damaged one.
#[tokio::test]
async fn a_damaged_webhook_is_left_out_and_the_others_keep_delivering() {
    const DAMAGED_PATH: &str = "damaged-hook-path";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let mut server = server_with(|_| {}).await;
    let healthy = add_webhook(&server, &url, &["doc.changed"], "s").await;
    let damaged_url = format!("http://127.0.0.1:9/{DAMAGED_PATH}");
    let damaged = add_webhook(&server, &damaged_url, &["doc.changed"], "s2").await;
    assert!(server.shutdown().await, "clean shutdown");

    // Flip one bit inside the damaged webhook's URL, wherever the file holds it.
    let db = server.data_dir().join(tandem_server::DB_FILE_NAME);
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = DAMAGED_PATH.as_bytes();
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect();
    assert!(!found.is_empty(), "the webhook is in the file");
    for at in found {
        bytes[at + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(&db, bytes).unwrap();

    server.restart().await;
    server.wait_healthy().await;
    let listed = server.request("GET", "/api/webhooks", &[], b"").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<Value> = listed.json()["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|webhook| webhook["id"].clone())
        .collect();
    assert_eq!(ids, vec![Value::from(healthy.as_str())]);
    let removed = server
        .request("DELETE", &format!("/api/webhooks/{damaged}"), &[], b"")
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text());

    let (sender, mut received) = mpsc::unbounded_channel();
    let test = async {
        let mut peer = server.connect("notes").await;
        peer.append_text("hello").await;
        let request = next_request(&mut received).await;
        assert_signed(&request, "s");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["data"]["doc"], "notes");
        wait_deliveries(&server, &healthy, |log| {
            log["pending"].as_array().unwrap().is_empty()
                && log["deliveries"][0]["outcome"] == "delivered"
        })
        .await;
    };
    tokio::select! {
        () = serve(listener, Arc::default(), sender) => unreachable!("the receiver runs until dropped"),
        () = test => {}
    }
}
