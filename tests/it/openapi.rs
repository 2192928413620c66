//! `GET /api/openapi.json` on a running server with authentication on (`protocol-spec/http.md`):
//! served without a token, and every operation it describes is answered by the API itself. The
//! unit tests of `api/openapi.rs` compare the document with the router's route table; this one
//! sends each documented request to the real server, as a client reading the document would.

use serde_json::Value;
use tandem_tests::TestServer;

/// A sample value for each path parameter, names with a `/` in them.
fn sample(param: &str) -> &'static str {
    match param {
        "name" => "team/notes.md",
        "path" => "team/builds/app.zip",
        "id" => "7",
        "sub" => "alice",
        "token" => "urn:uuid:0b1c2d3e-4f50-4617-8899-aabbccddeeff",
        other => panic!("no sample value for the path parameter {other}"),
    }
}

fn instantiate(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        out.push_str(sample(&rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_document_is_public_and_every_operation_in_it_reaches_the_api() {
    let server = TestServer::start_jwt(|_| {}).await;
    let response = server.request("GET", "/api/openapi.json", &[], b"").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let doc = response.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut n_operations = 0;
    for (path, item) in paths {
        for method in ["get", "head", "post", "put", "patch", "delete", "options"] {
            if item.get(method).is_none() {
                continue;
            }
            n_operations += 1;
            let target = instantiate(path);
            let verb = method.to_uppercase();
            // No token: the API answers with its own JSON refusal (or its answer); a path it
            // does not serve would reach the web client (a plain 404) or be a 405.
            let response = server.request(&verb, &target, &[], b"").await;
            let what = format!("{verb} {target} (documented as {path})");
            assert_ne!(response.status, 405, "{what}: {}", response.text());
            if method == "head" {
                assert_ne!(response.status, 404, "{what}");
                continue;
            }
            let content_type = response.header("content-type").unwrap_or_default();
            assert!(
                response.status == 204 || content_type.starts_with("application/json"),
                "{what}: {} {content_type} {}",
                response.status,
                response.text()
            );
            if response.status >= 400 {
                let body: Value = response.json();
                assert!(
                    body["error"].is_string() && body["message"].is_string(),
                    "{what}: {body}"
                );
            }
        }
    }
    assert!(n_operations >= 38, "{n_operations} operations");
}
