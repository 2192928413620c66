//! WebDAV at `/dav/` (`protocol-spec/webdav.md`), driven by real clients: Debian's `litmus`
//! compliance suite, `rclone` and `cadaver`, as installed programs against the real server, plus raw
//! HTTP for what they do not cover: roles, credentials, bad input, the events a PUT announces,
//! documents as text files, and what survives a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tandem_server::auth::Role;
use tandem_tests::{HttpResponse, TestServer, bearer, wait_until};
use yrs::{Doc, Text, Transact};

const PASSWORD: &str = "correct horse battery staple";

/// Longest a whole litmus or rclone run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

async fn dav(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    server
        .request(method, &format!("/dav{path}"), headers, body)
        .await
}

fn basic(name: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
    format!("Basic {encoded}")
}

fn error_code(response: &HttpResponse) -> String {
    response.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs a program to completion within [`TOOL_TIMEOUT`]; returns (success, stdout + stderr).
async fn run(program: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> (bool, String) {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} took longer than {TOOL_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("{program} could not be run ({error}); is it installed?"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The litmus tests whose warnings `protocol-spec/webdav.md` explains (its "Litmus warnings").
fn explained_warnings() -> Vec<String> {
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol-spec/webdav.md"),
    )
    .expect("read protocol-spec/webdav.md");
    let section = spec
        .split("## Litmus warnings")
        .nth(1)
        .expect("webdav.md has a Litmus warnings section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Runs litmus's `groups` against `url`; fails on any failure and on any warning of a test
/// the spec does not explain.
async fn litmus(url: &str, user: &str, password: &str, groups: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, output) = run(
        "litmus",
        &[url, user, password],
        &[("TESTS", groups)],
        dir.path(),
    )
    .await;
    let explained = explained_warnings();
    let mut current_test = String::new();
    let mut unexplained = Vec::new();
    for line in output.lines() {
        // "12. propget............... WARNING: ..." names the test; continuation lines do not.
        if let Some((number, rest)) = line.trim_start().split_once(". ")
            && number.chars().all(|c| c.is_ascii_digit())
            && let Some(name) = rest.split('.').next()
        {
            current_test = name.trim().to_owned();
        }
        if line.contains("WARNING") && !explained.contains(&current_test) {
            unexplained.push(format!("{current_test}: {line}"));
        }
    }
    assert!(ok, "litmus failed:\n{output}");
    assert!(
        !output.contains("FAIL"),
        "litmus reported a failure:\n{output}"
    );
    assert!(
        unexplained.is_empty(),
        "litmus warnings not explained in protocol-spec/webdav.md: {unexplained:#?}\n{output}"
    );
    for group in groups.split_whitespace() {
        assert!(
            output.contains(&format!("summary for `{group}'")),
            "litmus did not run `{group}`:\n{output}"
        );
    }
}

#[tokio::test]
async fn litmus_basic_copymove_props_locks_and_http_pass() {
    let server = TestServer::start().await;
    let url = server.url("/dav/");
    litmus(
        &url,
        "someone",
        "anything",
        "basic copymove props locks http",
    )
    .await;
}

/// The same suite signing in with HTTP Basic as an account, with one of its app passwords, on
/// a server that requires credentials; once revoked, the app password opens nothing.
#[tokio::test]
async fn litmus_passes_with_an_app_password_until_it_is_revoked() {
    let server = TestServer::start_jwt(|_| {}).await;
    make_account(&server, "ada", json!({ "*": "write" })).await;
    let admin = server.admin_token();
    let made = server
        .request(
            "POST",
            "/api/users/ada/app-passwords",
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            br#"{"label": "litmus"}"#,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let secret = made.json()["secret"].as_str().expect("secret").to_owned();
    let id = made.json()["id"].as_str().expect("id").to_owned();
    let url = server.url("/dav/");
    litmus(&url, "ada", &secret, "basic copymove locks").await;

    let removed = server
        .request(
            "DELETE",
            &format!("/api/users/ada/app-passwords/{id}"),
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let refused = dav(
        &server,
        "PROPFIND",
        "/",
        &[("Authorization", &basic("ada", &secret)), ("Depth", "0")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text());
}

async fn make_account(server: &TestServer, sub: &str, docs: serde_json::Value) {
    let admin = server.admin_token();
    let response = server
        .request(
            "PUT",
            &format!("/api/users/{sub}"),
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            json!({ "password": PASSWORD, "docs": docs })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert!(
        response.status == 200 || response.status == 201,
        "{}",
        response.text()
    );
}

/// A tree of mixed files: text, binary, empty, nested, a name with spaces and non-ASCII.
fn write_tree(root: &Path) {
    let files: [(&str, Vec<u8>); 6] = [
        ("readme.md", b"# Hello\n".to_vec()),
        ("docs/guide.txt", "Grüße\n".repeat(100).into_bytes()),
        (
            "docs/deep/er/data.bin",
            (0..=255u8).cycle().take(300_000).collect(),
        ),
        ("empty.txt", Vec::new()),
        ("space name/ünï cödé.json", br#"{"a": 1}"#.to_vec()),
        ("images/pixel.png", vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3]),
    ];
    for (path, bytes) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
}

fn assert_same_tree(left: &Path, right: &Path) {
    let mut stack = vec![std::path::PathBuf::new()];
    let mut n = 0;
    while let Some(relative) = stack.pop() {
        for entry in std::fs::read_dir(left.join(&relative)).expect("read dir") {
            let entry = entry.expect("entry");
            let name = relative.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                stack.push(name);
            } else {
                let a = std::fs::read(left.join(&name)).expect("read left");
                let b = std::fs::read(right.join(&name))
                    .unwrap_or_else(|_| panic!("{} missing after the round trip", name.display()));
                assert_eq!(a, b, "{} differs", name.display());
                n += 1;
            }
        }
    }
    assert!(n >= 6, "only {n} files compared");
}

#[tokio::test]
async fn rclone_copies_a_tree_up_and_back_identical_then_syncs_changes() {
    let server = TestServer::start_jwt(|_| {}).await;
    let token = server.token("rclone-user", &[("*", Role::Write)]);
    let work = tempfile::tempdir().expect("temp dir");
    let local = work.path().join("local");
    let back = work.path().join("back");
    write_tree(&local);
    let url = server.url("/dav/");
    let remote = ":webdav:backup";
    let config = work.path().join("rclone.conf");
    std::fs::write(&config, "").expect("empty config");
    let flags = [
        "--config",
        config.to_str().expect("utf-8"),
        "--webdav-url",
        url.as_str(),
        "--webdav-vendor",
        "other",
        "--webdav-bearer-token",
        token.as_str(),
    ];
    let rclone = async |args: &[&str]| -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&flags);
        let (ok, output) = run("rclone", &all, &[], work.path()).await;
        assert!(ok, "rclone {args:?} failed:\n{output}");
        output
    };

    rclone(&["copy", local.to_str().expect("utf-8"), remote]).await;
    let listing = rclone(&["lsf", "-R", remote]).await;
    for name in [
        "readme.md",
        "docs/deep/er/data.bin",
        "space name/ünï cödé.json",
        "empty.txt",
    ] {
        assert!(
            listing.lines().any(|line| line == name),
            "{name} not listed:\n{listing}"
        );
    }
    rclone(&["copy", remote, back.to_str().expect("utf-8")]).await;
    assert_same_tree(&local, &back);
    rclone(&["check", local.to_str().expect("utf-8"), remote]).await;

    // The files are the workspace's files: the HTTP API lists them with their hashes.
    let files = server
        .request(
            "GET",
            "/api/files",
            &[("Authorization", &bearer(&token))],
            b"",
        )
        .await;
    assert!(
        files.text().contains("backup/docs/deep/er/data.bin"),
        "{}",
        files.text()
    );

    // Local changes: one edited, one removed, one added; a sync makes the remote the same.
    std::fs::write(local.join("readme.md"), b"# Hello again\n").expect("edit");
    std::fs::remove_file(local.join("images/pixel.png")).expect("remove");
    std::fs::write(local.join("docs/new.txt"), b"new").expect("add");
    rclone(&["sync", local.to_str().expect("utf-8"), remote]).await;
    rclone(&["check", local.to_str().expect("utf-8"), remote]).await;
    let listing = rclone(&["lsf", "-R", remote]).await;
    assert!(!listing.contains("pixel.png"), "{listing}");
    assert!(
        listing.lines().any(|line| line == "docs/new.txt"),
        "{listing}"
    );
    // The edit is a second version of the same file.
    let versions = server
        .request(
            "GET",
            "/api/file-versions/backup/readme.md",
            &[("Authorization", &bearer(&token))],
            b"",
        )
        .await;
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn credentials_are_required_and_roles_apply() {
    let server = TestServer::start_jwt(|_| {}).await;
    make_account(&server, "reader", json!({ "team/*": "read" })).await;
    let writer = server.token("writer", &[("team/*", Role::Write)]);
    let folder = dav(
        &server,
        "MKCOL",
        "/team",
        &[("Authorization", &bearer(&writer))],
        b"",
    )
    .await;
    assert_eq!(folder.status, 201, "{}", folder.text());
    let put = dav(
        &server,
        "PUT",
        "/team/a.txt",
        &[("Authorization", &bearer(&writer))],
        b"hello",
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let everyone = server.token("root-writer", &[("*", Role::Write)]);
    let other = dav(
        &server,
        "PUT",
        "/other.txt",
        &[("Authorization", &bearer(&everyone))],
        b"secret",
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.text());

    let anonymous = dav(&server, "PROPFIND", "/", &[("Depth", "1")], b"").await;
    assert_eq!(anonymous.status, 401);
    let challenges: Vec<&str> = anonymous
        .headers
        .iter()
        .filter(|(name, _)| name == "www-authenticate")
        .map(|(_, value)| value.as_str())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|value| value.starts_with("Basic realm=")),
        "{challenges:?}"
    );
    let wrong = basic("reader", "not the password");
    let refused = dav(
        &server,
        "GET",
        "/team/a.txt",
        &[("Authorization", &wrong)],
        b"",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text());

    // A reader browses and downloads, and can change nothing, nor lock.
    let reader = basic("reader", PASSWORD);
    let auth = [("Authorization", reader.as_str())];
    let listing = dav(
        &server,
        "PROPFIND",
        "/team/",
        &[auth[0], ("Depth", "1")],
        b"",
    )
    .await;
    assert_eq!(listing.status, 207, "{}", listing.text());
    assert!(
        listing.text().contains("/dav/team/a.txt"),
        "{}",
        listing.text()
    );
    let get = dav(&server, "GET", "/team/a.txt", &auth, b"").await;
    assert_eq!(
        (get.status, get.body.as_slice()),
        (200, b"hello".as_slice())
    );
    let lock_body = br#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"#;
    for (method, path, body) in [
        ("PUT", "/team/a.txt", b"changed".as_slice()),
        ("PUT", "/team/new.txt", b"new".as_slice()),
        ("DELETE", "/team/a.txt", b"".as_slice()),
        ("MKCOL", "/team/sub", b"".as_slice()),
        ("LOCK", "/team/a.txt", lock_body.as_slice()),
        (
            "PROPPATCH",
            "/team/a.txt",
            br#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><x xmlns="urn:t">1</x></D:prop></D:set></D:propertyupdate>"#.as_slice(),
        ),
    ] {
        let response = dav(&server, method, path, &auth, body).await;
        assert_eq!(response.status, 403, "{method} {path}: {}", response.text());
    }
    let moved = dav(
        &server,
        "MOVE",
        "/team/a.txt",
        &[auth[0], ("Destination", "/dav/team/b.txt")],
        b"",
    )
    .await;
    assert_eq!(moved.status, 403, "{}", moved.text());
    let get = dav(&server, "GET", "/team/a.txt", &auth, b"").await;
    assert_eq!(
        (get.status, get.body.as_slice()),
        (200, b"hello".as_slice())
    );
    // Outside its patterns, nothing exists for it.
    let outside = dav(&server, "PROPFIND", "/", &[auth[0], ("Depth", "1")], b"").await;
    assert_eq!(outside.status, 207, "{}", outside.text());
    assert!(outside.text().contains("/dav/team/"), "{}", outside.text());
    assert!(
        !outside.text().contains("/dav/other.txt"),
        "{}",
        outside.text()
    );
    let hidden = dav(&server, "GET", "/other.txt", &auth, b"").await;
    assert_eq!(hidden.status, 404);
}

#[tokio::test]
async fn a_put_is_an_upload_announced_like_any_other() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mkcol = dav(&server, "MKCOL", "/builds", &[], b"").await;
    assert_eq!(mkcol.status, 201);
    let put = dav(&server, "PUT", "/builds/app.zip", &[], b"PK-bytes").await;
    assert_eq!(put.status, 201, "{}", put.text());
    let options = dav(&server, "OPTIONS", "/builds/app.zip", &[], b"").await;
    assert_eq!(options.header("dav"), Some("1, 2"));
    let event = events.next_of("file_uploaded").await;
    assert_eq!(event["path"], "builds/app.zip", "{event}");
    assert_eq!(event["size"], 8);
    // The same file through the HTTP API; WebDAV's ETag is the first 128 bits of the SHA-256
    // the API's ETag carries whole.
    let api = server
        .request("GET", "/api/files/builds/app.zip", &[], b"")
        .await;
    assert_eq!(api.body, b"PK-bytes");
    let dav_tag = put
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    let api_tag = api
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    assert_eq!(dav_tag.len(), 32);
    assert!(api_tag.starts_with(&dav_tag), "{dav_tag} {api_tag}");
    // A second PUT is a second version; a range and a validator behave.
    dav(&server, "PUT", "/builds/app.zip", &[], b"PK-bytes-2").await;
    let range = dav(
        &server,
        "GET",
        "/builds/app.zip",
        &[("Range", "bytes=3-")],
        b"",
    )
    .await;
    assert_eq!(
        (range.status, range.body.as_slice()),
        (206, b"bytes-2".as_slice())
    );
    let etag = range.header("etag").expect("etag").to_owned();
    let cached = dav(
        &server,
        "GET",
        "/builds/app.zip",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(cached.status, 304);
    let stale = dav(
        &server,
        "PUT",
        "/builds/app.zip",
        &[("If-Match", "\"0000\"")],
        b"x",
    )
    .await;
    assert_eq!(stale.status, 412);
    let versions = server
        .request("GET", "/api/file-versions/builds/app.zip", &[], b"")
        .await;
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(2)
    );
    // An editor's save through a temporary file renamed over the file keeps its versions.
    dav(&server, "PUT", "/builds/.app.zip.part", &[], b"PK-bytes-3").await;
    let renamed = dav(
        &server,
        "MOVE",
        "/builds/.app.zip.part",
        &[("Destination", "/dav/builds/app.zip")],
        b"",
    )
    .await;
    assert_eq!(renamed.status, 204, "{}", renamed.text());
    let versions = server
        .request("GET", "/api/file-versions/builds/app.zip", &[], b"")
        .await;
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(3)
    );
    let current = dav(&server, "GET", "/builds/app.zip", &[], b"").await;
    assert_eq!(current.body, b"PK-bytes-3");
    assert_eq!(
        dav(&server, "GET", "/builds/.app.zip.part", &[], b"")
            .await
            .status,
        404
    );
    // With Overwrite: F the existing file is left alone.
    dav(&server, "PUT", "/builds/other.zip", &[], b"other").await;
    let kept = dav(
        &server,
        "COPY",
        "/builds/other.zip",
        &[("Destination", "/dav/builds/app.zip"), ("Overwrite", "F")],
        b"",
    )
    .await;
    assert_eq!(kept.status, 412);
    assert_eq!(
        dav(&server, "GET", "/builds/app.zip", &[], b"").await.body,
        b"PK-bytes-3"
    );
    // DELETE announces too.
    let deleted = dav(&server, "DELETE", "/builds/app.zip", &[], b"").await;
    assert_eq!(deleted.status, 204);
    let event = events
        .next_matching(|event| event["type"] == "file_deleted" && event["path"] == "builds/app.zip")
        .await;
    assert_eq!(event["actor"]["name"], "anonymous", "{event}");
}

#[tokio::test]
async fn folders_and_dead_properties_survive_a_restart() {
    let mut server = TestServer::start().await;
    assert_eq!(dav(&server, "MKCOL", "/empty", &[], b"").await.status, 201);
    assert_eq!(
        dav(&server, "MKCOL", "/empty/inner", &[], b"").await.status,
        201
    );
    dav(&server, "PUT", "/f.txt", &[], b"f").await;
    let patch = dav(
        &server,
        "PROPPATCH",
        "/f.txt",
        &[],
        br#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><colour xmlns="urn:t">blue</colour></D:prop></D:set></D:propertyupdate>"#,
    )
    .await;
    assert_eq!(patch.status, 207, "{}", patch.text());
    server.restart().await;
    let listing = dav(&server, "PROPFIND", "/empty/", &[("Depth", "1")], b"").await;
    assert!(
        listing.text().contains("/dav/empty/inner/"),
        "{}",
        listing.text()
    );
    let props = dav(
        &server,
        "PROPFIND",
        "/f.txt",
        &[("Depth", "0")],
        br#"<D:propfind xmlns:D="DAV:"><D:prop><colour xmlns="urn:t"/><shape xmlns="urn:t"/></D:prop></D:propfind>"#,
    )
    .await;
    let text = props.text();
    assert!(text.contains(">blue</colour>"), "{text}");
    assert!(
        text.contains("404 Not Found"),
        "the missing property is reported: {text}"
    );
    // The property moves with its file.
    let moved = dav(
        &server,
        "MOVE",
        "/f.txt",
        &[("Destination", "/dav/empty/g.txt")],
        b"",
    )
    .await;
    assert_eq!(moved.status, 201, "{}", moved.text());
    let props = dav(
        &server,
        "PROPFIND",
        "/empty/g.txt",
        &[("Depth", "0")],
        br#"<D:propfind xmlns:D="DAV:"><D:prop><colour xmlns="urn:t"/></D:prop></D:propfind>"#,
    )
    .await;
    assert!(props.text().contains(">blue</colour>"), "{}", props.text());
}

/// Method, path, headers, body, expected status, expected error code (or XML element).
type BadCase = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let server = TestServer::start().await;
    dav(&server, "MKCOL", "/keep", &[], b"").await;
    dav(&server, "MKCOL", "/keep/child", &[], b"").await;
    dav(&server, "PUT", "/keep/child/a.txt", &[], b"precious").await;
    dav(&server, "PUT", "/file.txt", &[], b"file").await;

    let cases: Vec<BadCase> = vec![
        ("PROPFIND", "/", vec![("Depth", "0".into())], b"<D:propfind xmlns:D=\"DAV:\"><D:prop>".to_vec(), 400, ""),
        (
            "PROPFIND",
            "/",
            vec![("Depth", "0".into())],
            br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><D:propfind xmlns:D="DAV:"><D:prop><x xmlns="u">&b;</x></D:prop></D:propfind>"#.to_vec(),
            400,
            "xml_dtd",
        ),
        (
            "PROPPATCH",
            "/file.txt",
            vec![],
            format!("<D:propertyupdate xmlns:D=\"DAV:\">{}", "<a>".repeat(5000)).into_bytes(),
            400,
            "xml_too_deep",
        ),
        (
            "PROPPATCH",
            "/file.txt",
            vec![],
            format!(
                "<D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop><x xmlns=\"u\">{}</x></D:prop></D:set></D:propertyupdate>",
                "y".repeat(200_000)
            )
            .into_bytes(),
            413,
            "body_too_large",
        ),
        ("PROPFIND", "/", vec![("Depth", "infinity".into())], Vec::new(), 403, "<D:propfind-finite-depth/>"),
        ("GET", "/keep/../file.txt", vec![], Vec::new(), 400, "bad_path"),
        ("GET", "/keep%2Fchild/a.txt", vec![], Vec::new(), 400, "bad_path"),
        ("DELETE", "/keep/child/%2e%2e", vec![], Vec::new(), 400, "bad_path"),
        (
            "MOVE",
            "/keep",
            vec![("Destination", "/dav/keep/child/moved".into())],
            Vec::new(),
            403,
            "into_itself",
        ),
        (
            "MOVE",
            "/keep/child",
            vec![("Destination", "/dav/keep".into())],
            Vec::new(),
            409,
            "onto_ancestor",
        ),
        (
            "COPY",
            "/keep",
            vec![("Destination", "/dav/file.txt".into())],
            Vec::new(),
            409,
            "kind_mismatch",
        ),
        (
            "COPY",
            "/file.txt",
            vec![("Destination", "http://elsewhere/dav/keep/../../api/x".into())],
            Vec::new(),
            400,
            "bad_destination",
        ),
        ("PUT", "/file.txt", vec![("Content-Range", "bytes 0-1/4".into())], b"fi".to_vec(), 400, "partial_put"),
        // Cut short (as litmus cuts long headers): dav-server's parser would panic on it.
        (
            "PUT",
            "/file.txt",
            vec![("If", "(<urn:uuid:6f1c> [\"a6fe3464be12".into())],
            b"x".to_vec(),
            400,
            "bad_if_header",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = dav(&server, method, path, &headers, &body).await;
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        if code.starts_with('<') {
            assert!(
                response.text().contains(code),
                "{method} {path}: {}",
                response.text()
            );
        } else if !code.is_empty() {
            assert_eq!(
                error_code(&response),
                code,
                "{method} {path}: {}",
                response.text()
            );
        }
    }
    // Nothing was lost or changed, and the server still serves.
    let kept = dav(&server, "GET", "/keep/child/a.txt", &[], b"").await;
    assert_eq!(
        (kept.status, kept.body.as_slice()),
        (200, b"precious".as_slice())
    );
    let file = dav(&server, "GET", "/file.txt", &[], b"").await;
    assert_eq!(
        (file.status, file.body.as_slice()),
        (200, b"file".as_slice())
    );
}

/// Inserts `text` into the root text `content` of `doc` through a real peer, and waits until
/// WebDAV serves it.
async fn write_doc(server: &TestServer, doc: &str, text: &str) {
    let mut peer = server.connect(doc).await;
    let local = Doc::new();
    let update = {
        let content = local.get_or_insert_text("content");
        let mut txn = local.transact_mut();
        content.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    };
    peer.send_update(&update).await;
    let path = format!("/{doc}");
    wait_until("the document's text is served", async || {
        String::from_utf8(dav(server, "GET", &path, &[], b"").await.body)
            .is_ok_and(|served| served.contains(text))
    })
    .await;
    peer.close().await;
}

#[tokio::test]
async fn documents_are_text_files_saved_as_merged_edits() {
    let server = TestServer::start().await;
    write_doc(&server, "team/notes.md", "# Notes\n").await;
    let get = dav(&server, "GET", "/team/notes.md", &[], b"").await;
    assert_eq!(get.status, 200);
    assert!(
        get.header("content-type")
            .is_some_and(|t| t.starts_with("text/markdown")),
        "{:?}",
        get.headers
    );
    let listing = dav(&server, "PROPFIND", "/team/", &[("Depth", "1")], b"").await;
    assert!(
        listing.text().contains("/dav/team/notes.md"),
        "{}",
        listing.text()
    );
    assert!(
        listing
            .text()
            .contains("<D:getcontentlength>8</D:getcontentlength>"),
        "{}",
        listing.text()
    );
    let first = get.header("etag").expect("etag").to_owned();
    write_doc(&server, "team/notes.md", "More. ").await;
    let again = dav(&server, "GET", "/team/notes.md", &[], b"").await;
    assert_ne!(again.header("etag"), Some(first.as_str()));
    // A save merges with what others typed since the text it started from.
    let base = dav(&server, "GET", "/team/notes.md", &[], b"").await;
    let base_text = base.text().to_owned();
    let base_tag = base.header("etag").expect("etag").to_owned();
    write_doc(&server, "team/notes.md", "Typed live. ").await;
    let saved = dav(
        &server,
        "PUT",
        "/team/notes.md",
        &[("If-Match", &base_tag)],
        format!("{base_text}Saved from an editor.\n").as_bytes(),
    )
    .await;
    assert_eq!(saved.status, 204, "{}", saved.text());
    let merged = dav(&server, "GET", "/team/notes.md", &[], b"").await;
    let merged = merged.text();
    assert!(merged.contains("Typed live. "), "{merged}");
    assert!(merged.contains("Saved from an editor.\n"), "{merged}");
    assert!(merged.contains("# Notes"), "{merged}");
    // Not UTF-8: refused, nothing changes.
    let bad = dav(&server, "PUT", "/team/notes.md", &[], &[0xff, 0xfe, 0x00]).await;
    assert_eq!((bad.status, error_code(&bad).as_str()), (400, "not_utf8"));
    assert_eq!(
        dav(&server, "GET", "/team/notes.md", &[], b"").await.text(),
        merged
    );
    // An editor's save through a temporary file renamed over the document edits it.
    let temp = format!("{merged}Renamed in.\n");
    assert_eq!(
        dav(&server, "PUT", "/team/.notes.md.tmp", &[], temp.as_bytes())
            .await
            .status,
        201
    );
    let renamed = dav(
        &server,
        "MOVE",
        "/team/.notes.md.tmp",
        &[("Destination", "/dav/team/notes.md")],
        b"",
    )
    .await;
    assert_eq!(renamed.status, 204, "{}", renamed.text());
    assert_eq!(
        dav(&server, "GET", "/team/notes.md", &[], b"").await.text(),
        temp
    );
    assert_eq!(
        dav(&server, "GET", "/team/.notes.md.tmp", &[], b"")
            .await
            .status,
        404
    );
    // A document is not deleted, moved or replaced by a folder over WebDAV.
    let deleted = dav(&server, "DELETE", "/team/notes.md", &[], b"").await;
    assert_eq!(
        (deleted.status, error_code(&deleted).as_str()),
        (403, "doc_not_removable")
    );
    let still = dav(&server, "GET", "/team/notes.md", &[], b"").await;
    assert_eq!(still.status, 200);
}

/// Cluster mode has no WebDAV table yet: files, documents and folders made by names work on
/// any node, and `MKCOL` and `PROPPATCH` are refused with the documented 501, changing nothing.
#[tokio::test]
async fn in_cluster_mode_files_work_on_every_node_and_what_needs_the_table_is_refused() {
    let cluster = crate::cluster::Cluster::start();
    let a = cluster.node(|_| {}).await;
    let b = cluster.node(|_| {}).await;
    let put = dav(&a, "PUT", "/shared.txt", &[], b"from a").await;
    assert_eq!(put.status, 201, "{}", put.text());
    let read = dav(&b, "GET", "/shared.txt", &[], b"").await;
    assert_eq!(
        (read.status, read.body.as_slice()),
        (200, b"from a".as_slice())
    );
    let listing = dav(&b, "PROPFIND", "/", &[("Depth", "1")], b"").await;
    assert!(
        listing.text().contains("/dav/shared.txt"),
        "{}",
        listing.text()
    );
    let mkcol = dav(&b, "MKCOL", "/new", &[], b"").await;
    assert_eq!(
        (mkcol.status, error_code(&mkcol).as_str()),
        (501, "dav_cluster_unsupported")
    );
    let patch = dav(
        &a,
        "PROPPATCH",
        "/shared.txt",
        &[],
        br#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><x xmlns="urn:t">1</x></D:prop></D:set></D:propertyupdate>"#,
    )
    .await;
    assert_eq!(
        (patch.status, error_code(&patch).as_str()),
        (501, "dav_cluster_unsupported")
    );
    let moved = dav(
        &b,
        "MOVE",
        "/shared.txt",
        &[("Destination", "/dav/moved.txt")],
        b"",
    )
    .await;
    assert_eq!(moved.status, 201, "{}", moved.text());
    assert_eq!(dav(&a, "GET", "/moved.txt", &[], b"").await.body, b"from a");
}

/// A cadaver session driven line by line: each command is written, then its answer read up to
/// the line that ends it ("succeeded." or "failed").
struct Cadaver {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    seen: String,
}

impl Cadaver {
    async fn start(url: &str, home: &Path) -> Cadaver {
        let mut child = tokio::process::Command::new("cadaver")
            .arg(url)
            .current_dir(home)
            .env("HOME", home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cadaver could not be run; is it installed?");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        Cadaver {
            child,
            stdin,
            stdout,
            seen: String::new(),
        }
    }

    /// Runs `command`; returns its output, which must say it succeeded.
    async fn run(&mut self, command: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to cadaver");
        let start = self.seen.len();
        let mut buffer = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + tandem_tests::WAIT;
        loop {
            let answer = &self.seen[start..];
            if answer.contains("succeeded.")
                || answer.contains("failed")
                || answer.contains("Value of")
            {
                let answer = answer.to_owned();
                assert!(!answer.contains("failed"), "cadaver: {command}: {answer}");
                return answer;
            }
            let n = tokio::time::timeout_at(deadline, self.stdout.read(&mut buffer))
                .await
                .unwrap_or_else(|_| {
                    panic!("cadaver: no answer to {command}: {}", &self.seen[start..])
                })
                .expect("read cadaver");
            assert!(
                n > 0,
                "cadaver exited during {command}: {}",
                &self.seen[start..]
            );
            self.seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }

    async fn quit(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(tandem_tests::WAIT, self.child.wait()).await;
    }
}

/// cadaver, a stock WebDAV command-line client signing in from `~/.netrc`: put, get, a lock
/// that makes another user's upload fail with 423 while the holder's own upload goes through,
/// and unlock, after which the other user may write again.
#[tokio::test]
async fn a_cadaver_session_puts_gets_and_locks_out_another_user() {
    let server = TestServer::start_jwt(|_| {}).await;
    make_account(&server, "ada", json!({ "*": "write" })).await;
    make_account(&server, "bob", json!({ "*": "write" })).await;
    let home = tempfile::tempdir().expect("temp dir");
    // A script signs in with an app password (a .netrc token cannot hold spaces anyway).
    let admin = server.admin_token();
    let made = server
        .request(
            "POST",
            "/api/users/ada/app-passwords",
            &[
                ("Authorization", &bearer(&admin)),
                ("Content-Type", "application/json"),
            ],
            br#"{"label": "cadaver"}"#,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let secret = made.json()["secret"].as_str().expect("secret").to_owned();
    let netrc = home.path().join(".netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1\nlogin ada\npassword {secret}\n"),
    )
    .expect("netrc");
    std::fs::set_permissions(&netrc, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    std::fs::write(home.path().join("v1.txt"), "first\n").expect("write");
    std::fs::write(home.path().join("v2.txt"), "second\n").expect("write");
    let mut cadaver = Cadaver::start(&server.url("/dav/"), home.path()).await;
    cadaver.run("put v1.txt notes.txt").await;
    cadaver.run("get notes.txt back.txt").await;
    assert_eq!(
        std::fs::read_to_string(home.path().join("back.txt")).expect("read"),
        "first\n"
    );

    cadaver.run("lock notes.txt").await;
    let bob = basic("bob", PASSWORD);
    let refused = dav(
        &server,
        "PUT",
        "/notes.txt",
        &[("Authorization", &bob)],
        b"bob's",
    )
    .await;
    assert_eq!(refused.status, 423, "{}", refused.text());
    cadaver.run("put v2.txt notes.txt").await;
    cadaver.run("unlock notes.txt").await;
    let allowed = dav(
        &server,
        "PUT",
        "/notes.txt",
        &[("Authorization", &bob)],
        b"bob's",
    )
    .await;
    assert_eq!(allowed.status, 204, "{}", allowed.text());
    cadaver.run("get notes.txt back.txt").await;
    assert_eq!(
        std::fs::read_to_string(home.path().join("back.txt")).expect("read"),
        "bob's"
    );
    cadaver.quit().await;
    // Three versions: ada's two and bob's.
    let token = server.token("checker", &[("*", Role::Read)]);
    let versions = server
        .request(
            "GET",
            "/api/file-versions/notes.txt",
            &[("Authorization", &bearer(&token))],
            b"",
        )
        .await;
    assert_eq!(
        versions.json()["versions"].as_array().map(Vec::len),
        Some(3),
        "{}",
        versions.text()
    );
}

/// `n_versions` of the file at `path` in `GET /api/files`, `None` if it is not listed.
async fn versions_of(server: &TestServer, headers: &[(&str, &str)], path: &str) -> Option<u64> {
    let files = server.request("GET", "/api/files", headers, b"").await;
    files.json()["files"]
        .as_array()?
        .iter()
        .find(|file| file["path"] == path)?["n_versions"]
        .as_u64()
}

const EXCLUSIVE_LOCK: &[u8] = br#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"#;

/// Takes an exclusive lock on `path`; answers its token.
async fn take_lock(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> String {
    let lock = dav(server, "LOCK", path, headers, EXCLUSIVE_LOCK).await;
    assert!(lock.status == 200 || lock.status == 201, "{}", lock.text());
    lock.header("lock-token")
        .expect("a Lock-Token header")
        .trim_matches(['<', '>'])
        .to_owned()
}

/// Bug: a MOVE of a file onto itself (also as `a%2Etxt`) copied it onto itself and then
/// deleted it; a COPY onto itself added a version.
#[tokio::test]
async fn a_copy_or_move_onto_itself_is_refused_and_loses_nothing() {
    let server = TestServer::start().await;
    dav(&server, "PUT", "/a.txt", &[], b"one").await;
    for (method, destination) in [
        ("MOVE", "/dav/a.txt"),
        ("MOVE", "http://localhost/dav/a%2Etxt"),
        ("COPY", "/dav/a.txt"),
        ("COPY", "/dav//a.txt"),
    ] {
        let response = dav(
            &server,
            method,
            "/a.txt",
            &[("Destination", destination)],
            b"",
        )
        .await;
        assert_eq!(
            response.status,
            403,
            "{method} {destination}: {}",
            response.text()
        );
        assert_eq!(error_code(&response), "onto_itself");
    }
    let kept = dav(&server, "GET", "/a.txt", &[], b"").await;
    assert_eq!(
        (kept.status, kept.body.as_slice()),
        (200, b"one".as_slice())
    );
    assert_eq!(versions_of(&server, &[], "a.txt").await, Some(1));
}

/// Bug: a DELETE of the root, or of a folder holding a document or a file locked by someone
/// else, deleted every file it could before the refusal came.
#[tokio::test]
async fn a_delete_that_cannot_finish_removes_nothing() {
    let server = TestServer::start().await;
    dav(&server, "MKCOL", "/mixed", &[], b"").await;
    dav(&server, "PUT", "/mixed/a.txt", &[], b"keep me").await;
    write_doc(&server, "mixed/notes.md", "# Notes\n").await;
    dav(&server, "MKCOL", "/held", &[], b"").await;
    dav(&server, "PUT", "/held/free.txt", &[], b"free").await;
    dav(&server, "PUT", "/held/locked.txt", &[], b"locked").await;
    take_lock(&server, "/held/locked.txt", &[]).await;

    let root = dav(&server, "DELETE", "/", &[], b"").await;
    assert_eq!(root.status, 403, "{}", root.text());
    assert_eq!(error_code(&root), "root_not_removable");
    let mixed = dav(&server, "DELETE", "/mixed", &[], b"").await;
    assert_eq!(mixed.status, 403, "{}", mixed.text());
    assert_eq!(error_code(&mixed), "doc_not_removable");
    let held = dav(&server, "DELETE", "/held", &[], b"").await;
    assert_eq!(held.status, 423, "{}", held.text());

    for (path, body) in [
        ("/mixed/a.txt", b"keep me".as_slice()),
        ("/mixed/notes.md", b"# Notes\n".as_slice()),
        ("/held/free.txt", b"free".as_slice()),
        ("/held/locked.txt", b"locked".as_slice()),
    ] {
        let get = dav(&server, "GET", path, &[], b"").await;
        assert_eq!((get.status, get.body.as_slice()), (200, body), "{path}");
    }
}

/// Bug: any writer could UNLOCK another account's lock with the token `lockdiscovery` shows.
#[tokio::test]
async fn only_the_holder_or_an_administrator_removes_a_lock() {
    let server = TestServer::start_jwt(|_| {}).await;
    let ann = bearer(&server.token("ann", &[("*", Role::Write)]));
    let bob = bearer(&server.token("bob", &[("*", Role::Write)]));
    dav(
        &server,
        "PUT",
        "/a.txt",
        &[("Authorization", &ann)],
        b"ann's",
    )
    .await;
    let token = take_lock(&server, "/a.txt", &[("Authorization", &ann)]).await;
    let coded = format!("<{token}>");

    let stolen = dav(
        &server,
        "UNLOCK",
        "/a.txt",
        &[("Authorization", &bob), ("Lock-Token", &coded)],
        b"",
    )
    .await;
    assert_eq!(stolen.status, 403, "{}", stolen.text());
    assert_eq!(error_code(&stolen), "not_lock_holder");
    let put = dav(
        &server,
        "PUT",
        "/a.txt",
        &[("Authorization", &bob)],
        b"bob's",
    )
    .await;
    assert_eq!(put.status, 423, "the lock still holds: {}", put.text());

    let unlocked = dav(
        &server,
        "UNLOCK",
        "/a.txt",
        &[("Authorization", &ann), ("Lock-Token", &coded)],
        b"",
    )
    .await;
    assert_eq!(unlocked.status, 204, "{}", unlocked.text());
    let put = dav(
        &server,
        "PUT",
        "/a.txt",
        &[("Authorization", &bob)],
        b"bob's",
    )
    .await;
    assert_eq!(put.status, 204, "{}", put.text());
}

/// Bug: a lock holder saving by a temporary file renamed over its locked file lost the file's
/// versions and its own lock (dav-server deleted the destination first), and could not save
/// onto a locked document at all.
#[tokio::test]
async fn a_lock_holder_saves_by_renaming_a_temporary_file_over_its_locked_file() {
    let server = TestServer::start().await;
    dav(&server, "PUT", "/report.txt", &[], b"v1").await;
    write_doc(&server, "notes.md", "# Old\n").await;
    let file_token = take_lock(&server, "/report.txt", &[]).await;
    let doc_token = take_lock(&server, "/notes.md", &[]).await;

    // Without the token: refused, nothing changed.
    dav(&server, "PUT", "/report.tmp", &[], b"v2").await;
    let refused = dav(
        &server,
        "MOVE",
        "/report.tmp",
        &[("Destination", "/dav/report.txt")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 423, "{}", refused.text());
    assert_eq!(versions_of(&server, &[], "report.txt").await, Some(1));

    let if_file = format!("(<{file_token}>)");
    let saved = dav(
        &server,
        "MOVE",
        "/report.tmp",
        &[("Destination", "/dav/report.txt"), ("If", &if_file)],
        b"",
    )
    .await;
    assert_eq!(saved.status, 204, "{}", saved.text());
    let get = dav(&server, "GET", "/report.txt", &[], b"").await;
    assert_eq!(get.body, b"v2");
    assert_eq!(versions_of(&server, &[], "report.txt").await, Some(2));
    assert_eq!(versions_of(&server, &[], "report.tmp").await, None);
    let other = dav(&server, "PUT", "/report.txt", &[], b"someone else").await;
    assert_eq!(
        other.status,
        423,
        "the holder keeps its lock: {}",
        other.text()
    );

    dav(&server, "PUT", "/notes.tmp", &[], b"# New\n").await;
    let if_doc = format!("(<{doc_token}>)");
    let saved = dav(
        &server,
        "MOVE",
        "/notes.tmp",
        &[("Destination", "/dav/notes.md"), ("If", &if_doc)],
        b"",
    )
    .await;
    assert_eq!(saved.status, 204, "{}", saved.text());
    let get = dav(&server, "GET", "/notes.md", &[], b"").await;
    assert_eq!(get.body, b"# New\n");
}

/// Bug: a URL parser drops a tab, so `.<TAB>.` passed the guard as a name and reached
/// dav-server as `..`; and an empty folder moved to a name no file may take.
#[tokio::test]
async fn destinations_are_read_once_and_checked_as_new_names() {
    let server = TestServer::start().await;
    dav(&server, "MKCOL", "/keep", &[], b"").await;
    dav(&server, "PUT", "/keep/x.txt", &[], b"x").await;
    dav(&server, "MKCOL", "/empty", &[], b"").await;

    let tab = dav(
        &server,
        "MOVE",
        "/keep/x.txt",
        &[("Destination", "http://localhost/dav/keep/.\t./moved.txt")],
        b"",
    )
    .await;
    assert_eq!(tab.status, 400, "{}", tab.text());
    assert_eq!(error_code(&tab), "bad_destination");
    assert_eq!(
        dav(&server, "GET", "/moved.txt", &[], b"").await.status,
        404
    );
    assert_eq!(
        dav(&server, "GET", "/keep/x.txt", &[], b"").await.body,
        b"x"
    );

    let control = dav(
        &server,
        "MOVE",
        "/empty",
        &[("Destination", "/dav/bad%01name")],
        b"",
    )
    .await;
    assert_eq!(control.status, 400, "{}", control.text());
    let listing = dav(&server, "PROPFIND", "/", &[("Depth", "1")], b"").await;
    assert!(listing.text().contains("/dav/empty/"), "{}", listing.text());
    assert!(!listing.text().contains("bad"), "{}", listing.text());
}

/// Bug: a file deleted or moved through the HTTP API left its dead properties at the old path,
/// where a new file of that name found them.
#[tokio::test]
async fn dead_properties_follow_a_file_deleted_or_moved_through_the_http_api() {
    let server = TestServer::start().await;
    let set = br#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><x:colour xmlns:x="urn:t">blue</x:colour></D:prop></D:set></D:propertyupdate>"#;
    let ask =
        br#"<D:propfind xmlns:D="DAV:"><D:prop><x:colour xmlns:x="urn:t"/></D:prop></D:propfind>"#;
    let colour = async |path: &str| {
        let found = dav(&server, "PROPFIND", path, &[("Depth", "0")], ask).await;
        assert_eq!(found.status, 207, "{}", found.text());
        found.text().contains(">blue<")
    };
    for path in ["/gone.txt", "/from.txt"] {
        dav(&server, "PUT", path, &[], b"x").await;
        let patched = dav(&server, "PROPPATCH", path, &[], set).await;
        assert_eq!(patched.status, 207, "{}", patched.text());
        assert!(colour(path).await);
    }
    let deleted = server
        .request("DELETE", "/api/files/gone.txt", &[], b"")
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let moved = server
        .request(
            "POST",
            "/api/file-moves",
            &[("Content-Type", "application/json")],
            json!({ "from": "from.txt", "to": "to.txt" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert!(colour("/to.txt").await, "the property moved with the file");
    for path in ["/gone.txt", "/from.txt"] {
        dav(&server, "PUT", path, &[], b"new").await;
        assert!(
            !colour(path).await,
            "{path}: a new file starts without properties"
        );
    }
}

/// The `getetag` of a `Depth: 0` PROPFIND of `path`, with its length.
async fn listed(server: &TestServer, path: &str) -> (u64, String) {
    let found = dav(server, "PROPFIND", path, &[("Depth", "0")], b"").await;
    let text = found.text();
    let value = |name: &str| -> String {
        text.split(&format!("{name}>"))
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_default()
            .to_owned()
    };
    (
        value("getcontentlength").parse().unwrap_or(u64::MAX),
        format!(
            "\"{}\"",
            value("getetag").replace("&quot;", "").trim_matches('"')
        ),
    )
}

/// Bug: listings remembered every document's text as a save's base, so a poller pushed
/// editors' bases out of the bounded cache. Only a text a client downloaded is a base: a tag
/// seen only in a listing names none, and the save is diffed against the current text.
#[tokio::test]
async fn a_listing_does_not_remember_a_documents_text_as_a_base() {
    let server = TestServer::start().await;
    let mut peer = server.connect("list.md").await;
    let local = Doc::new();
    let content = local.get_or_insert_text("content");
    let mut type_in = async |at: u32, text: &str, len: u64| {
        let update = {
            let mut txn = local.transact_mut();
            content.insert(&mut txn, at, text);
            txn.encode_update_v1()
        };
        peer.send_update(&update).await;
        wait_until("the listing shows the edit", async || {
            listed(&server, "/list.md").await.0 == len
        })
        .await;
    };
    type_in(0, "A\n", 2).await;
    let (_, listed_tag) = listed(&server, "/list.md").await;
    assert!(listed_tag.contains("t-"), "{listed_tag}");
    type_in(2, "B\n", 4).await;
    let put = dav(
        &server,
        "PUT",
        "/list.md",
        &[("If-Match", &listed_tag)],
        b"A\nC\n",
    )
    .await;
    assert_eq!(put.status, 204, "{}", put.text());
    let get = dav(&server, "GET", "/list.md", &[], b"").await;
    assert_eq!(get.text(), "A\nC\n");
    peer.close().await;
}

/// webdav.md's claim on locking a path that does not exist: the name is reserved, nothing is
/// stored until the holder writes it.
#[tokio::test]
async fn locking_a_new_path_reserves_the_name_and_stores_nothing() {
    let server = TestServer::start_jwt(|_| {}).await;
    let ann = bearer(&server.token("ann", &[("*", Role::Write)]));
    let bob = bearer(&server.token("bob", &[("*", Role::Write)]));
    let lock = dav(
        &server,
        "LOCK",
        "/new.txt",
        &[("Authorization", &ann)],
        EXCLUSIVE_LOCK,
    )
    .await;
    assert_eq!(lock.status, 201, "{}", lock.text());
    let token = lock.header("lock-token").expect("a token").to_owned();
    let get = dav(&server, "GET", "/new.txt", &[("Authorization", &ann)], b"").await;
    assert_eq!(get.status, 404, "{}", get.text());
    let put = dav(
        &server,
        "PUT",
        "/new.txt",
        &[("Authorization", &bob)],
        b"bob's",
    )
    .await;
    assert_eq!(put.status, 423, "{}", put.text());
    let if_token = format!("({token})");
    let put = dav(
        &server,
        "PUT",
        "/new.txt",
        &[("Authorization", &ann), ("If", &if_token)],
        b"ann's",
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let get = dav(&server, "GET", "/new.txt", &[("Authorization", &bob)], b"").await;
    assert_eq!(get.body, b"ann's");
}

/// Bug: dead properties had no bound: any writer could store any number per path.
#[tokio::test]
async fn dead_properties_are_bounded_per_path() {
    let server = TestServer::start().await;
    dav(&server, "PUT", "/p.txt", &[], b"x").await;
    let set = |props: &str| {
        format!(
            "<D:propertyupdate xmlns:D=\"DAV:\"><D:set><D:prop>{props}</D:prop></D:set></D:propertyupdate>"
        )
    };
    let many: String = (0..64)
        .map(|i| format!("<x:p{i} xmlns:x=\"urn:t\">v</x:p{i}>"))
        .collect();
    let fits = dav(&server, "PROPPATCH", "/p.txt", &[], set(&many).as_bytes()).await;
    assert_eq!(fits.status, 207, "{}", fits.text());
    assert!(!fits.text().contains("507"), "{}", fits.text());
    let one_more = set("<x:extra xmlns:x=\"urn:t\">v</x:extra>");
    let refused = dav(&server, "PROPPATCH", "/p.txt", &[], one_more.as_bytes()).await;
    assert!(refused.text().contains("507"), "{}", refused.text());

    dav(&server, "PUT", "/q.txt", &[], b"x").await;
    let big = |name: &str| {
        set(&format!(
            "<x:{name} xmlns:x=\"urn:t\">{}</x:{name}>",
            "y".repeat(40_000)
        ))
    };
    let first = dav(&server, "PROPPATCH", "/q.txt", &[], big("a").as_bytes()).await;
    assert!(!first.text().contains("507"), "{}", first.text());
    let second = dav(&server, "PROPPATCH", "/q.txt", &[], big("b").as_bytes()).await;
    assert!(second.text().contains("507"), "{}", second.text());

    // Nothing of a refused PROPPATCH was stored.
    let ask = br#"<D:propfind xmlns:D="DAV:"><D:prop><x:extra xmlns:x="urn:t"/><x:b xmlns:x="urn:t"/></D:prop></D:propfind>"#;
    for path in ["/p.txt", "/q.txt"] {
        let found = dav(&server, "PROPFIND", path, &[("Depth", "0")], ask).await;
        assert!(found.text().contains("404"), "{}", found.text());
        assert!(!found.text().contains("200 OK"), "{}", found.text());
    }
}
