//! History, black-box: who wrote each update, named/automatic/restore versions, restore as a
//! live update on top, and what survives compaction and restarts.
//!
//! Tokens are HS256 JWTs signed with the harness's test secret (`tandem_tests::idp_token`).

use std::time::Duration;

use serde_json::{Value, json};
use tandem_tests::{HttpResponse, TestServer, WAIT, bearer, idp_token, wait_until};
use yrs::{Doc, Text, Transact};

pub(crate) async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let auth = token.map(bearer);
    let mut headers = vec![("Accept", "application/json")];
    match &auth {
        Some(auth) => headers.push(("Authorization", auth)),
        // With authentication off a client may name itself (percent-encoded UTF-8).
        None => headers.push(("X-Tandem-User", "Grace%20H.")),
    }
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    server.request(method, path, &headers, body).await
}

pub(crate) async fn name_version(
    server: &TestServer,
    doc: &str,
    name: &str,
    token: Option<&str>,
) -> Value {
    let body = json!({ "name": name }).to_string();
    let response = call(
        server,
        "POST",
        &format!("/api/docs/{doc}/versions"),
        token,
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["version"].clone()
}

pub(crate) async fn versions(server: &TestServer, doc: &str, token: Option<&str>) -> Vec<Value> {
    let response = call(
        server,
        "GET",
        &format!("/api/docs/{doc}/versions"),
        token,
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["versions"]
        .as_array()
        .expect("a list")
        .clone()
}

/// The JSON content of version `id`.
pub(crate) async fn version_json(
    server: &TestServer,
    doc: &str,
    id: &Value,
    token: Option<&str>,
) -> Value {
    let response = call(
        server,
        "GET",
        &format!("/api/docs/{doc}/versions/{id}"),
        token,
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

pub(crate) async fn restore(
    server: &TestServer,
    doc: &str,
    id: &Value,
    token: Option<&str>,
) -> Value {
    let response = call(
        server,
        "POST",
        &format!("/api/docs/{doc}/versions/{id}/restore"),
        token,
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["version"].clone()
}

async fn current_text(server: &TestServer, doc: &str) -> Value {
    let response = call(server, "GET", &format!("/api/docs/{doc}"), None, b"").await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["t"].clone()
}

/// Polls (bounded by [`WAIT`]) until the server holds `text` (the server echoes nothing to the
/// peer that sent an edit, so this is how a test knows the edit arrived).
pub(crate) async fn wait_stored(server: &TestServer, doc: &str, text: &str) {
    wait_until(&format!("{doc} holds {text:?}"), async || {
        current_text(server, doc).await == text
    })
    .await;
}

/// [`wait_stored`] with a token.
async fn wait_stored_as(server: &TestServer, doc: &str, token: &str, text: &str) {
    wait_until(&format!("{doc} holds {text:?}"), async || {
        let response = call(server, "GET", &format!("/api/docs/{doc}"), Some(token), b"").await;
        response.status == 200 && response.json()["t"] == text
    })
    .await;
}

/// Polls (bounded by [`WAIT`]) until `check` holds for the doc's versions.
async fn wait_versions(
    server: &TestServer,
    doc: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = versions(server, doc, None).await;
        if check(&list) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "versions: {list:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn subs(actors: &Value) -> Vec<&str> {
    actors
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| a["sub"].as_str().expect("a sub"))
        .collect()
}

#[tokio::test]
async fn two_authors_are_recorded_per_update_and_in_the_version() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let ada = idp_token("ada", json!({ "team/*": "write" }));
    let bob = idp_token("bob", json!({ "team/*": "write" }));
    let mut a = server.connect_with_token("team/notes", &ada).await;
    let mut b = server.connect_with_token("team/notes", &bob).await;
    a.append_text("from ada. ").await;
    b.wait_text(|t| t == "from ada. ").await;
    b.append_text("from bob.").await;
    a.wait_text(|t| t == "from ada. from bob.").await;
    // An HTTP update is credited to its token too.
    let update = {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("other");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "via http");
        txn.encode_update_v1()
    };
    let cy = idp_token("cy", json!({ "team/*": "write" }));
    let auth = bearer(&cy);
    let response = server
        .request(
            "POST",
            "/api/docs/team/notes/update",
            &[("Authorization", &auth)],
            &update,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());

    let history = call(
        &server,
        "GET",
        "/api/docs/team/notes/history",
        Some(&ada),
        b"",
    )
    .await;
    assert_eq!(history.status, 200, "{}", history.text());
    let entries = history.json()["entries"].clone();
    let authors: Vec<(u64, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["author"]["sub"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(authors, vec![(3, "cy"), (2, "bob"), (1, "ada")]);
    assert_eq!(entries[0]["author"]["name"], "cy (verified)");
    assert!(entries[0]["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let page = call(
        &server,
        "GET",
        "/api/docs/team/notes/history?limit=1&before_seq=3",
        Some(&ada),
        b"",
    )
    .await
    .json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["author"]["sub"], "bob");

    let version = name_version(&server, "team/notes", "draft", Some(&bob)).await;
    assert_eq!(version["kind"], "named");
    assert_eq!(version["name"], "draft");
    assert_eq!(version["author"]["sub"], "bob");
    assert_eq!(version["seq"], 3);
    assert_eq!(subs(&version["authors"]), vec!["ada", "bob", "cy"]);
    let listed = versions(&server, "team/notes", Some(&ada)).await;
    assert_eq!(listed, vec![version.clone()]);
    // The next version only names who wrote since.
    a.append_text(" more").await;
    b.wait_text(|t| t.ends_with(" more")).await;
    let second = name_version(&server, "team/notes", "second", Some(&ada)).await;
    assert_eq!(subs(&second["authors"]), vec!["ada"]);
    // Versions, and with them who wrote what, survive a restart.
    let before = versions(&server, "team/notes", Some(&ada)).await;
    drop((a, b));
    let mut server = server;
    server.restart().await;
    server.wait_healthy().await;
    assert_eq!(versions(&server, "team/notes", Some(&ada)).await, before);
}

#[tokio::test]
async fn a_restore_reaches_connected_peers_live_and_can_be_undone() {
    let server = TestServer::start_healthy(|_| {}).await;
    let mut a = server.connect("doc").await;
    let mut b = server.connect("doc").await;
    // With authentication off, edits are credited to the presence name, else `peer N`.
    a.send_awareness(1, 1, r#"{"user":{"name":"Carol"}}"#).await;
    // The awareness frame is echoed to its sender: once it is back, the server has it.
    a.wait_awareness(|entries| !entries.is_empty()).await;
    a.append_text("hello 👋 世界").await;
    b.wait_text(|t| t == "hello 👋 世界").await;
    let v1 = name_version(&server, "doc", "v1", None).await;
    assert_eq!(v1["authors"][0]["name"], "Carol");
    assert_eq!(v1["authors"][0]["sub"], Value::Null);
    b.append_text(" and more").await;
    a.wait_text(|t| t.ends_with(" and more")).await;
    assert_eq!(
        version_json(&server, "doc", &v1["id"], None).await,
        json!({ "t": "hello 👋 世界" })
    );
    // Without `Accept: application/json` the version is a v1 update.
    let (status, bytes) = server
        .http_get("/api/docs/doc/versions/1", "application/octet-stream")
        .await;
    assert_eq!(status, 200);
    let fetched = Doc::new();
    fetched
        .transact_mut()
        .apply_update(yrs::updates::decoder::Decode::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(
        yrs::GetString::get_string(&fetched.get_or_insert_text("t"), &fetched.transact()),
        "hello 👋 世界"
    );

    let before = restore(&server, "doc", &v1["id"], None).await;
    assert_eq!(before["kind"], "restore");
    assert_eq!(before["name"], "before restoring version 1");
    // Both peers see the restored text live, without reconnecting.
    a.wait_text(|t| t == "hello 👋 世界").await;
    b.wait_text(|t| t == "hello 👋 世界").await;
    assert_eq!(current_text(&server, "doc").await, "hello 👋 世界");
    // A later edit merges as usual.
    b.append_text("!").await;
    a.wait_text(|t| t == "hello 👋 世界!").await;
    // The restore version holds what the restore replaced: restoring it undoes the restore.
    assert_eq!(
        version_json(&server, "doc", &before["id"], None).await,
        json!({ "t": "hello 👋 世界 and more" })
    );
    restore(&server, "doc", &before["id"], None).await;
    a.wait_text(|t| t == "hello 👋 世界 and more").await;
    b.wait_text(|t| t == "hello 👋 世界 and more").await;
    let kinds: Vec<Value> = versions(&server, "doc", None)
        .await
        .iter()
        .map(|v| v["kind"].clone())
        .collect();
    assert_eq!(kinds, vec!["restore", "restore", "named"]);
    // The restorer is recorded as the author of the restore update.
    let history = call(&server, "GET", "/api/docs/doc/history?limit=1", None, b"").await;
    assert_eq!(history.json()["entries"][0]["author"]["name"], "Grace H.");
    // Unknown versions and bad names are refused with JSON errors.
    let missing = call(&server, "GET", "/api/docs/doc/versions/99", None, b"").await;
    assert_eq!(
        (missing.status, missing.json()["error"].clone()),
        (404, json!("version_not_found"))
    );
    let missing = call(
        &server,
        "POST",
        "/api/docs/doc/versions/99/restore",
        None,
        b"",
    )
    .await;
    assert_eq!(missing.status, 404);
    let bad = call(
        &server,
        "POST",
        "/api/docs/doc/versions",
        None,
        br#"{"name":"  "}"#,
    )
    .await;
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (400, json!("bad_version_name"))
    );
    let bad = call(&server, "POST", "/api/docs/doc/versions", None, b"not json").await;
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (400, json!("bad_body"))
    );
    let none = call(
        &server,
        "POST",
        "/api/docs/never/versions",
        None,
        br#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(
        (none.status, none.json()["error"].clone()),
        (404, json!("doc_not_found"))
    );
}

#[tokio::test]
async fn versions_survive_compaction_and_restarts_and_unload_takes_an_auto_version() {
    let mut server = TestServer::start_healthy(|config| {
        config.hub.compact_after_updates = 3;
        config.hub.doc_unload_grace = Duration::from_millis(100);
    })
    .await;
    let mut expected = Vec::new();
    {
        let mut peer = server.connect("log").await;
        for round in 0..4 {
            for i in 0..4 {
                peer.append_text(&format!("{round}.{i} ")).await;
            }
            let text = peer.text();
            wait_stored(&server, "log", &text).await;
            let version = name_version(&server, "log", &format!("round {round}"), None).await;
            expected.push((version["id"].clone(), text));
        }
        peer.append_text("unversioned").await;
        let text = peer.text();
        wait_stored(&server, "log", &text).await;
        peer.close().await;
    }
    // The log was compacted many times over; every version still loads as it was.
    for (id, text) in &expected {
        assert_eq!(
            version_json(&server, "log", id, None).await,
            json!({ "t": text })
        );
    }
    // Unloading with unversioned edits takes an automatic version.
    server.wait_unloaded("log").await;
    let list = wait_versions(&server, "log", |l| l.len() == 5).await;
    assert_eq!(list[0]["kind"], "auto");
    assert_eq!(list[0]["author"]["name"], "Tandem");
    assert!(
        list[0]["authors"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("peer ")
    );
    server.restart().await;
    server.wait_healthy().await;
    assert_eq!(versions(&server, "log", None).await, list);
    for (id, text) in &expected {
        assert_eq!(
            version_json(&server, "log", id, None).await,
            json!({ "t": text })
        );
    }
    // A restore after the restart still works on the compacted doc.
    restore(&server, "log", &expected[0].0, None).await;
    assert_eq!(current_text(&server, "log").await, json!(expected[0].1));
}

#[tokio::test]
async fn an_automatic_version_follows_a_period_of_activity_and_old_ones_are_pruned() {
    let server = TestServer::start_healthy(|config| {
        config.hub.auto_version_interval = Duration::from_millis(150);
        config.hub.max_auto_versions = 2;
    })
    .await;
    let mut peer = server.connect("busy").await;
    name_version(&server, "busy", "kept", None).await;
    for round in 0..4 {
        peer.append_text(&format!("edit {round} ")).await;
        let text = peer.text();
        wait_stored(&server, "busy", &text).await;
        let n = round + 1;
        // Wait for the automatic version of this round's edit (the pruning keeps two).
        wait_versions(&server, "busy", |l| {
            l.iter()
                .any(|v| v["kind"] == "auto" && v["seq"].as_u64() == Some(n))
        })
        .await;
    }
    let list = versions(&server, "busy", None).await;
    let kinds: Vec<&str> = list.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["auto", "auto", "named"]);
    assert_eq!(list[0]["seq"], 4);
    assert_eq!(
        version_json(&server, "busy", &list[0]["id"], None).await,
        json!({ "t": "edit 0 edit 1 edit 2 edit 3 " })
    );
    // No edits, no further versions. The sleep is what is tested (nothing happens), so it is not
    // an event to wait on: it spans more than two automatic-version intervals of 150 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(versions(&server, "busy", None).await.len(), 3);
}

#[tokio::test]
async fn a_reader_may_list_and_read_versions_but_not_name_or_restore_them() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let writer = idp_token("ada", json!({ "team/*": "write" }));
    let reader = idp_token("rita", json!({ "team/*": "read" }));
    let mut peer = server.connect_with_token("team/plan", &writer).await;
    peer.append_text("plan").await;
    wait_stored_as(&server, "team/plan", &writer, "plan").await;
    let version = name_version(&server, "team/plan", "first", Some(&writer)).await;
    assert_eq!(versions(&server, "team/plan", Some(&reader)).await.len(), 1);
    assert_eq!(
        version_json(&server, "team/plan", &version["id"], Some(&reader)).await,
        json!({ "t": "plan" })
    );
    let refused = call(
        &server,
        "POST",
        "/api/docs/team/plan/versions",
        Some(&reader),
        br#"{"name":"mine"}"#,
    )
    .await;
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (403, json!("read_only"))
    );
    let refused = call(
        &server,
        "POST",
        "/api/docs/team/plan/versions/1/restore",
        Some(&reader),
        b"",
    )
    .await;
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (403, json!("read_only"))
    );
    // Without a token nothing is listed.
    let anonymous = call(&server, "GET", "/api/docs/team/plan/versions", None, b"").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(versions(&server, "team/plan", Some(&writer)).await.len(), 1);
}

#[tokio::test]
async fn edits_versions_and_restores_are_published_as_events() {
    let server = TestServer::start_healthy(|_| {}).await;
    let mut events = server.events().await;
    let mut peer = server.connect("ev").await;
    peer.send_awareness(5, 1, r#"{"user":{"name":"Dora"}}"#)
        .await;
    peer.wait_awareness(|entries| !entries.is_empty()).await;
    for word in ["one ", "two ", "three "] {
        peer.append_text(word).await;
    }
    // Reported per author, at most once a second: every durable update exactly once.
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let changed = events.next_of("doc_changed").await;
        assert_eq!(changed["doc"], "ev");
        assert_eq!(changed["actor"], json!({ "sub": null, "name": "Dora" }));
        let (first, last) = (
            changed["first_seq"].as_u64().unwrap(),
            changed["last_seq"].as_u64().unwrap(),
        );
        assert_eq!(changed["n_updates"].as_u64().unwrap(), last - first + 1);
        seqs.extend(first..=last);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    let version = name_version(&server, "ev", "three words", None).await;
    let created = events.next_of("version_created").await;
    assert_eq!(
        (&created["version"], &created["kind"], &created["name"]),
        (&version["id"], &json!("named"), &json!("three words"))
    );
    restore(&server, "ev", &version["id"], None).await;
    let created = events.next_of("version_created").await;
    assert_eq!(created["kind"], "restore");
    let restored = events.next_of("version_restored").await;
    assert_eq!(restored["version"], version["id"]);
    assert_eq!(restored["actor"]["name"], "Grace H.");
}

/// Naming a third version of `capped` is refused: the cap is 2.
async fn refuse_third(server: &TestServer) {
    let refused = call(
        server,
        "POST",
        "/api/docs/capped/versions",
        None,
        br#"{"name":"third"}"#,
    )
    .await;
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (409, json!("too_many_versions")),
        "{}",
        refused.text()
    );
    assert!(refused.json()["message"].as_str().unwrap().contains('2'));
}

#[tokio::test]
async fn named_versions_are_capped_and_restore_versions_pruned_to_the_same_count() {
    let mut server = TestServer::start_healthy(|config| config.hub.max_named_versions = 2).await;
    let mut peer = server.connect("capped").await;
    peer.append_text("one").await;
    wait_stored(&server, "capped", "one").await;
    let first = name_version(&server, "capped", "first", None).await;
    name_version(&server, "capped", "second", None).await;
    refuse_third(&server).await;
    // Restores still work; their `restore` versions beyond the cap go, oldest first.
    let mut restore_ids = Vec::new();
    for _ in 0..3 {
        restore_ids.push(restore(&server, "capped", &first["id"], None).await["id"].clone());
    }
    let list = versions(&server, "capped", None).await;
    let listed: Vec<(&Value, &str)> = list
        .iter()
        .map(|v| (&v["id"], v["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (&restore_ids[2], "restore"),
            (&restore_ids[1], "restore"),
            (&json!(2), "named"),
            (&json!(1), "named"),
        ]
    );
    // The count of named versions comes back from storage.
    drop(peer);
    server.restart().await;
    server.wait_healthy().await;
    refuse_third(&server).await;
    assert_eq!(versions(&server, "capped", None).await, list);
}

#[tokio::test]
async fn a_client_renaming_itself_on_every_edit_is_credited_as_its_peer_past_the_author_cap() {
    // The cap is 1024 authors per open doc (`MAX_AUTHORS_PER_DOC`).
    let cap = 1024;
    let server = TestServer::start_healthy(|config| {
        config.hub.limits.max_messages_per_second = 0;
        config.hub.limits.max_awareness_per_second = 0;
    })
    .await;
    let mut peer = server.connect("names").await;
    let n = cap + 6;
    for i in 0..n {
        let state = json!({ "user": { "name": format!("name {i}") } }).to_string();
        peer.send_awareness(1, i as u32 + 1, &state).await;
        peer.append_text("x").await;
    }
    wait_stored(&server, "names", &"x".repeat(n)).await;
    let history = call(
        &server,
        "GET",
        "/api/docs/names/history?limit=20",
        None,
        b"",
    )
    .await;
    assert_eq!(history.status, 200, "{}", history.text());
    let entries = history.json()["entries"].as_array().unwrap().clone();
    let names: Vec<(u64, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["author"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    // Seq k was written under `name k-1`: the first 1024 names are kept, the rest is the peer.
    for (seq, name) in names {
        if seq as usize <= cap {
            assert_eq!(name, format!("name {}", seq - 1));
        } else {
            assert!(name.starts_with("peer "), "seq {seq}: {name}");
        }
    }
    assert!(entries[0]["seq"].as_u64() == Some(n as u64));
}

#[tokio::test]
async fn edits_made_while_a_restore_is_computed_are_not_held_up_and_survive_it() {
    let server = TestServer::start_healthy(|_| {}).await;
    let mut writer = server.connect("big").await;
    let mut observer = server.connect("big").await;
    // Two unrelated random texts of 0s and 1s: their character diff is long to compute and
    // runs to the restore's 1 s budget.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random_bits = |n: usize| -> String {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed & 1 == 0 { '0' } else { '1' }
            })
            .collect()
    };
    let (old, now) = (random_bits(50_000), random_bits(50_000));
    writer.append_text(&old).await;
    observer.wait_text(|t| t == old).await;
    let version = name_version(&server, "big", "old", None).await;
    writer.delete_text(0, old.len() as u32).await;
    writer.append_text(&now).await;
    observer.wait_text(|t| t == now).await;
    let marker = "[typed during the restore]";
    let started_at = tokio::time::Instant::now();
    let (restored_at, seen_at) = tokio::join!(
        async {
            restore(&server, "big", &version["id"], None).await;
            started_at.elapsed()
        },
        async {
            // The gap lets the restore start computing before the edit arrives.
            tokio::time::sleep(Duration::from_millis(150)).await;
            writer.append_text(marker).await;
            observer.wait_text(|t| t.contains(marker)).await;
            started_at.elapsed()
        }
    );
    // The doc went on taking edits: this one reached the other peer long before the restore
    // answered (a doc computing its restore itself would hold the edit until then).
    assert!(
        seen_at + Duration::from_millis(300) < restored_at,
        "edit seen after {seen_at:?}, restore answered after {restored_at:?}"
    );
    // The restore merged with the edit as a concurrent update: the text typed meanwhile stays.
    let text = observer.wait_text(|t| t.replace(marker, "") == old).await;
    assert_eq!(current_text(&server, "big").await, json!(text));
}
