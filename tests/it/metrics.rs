//! Metrics and the admin API, black-box: `GET /metrics` parsed by a Prometheus text-format
//! parser (`prometheus-parse`, not ours) while real y-websocket peers, a Hocuspocus socket and
//! HTTP clients drive the server; `GET /api/admin/overview` and `/series` with live values; who
//! may read them; `--metrics-addr` and `--metrics off`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tandem_core::protocol::{encode_sync_step1, write_var_u64};
use tandem_server::auth::Role;
use tandem_server::cli::MetricsSwitch;
use tandem_tests::{TestServer, WAIT, bearer, capture_logs, wait_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::StateVector;

/// One scrape, parsed.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition"))
    }

    /// The value of the sample `name` whose labels include `labels`; `None` if there is none.
    /// Counters come as `<name>_total`, histograms' counts as `<name>_count`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|sample| {
                sample.metric == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .and_then(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => Some(value),
                _ => None,
            })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// A histogram's `+Inf` bucket, which must equal its `_count`.
    fn histogram_total(&self, name: &str) -> f64 {
        let histogram = self
            .0
            .samples
            .iter()
            .find(|sample| sample.metric == name)
            .unwrap_or_else(|| panic!("no histogram {name}"));
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
            panic!("{name} is not a histogram");
        };
        let inf = buckets
            .iter()
            .find(|bucket| bucket.less_than.is_infinite())
            .expect("a +Inf bucket")
            .count;
        assert_eq!(inf, self.value(&format!("{name}_count"), &[]), "{name}");
        assert!(
            buckets
                .windows(2)
                .all(|pair| pair[0].count <= pair[1].count),
            "{name}: buckets are cumulative"
        );
        inf
    }
}

async fn scrape(server: &TestServer, token: &str) -> Scrape {
    let response = server
        .request("GET", "/metrics", &[("Authorization", &bearer(token))], b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    Scrape::parse(response.text())
}

async fn admin_json(server: &TestServer, path: &str, token: &str) -> Value {
    let response = server
        .request("GET", path, &[("Authorization", &bearer(token))], b"")
        .await;
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.json()
}

/// A Hocuspocus socket authenticated on `key` with `token` (the provider's Auth then Step1).
async fn hocuspocus_attach(
    server: &TestServer,
    key: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    fn with_key(key: &str, body: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        write_var_u64(&mut out, key.len() as u64);
        out.put_slice(key.as_bytes());
        out.put_slice(body);
        out.freeze()
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .expect("hocuspocus socket opens");
    let mut auth = BytesMut::new();
    auth.put_slice(&[2, 0]);
    write_var_u64(&mut auth, token.len() as u64);
    auth.put_slice(token.as_bytes());
    auth.put_slice(b"\x054.7.0");
    ws.send(WsMessage::Binary(with_key(key, &auth)))
        .await
        .expect("auth sent");
    ws.send(WsMessage::Binary(with_key(
        key,
        &encode_sync_step1(&StateVector::default()),
    )))
    .await
    .expect("step 1 sent");
    // Authenticated comes first.
    let authenticated = with_key(key, b"\x02\x02");
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(WsMessage::Binary(frame)))) if frame.starts_with(&authenticated) => break,
            Ok(Some(Ok(WsMessage::Binary(_) | WsMessage::Ping(_) | WsMessage::Pong(_)))) => {}
            other => panic!("not authenticated: {other:?}"),
        }
    }
    ws
}

#[tokio::test]
async fn admin_endpoints_and_metrics_refuse_anonymous_and_non_admin_callers() {
    let server = TestServer::start_jwt(|_| {}).await;
    let writer = server.token("ann", &[("*", Role::Write)]);
    for path in ["/metrics", "/api/admin/overview", "/api/admin/series"] {
        let anonymous = server.request("GET", path, &[], b"").await;
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
        assert!(anonymous.json()["error"].is_string(), "{path}");
        let refused = server
            .request("GET", path, &[("Authorization", &bearer(&writer))], b"")
            .await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.text());
        assert_eq!(refused.json()["error"], "not_admin", "{path}");
        let admin = server
            .request(
                "GET",
                path,
                &[("Authorization", &bearer(&server.admin_token()))],
                b"",
            )
            .await;
        assert_eq!(admin.status, 200, "{path}: {}", admin.text());
    }
}

