//! Files, black-box: uploads with PUT and with tus (cut off and resumed), downloads whole and by
//! ranges with their validators, versions, renames, deletes, deduplicated blobs on disk, limits,
//! cleanup of interrupted and expired uploads, roles, and the events other clients see.
//!
//! Every request is real HTTP/1.1 to the real server with a real redb file and data directory.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tandem_server::Config;
use tandem_server::auth::Role;
use tandem_tests::{HttpResponse, Peer, TestServer, WAIT, bearer, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// `n` pseudo-random bytes (xorshift; different seeds give different files).
pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(n);
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub(crate) async fn put(
    server: &TestServer,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> HttpResponse {
    server
        .request("PUT", &format!("/api/files/{path}"), headers, body)
        .await
}

pub(crate) async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    server.request("GET", path, headers, b"").await
}

/// Files in `dir` under the data directory, recursively.
fn files_under(server: &TestServer, dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.data_dir().join(dir), &mut out);
    out
}

/// Sends a request head and the first bytes of a body that claims to be longer, waits until
/// the server is receiving it (an upload file exists), then cuts the connection.
async fn send_and_cut(server: &TestServer, head: &str, partial: &[u8]) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(partial).await.expect("partial body");
    stream.flush().await.expect("flush");
    wait_until("the server receives the body", async || {
        !files_under(server, "uploads").is_empty()
    })
    .await;
    drop(stream);
}

pub(crate) async fn listed_paths(server: &TestServer) -> Vec<String> {
    let response = get(server, "/api/files", &[]).await;
    assert_eq!(response.status, 200);
    response.json()["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|file| file["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_multi_megabyte_put_downloads_whole_and_by_ranges_with_matching_hashes() {
    let server = TestServer::start().await;
    let data = random_bytes(5 * MIB, 1);
    let sha = sha256_hex(&data);
    let response = put(
        &server,
        "team/builds/app.bin",
        &data,
        &[("X-Tandem-Sha256", &sha.to_uppercase())],
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let file = &response.json()["file"];
    assert_eq!(file["path"], "team/builds/app.bin");
    assert_eq!(file["name"], "app.bin");
    assert_eq!(file["size"], data.len());
    assert_eq!(file["sha256"], sha.as_str());
    assert_eq!(file["version"], 1);
    assert_eq!(file["n_versions"], 1);
    assert_eq!(file["uploader"]["name"], "anonymous");

    let whole = get(&server, "/api/files/team/builds/app.bin", &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_hex(&whole.body), sha);
    let etag = format!("\"{sha}\"");
    assert_eq!(whole.header("etag"), Some(etag.as_str()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("content-length"), Some("5242880"));
    assert_eq!(whole.header("x-content-type-options"), Some("nosniff"));
    let last_modified = whole
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let len = data.len();
    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000000-2999999", 1_000_000, 2_999_999),
        ("bytes=-4096", len - 4096, len - 1),
        ("bytes=4000000-", 4_000_000, len - 1),
        ("bytes=5000000-99999999", 5_000_000, len - 1),
    ] {
        let part = get(
            &server,
            "/api/files/team/builds/app.bin",
            &[("Range", range)],
        )
        .await;
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{range}"
        );
        assert_eq!(
            sha256_hex(&part.body),
            sha256_hex(&data[start..=end]),
            "{range}"
        );
    }
    let beyond = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("Range", "bytes=6000000-")],
    )
    .await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */5242880"));
    let several = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("Range", "bytes=0-1,10-20")],
    )
    .await;
    assert_eq!((several.status, several.body.len()), (200, len));
    // If-Range: the range applies only while the file is the one the client had.
    let current = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
    )
    .await;
    assert_eq!(
        (current.status, current.body.as_slice()),
        (206, &data[..10])
    );
    let by_date = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("Range", "bytes=0-9"), ("If-Range", &last_modified)],
    )
    .await;
    assert_eq!(by_date.status, 206);
    let stale = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("Range", "bytes=0-9"), ("If-Range", "\"0000\"")],
    )
    .await;
    assert_eq!((stale.status, stale.body.len()), (200, len));

    let cached = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let changed = get(
        &server,
        "/api/files/team/builds/app.bin",
        &[("If-None-Match", "\"something else\"")],
    )
    .await;
    assert_eq!(changed.status, 200);

    let head = server
        .request("HEAD", "/api/files/team/builds/app.bin", &[], b"")
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5242880"));
    assert!(head.body.is_empty());
    // Nothing is left in the upload area, and the blob is where the layout says.
    assert!(files_under(&server, "uploads").is_empty());
    assert_eq!(files_under(&server, "blobs"), vec![sha.clone()]);
    assert!(
        server
            .data_dir()
            .join("blobs")
            .join(&sha[..2])
            .join(&sha)
            .is_file()
    );
}

