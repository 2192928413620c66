//! A live document read and saved as plain text over HTTP (`GET` with `Accept: text/plain`,
//! `PUT /api/docs/{name}`): the save merges with what a WebSocket peer typed since the text was
//! read, reaches the peer live, and is credited to the saver.

use serde_json::json;
use tandem_tests::{HttpResponse, TestServer, bearer, idp_token};
use yrs::{GetString, Text, Transact};

async fn get_text(server: &TestServer, doc: &str, auth: &str) -> HttpResponse {
    server
        .request(
            "GET",
            &format!("/api/docs/{doc}"),
            &[("Accept", "text/plain"), ("Authorization", auth)],
            b"",
        )
        .await
}

async fn put_text(
    server: &TestServer,
    doc: &str,
    auth: &str,
    if_match: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let mut headers = vec![
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Authorization", auth),
    ];
    if let Some(tag) = if_match {
        headers.push(("If-Match", tag));
    }
    server
        .request("PUT", &format!("/api/docs/{doc}"), &headers, body)
        .await
}

fn content(peer: &tandem_tests::Peer) -> String {
    let root = peer.doc.get_or_insert_text("content");
    root.get_string(&peer.doc.transact())
}

/// Applies frames until the peer's `content` reads `expected` (or [`tandem_tests::WAIT`]
/// passes); returns what it reads then.
async fn wait_content(peer: &mut tandem_tests::Peer, expected: &str) -> String {
    let deadline = tokio::time::Instant::now() + tandem_tests::WAIT;
    while content(peer) != expected {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, peer.next_frame()).await {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    content(peer)
}

#[tokio::test]
async fn a_saved_file_merges_with_live_typing_and_is_credited_to_the_saver() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let saver = bearer(&idp_token("sam", json!({ "team/*": "write" })));
    let typist = idp_token("tia", json!({ "team/*": "write" }));

    // A new document, created by a save.
    let created = put_text(&server, "team/notes.md", &saver, None, b"# Notes\nfirst\n").await;
    assert_eq!(created.status, 200, "{}", created.text());
    let read = get_text(&server, "team/notes.md", &saver).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.text(), "# Notes\nfirst\n");
    assert_eq!(
        read.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let tag = read.header("etag").expect("an entity tag").to_owned();
    assert_eq!(created.header("etag"), Some(tag.as_str()));
    let unchanged = server
        .request(
            "GET",
            "/api/docs/team/notes.md",
            &[
                ("Accept", "text/plain"),
                ("Authorization", &saver),
                ("If-None-Match", &tag),
            ],
            b"",
        )
        .await;
    assert_eq!(unchanged.status, 304);

    // Someone types at the end while the saver edits the first line of the text it read.
    let mut peer = server.connect_with_token("team/notes.md", &typist).await;
    wait_content(&mut peer, "# Notes\nfirst\n").await;
    let update = {
        let root = peer.doc.get_or_insert_text("content");
        let mut txn = peer.doc.transact_mut();
        let len = root.len(&txn);
        root.insert(&mut txn, len, "typed live\n");
        txn.encode_update_v1()
    };
    peer.send_update(&update).await;
    let moved = get_text(&server, "team/notes.md", &saver).await;
    assert_eq!(moved.text(), "# Notes\nfirst\ntyped live\n");
    assert_ne!(
        moved.header("etag"),
        Some(tag.as_str()),
        "the tag follows the text"
    );

    let saved = put_text(
        &server,
        "team/notes.md",
        &saver,
        Some(&tag),
        b"# Meeting notes\nfirst\n",
    )
    .await;
    assert_eq!(saved.status, 200, "{}", saved.text());
    let expected = "# Meeting notes\nfirst\ntyped live\n";
    let seen = wait_content(&mut peer, expected).await;
    assert_eq!(
        seen, expected,
        "the peer sees the save live, its own typing kept"
    );
    assert_eq!(
        get_text(&server, "team/notes.md", &saver).await.text(),
        expected
    );

    // The history credits the save to the saver.
    let history = server
        .request(
            "GET",
            "/api/docs/team/notes.md/history",
            &[("Accept", "application/json"), ("Authorization", &saver)],
            b"",
        )
        .await;
    assert_eq!(history.status, 200, "{}", history.text());
    let newest = &history.json()["entries"][0];
    assert_eq!(newest["author"]["sub"], "sam", "{newest}");
}

#[tokio::test]
async fn bad_saves_are_refused_and_change_nothing() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let writer = bearer(&idp_token("sam", json!({ "team/*": "write" })));
    let reader = bearer(&idp_token("rex", json!({ "team/*": "read" })));
    assert_eq!(
        put_text(&server, "team/a.md", &writer, None, b"kept\n")
            .await
            .status,
        200
    );

    let not_utf8 = put_text(&server, "team/a.md", &writer, None, b"caf\xe9\n").await;
    assert_eq!(not_utf8.status, 400);
    assert_eq!(not_utf8.json()["error"], "not_utf8");

    let read_only = put_text(&server, "team/a.md", &reader, None, b"overwritten\n").await;
    assert_eq!(read_only.status, 403, "{}", read_only.text());
    // A reader may read.
    assert_eq!(
        get_text(&server, "team/a.md", &reader).await.text(),
        "kept\n"
    );

    let history_path = put_text(&server, "team/a.md/versions", &writer, None, b"x").await;
    assert_eq!(history_path.status, 404);

    // A doc whose `content` holds formatted text is not flattened into plain text.
    let formatted = {
        let doc = yrs::Doc::new();
        let root = doc.get_or_insert_text("content");
        let mut txn = doc.transact_mut();
        root.insert_with_attributes(
            &mut txn,
            0,
            "bold",
            [("bold".into(), yrs::Any::Bool(true))]
                .into_iter()
                .collect(),
        );
        txn.encode_update_v1()
    };
    let posted = server
        .request(
            "POST",
            "/api/docs/team/rich.md/update",
            &[("Authorization", &writer)],
            &formatted,
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    let refused = put_text(&server, "team/rich.md", &writer, None, b"plain").await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "not_plain_text");
    assert_eq!(get_text(&server, "team/rich.md", &writer).await.status, 409);

    assert_eq!(
        get_text(&server, "team/a.md", &writer).await.text(),
        "kept\n"
    );
    assert_eq!(get_text(&server, "team/none.md", &writer).await.status, 404);
}