#[tokio::test]
async fn counters_follow_a_scripted_load() {
    let server = TestServer::start_jwt(|_| {}).await;
    let admin = server.admin_token();
    let token = server.token("ann", &[("load/*", Role::Write), ("team/*", Role::Write)]);
    let before = scrape(&server, &admin).await;
    assert_eq!(before.value("tandem_updates_received_total", &[]), 0.0);
    assert_eq!(
        before.value("tandem_connections", &[("protocol", "y-websocket")]),
        0.0
    );
    assert!(before.value("process_cpu_seconds_total", &[]) > 0.0);
    assert!(before.value("process_resident_memory_bytes", &[]) > 1e6);

    let mut writer = server.connect_with_token("load/doc", &token).await;
    let mut reader = server.connect_with_token("load/doc", &token).await;
    let during = scrape(&server, &admin).await;
    assert_eq!(
        during.value("tandem_connections", &[("protocol", "y-websocket")]),
        2.0
    );
    assert_eq!(during.value("tandem_open_docs", &[]), 1.0);

    const N: usize = 25;
    for i in 0..N {
        writer.append_text(&format!("{i};")).await;
    }
    let expected: String = (0..N).map(|i| format!("{i};")).collect();
    reader.wait_text(|text| text == expected).await;
    writer
        .send_awareness(7, 1, r#"{"user":{"name":"ann"}}"#)
        .await;
    reader
        .wait_awareness(|entries| entries.iter().any(|entry| entry.client_id == 7))
        .await;

    let loaded = scrape(&server, &admin).await;
    assert_eq!(loaded.value("tandem_updates_received_total", &[]), N as f64);
    // Each update went to the one other peer, once.
    assert_eq!(
        loaded.value("tandem_updates_broadcast_total", &[]),
        N as f64
    );
    assert!(
        loaded.value("tandem_update_bytes_received_total", &[]) > N as f64,
        "bytes counted"
    );
    assert!(loaded.value("tandem_update_bytes_broadcast_total", &[]) > N as f64);
    let n_commits = loaded.histogram_total("tandem_commit_duration_seconds");
    assert!(
        n_commits >= 1.0 && n_commits <= N as f64 + 1.0,
        "{n_commits}"
    );
    assert_eq!(
        loaded.histogram_total("tandem_commit_group_size"),
        n_commits
    );
    // Every update waited for its commit, and each wait was observed once.
    assert_eq!(
        loaded.histogram_total("tandem_durable_wait_seconds"),
        N as f64
    );
    assert_eq!(loaded.value("tandem_awareness_states", &[]), 1.0);

    writer.close().await;
    reader.close().await;
    wait_until("the connections gauge back to 0", async || {
        let now = scrape(&server, &admin).await;
        now.value("tandem_connections", &[("protocol", "y-websocket")]) == 0.0
            && now.value("tandem_awareness_states", &[]) == 0.0
    })
    .await;

    // HTTP: requests by route pattern (never the path) and status; file bytes both ways.
    let body = vec![b'x'; 3000];
    let auth = bearer(&token);
    let put = server
        .request(
            "PUT",
            "/api/files/team/report.bin",
            &[("Authorization", &auth)],
            &body,
        )
        .await;
    assert!(put.status == 200 || put.status == 201, "{}", put.text());
    let got = server
        .request(
            "GET",
            "/api/files/team/report.bin",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(got.status, 200);
    let missing = server
        .request(
            "GET",
            "/api/docs/load/missing",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(missing.status, 404);
    let after = scrape(&server, &admin).await;
    assert_eq!(after.value("tandem_upload_bytes_total", &[]), 3000.0);
    assert_eq!(after.value("tandem_download_bytes_total", &[]), 3000.0);
    let files_route = [("route", "/api/files/*path")];
    assert_eq!(
        after.value(
            "tandem_http_requests_total",
            &[files_route[0], ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "tandem_http_requests_total",
            &[("route", "/api/docs/*name"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        after.value(
            "tandem_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ) >= 4.0
    );
    assert_eq!(
        after.value(
            "tandem_http_request_duration_seconds_count",
            &[("route", "/api/docs/*name")]
        ),
        1.0
    );
    // No label carries a path, a doc name or a user.
    let text = server
        .request(
            "GET",
            "/metrics",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await
        .text()
        .to_owned();
    for private in ["report.bin", "load/doc", "ann"] {
        assert!(!text.contains(private), "{private} in the metrics");
    }
}

#[tokio::test]
async fn a_slow_or_broken_peer_is_counted_by_close_code() {
    let server = TestServer::start_jwt(|_| {}).await;
    let admin = server.admin_token();
    let token = server.token("bob", &[("*", Role::Write)]);
    let mut peer = server.connect_with_token("garbage", &token).await;
    // Sync message type 9 does not exist: a protocol error, 1002.
    peer.send(Bytes::from_static(&[0, 9, 1, 2])).await;
    let (code, _) = peer.expect_close().await;
    wait_until("the close counted", async || {
        scrape(&server, &admin).await.get(
            "tandem_connection_closes_total",
            &[("code", &code.to_string()), ("kind", "protocol_error")],
        ) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn the_overview_shows_docs_connections_storage_failing_webhooks_and_errors() {
    capture_logs();
    let server = TestServer::start_jwt(|config| {
        config.webhooks.allow_private = true;
        config.webhooks.debounce = Duration::from_millis(50);
        config.webhooks.retry_base = Duration::from_millis(50);
        config.webhooks.give_up = Duration::from_millis(300);
        config.files.workspace_quota_bytes = 1_000_000;
        // The contract's 10 s is too long to wait for in a test.
        config.series_interval = Duration::from_secs(1);
    })
    .await;
    let admin = server.admin_token();
    let token = server.token("cat", &[("team/*", Role::Write)]);
    let other = server.token("dan", &[("team/*", Role::Write)]);

    let fresh = admin_json(&server, "/api/admin/series", &admin).await;
    assert_eq!(fresh["interval_seconds"], 1);
    let points = fresh["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "the start-up point: {fresh}");
    assert!(points[0]["at"].as_u64().is_some());
    assert!(points[0]["updates_per_second"].is_number());
    assert!(points[0]["commit_latency_ms"].is_null());
    assert_eq!(points[0]["connections"], 0);
    assert_eq!(points[0]["connected_users"], 0);

    // A webhook whose receiver refuses every connection.
    let refused_port = tandem_tests::engines::free_port();
    let url = format!("http://127.0.0.1:{refused_port}/hook");
    let added = server
        .request(
            "POST",
            "/api/webhooks",
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            json!({ "url": url, "events": ["doc.changed"], "secret": "s3cret-s3cret" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let webhook_id = added.json()["webhook"]["id"]
        .as_str()
        .expect("webhook id")
        .to_owned();

    let mut first = server.connect_with_token("team/notes.md", &token).await;
    let second = server.connect_with_token("team/notes.md", &other).await;
    let _lone = server.connect_with_token("team/lone.md", &token).await;
    let _socket = hocuspocus_attach(&server, "team/notes.md", &token).await;
    first.append_text("hello").await;
    let put = server
        .request(
            "PUT",
            "/api/files/team/a.txt",
            &[("Authorization", &bearer(&token))],
            &[b'a'; 1234],
        )
        .await;
    assert!(put.status == 200 || put.status == 201, "{}", put.text());

    let overview = admin_json(&server, "/api/admin/overview", &admin).await;
    let now = overview["now"].as_u64().expect("now");
    let started_at = overview["started_at"].as_u64().expect("started_at");
    assert!(started_at <= now);
    assert_eq!(overview["docs_total"], 2, "{overview}");
    let docs = overview["docs"].as_array().expect("docs");
    assert_eq!(
        docs[0]["name"], "team/notes.md",
        "most peers first: {overview}"
    );
    assert_eq!(
        docs[0]["peers"], 3,
        "two y-websocket peers and a Hocuspocus one"
    );
    assert!(docs[0]["bytes"].as_u64().expect("bytes") > 0);
    assert_eq!(docs[1]["name"], "team/lone.md");
    assert_eq!(docs[1]["peers"], 1);
    assert_eq!(
        overview["connections"],
        json!({ "y-websocket": 3, "hocuspocus": 1 })
    );
    let storage = overview["storage"].as_array().expect("storage");
    assert_eq!(storage.len(), 1, "{overview}");
    assert_eq!(storage[0]["workspace"], "team");
    assert_eq!(storage[0]["files"], 1);
    assert_eq!(storage[0]["quota_bytes"], 1_000_000);
    // Charged as the quota counts it: at least the file's size.
    assert!(storage[0]["bytes"].as_u64().expect("bytes") >= 1234);

    // A later point of the series saw the edits, a commit, four sockets and two users.
    wait_until("a series point with the load", async || {
        let series = admin_json(&server, "/api/admin/series", &admin).await;
        series["points"].as_array().is_some_and(|points| {
            points.iter().any(|point| {
                point["connections"] == 4
                    && point["connected_users"] == 2
                    && point["updates_per_second"]
                        .as_f64()
                        .is_some_and(|rate| rate > 0.0)
                    && point["commit_latency_ms"]
                        .as_f64()
                        .is_some_and(|ms| ms > 0.0)
            })
        })
    })
    .await;

    // The failed attempts appear, newest first, and the give-up's warning among the errors.
    let overview = {
        let mut seen = Value::Null;
        wait_until("the webhook given up and reported", async || {
            seen = admin_json(&server, "/api/admin/overview", &admin).await;
            let failing = seen["webhooks_failing"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|row| row["webhook"] == webhook_id.as_str()));
            let warned = seen["errors"].as_array().is_some_and(|events| {
                events.iter().any(|event| {
                    event["level"] == "warn"
                        && event["message"] == "webhook delivery given up"
                        && event["fields"]["webhook"] == webhook_id.as_str()
                })
            });
            failing && warned
        })
        .await;
        seen
    };
    let failing = overview["webhooks_failing"].as_array().expect("failing");
    let row = failing
        .iter()
        .find(|row| row["webhook"] == webhook_id.as_str())
        .expect("our webhook");
    assert_eq!(row["url"], url.as_str());
    assert_eq!(row["event"], "doc.changed");
    assert!(row["attempts"].as_u64().expect("attempts") >= 1);
    assert!(row["at"].as_u64().expect("at") >= started_at);
    assert!(!row["error"].as_str().expect("error").is_empty());
    let ats: Vec<u64> = failing
        .iter()
        .filter_map(|row| row["at"].as_u64())
        .collect();
    assert!(
        ats.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first"
    );
    let event = overview["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .find(|event| event["fields"]["webhook"] == webhook_id.as_str())
        .expect("the warning");
    assert_eq!(event["target"], "tandem_server::webhook::deliver");
    assert!(event["at"].as_u64().expect("at") >= started_at);

    // Connected users: distinct identities; one leaves, the count follows.
    drop(second);
    wait_until("dan's socket closed", async || {
        admin_json(&server, "/api/admin/overview", &admin).await["connections"]["y-websocket"] == 2
    })
    .await;
}

#[tokio::test]
async fn metrics_addr_serves_without_a_token_and_metrics_off_is_a_404() {
    let port = tandem_tests::engines::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = TestServer::start_jwt(|config| config.metrics_addr = Some(addr)).await;
    // The main port still wants an administrator.
    assert_eq!(
        server.request("GET", "/metrics", &[], b"").await.status,
        401
    );
    let open = tandem_tests::http_request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(open.status, 200, "{}", open.text());
    let scraped = Scrape::parse(open.text());
    assert_eq!(
        scraped.value("tandem_connections", &[("protocol", "hocuspocus")]),
        0.0
    );
    assert!(
        scraped.value(
            "tandem_http_requests_total",
            &[("route", "/metrics"), ("status", "401")]
        ) >= 1.0
    );
    // Only /metrics there.
    let other = tandem_tests::http_request(addr, "GET", "/api/admin/overview", &[], b"").await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["error"], "not_found");

    let off = TestServer::start_jwt(|config| config.metrics = MetricsSwitch::Off).await;
    let admin = off.admin_token();
    let token = off.token("eve", &[("*", Role::Write)]);
    let mut peer = off.connect_with_token("quiet", &token).await;
    peer.append_text("nothing counted").await;
    let refused = off
        .request(
            "GET",
            "/metrics",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert_eq!(refused.json()["error"], "not_found");
    // The admin view still answers, without activity figures.
    let overview = admin_json(&off, "/api/admin/overview", &admin).await;
    assert_eq!(overview["connections"]["y-websocket"], 1);
    let series = admin_json(&off, "/api/admin/series", &admin).await;
    assert_eq!(series["points"][0]["updates_per_second"], 0.0);
}