#[tokio::test]
async fn names_with_spaces_and_non_ascii_get_both_disposition_forms_and_a_guessed_type() {
    let server = TestServer::start().await;
    let path = "team/Gr%C3%BC%C3%9Fe%20und%20mehr.pdf";
    let response = put(&server, path, b"%PDF-1.4 not really", &[]).await;
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["file"]["name"], "Grüße und mehr.pdf");
    assert_eq!(response.json()["file"]["content_type"], "application/pdf");
    let download = get(&server, &format!("/api/files/{path}"), &[]).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.header("content-type"), Some("application/pdf"));
    assert_eq!(
        download.header("content-disposition"),
        Some(
            "attachment; filename=\"Gr__e und mehr.pdf\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20und%20mehr.pdf"
        )
    );
    let inline = get(&server, &format!("/api/files/{path}?inline=1"), &[]).await;
    assert!(
        inline
            .header("content-disposition")
            .is_some_and(|value| value.starts_with("inline; filename=")),
        "{:?}",
        inline.headers
    );
    // A declared type wins over the guess; an HTML file may not script our origin.
    let html = put(
        &server,
        "team/page.html",
        b"<script>alert(1)</script>",
        &[("Content-Type", "text/html")],
    )
    .await;
    assert_eq!(html.status, 201);
    let served = get(&server, "/api/files/team/page.html?inline=1", &[]).await;
    assert_eq!(served.header("content-type"), Some("text/html"));
    assert_eq!(served.header("content-security-policy"), Some("sandbox"));
    assert_eq!(served.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn the_same_bytes_under_two_paths_are_stored_once_and_deleting_frees_the_blob() {
    let server = TestServer::start().await;
    let data = random_bytes(300_000, 2);
    let sha = sha256_hex(&data);
    assert_eq!(put(&server, "team/a.bin", &data, &[]).await.status, 201);
    assert_eq!(put(&server, "other/b.bin", &data, &[]).await.status, 201);
    assert_eq!(files_under(&server, "blobs"), vec![sha.clone()]);
    assert_eq!(listed_paths(&server).await, ["other/b.bin", "team/a.bin"]);

    let deleted = server
        .request("DELETE", "/api/files/team/a.bin", &[], b"")
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        files_under(&server, "blobs"),
        vec![sha.clone()],
        "still named by other/b.bin"
    );
    assert_eq!(get(&server, "/api/files/team/a.bin", &[]).await.status, 404);
    let still = get(&server, "/api/files/other/b.bin", &[]).await;
    assert_eq!(sha256_hex(&still.body), sha);

    assert_eq!(
        server
            .request("DELETE", "/api/files/other/b.bin", &[], b"")
            .await
            .status,
        204
    );
    assert!(
        files_under(&server, "blobs").is_empty(),
        "unreferenced blob removed"
    );
    assert!(listed_paths(&server).await.is_empty());
    let again = server
        .request("DELETE", "/api/files/other/b.bin", &[], b"")
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["error"], "file_not_found");
}

#[tokio::test]
async fn an_overwrite_keeps_earlier_versions_downloadable_across_a_restart() {
    let mut server = TestServer::start().await;
    let first = random_bytes(70_000, 3);
    let second = random_bytes(90_000, 4);
    assert_eq!(
        put(&server, "team/report.txt", &first, &[]).await.status,
        201
    );
    let response = put(&server, "team/report.txt", &second, &[]).await;
    assert_eq!(response.json()["file"]["version"], 2);
    assert_eq!(response.json()["file"]["n_versions"], 2);

    server.restart().await;
    server.wait_healthy().await;

    let current = get(&server, "/api/files/team/report.txt", &[]).await;
    assert_eq!(current.body, second);
    let old = get(&server, "/api/files/team/report.txt?version=1", &[]).await;
    assert_eq!(old.status, 200);
    assert_eq!(old.body, first);
    assert_eq!(
        old.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&first)).as_str())
    );
    let missing = get(&server, "/api/files/team/report.txt?version=9", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "version_not_found");

    let versions = get(&server, "/api/file-versions/team/report.txt", &[]).await;
    assert_eq!(versions.status, 200);
    let list = versions.json()["versions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0]["version"].clone(), list[1]["version"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(list[1]["size"], first.len());
    assert_eq!(list[1]["sha256"], sha256_hex(&first).as_str());
}

