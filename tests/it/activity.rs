//! The activity feed, black-box: users edit docs over real WebSockets with their own tokens,
//! and `GET /api/activity` shows one edit session per author and doc, with the right actor,
//! filtered, paged, and limited to what each token may read.

use std::time::Duration;

use serde_json::Value;
use tandem_server::Config;
use tandem_server::auth::{Claims, Role};
use tandem_tests::{EventStream, TestServer, WAIT, bearer, own_claims, unix_now};

/// Docs leave memory soon after their last peer (so a restart or unload test need not wait).
fn quick_unload(config: &mut Config) {
    config.hub.doc_unload_grace = Duration::from_millis(100);
}

/// Quick unloads, and edits reported every 50 ms instead of every second, so a test waits on
/// the reports rather than sleeping past the default interval.
fn quick_reports(config: &mut Config) {
    quick_unload(config);
    config.hub.doc_changed_interval = Duration::from_millis(50);
}

/// A token of `server` for `sub`, shown as `name`, with `docs`.
fn token(server: &TestServer, sub: &str, name: &str, docs: &[(&str, Role)]) -> String {
    server.mint(&Claims {
        name: Some(name.into()),
        ..own_claims(sub, docs)
    })
}

/// `GET /api/activity?<query>` with `token`; panics unless 200.
async fn activity(server: &TestServer, token: &str, query: &str) -> Value {
    let auth = bearer(token);
    let response = server
        .request(
            "GET",
            &format!("/api/activity?{query}"),
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Polls the feed (bounded by [`WAIT`]) until `done` holds for its entries; returns them.
async fn wait_activity(
    server: &TestServer,
    token: &str,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = activity(server, token, query).await;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if done(&entries) {
            return entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "activity never matched; last page: {page}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `user` types `n` updates into `doc` in one burst and disconnects.
async fn type_burst(server: &TestServer, token: &str, doc: &str, n: usize) {
    let mut peer = server.connect_with_token(doc, token).await;
    for i in 0..n {
        peer.append_text(&format!("{i} ")).await;
    }
    peer.close().await;
}

fn n_updates_of(entries: &[Value], sub: &str, doc: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e["actor"]["sub"] == sub && e["path"] == doc)
        .map(|e| e["n_updates"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn bursts_of_edits_make_one_entry_per_author_with_the_right_actor() {
    let server = TestServer::start_jwt(quick_reports).await;
    let ada = token(&server, "ada", "Ada L.", &[("*", Role::Write)]);
    let bob = token(&server, "bob", "Bob", &[("*", Role::Write)]);
    // Two rounds of bursts, the second only once the first is recorded: each author's edits
    // arrive as several reports, which the session gathers into one entry.
    let mut entries = Vec::new();
    for round in 1..=2 {
        type_burst(&server, &ada, "team/notes", 15).await;
        type_burst(&server, &bob, "team/notes", 10).await;
        entries = wait_activity(&server, &ada, "doc=team/notes", |entries| {
            n_updates_of(entries, "ada", "team/notes") == 15 * round
                && n_updates_of(entries, "bob", "team/notes") == 10 * round
        })
        .await;
    }
    assert_eq!(entries.len(), 2, "one entry per author: {entries:?}");
    let bob_entry = &entries[0];
    let ada_entry = &entries[1];
    assert_eq!(ada_entry["kind"], "doc.edited");
    assert_eq!(ada_entry["actor"]["name"], "Ada L.");
    assert_eq!(bob_entry["actor"]["name"], "Bob");
    assert!(ada_entry["id"].as_u64() < bob_entry["id"].as_u64());
    assert!(ada_entry["ended_ms"].as_u64().unwrap() > ada_entry["started_ms"].as_u64().unwrap());
    let first = ada_entry["details"]["first_seq"].as_u64().unwrap();
    let last = ada_entry["details"]["last_seq"].as_u64().unwrap();
    assert_eq!(
        (first, last),
        (1, 40),
        "ada wrote the first and the last update"
    );
}

#[tokio::test]
async fn the_feed_filters_by_doc_user_time_and_folder_and_pages_with_a_cursor() {
    let server = TestServer::start_jwt(quick_unload).await;
    let ada = token(&server, "ada", "Ada", &[("*", Role::Write)]);
    let bob = token(&server, "bob", "Bob", &[("*", Role::Write)]);
    type_burst(&server, &ada, "a/one", 2).await;
    type_burst(&server, &ada, "a/two", 2).await;
    type_burst(&server, &ada, "b/one", 2).await;
    type_burst(&server, &bob, "a/one", 3).await;
    let all = wait_activity(&server, &ada, "", |entries| {
        entries.len() == 4 && entries.iter().all(|e| e["n_updates"].as_u64() >= Some(2))
    })
    .await;
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let paths = |page: &Value| -> Vec<String> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["actor"]["sub"].as_str().unwrap(),
                    e["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let by_doc = activity(&server, &ada, "doc=a/one").await;
    assert_eq!(paths(&by_doc), ["bob:a/one", "ada:a/one"]);
    let by_user = activity(&server, &ada, "user=ada").await;
    assert_eq!(paths(&by_user), ["ada:b/one", "ada:a/two", "ada:a/one"]);
    let both = activity(&server, &ada, "user=bob&doc=a/one").await;
    assert_eq!(paths(&both), ["bob:a/one"]);
    let folder = activity(&server, &ada, "prefix=a/").await;
    assert_eq!(paths(&folder), ["bob:a/one", "ada:a/two", "ada:a/one"]);
    let future = unix_now() * 1000 + 60_000;
    let none = activity(&server, &ada, &format!("since={future}")).await;
    assert_eq!(none["entries"], serde_json::json!([]));
    // `since` keeps the entries that ended at or after it, whatever their order.
    let mut ends: Vec<u64> = all
        .iter()
        .map(|e| e["ended_ms"].as_u64().unwrap())
        .collect();
    ends.sort_unstable();
    for since in [ends[0], ends[2], ends[3]] {
        let recent = activity(&server, &ada, &format!("since={since}")).await;
        let expected = ends.iter().filter(|end| **end >= since).count();
        assert_eq!(paths(&recent).len(), expected, "since={since}");
    }

    // Pages of one, following the cursor, give every entry once and end with `null`.
    let mut seen = Vec::new();
    let mut query = "limit=1".to_owned();
    loop {
        let page = activity(&server, &ada, &query).await;
        let entries = page["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{page}");
        seen.push(entries[0]["id"].as_u64().unwrap());
        match page["next"].as_str() {
            Some(next) => query = format!("limit=1&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    for bad in ["limit=0", "before=abc", "since=yesterday", "colour=red"] {
        let auth = bearer(&ada);
        let response = server
            .request(
                "GET",
                &format!("/api/activity?{bad}"),
                &[("Authorization", &auth)],
                b"",
            )
            .await;
        assert_eq!(response.status, 400, "{bad}");
        assert_eq!(response.json()["error"], "bad_query", "{bad}");
    }
    let anonymous = server.request("GET", "/api/activity", &[], b"").await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn a_reader_of_one_doc_sees_only_that_docs_entries() {
    let server = TestServer::start_jwt(quick_unload).await;
    let ada = token(&server, "ada", "Ada", &[("*", Role::Write)]);
    let reader = token(&server, "rita", "Rita", &[("docs/a", Role::Read)]);
    type_burst(&server, &ada, "docs/a", 2).await;
    type_burst(&server, &ada, "docs/b", 2).await;
    wait_activity(&server, &ada, "", |entries| entries.len() == 2).await;
    let seen = activity(&server, &reader, "").await;
    let entries = seen["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{seen}");
    assert_eq!(entries[0]["path"], "docs/a");
    assert_eq!(entries[0]["actor"]["sub"], "ada");
    let other = activity(&server, &reader, "doc=docs/b").await;
    assert_eq!(other["entries"], serde_json::json!([]));
    assert_eq!(other["next"], Value::Null);
}

#[tokio::test]
async fn edit_sessions_survive_a_restart() {
    let mut server = TestServer::start_jwt(quick_unload).await;
    let ada = token(&server, "ada", "Ada", &[("*", Role::Write)]);
    type_burst(&server, &ada, "notes", 3).await;
    wait_activity(&server, &ada, "", |entries| {
        entries.first().and_then(|e| e["n_updates"].as_u64()) == Some(3)
    })
    .await;
    server.restart().await;
    server.wait_healthy().await;
    // Within the session gap: the stored session is extended, not a second line.
    type_burst(&server, &ada, "notes", 2).await;
    let entries = wait_activity(&server, &ada, "", |entries| {
        entries.first().and_then(|e| e["n_updates"].as_u64()) == Some(5)
    })
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// The entry of the next `activity` event on `events` whose entry `accept`s.
async fn next_activity(events: &mut EventStream, accept: impl Fn(&Value) -> bool) -> Value {
    let event = events
        .next_matching(|event| event["type"] == "activity" && accept(&event["entry"]))
        .await;
    event["entry"].clone()
}

#[tokio::test]
async fn live_streams_get_each_entry_when_it_is_stored_and_again_when_it_grows() {
    let server = TestServer::start_with(quick_reports).await;
    server.wait_healthy().await;
    let mut events = server.events().await;
    let mut peer = server.connect("live").await;
    for i in 0..3 {
        peer.append_text(&format!("{i}")).await;
    }
    let entry = next_activity(&mut events, |entry| entry["path"] == "live").await;
    assert_eq!(entry["kind"], "doc.edited");
    assert_eq!(entry["actor"]["sub"], Value::Null, "authentication is off");
    // The entry shown live is the stored one.
    let (status, body) = server
        .http_get("/api/activity?doc=live", "application/json")
        .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["entries"][0]["id"], entry["id"]);
    // A later edit (reported one short report interval after the first) extends the same
    // entry, which is shown again with its id.
    peer.append_text("more").await;
    let grown = next_activity(&mut events, |grown| grown["n_updates"] == 4).await;
    assert_eq!(grown["id"], entry["id"], "{grown}");
    peer.close().await;
}

/// `method path` with `token` and an optional JSON or raw body; panics unless `expect`.
async fn act(
    server: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: &[u8],
    expect: u16,
) -> Value {
    let auth = bearer(token);
    let response = server
        .request(
            method,
            path,
            &[("Authorization", &auth), ("Accept", "application/json")],
            body,
        )
        .await;
    assert_eq!(
        response.status,
        expect,
        "{method} {path}: {}",
        response.text()
    );
    if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    }
}

#[tokio::test]
async fn every_file_and_version_action_is_in_the_feed_with_the_user_who_did_it() {
    let server = TestServer::start_jwt(quick_unload).await;
    let ada = token(&server, "ada", "Ada L.", &[("*", Role::Write)]);
    let bob = token(&server, "bob", "Bob", &[("*", Role::Write)]);

    // Ada uploads a build; Bob renames it; Ada deletes it.
    act(
        &server,
        &ada,
        "PUT",
        "/api/files/builds/app.bin",
        &[7u8; 70_000],
        201,
    )
    .await;
    let moved = serde_json::json!({ "from": "builds/app.bin", "to": "builds/release.bin" });
    act(
        &server,
        &bob,
        "POST",
        "/api/file-moves",
        moved.to_string().as_bytes(),
        200,
    )
    .await;
    act(
        &server,
        &ada,
        "DELETE",
        "/api/files/builds/release.bin",
        b"",
        204,
    )
    .await;

    // Bob writes a doc, Ada names a version, Bob writes more, and Ada restores the version.
    type_burst(&server, &bob, "team/plan", 3).await;
    let named = serde_json::json!({ "name": "baseline" });
    let version = act(
        &server,
        &ada,
        "POST",
        "/api/docs/team/plan/versions",
        named.to_string().as_bytes(),
        201,
    )
    .await;
    type_burst(&server, &bob, "team/plan", 2).await;
    let id = version["version"]["id"].as_u64().expect("version id");
    act(
        &server,
        &ada,
        "POST",
        &format!("/api/docs/team/plan/versions/{id}/restore"),
        b"{}",
        200,
    )
    .await;

    let expected = [
        ("file.uploaded", "builds/app.bin", "ada"),
        ("file.renamed", "builds/release.bin", "bob"),
        ("file.deleted", "builds/release.bin", "ada"),
        ("doc.edited", "team/plan", "bob"),
        ("version.created", "team/plan", "ada"),
        ("version.restored", "team/plan", "ada"),
    ];
    let entries = wait_activity(&server, &ada, "limit=50", |entries| {
        expected.iter().all(|(kind, path, sub)| {
            entries
                .iter()
                .any(|e| e["kind"] == *kind && e["path"] == *path && e["actor"]["sub"] == *sub)
        })
    })
    .await;
    // Oldest first, the actions appear in the order they happened (edits may extend one entry).
    let order: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .filter(|kind| *kind != "doc.edited")
        .collect();
    assert_eq!(
        order,
        [
            "file.uploaded",
            "file.renamed",
            "file.deleted",
            "version.created",
            "version.restored"
        ],
        "{entries:?}"
    );
    let renamed = entries
        .iter()
        .find(|e| e["kind"] == "file.renamed")
        .expect("rename entry");
    assert_eq!(renamed["details"]["from"], "builds/app.bin");
    assert_eq!(renamed["actor"]["name"], "Bob");
    let named = entries
        .iter()
        .find(|e| e["kind"] == "version.created")
        .expect("version entry");
    assert_eq!(named["details"]["name"], "baseline");
    // The feed filtered to the user shows only their actions.
    let bobs = activity(&server, &ada, "user=bob").await;
    assert!(
        bobs["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["actor"]["sub"] == "bob"),
        "{bobs}"
    );
}
