//! Access control, black-box: tokens checked before the upgrade, roles per doc pattern,
//! read-only peers over WebSocket and HTTP, presence the server vouches for, and expiry.
//!
//! Tokens are made here with `jsonwebtoken` from the test-only keys in `tests/fixtures/jwt`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tandem_core::protocol::Message as YMessage;
use tandem_server::auth::{AuthConfig, AuthMode};
use tandem_server::{Config, ServerError};
use tandem_tests::{
    Peer, TestServer, WAIT, bearer, hs256, idp_token, jwt_claims, own_claims, unix_now,
    upgrade_refusal,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture key")
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// A server with `--auth jwt` that accepts the shared HS256 secret and the RSA public key
/// (RS256), its authentication settings adjusted by `adjust`.
async fn keyed_server(adjust: impl FnOnce(&mut AuthConfig)) -> TestServer {
    TestServer::start_jwt_shared(|config| {
        config.auth.public_keys = vec![(Algorithm::RS256, fixture("rsa-public.pem"))];
        adjust(&mut config.auth);
    })
    .await
}

fn ws_request(server: &TestServer, doc: &str, token: Option<&str>) -> Request {
    let url = match token {
        Some(token) => format!("ws://{}/ws/{doc}?token={token}", server.addr),
        None => format!("ws://{}/ws/{doc}", server.addr),
    };
    url.into_client_request().expect("request")
}

/// Connects with `token` in the query and completes the y-websocket handshake.
async fn connect(server: &TestServer, doc: &str, token: &str) -> Peer {
    let (mut peer, _) = Peer::try_connect_request(ws_request(server, doc, Some(token)))
        .await
        .expect("upgrade accepted");
    peer.handshake().await;
    peer
}

/// The HTTP status and JSON error code of a refused upgrade.
async fn refused(request: Request) -> (u16, String) {
    let (status, body) = upgrade_refusal(Peer::try_connect_request(request).await);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn doc_text(server: &TestServer, doc: &str, token: &str) -> Value {
    let auth = bearer(token);
    let response = server
        .request(
            "GET",
            &format!("/api/docs/{doc}"),
            &[("Accept", "application/json"), ("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test]
async fn upgrades_without_a_valid_token_are_refused_with_401_json() {
    let server = keyed_server(|_| {}).await;
    let doc = "team/plan";
    let good = jwt_claims("ada", json!({ "team/*": "write" }));
    let b64 = |value: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string().as_bytes())
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        (
            "expired",
            Some(hs256(
                &json!({ "sub": "ada", "docs": { "*": "write" }, "exp": unix_now() - 3600 }),
            )),
            "token_expired",
        ),
        (
            "not yet valid",
            Some(hs256(
                &json!({ "sub": "ada", "docs": { "*": "write" }, "exp": unix_now() + 7200, "nbf": unix_now() + 3600 }),
            )),
            "token_not_yet_valid",
        ),
        (
            "no exp",
            Some(hs256(&json!({ "sub": "ada", "docs": { "*": "write" } }))),
            "invalid_token",
        ),
        (
            "wrong signature",
            Some(sign(
                Algorithm::HS256,
                None,
                &good,
                &EncodingKey::from_secret(b"another secret that is also long enough!!"),
            )),
            "invalid_token",
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "typ": "JWT" })),
                b64(&good)
            )),
            "invalid_token",
        ),
        (
            // The classic confusion: HS256 "signed" with the server's RSA public key as secret.
            "hs256 with the rsa public key",
            Some(sign(
                Algorithm::HS256,
                None,
                &good,
                &EncodingKey::from_secret(&fixture_bytes("rsa-public.pem")),
            )),
            "invalid_token",
        ),
        (
            "unknown role",
            Some(idp_token("ada", json!({ "team/*": "owner" }))),
            "invalid_token",
        ),
        ("garbage", Some("not.a.token".into()), "invalid_token"),
    ];
    for (case, token, code) in cases {
        let (status, got) = refused(ws_request(&server, doc, token.as_deref())).await;
        assert_eq!((status, got.as_str()), (401, code), "{case}");
    }
    // The same good claims, properly signed, with either configured key, are let in.
    let mut peer = connect(&server, doc, &hs256(&good)).await;
    peer.append_text("hs256 ").await;
    let rs256 = sign(
        Algorithm::RS256,
        None,
        &good,
        &EncodingKey::from_rsa_pem(&fixture_bytes("rsa-private.pem")).expect("rsa key"),
    );
    let mut second = connect(&server, doc, &rs256).await;
    second.wait_text(|text| text == "hs256 ").await;
}