#[tokio::test]
async fn a_rename_moves_every_version_and_refuses_a_taken_target() {
    let server = TestServer::start().await;
    assert_eq!(put(&server, "team/a.txt", b"one", &[]).await.status, 201);
    assert_eq!(put(&server, "team/a.txt", b"two", &[]).await.status, 201);
    assert_eq!(put(&server, "team/b.txt", b"bee", &[]).await.status, 201);
    let moved = server
        .request(
            "POST",
            "/api/file-moves",
            &[("Content-Type", "application/json")],
            json!({ "from": "team/a.txt", "to": "archive/c.txt" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(moved.json()["file"]["path"], "archive/c.txt");
    assert_eq!(moved.json()["file"]["n_versions"], 2);
    assert_eq!(get(&server, "/api/files/team/a.txt", &[]).await.status, 404);
    assert_eq!(
        get(&server, "/api/files/archive/c.txt", &[]).await.body,
        b"two"
    );
    assert_eq!(
        get(&server, "/api/files/archive/c.txt?version=1", &[])
            .await
            .body,
        b"one"
    );

    let taken = server
        .request(
            "POST",
            "/api/file-moves",
            &[],
            json!({ "from": "archive/c.txt", "to": "team/b.txt" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(taken.status, 409);
    assert_eq!(taken.json()["error"], "path_taken");
    let missing = server
        .request(
            "POST",
            "/api/file-moves",
            &[],
            json!({ "from": "nope.txt", "to": "x.txt" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(missing.status, 404);
    let bad = server
        .request(
            "POST",
            "/api/file-moves",
            &[],
            json!({ "from": "archive/c.txt", "to": "../x" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(bad.status, 400);
    let huge = server
        .request("POST", "/api/file-moves", &[], &vec![b' '; 64 * 1024])
        .await;
    assert_eq!(huge.status, 413);
    assert_eq!(huge.json()["error"], "body_too_large");
    assert_eq!(listed_paths(&server).await, ["archive/c.txt", "team/b.txt"]);
}

#[tokio::test]
async fn a_file_and_a_doc_cannot_share_a_path() {
    let server = TestServer::start().await;
    let mut peer = server.connect("team/notes").await;
    peer.append_text("hello").await;
    let refused = put(&server, "team/notes", b"bytes", &[]).await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "path_taken");

    assert_eq!(
        put(&server, "team/file.txt", b"bytes", &[]).await.status,
        201
    );
    let res = Peer::try_connect_raw(server.addr, "team/file.txt").await;
    match res {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 409);
        }
        other => panic!("expected a 409 refusal, got {:?}", other.map(|_| ())),
    }
    let moved = server
        .request(
            "POST",
            "/api/file-moves",
            &[],
            json!({ "from": "team/file.txt", "to": "team/notes" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(moved.status, 409);
    // Nor can a doc be created over HTTP at a file's path.
    let update = peer.insert_local(0, "x");
    let refused = server
        .request("POST", "/api/docs/team/file.txt/update", &[], &update)
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "path_taken");
    peer.close().await;
}

#[tokio::test]
async fn a_wrong_hash_or_a_cut_body_leaves_nothing_visible_and_no_bytes() {
    let server = TestServer::start().await;
    let data = random_bytes(200_000, 5);
    let wrong = put(
        &server,
        "team/x.bin",
        &data,
        &[("X-Tandem-Sha256", &sha256_hex(b"something else"))],
    )
    .await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "sha256_mismatch");
    assert!(listed_paths(&server).await.is_empty());
    assert!(files_under(&server, "uploads").is_empty());
    assert!(files_under(&server, "blobs").is_empty());

    // Content-Length promises 1 MiB; 256 KiB arrive, then the connection is cut.
    let head = format!(
        "PUT /api/files/team/cut.bin HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.addr, MIB
    );
    send_and_cut(&server, &head, &random_bytes(256 * 1024, 6)).await;
    wait_until("the cut upload's bytes are removed", async || {
        files_under(&server, "uploads").is_empty()
    })
    .await;
    assert_eq!(
        get(&server, "/api/files/team/cut.bin", &[]).await.status,
        404
    );
    assert!(listed_paths(&server).await.is_empty());
    assert!(files_under(&server, "blobs").is_empty());
}

pub(crate) fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

pub(crate) fn tus<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("Tus-Resumable", "1.0.0")];
    headers.extend_from_slice(extra);
    headers
}

/// Creates a tus upload and returns its URL path.
pub(crate) async fn create_upload(
    server: &TestServer,
    path: &str,
    length: usize,
    sha: Option<&str>,
) -> String {
    let mut metadata = format!("path {},filetype {}", b64(path), b64("application/x-test"));
    if let Some(sha) = sha {
        metadata.push_str(&format!(",sha256 {}", b64(sha)));
    }
    let length = length.to_string();
    let created = server
        .request(
            "POST",
            "/api/uploads",
            &tus(&[("Upload-Length", &length), ("Upload-Metadata", &metadata)]),
            b"",
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("tus-resumable"), Some("1.0.0"));
    assert!(created.header("upload-expires").is_some());
    let location = created.header("location").expect("location").to_owned();
    assert!(location.starts_with("/api/uploads/"), "{location}");
    location
}

pub(crate) async fn upload_offset(server: &TestServer, location: &str) -> (u16, Option<u64>) {
    let head = server.request("HEAD", location, &tus(&[]), b"").await;
    (
        head.status,
        head.header("upload-offset")
            .map(|value| value.parse().unwrap()),
    )
}

pub(crate) async fn patch(
    server: &TestServer,
    location: &str,
    offset: usize,
    body: &[u8],
) -> HttpResponse {
    let offset = offset.to_string();
    server
        .request(
            "PATCH",
            location,
            &tus(&[
                ("Upload-Offset", &offset),
                ("Content-Type", "application/offset+octet-stream"),
            ]),
            body,
        )
        .await
}

#[tokio::test]
async fn a_tus_upload_cut_mid_patch_resumes_from_the_offset_head_reports() {
    let server = TestServer::start().await;
    let options = server.request("OPTIONS", "/api/uploads", &[], b"").await;
    assert_eq!(options.status, 204);
    assert_eq!(options.header("tus-version"), Some("1.0.0"));
    assert_eq!(
        options.header("tus-extension"),
        Some("creation,termination,expiration")
    );
    assert_eq!(options.header("tus-max-size"), Some("2147483648"));

    let data = random_bytes(3 * MIB, 7);
    let sha = sha256_hex(&data);
    let location = create_upload(&server, "team/big.bin", data.len(), Some(&sha)).await;
    assert_eq!(upload_offset(&server, &location).await, (200, Some(0)));
    assert!(
        listed_paths(&server).await.is_empty(),
        "uploads in progress are not listed"
    );

    let first = patch(&server, &location, 0, &data[..MIB]).await;
    assert_eq!(first.status, 204, "{}", first.text());
    assert_eq!(first.header("upload-offset"), Some("1048576"));

    // Wrong protocol version, wrong offset: refused, nothing written.
    let old = server
        .request("HEAD", &location, &[("Tus-Resumable", "0.2.2")], b"")
        .await;
    assert_eq!(old.status, 412);
    assert_eq!(old.header("tus-version"), Some("1.0.0"));
    let mismatch = patch(&server, &location, 5, b"xx").await;
    assert_eq!(mismatch.status, 409);
    assert_eq!(mismatch.json()["error"], "offset_mismatch");

    // A PATCH for the rest that is cut off after 512 KiB: those bytes are kept.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {MIB}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        2 * MIB
    );
    send_and_cut(&server, &head, &data[MIB..MIB + 512 * 1024]).await;
    let resumed_at = MIB + 512 * 1024;
    wait_until("HEAD reports the bytes of the cut PATCH", async || {
        upload_offset(&server, &location).await == (200, Some(resumed_at as u64))
    })
    .await;
    assert!(listed_paths(&server).await.is_empty());

    let last = patch(&server, &location, resumed_at, &data[resumed_at..]).await;
    assert_eq!(last.status, 204, "{}", last.text());
    assert_eq!(last.header("upload-offset"), Some("3145728"));
    assert_eq!(last.header("tandem-file-version"), Some("1"));
    let download = get(&server, "/api/files/team/big.bin", &[]).await;
    assert_eq!(download.status, 200);
    assert_eq!(sha256_hex(&download.body), sha);
    assert_eq!(download.header("content-type"), Some("application/x-test"));
    assert!(files_under(&server, "uploads").is_empty());
    assert_eq!(
        upload_offset(&server, &location).await.0,
        404,
        "the upload is finished"
    );
}

#[tokio::test]
async fn a_tus_upload_with_a_wrong_hash_or_terminated_leaves_nothing() {
    let server = TestServer::start().await;
    let data = random_bytes(100_000, 8);
    let location = create_upload(&server, "team/h.bin", data.len(), Some(&sha256_hex(b"x"))).await;
    let done = patch(&server, &location, 0, &data).await;
    assert_eq!(done.status, 400);
    assert_eq!(done.json()["error"], "sha256_mismatch");
    assert!(listed_paths(&server).await.is_empty());
    assert!(files_under(&server, "uploads").is_empty());
    assert!(files_under(&server, "blobs").is_empty());

    // An empty upload is complete as soon as it is created.
    let metadata = format!("path {}", b64("team/empty.txt"));
    let empty = server
        .request(
            "POST",
            "/api/uploads",
            &tus(&[("Upload-Length", "0"), ("Upload-Metadata", &metadata)]),
            b"",
        )
        .await;
    assert_eq!(empty.status, 201, "{}", empty.text());
    assert_eq!(empty.header("tandem-file-version"), Some("1"));
    let downloaded = get(&server, "/api/files/team/empty.txt", &[]).await;
    assert_eq!((downloaded.status, downloaded.body.len()), (200, 0));
    assert_eq!(downloaded.header("content-type"), Some("text/plain"));

    let location = create_upload(&server, "team/t.bin", data.len(), None).await;
    assert_eq!(
        patch(&server, &location, 0, &data[..5000]).await.status,
        204
    );
    let terminated = server.request("DELETE", &location, &tus(&[]), b"").await;
    assert_eq!(terminated.status, 204);
    assert!(files_under(&server, "uploads").is_empty());
    assert_eq!(upload_offset(&server, &location).await.0, 404);
}

#[tokio::test]
async fn an_expired_upload_and_its_bytes_are_cleaned_up() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.files.upload_expiry = Duration::from_secs(2);
        config.files.cleanup_interval = Duration::from_millis(50);
    })
    .await;
    let location = create_upload(&server, "team/slow.bin", 10_000, None).await;
    assert_eq!(patch(&server, &location, 0, &[7u8; 4000]).await.status, 204);
    assert_eq!(files_under(&server, "uploads").len(), 1);
    wait_until("the expired upload is removed", async || {
        files_under(&server, "uploads").is_empty()
    })
    .await;
    let (status, _) = upload_offset(&server, &location).await;
    assert_eq!(status, 404);
    assert!(listed_paths(&server).await.is_empty());
}

#[tokio::test]
async fn too_large_files_and_full_workspaces_are_refused_with_clear_errors() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.files.max_file_bytes = 10_000;
        config.files.workspace_quota_bytes = 15_000;
    })
    .await;
    let big = put(&server, "team/big.bin", &[1u8; 10_001], &[]).await;
    assert_eq!(big.status, 413);
    assert_eq!(big.json()["error"], "file_too_large");
    assert!(big.json()["message"].as_str().unwrap().contains("10000"));

    // Without Content-Length the limit applies while streaming.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let chunk = [2u8; 6000];
    let mut request = format!(
        "PUT /api/files/team/chunked.bin HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for _ in 0..2 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .ok();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("file_too_large"), "{text}");

    assert_eq!(
        put(&server, "team/a.bin", &[3u8; 8000], &[]).await.status,
        201
    );
    let full = put(&server, "team/b.bin", &[4u8; 8000], &[]).await;
    assert_eq!(full.status, 507);
    assert_eq!(full.json()["error"], "quota_exceeded");
    let message = full.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("8000") && message.contains("15000"),
        "{message}"
    );
    // Another workspace has its own quota.
    assert_eq!(
        put(&server, "other/b.bin", &[4u8; 8000], &[]).await.status,
        201
    );

    let tus_big = server
        .request(
            "POST",
            "/api/uploads",
            &tus(&[
                ("Upload-Length", "50000"),
                ("Upload-Metadata", &format!("path {}", b64("team/t.bin"))),
            ]),
            b"",
        )
        .await;
    assert_eq!(tus_big.status, 413);
    assert_eq!(tus_big.header("tus-resumable"), Some("1.0.0"));
    let tus_full = server
        .request(
            "POST",
            "/api/uploads",
            &tus(&[
                ("Upload-Length", "9000"),
                ("Upload-Metadata", &format!("path {}", b64("team/t.bin"))),
            ]),
            b"",
        )
        .await;
    assert_eq!(tus_full.status, 507);
    assert!(files_under(&server, "uploads").is_empty());
}

#[tokio::test]
async fn a_read_only_token_may_download_but_not_upload_rename_or_delete() {
    let server = TestServer::start_jwt(|_| {}).await;
    let writer = bearer(&server.token("ada", &[("team/*", Role::Write)]));
    let reader = bearer(&server.token("bob", &[("team/*", Role::Read)]));
    let outsider = bearer(&server.token("eve", &[("other/*", Role::Write)]));

    let stored = put(
        &server,
        "team/app.zip",
        b"zip bytes",
        &[("Authorization", &writer)],
    )
    .await;
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(
        stored.json()["file"]["uploader"],
        json!({ "sub": "ada", "name": "ada (verified)" })
    );

    let refused = put(
        &server,
        "team/app.zip",
        b"other bytes",
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "read_only");
    let tus_refused = server
        .request(
            "POST",
            "/api/uploads",
            &tus(&[
                ("Authorization", &reader),
                ("Upload-Length", "10"),
                ("Upload-Metadata", &format!("path {}", b64("team/t.bin"))),
            ]),
            b"",
        )
        .await;
    assert_eq!(tus_refused.status, 403);
    let delete = server
        .request(
            "DELETE",
            "/api/files/team/app.zip",
            &[("Authorization", &reader)],
            b"",
        )
        .await;
    assert_eq!(delete.status, 403);
    let rename = server
        .request(
            "POST",
            "/api/file-moves",
            &[("Authorization", &reader)],
            json!({ "from": "team/app.zip", "to": "team/b.zip" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(rename.status, 403);

    let download = get(
        &server,
        "/api/files/team/app.zip",
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!(download.status, 200);
    assert_eq!(download.body, b"zip bytes");
    let listed = get(&server, "/api/files", &[("Authorization", &reader)]).await;
    assert_eq!(listed.json()["files"].as_array().unwrap().len(), 1);
    assert_eq!(get(&server, "/api/files", &[]).await.status, 401);

    let hidden = get(&server, "/api/files", &[("Authorization", &outsider)]).await;
    assert_eq!(hidden.json()["files"], json!([]));
    let forbidden = get(
        &server,
        "/api/files/team/app.zip",
        &[("Authorization", &outsider)],
    )
    .await;
    assert_eq!(forbidden.status, 403);
    // A rename needs write on both paths.
    let across = server
        .request(
            "POST",
            "/api/file-moves",
            &[("Authorization", &writer)],
            json!({ "from": "team/app.zip", "to": "other/app.zip" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(across.status, 403);
}

/// What "within a second" promises other clients.
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn uploads_renames_and_deletes_reach_another_clients_event_stream_within_a_second() {
    let server = TestServer::start().await;
    // Opening waits for the stream's `hello`, so every event below happens after it.
    let mut events = server.events().await;

    assert_eq!(
        put(&server, "team/new.bin", b"fresh", &[]).await.status,
        201
    );
    let uploaded = events
        .next_matching_within(SECOND, |event| event["type"] == "file_uploaded")
        .await;
    assert_eq!(uploaded["path"], "team/new.bin");
    assert_eq!(uploaded["version"], 1);
    assert_eq!(uploaded["size"], 5);
    assert_eq!(uploaded["sha256"], sha256_hex(b"fresh").as_str());
    assert_eq!(uploaded["actor"]["name"], "anonymous");

    let moved = server
        .request(
            "POST",
            "/api/file-moves",
            &[],
            json!({ "from": "team/new.bin", "to": "team/renamed.bin" })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(moved.status, 200);
    let renamed = events
        .next_matching_within(SECOND, |event| event["type"] == "file_renamed")
        .await;
    assert_eq!(
        (renamed["from"].clone(), renamed["to"].clone()),
        (json!("team/new.bin"), json!("team/renamed.bin"))
    );

    assert_eq!(
        server
            .request("DELETE", "/api/files/team/renamed.bin", &[], b"")
            .await
            .status,
        204
    );
    let deleted = events
        .next_matching_within(SECOND, |event| event["type"] == "file_deleted")
        .await;
    assert_eq!(deleted["path"], "team/renamed.bin");
}

#[tokio::test]
async fn leftovers_of_a_crash_are_removed_when_the_server_starts() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    // The store the crash left behind (the server refuses to create one beside leftovers).
    drop(tandem_store::Store::open(&data_dir.path().join("tandem.redb")).expect("store"));
    // What a crash can leave: the bytes of a PUT in progress, and a blob renamed into place
    // whose version was never committed.
    let uploads = data_dir.path().join("uploads");
    let orphan_sha = sha256_hex(b"orphan");
    let blob_dir = data_dir.path().join("blobs").join(&orphan_sha[..2]);
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(
        uploads.join("0123456789abcdef0123456789abcdef"),
        b"half a file",
    )
    .unwrap();
    std::fs::write(blob_dir.join(&orphan_sha), b"orphan").unwrap();
    let server = TestServer::start_in(data_dir, |_| {}).await;
    server.wait_healthy().await;
    assert!(files_under(&server, "uploads").is_empty());
    assert!(files_under(&server, "blobs").is_empty());
    // A committed blob survives a restart's cleanup.
    assert_eq!(put(&server, "kept.txt", b"kept", &[]).await.status, 201);
    let mut server = server;
    server.restart().await;
    server.wait_healthy().await;
    assert_eq!(files_under(&server, "blobs"), vec![sha256_hex(b"kept")]);
    assert_eq!(get(&server, "/api/files/kept.txt", &[]).await.body, b"kept");
}

#[tokio::test]
async fn a_new_patch_takes_over_from_a_stalled_one_and_keeps_its_bytes() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * MIB, 9);
    let sha = sha256_hex(&data);
    let location = create_upload(&server, "team/stalled.bin", data.len(), Some(&sha)).await;
    // A PATCH whose connection stays open but stops sending, as when a network drops without
    // a reset: the server cannot tell it is dead.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        data.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&data[..300 * 1024]).await.unwrap();
    stalled.flush().await.unwrap();
    // Its bytes reach the file in blocks while it runs (the writer's buffer is smaller).
    wait_until("the stalled PATCH is being written", async || {
        upload_offset(&server, &location)
            .await
            .1
            .is_some_and(|offset| offset > 0)
    })
    .await;

    // The client resumes with what it believes the offset is; the stalled PATCH is stopped and
    // syncs what it got, so the guess is stale: 409, and HEAD tells the truth.
    let guess = patch(&server, &location, 0, &data).await;
    assert_eq!(guess.status, 409, "{}", guess.text());
    let (status, offset) = upload_offset(&server, &location).await;
    assert_eq!(status, 200);
    let offset = offset.unwrap() as usize;
    assert!(offset <= 300 * 1024, "offset {offset}");
    let rest = patch(&server, &location, offset, &data[offset..]).await;
    assert_eq!(rest.status, 204, "{}", rest.text());
    assert_eq!(rest.header("tandem-file-version"), Some("1"));
    let download = get(&server, "/api/files/team/stalled.bin", &[]).await;
    assert_eq!(sha256_hex(&download.body), sha);
    // The stalled connection was answered and closed.
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .ok();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 423"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Sends the head of a PUT of `total` bytes and the first bytes of its body, and waits until
/// the server is receiving it (its upload file exists). The caller sends the rest.
async fn start_put(server: &TestServer, path: &str, total: usize, first: &[u8]) -> TcpStream {
    let before = files_under(server, "uploads").len();
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "PUT /api/files/{path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first).await.expect("first bytes");
    stream.flush().await.expect("flush");
    wait_until("the server receives the body", async || {
        files_under(server, "uploads").len() > before
    })
    .await;
    stream
}

/// Sends the rest of a body and reads the raw answer.
async fn finish_put(mut stream: TcpStream, rest: &[u8]) -> String {
    stream.write_all(rest).await.expect("rest of the body");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_slow_put_keeps_its_bytes_through_the_cleanup() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.files.cleanup_interval = Duration::from_millis(20);
        config.files.orphan_grace = Duration::ZERO;
    })
    .await;
    let data = random_bytes(300_000, 21);
    let stream = start_put(&server, "team/slow.bin", data.len(), &data[..100_000]).await;
    // The gap the fix is about: many cleanup passes while the body is still arriving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = finish_put(stream, &data[100_000..]).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let downloaded = get(&server, "/api/files/team/slow.bin", &[]).await;
    assert_eq!(downloaded.status, 200);
    assert_eq!(sha256_hex(&downloaded.body), sha256_hex(&data));
}

#[tokio::test]
async fn uploads_in_progress_hold_their_bytes_of_the_quota() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.files.workspace_quota_bytes = 100_000;
    })
    .await;
    let metadata = format!("path {}", b64("team/second.bin"));
    let create_second = async || {
        server
            .request(
                "POST",
                "/api/uploads",
                &tus(&[("Upload-Length", "60000"), ("Upload-Metadata", &metadata)]),
                b"",
            )
            .await
    };
    let first = create_upload(&server, "team/first.bin", 60_000, None).await;
    assert_eq!(patch(&server, &first, 0, &[1u8; 1000]).await.status, 204);
    let refused = create_second().await;
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert_eq!(refused.json()["error"], "quota_exceeded");
    // Another workspace is not affected.
    create_upload(&server, "other/x.bin", 60_000, None).await;
    // Ending the first upload frees what it held.
    let terminated = server.request("DELETE", &first, &tus(&[]), b"").await;
    assert_eq!(terminated.status, 204);
    let second = create_second().await;
    assert_eq!(second.status, 201, "{}", second.text());
    let second = second.header("location").unwrap().to_owned();

    // A record whose bytes are gone (a crash, or removed by hand) is dropped when seen, and
    // stops holding quota.
    for id in files_under(&server, "uploads") {
        if second.ends_with(&id) {
            std::fs::remove_file(server.data_dir().join("uploads").join(id)).unwrap();
        }
    }
    assert_eq!(upload_offset(&server, &second).await.0, 404);
    let third = create_second().await;
    assert_eq!(third.status, 201, "the record is gone: {}", third.text());
    let third = third.header("location").unwrap().to_owned();
    let terminated = server.request("DELETE", &third, &tus(&[]), b"").await;
    assert_eq!(terminated.status, 204);

    // A PUT being received holds its Content-Length.
    let data = random_bytes(60_000, 22);
    let stream = start_put(&server, "team/put.bin", data.len(), &data[..1000]).await;
    let refused = create_second().await;
    assert_eq!(refused.status, 507, "{}", refused.text());
    let answer = finish_put(stream, &data[1000..]).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let stored = create_second().await;
    assert_eq!(stored.status, 507, "the stored file counts too");
}

#[tokio::test]
async fn only_the_newest_versions_are_kept_and_empty_files_are_not_free() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.files.max_file_versions = 3;
        config.files.workspace_quota_bytes = 3 * 4096;
    })
    .await;
    for round in 0..6u64 {
        let body = if round < 5 {
            random_bytes(100, round)
        } else {
            Vec::new()
        };
        let stored = put(&server, "team/a.txt", &body, &[]).await;
        assert_eq!(stored.status, 201, "{}", stored.text());
        let expected = (round + 1).min(3);
        assert_eq!(stored.json()["file"]["n_versions"], expected);
    }
    // Empty uploads in a loop never grow the record.
    for _ in 0..5 {
        assert_eq!(put(&server, "team/a.txt", b"", &[]).await.status, 201);
    }
    let versions = get(&server, "/api/file-versions/team/a.txt", &[]).await;
    let numbers: Vec<u64> = versions.json()["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| version["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [11, 10, 9]);
    let dropped = get(&server, "/api/files/team/a.txt?version=1", &[]).await;
    assert_eq!(dropped.status, 404);
    assert_eq!(dropped.json()["error"], "version_not_found");
    // Only the empty blob is left on disk: the dropped versions' bytes are gone.
    assert_eq!(files_under(&server, "blobs"), [sha256_hex(b"")]);
    // Three versions of 4 KiB each fill the quota, even empty ones.
    let full = put(&server, "team/b.txt", b"", &[]).await;
    assert_eq!(full.status, 507, "{}", full.text());
    assert_eq!(full.json()["error"], "quota_exceeded");
}

