//! Black-box tests of what the browser client relies on: present users in `GET /api/docs`,
//! `POST /api/docs/{name}/covers`, and the serving of the client's own files.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use tandem_tests::{HttpResponse, TestServer, WAIT};

// ---------------------------------------------------------------------------------------------
// Present users in GET /api/docs
// ---------------------------------------------------------------------------------------------

/// The `users` of `doc`'s row in `GET /api/docs`, or `None` if the doc is not listed.
async fn listed_users(server: &TestServer, doc: &str) -> Option<serde_json::Value> {
    let list = server.request("GET", "/api/docs", &[], &[]).await.json();
    list["docs"]
        .as_array()
        .expect("docs array")
        .iter()
        .find(|row| row["name"] == doc)
        .map(|row| row["users"].clone())
}

/// Polls `GET /api/docs` until `doc`'s users equal `expected` (bounded by `WAIT`).
async fn wait_listed_users(server: &TestServer, doc: &str, expected: serde_json::Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let users = listed_users(server, doc).await;
        if users.as_ref() == Some(&expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "users of {doc} are {users:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_doc_list_names_present_users_sorted_by_name() {
    let server = TestServer::start().await;
    let mut zoe = server.connect("team/notes.md").await;
    let mut ada = server.connect("team/notes.md").await;
    let mut anon = server.connect("team/notes.md").await;
    let long_name = "x".repeat(100);
    zoe.send_awareness(
        1,
        1,
        r##"{"user":{"name":"zoe","color":"#ff0000"},"cursor":null}"##,
    )
    .await;
    ada.send_awareness(2, 1, r#"{"user":{"name":"Ada","color":7}}"#)
        .await;
    anon.send_awareness(3, 1, r#"{"cursor":{"anchor":0}}"#)
        .await;
    anon.send_awareness(4, 1, &format!(r#"{{"user":{{"name":"{long_name}"}}}}"#))
        .await;
    // Awareness goes back to its sender too: once each has its own echo, the server holds it.
    zoe.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 1))
        .await;
    ada.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 2))
        .await;
    anon.wait_awareness(|seen| seen.iter().any(|e| e.client_id == 4))
        .await;
    let expected = serde_json::json!([
        { "name": "Ada", "color": null },
        { "name": "x".repeat(64), "color": null },
        { "name": "zoe", "color": "#ff0000" },
    ]);
    assert_eq!(listed_users(&server, "team/notes.md").await, Some(expected));

    // A renewed state is read again; a departed peer's users go with it.
    zoe.send_awareness(1, 2, r#"{"user":{"name":"Zoë"}}"#).await;
    anon.close().await;
    wait_listed_users(
        &server,
        "team/notes.md",
        serde_json::json!([
            { "name": "Ada", "color": null },
            { "name": "Zoë", "color": null },
        ]),
    )
    .await;
}

#[tokio::test]
async fn an_unloaded_doc_lists_no_users() {
    let server = TestServer::start_with(|config| {
        config.hub.doc_unload_grace = Duration::from_millis(100);
    })
    .await;
    let mut writer = server.connect("quiet").await;
    writer.append_text("stored").await;
    writer
        .send_awareness(5, 1, r#"{"user":{"name":"gone"}}"#)
        .await;
    writer
        .wait_awareness(|seen| seen.iter().any(|e| e.client_id == 5))
        .await;
    wait_listed_users(
        &server,
        "quiet",
        serde_json::json!([{ "name": "gone", "color": null }]),
    )
    .await;
    writer.close().await;
    server.wait_unloaded("quiet").await;
    assert_eq!(
        listed_users(&server, "quiet").await,
        Some(serde_json::json!([]))
    );
}

// ---------------------------------------------------------------------------------------------
// POST /api/docs/{name}/covers
// ---------------------------------------------------------------------------------------------

/// `POST /api/docs/{doc}/covers` with `snapshot`; asserts a 200 and returns the answer.
async fn covers(server: &TestServer, doc: &str, snapshot: &[u8]) -> bool {
    let response = post_covers(server, doc, snapshot).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json"))
    );
    response.json()["covers"]
        .as_bool()
        .expect("covers is a boolean")
}

async fn post_covers(server: &TestServer, doc: &str, body: &[u8]) -> HttpResponse {
    server
        .request(
            "POST",
            &format!("/api/docs/{doc}/covers"),
            &[("Content-Type", "application/octet-stream")],
            body,
        )
        .await
}

#[tokio::test]
async fn covers_is_true_only_once_every_local_edit_and_deletion_reached_the_server() {
    let mut server = TestServer::start().await;
    let doc = "team/notes.md";
    let mut alice = server.connect(doc).await;
    alice.append_text("hello world").await;
    alice.delete_text(5, 6).await;
    // Bob's replica mirrors Alice's edits through the server.
    let mut bob = server.connect(doc).await;
    assert_eq!(bob.wait_text(|t| t == "hello").await, "hello");
    assert!(covers(&server, doc, &alice.snapshot()).await);
    assert!(covers(&server, doc, &bob.snapshot()).await);

    // An insert the server has not seen.
    let insert = bob.insert_local(5, "!");
    assert!(!covers(&server, doc, &bob.snapshot()).await);
    bob.send_update(&insert).await;
    alice.wait_text(|t| t == "hello!").await;
    assert!(covers(&server, doc, &bob.snapshot()).await);

    // A deletion the server has not seen: Bob's state vector does not change, his delete set does.
    let delete = bob.delete_local(0, 1);
    assert!(!covers(&server, doc, &bob.snapshot()).await);
    bob.send_update(&delete).await;
    alice.wait_text(|t| t == "ello!").await;
    assert!(covers(&server, doc, &bob.snapshot()).await);

    // What was covered is stored: it still is after a restart.
    let snapshot = bob.snapshot();
    alice.close().await;
    bob.close().await;
    server.restart().await;
    assert!(covers(&server, doc, &snapshot).await);
}

#[tokio::test]
async fn covers_answers_for_a_missing_doc_without_creating_it() {
    let server = TestServer::start().await;
    let mut elsewhere = server.connect("elsewhere").await;
    elsewhere.append_text("something").await;
    // `Y.encodeSnapshot` of an empty doc: no deletions, no clients.
    assert!(covers(&server, "never/written", &[0, 0]).await);
    assert!(!covers(&server, "never/written", &elsewhere.snapshot()).await);
    assert_eq!(listed_users(&server, "never/written").await, None);
    let (status, _) = server.http_get("/api/docs/never/written", "*/*").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_covers_requests_get_json_errors() {
    let server = TestServer::start_with(|config| {
        config.hub.limits.max_frame_bytes = 1024;
    })
    .await;
    let cases: [(&str, Vec<u8>, u16, &str); 5] = [
        ("/api/docs/doc/covers", vec![0xff], 400, "bad_snapshot"),
        ("/api/docs/doc/covers", vec![0, 0, 0], 400, "bad_snapshot"),
        ("/api/docs/doc/covers", vec![0; 2048], 413, "body_too_large"),
        ("/api/docs/a/../covers", vec![0, 0], 400, "bad_doc_name"),
        ("/api/docs/doc", vec![0, 0], 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let response = server.request("POST", path, &[], &body).await;
        assert_eq!(response.status, status, "{path}");
        assert_eq!(response.json()["error"], code, "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// The web client's files
// ---------------------------------------------------------------------------------------------

const INDEX_HTML: &str = "<!doctype html><title>fake client</title>\
    <script type=\"module\" src=\"/assets/app-abc123.js\"></script>\n";
const SW_JS: &str = "self.addEventListener('fetch', () => {});\n";
const FAVICON_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 1 1\"/>\n";
const MANIFEST: &str = "{\"name\":\"Tandem\",\"start_url\":\"/\"}\n";

/// A big, compressible script, as a bundle is.
fn app_js() -> String {
    "console.log('tandem web client');\n".repeat(400)
}

/// A temporary directory whose `dist/` is laid out like `web-client/dist`, plus a hidden file
/// inside it and `outside.txt` next to it, neither of which may ever be served.
fn fake_client() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("outside.txt"), "outside\n").expect("write");
    let write = |path: &str, content: &str| {
        let full = dir.path().join("dist").join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write");
    };
    write("index.html", INDEX_HTML);
    write("assets/app-abc123.js", &app_js());
    write("assets/app-abc123.css", "body { margin: 0 }\n");
    write("sw.js", SW_JS);
    write("favicon.svg", FAVICON_SVG);
    write("manifest.webmanifest", MANIFEST);
    write(".env", "SECRET=1\n");
    dir
}

/// A server whose `--web-dir` is `root/dist`.
async fn serve_client(root: &Path) -> TestServer {
    let dir = root.join("dist");
    TestServer::start_with(move |config| config.web_dir = Some(dir)).await
}

async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    server.request("GET", path, headers, &[]).await
}

#[tokio::test]
async fn client_files_have_their_type_and_cache_policy() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    let cases = [
        ("/", INDEX_HTML.to_owned(), "text/html", "no-cache"),
        (
            "/d/team/notes.md",
            INDEX_HTML.to_owned(),
            "text/html",
            "no-cache",
        ),
        ("/d/a", INDEX_HTML.to_owned(), "text/html", "no-cache"),
        ("/admin", INDEX_HTML.to_owned(), "text/html", "no-cache"),
        (
            "/index.html",
            INDEX_HTML.to_owned(),
            "text/html",
            "no-cache",
        ),
        (
            "/assets/app-abc123.js",
            app_js(),
            "text/javascript",
            "public, max-age=31536000, immutable",
        ),
        (
            "/assets/app-abc123.css",
            "body { margin: 0 }\n".to_owned(),
            "text/css",
            "public, max-age=31536000, immutable",
        ),
        ("/sw.js", SW_JS.to_owned(), "text/javascript", "no-cache"),
        (
            "/favicon.svg",
            FAVICON_SVG.to_owned(),
            "image/svg+xml",
            "no-cache",
        ),
        (
            "/manifest.webmanifest",
            MANIFEST.to_owned(),
            "application/manifest+json",
            "no-cache",
        ),
    ];
    for (path, body, content_type, cache_control) in cases {
        let response = get(&server, path, &[]).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.text(), body, "{path}");
        let mime = response.header("content-type").expect("content type");
        assert_eq!(mime.split(';').next(), Some(content_type), "{path}");
        assert_eq!(
            response.header("cache-control"),
            Some(cache_control),
            "{path}"
        );
        assert_eq!(
            response.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let csp = response
            .header("content-security-policy")
            .expect("a content security policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        let etag = response.header("etag").expect("an etag");
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
            "{etag}"
        );
        assert_eq!(response.header("content-encoding"), None, "{path}");
    }
    // The index has one tag whichever route served it.
    let by_root = get(&server, "/", &[]).await;
    let by_doc = get(&server, "/d/team/notes.md", &[]).await;
    assert_eq!(by_root.header("etag"), by_doc.header("etag"));
}

#[tokio::test]
async fn a_known_etag_is_answered_with_304() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    for path in ["/", "/sw.js", "/assets/app-abc123.js", "/d/x/y"] {
        let first = get(&server, path, &[]).await;
        let etag = first.header("etag").expect("etag").to_owned();
        let again = get(&server, path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
        assert_eq!(again.header("etag"), Some(etag.as_str()), "{path}");
        let other = get(&server, path, &[("If-None-Match", "\"something-else\"")]).await;
        assert_eq!(other.status, 200, "{path}");
    }
    // Rewriting a file changes its tag: a stale tag gets the new content.
    let stale = get(&server, "/sw.js", &[]).await;
    std::fs::write(dir.path().join("dist/sw.js"), "// version 2\n").expect("rewrite");
    let fresh = get(
        &server,
        "/sw.js",
        &[("If-None-Match", stale.header("etag").expect("etag"))],
    )
    .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.text(), "// version 2\n");
    assert_ne!(fresh.header("etag"), stale.header("etag"));
}

#[tokio::test]
async fn files_are_gzipped_for_browsers_that_accept_it() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    let plain = get(&server, "/assets/app-abc123.js", &[]).await;
    let gzipped = get(
        &server,
        "/assets/app-abc123.js",
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept-encoding"));
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    assert!(gzipped.body.len() < plain.body.len() / 4, "compressed");
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(gzipped.body.as_slice())
        .read_to_string(&mut unzipped)
        .expect("valid gzip");
    assert_eq!(unzipped, app_js());
    // The gzipped body has a tag of its own, and revalidating with it works.
    let plain_tag = plain.header("etag").expect("etag");
    let gzip_tag = gzipped.header("etag").expect("etag");
    assert_eq!(
        gzip_tag,
        format!("{}-gzip\"", plain_tag.trim_end_matches('"'))
    );
    let again = get(
        &server,
        "/assets/app-abc123.js",
        &[("Accept-Encoding", "gzip"), ("If-None-Match", gzip_tag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert_eq!(again.header("etag"), Some(gzip_tag));
}

#[tokio::test]
async fn head_requests_get_the_headers_alone() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    for path in ["/", "/d/team/notes.md", "/sw.js"] {
        let head = server.request("HEAD", path, &[], &[]).await;
        let get = get(&server, path, &[]).await;
        assert_eq!(head.status, 200, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(head.header("content-type"), get.header("content-type"));
        assert_eq!(head.header("etag"), get.header("etag"));
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn unknown_or_hidden_paths_are_404_not_the_index() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    for path in [
        "/nope.js",
        "/assets/nope.js",
        "/assets/",
        "/assets",
        "/.env",
        "/assets/../index.html",
        "/../outside.txt",
        "/assets/../../outside.txt",
        "/assets/..%2F..%2Foutside.txt",
        "/%2e%2e/outside.txt",
        "/d/",
        "/admin/",
        "/admin/x",
    ] {
        let response = get(&server, path, &[]).await;
        assert_eq!(response.status, 404, "{path}");
        assert_ne!(response.text(), INDEX_HTML, "{path}");
    }
    let post = server.request("POST", "/sw.js", &[], b"x").await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn api_routes_win_over_the_client() {
    let dir = fake_client();
    let server = serve_client(dir.path()).await;
    let health = get(&server, "/healthz", &[]).await;
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["store"]["writable"], true);
    let list = get(&server, "/api/docs", &[]).await;
    assert!(list.json()["docs"].is_array());
    let missing = get(&server, "/api/docs/nothing-here", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "doc_not_found");
    // A plain GET of a WebSocket path is refused by the upgrade, not answered with the index.
    let ws = get(&server, "/ws/doc", &[]).await;
    assert_ne!(ws.status, 200);
    // WebSockets still work with a client being served.
    let mut peer = server.connect("doc").await;
    peer.append_text("still works").await;
}

#[tokio::test]
async fn without_a_client_the_placeholder_explains_how_to_build_one() {
    let empty = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(empty.path().join("dist")).expect("mkdir");
    let server = serve_client(empty.path()).await;
    for path in ["/", "/d/team/notes.md", "/admin"] {
        let response = get(&server, path, &[]).await;
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|value| value.starts_with("text/html"))
        );
        assert!(response.text().contains("bash scripts/run.sh"), "{path}");
    }
    assert_eq!(get(&server, "/sw.js", &[]).await.status, 404);
}

#[tokio::test]
async fn by_default_the_built_client_is_served() {
    // Debug builds (these tests) read `web-client/dist` from disk; release builds embed it.
    let server = TestServer::start().await;
    let response = get(&server, "/", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    let dist_index = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-client/dist/index.html");
    match std::fs::read_to_string(dist_index) {
        Ok(index) => {
            assert_eq!(response.text(), index);
            assert!(response.header("etag").is_some());
        }
        Err(_) => assert!(response.text().contains("bash scripts/run.sh")),
    }
}