#[tokio::test]
async fn a_token_for_one_folder_opens_nothing_else() {
    let server = keyed_server(|_| {}).await;
    let token = idp_token("ada", json!({ "a/*": "write" }));
    let (status, code) = refused(ws_request(&server, "b/x", Some(&token))).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, code) = refused(ws_request(&server, "a", Some(&token))).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"), "a/* is not a");
    let mut peer = connect(&server, "a/x", &token).await;
    peer.append_text("mine").await;
    // HTTP follows the same rule, and the listing shows only what the token grants.
    let other = idp_token("bo", json!({ "b/*": "write" }));
    let mut bo = connect(&server, "b/y", &other).await;
    bo.append_text("theirs").await;
    let auth = bearer(&token);
    let response = server
        .request("GET", "/api/docs/b/y", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error"], "forbidden");
    let listing = server
        .request("GET", "/api/docs", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(listing.status, 200);
    let names: Vec<String> = listing.json()["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .map(|doc| doc["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, vec!["a/x".to_owned()]);
    let response = server.request("GET", "/api/docs", &[], b"").await;
    assert_eq!(response.status, 401);
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|value| value.starts_with("Bearer"))
    );
}

#[tokio::test]
async fn the_token_may_travel_as_header_or_subprotocol() {
    let server = keyed_server(|_| {}).await;
    let token = idp_token("ada", json!({ "*": "write" }));
    let mut request = ws_request(&server, "doc", None);
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&bearer(&token)).expect("header"),
    );
    let (mut by_header, _) = Peer::try_connect_request(request)
        .await
        .expect("bearer header accepted");
    by_header.handshake().await;
    by_header.append_text("header ").await;

    let mut request = ws_request(&server, "doc", None);
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("tandem, tandem.token.{token}")).expect("header"),
    );
    let (mut by_protocol, response) = Peer::try_connect_request(request)
        .await
        .expect("subprotocol token accepted");
    // A browser fails the connection unless one of its offers comes back.
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| value.as_bytes()),
        Some(&b"tandem"[..])
    );
    by_protocol.handshake().await;
    by_protocol.wait_text(|text| text == "header ").await;
}

#[tokio::test]
async fn read_only_peers_sync_but_cannot_change_anything() {
    let server = keyed_server(|_| {}).await;
    let doc = "team/spec";
    let writer_token = idp_token("wendy", json!({ "team/*": "write" }));
    let reader_token = idp_token("rita", json!({ "team/*": "write", "team/spec": "read" }));
    let mut writer = connect(&server, doc, &writer_token).await;
    writer.append_text("hello").await;
    let mut reader = connect(&server, doc, &reader_token).await;
    reader.wait_text(|text| text == "hello").await;

    // Over WebSocket: the update is answered with Auth permission-denied and goes nowhere.
    reader.append_text(" forged").await;
    reader
        .wait_for(|message| matches!(message, YMessage::Auth))
        .await;
    // The reader still gets the writer's edits; the writer never sees the forged text.
    writer.append_text(" world").await;
    reader.wait_text(|text| text.contains("world")).await;
    assert_eq!(writer.text(), "hello world");
    assert_eq!(
        doc_text(&server, doc, &writer_token).await,
        json!({ "t": "hello world" })
    );

    // Over HTTP: 403 read_only, content unchanged; the writer's HTTP update is applied live.
    // An update from a fresh replica (its own client id), as a script would post it.
    let update = {
        use yrs::{ReadTxn, Text, Transact};
        let replica = yrs::Doc::new();
        let text = replica.get_or_insert_text("t");
        text.insert(&mut replica.transact_mut(), 0, "via http ");
        replica
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    };
    let denied = server
        .request(
            "POST",
            &format!("/api/docs/{doc}/update"),
            &[("Authorization", &bearer(&reader_token))],
            &update,
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["error"], "read_only");
    let accepted = server
        .request(
            "POST",
            &format!("/api/docs/{doc}/update"),
            &[("Authorization", &bearer(&writer_token))],
            &update,
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["applied"], true);
    writer.wait_text(|text| text.contains("via http")).await;
    reader.wait_text(|text| text.contains("via http")).await;
    assert!(!writer.text().contains("forged"));
    let stored = doc_text(&server, doc, &writer_token).await.to_string();
    assert!(
        !stored.contains("forged") && stored.contains("via http"),
        "{stored}"
    );
}

#[tokio::test]
async fn a_read_only_peer_sending_garbage_only_loses_its_own_connection() {
    let server = keyed_server(|_| {}).await;
    let writer_token = idp_token("wendy", json!({ "*": "write" }));
    let reader_token = idp_token("rita", json!({ "*": "read" }));
    let mut writer = connect(&server, "doc", &writer_token).await;
    writer.append_text("safe").await;
    let mut reader = connect(&server, "doc", &reader_token).await;
    reader.wait_text(|text| text == "safe").await;
    // A ten-byte awareness message that lies about its lengths.
    reader
        .send(bytes::Bytes::from_static(&[
            1, 9, 1, 200, 1, 1, 5, b'{', b'}', 0,
        ]))
        .await;
    let (code, _) = reader.expect_close().await;
    assert_eq!(code, 1002);
    writer.append_text("!").await;
    let mut late = connect(&server, "doc", &writer_token).await;
    late.wait_text(|text| text == "safe!").await;
}

#[tokio::test]
async fn presence_carries_the_verified_identity_not_the_claimed_one() {
    let server = keyed_server(|_| {}).await;
    let alice = idp_token("alice", json!({ "*": "write" }));
    let bob = idp_token("bob", json!({ "*": "write" }));
    let mut mallory = connect(&server, "doc", &alice).await;
    let mut observer = connect(&server, "doc", &bob).await;
    mallory
        .send_awareness(
            77,
            1,
            r##"{"user":{"name":"bob (verified)","sub":"bob","color":"#123456"},"cursor":null}"##,
        )
        .await;
    observer
        .wait_awareness(|entries| entries.iter().any(|entry| entry.client_id == 77))
        .await;
    let entry = observer
        .awareness
        .iter()
        .rev()
        .find(|entry| entry.client_id == 77)
        .expect("state of client 77");
    let state: Value = serde_json::from_str(&entry.json).expect("JSON state");
    assert_eq!(state["user"]["name"], "alice (verified)");
    assert_eq!(state["user"]["sub"], "alice");
    assert_eq!(state["user"]["color"], "#123456");
    // The listing names the verified user too.
    let listing = server
        .request("GET", "/api/docs", &[("Authorization", &bearer(&bob))], b"")
        .await;
    let users = listing.json()["docs"][0]["users"].clone();
    assert_eq!(users[0]["name"], "alice (verified)", "{users}");
}

#[tokio::test]
async fn a_connection_is_closed_with_4401_when_its_token_expires() {
    let server = keyed_server(|auth| auth.leeway = Duration::ZERO).await;
    let short = hs256(&json!({ "sub": "ada", "docs": { "*": "write" }, "exp": unix_now() + 2 }));
    let long = idp_token("bo", json!({ "*": "write" }));
    let mut expiring = connect(&server, "doc", &short).await;
    let mut staying = connect(&server, "doc", &long).await;
    let (code, reason) = tokio::time::timeout(WAIT, expiring.expect_close())
        .await
        .expect("closed in time");
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    staying.append_text("still here").await;
    let mut check = connect(&server, "doc", &long).await;
    check.wait_text(|text| text == "still here").await;
}

#[tokio::test]
async fn jwks_keys_are_picked_by_kid_for_es256_and_eddsa() {
    let ec_private = EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).expect("ec key");
    let ed_private = EncodingKey::from_ed_pem(&fixture_bytes("ed-private.pem")).expect("ed key");
    let mut ec_jwk = Jwk::from_encoding_key(&ec_private, Algorithm::ES256).expect("ec jwk");
    ec_jwk.common.key_id = Some("ec-1".into());
    let mut ed_jwk = Jwk::from_encoding_key(&ed_private, Algorithm::EdDSA).expect("ed jwk");
    ed_jwk.common.key_id = Some("ed-1".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks_file = dir.path().join("jwks.json");
    let set = JwkSet {
        keys: vec![ec_jwk, ed_jwk],
    };
    std::fs::write(&jwks_file, serde_json::to_vec(&set).expect("jwks")).expect("write jwks");
    let server = keyed_server(|auth| {
        auth.jwks_file = Some(jwks_file.clone());
        auth.public_keys = Vec::new();
        auth.issuers = vec!["https://idp.test".into()];
        auth.audiences = vec!["tandem".into()];
    })
    .await;
    let mut good = jwt_claims("ada", json!({ "*": "write" }));
    good["iss"] = json!("https://idp.test");
    good["aud"] = json!("tandem");
    let es = sign(Algorithm::ES256, Some("ec-1"), &good, &ec_private);
    let ed = sign(Algorithm::EdDSA, Some("ed-1"), &good, &ed_private);
    let mut first = connect(&server, "doc", &es).await;
    first.append_text("es256 ").await;
    let mut second = connect(&server, "doc", &ed).await;
    second.wait_text(|text| text == "es256 ").await;
    // Wrong kid, unknown kid, wrong audience, wrong issuer: all refused.
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    for (case, token) in [
        (
            "kid of the other key",
            sign(Algorithm::ES256, Some("ed-1"), &good, &ec_private),
        ),
        (
            "unknown kid",
            sign(Algorithm::ES256, Some("nope"), &good, &ec_private),
        ),
        (
            "wrong audience",
            sign(Algorithm::ES256, Some("ec-1"), &wrong_aud, &ec_private),
        ),
        (
            "wrong issuer",
            sign(Algorithm::EdDSA, Some("ed-1"), &wrong_iss, &ed_private),
        ),
    ] {
        let (status, code) = refused(ws_request(&server, "doc", Some(&token))).await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"), "{case}");
    }
}

#[tokio::test]
async fn auth_off_is_refused_beyond_loopback_unless_insecure_is_explicit() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let config = Config::for_data_dir(data_dir.path());
    assert_eq!(config.auth.mode, AuthMode::None);
    let res = tandem_server::run(config.clone(), listener, async {}).await;
    match res {
        Err(ServerError::Config(message)) => {
            assert!(message.contains("--insecure-no-auth"), "{message}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let mut insecure = config;
    insecure.auth.insecure_no_auth = true;
    let summary = tandem_server::run(insecure, listener, async {})
        .await
        .expect("runs with the explicit flag");
    assert!(summary.clean);
}

#[tokio::test]
async fn pem_public_keys_verify_es256_and_eddsa_and_nothing_else() {
    let server = keyed_server(|auth| {
        auth.secret_file = None;
        auth.public_keys = vec![
            (Algorithm::ES256, fixture("ec-public.pem")),
            (Algorithm::EdDSA, fixture("ed-public.pem")),
        ];
    })
    .await;
    let good = jwt_claims("ada", json!({ "*": "write" }));
    let ec = EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).expect("ec key");
    let ed = EncodingKey::from_ed_pem(&fixture_bytes("ed-private.pem")).expect("ed key");
    let mut first = connect(&server, "doc", &sign(Algorithm::ES256, None, &good, &ec)).await;
    first.append_text("es ").await;
    let mut second = connect(&server, "doc", &sign(Algorithm::EdDSA, None, &good, &ed)).await;
    second.wait_text(|text| text == "es ").await;
    // HS256 is not configured here at all, and an RSA-signed token finds no RS256 key.
    let rsa = EncodingKey::from_rsa_pem(&fixture_bytes("rsa-private.pem")).expect("rsa key");
    for token in [hs256(&good), sign(Algorithm::RS256, None, &good, &rsa)] {
        let (status, code) = refused(ws_request(&server, "doc", Some(&token))).await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"));
    }
}

/// Regression (review): with an explicit `--jwt-algorithms` list, the server's own tokens (login,
/// `tandem token mint`) were refused unless the list happened to name HS256.
#[tokio::test]
async fn the_servers_own_tokens_work_whatever_algorithms_are_listed() {
    let server = keyed_server(|auth| auth.algorithms = Some(vec![Algorithm::RS256])).await;
    let own = server.mint(&tandem_server::auth::Claims {
        name: None,
        exp: unix_now() + 300,
        ..own_claims("ci", &[("*", tandem_server::auth::Role::Write)])
    });
    let mut peer = connect(&server, "doc", &own).await;
    peer.append_text("own").await;
    // The shared HS256 secret is configured, but HS256 is not in the list: refused.
    let shared = idp_token("ada", json!({ "*": "write" }));
    let (status, code) = refused(ws_request(&server, "doc", Some(&shared))).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
}