/// Puts a plain file where blob `sha256`'s directory goes, so storing that blob fails.
async fn block_blob_dir(server: &TestServer, sha256: &str) -> std::path::PathBuf {
    server.wait_healthy().await;
    let blocker = server.data_dir().join("blobs").join(&sha256[..2]);
    std::fs::write(&blocker, b"not a directory").unwrap();
    blocker
}

#[tokio::test]
async fn a_blob_that_cannot_be_stored_leaves_no_put_bytes_and_a_tus_upload_to_retry() {
    let server = TestServer::start().await;
    let data = random_bytes(50_000, 23);
    let sha = sha256_hex(&data);
    let blocker = block_blob_dir(&server, &sha).await;
    let failed = put(&server, "team/p.bin", &data, &[]).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert!(files_under(&server, "uploads").is_empty());
    assert!(listed_paths(&server).await.is_empty());

    // A tus upload whose completion fails internally is kept, bytes and all.
    let location = create_upload(&server, "team/t.bin", data.len(), Some(&sha)).await;
    let failed = patch(&server, &location, 0, &data).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(
        upload_offset(&server, &location).await,
        (200, Some(data.len() as u64))
    );
    std::fs::remove_file(&blocker).unwrap();
    // An empty PATCH at the final offset retries the completion.
    let done = patch(&server, &location, data.len(), b"").await;
    assert_eq!(done.status, 204, "{}", done.text());
    assert_eq!(done.header("tandem-file-version"), Some("1"));
    let downloaded = get(&server, "/api/files/team/t.bin", &[]).await;
    assert_eq!(sha256_hex(&downloaded.body), sha);
    assert!(files_under(&server, "uploads").is_empty());
    assert_eq!(upload_offset(&server, &location).await.0, 404);
}

#[tokio::test]
async fn a_move_with_an_unknown_field_is_refused() {
    let server = TestServer::start().await;
    assert_eq!(put(&server, "team/a.bin", b"abc", &[]).await.status, 201);
    let body = json!({ "from": "team/a.bin", "to": "team/b.bin", "overwrite": true });
    let refused = server
        .request(
            "POST",
            "/api/file-moves",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "bad_body");
    assert_eq!(listed_paths(&server).await, ["team/a.bin"]);
}
