//! `GET /api/events`, black-box: a token sees events about the paths it may read and no others;
//! a bad token is refused; with authentication off everyone sees everything.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tandem_server::Config;
use tandem_server::auth::AuthMode;
use tandem_tests::{EventStream, TestServer};

const SECRET: &[u8] = b"an hs256 secret of at least thirty-two bytes, for tests";

fn token(sub: &str, docs: &Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let claims = json!({ "sub": sub, "exp": exp, "docs": docs });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

async fn jwt_server() -> (tempfile::TempDir, TestServer) {
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let server = TestServer::start_with(|config: &mut Config| {
        config.auth.mode = AuthMode::Jwt;
        config.auth.secret_file = Some(secret_file.clone());
    })
    .await;
    server.wait_healthy().await;
    (secret_dir, server)
}

#[tokio::test]
async fn a_stream_carries_only_what_its_token_may_read() {
    let (_secret, server) = jwt_server().await;
    let team = token("ann", &json!({ "team/*": "read" }));
    let admin = token("root", &json!({ "*": "admin" }));
    let mut team_events =
        EventStream::open(server.addr, &[("Authorization", &format!("Bearer {team}"))])
            .await
            .expect("team stream");
    // The token may travel as a query parameter too (EventSource cannot set headers).
    let mut all_events =
        EventStream::open_at(server.addr, &format!("/api/events?token={admin}"), &[])
            .await
            .expect("admin stream");

    // A peer joins a doc outside the team's patterns, then one inside.
    let secret_peer = server.connect_with_token("private/plans", &admin).await;
    let team_peer = server.connect_with_token("team/notes", &admin).await;

    let first = team_events
        .next_matching(|event| event["type"] == "doc_presence")
        .await;
    assert_eq!(first["doc"], "team/notes", "{first}");
    assert_eq!(first["peers"], 1);
    // The admin saw both, in order.
    let seen = all_events
        .next_matching(|event| event["type"] == "doc_presence")
        .await;
    assert_eq!(seen["doc"], "private/plans");
    let seen = all_events
        .next_matching(|event| event["type"] == "doc_presence")
        .await;
    assert_eq!(seen["doc"], "team/notes");

    // Leaving is an event too.
    drop(team_peer);
    let left = team_events
        .next_matching(|event| event["type"] == "doc_presence")
        .await;
    assert_eq!(
        (left["doc"].as_str(), left["peers"].as_u64()),
        (Some("team/notes"), Some(0))
    );
    drop(secret_peer);
}

#[tokio::test]
async fn a_missing_or_bad_token_is_refused() {
    let (_secret, server) = jwt_server().await;
    assert_eq!(EventStream::open(server.addr, &[]).await.err(), Some(401));
    let forged = format!("Bearer {}x", token("ann", &json!({ "*": "read" })));
    assert_eq!(
        EventStream::open(server.addr, &[("Authorization", &forged)])
            .await
            .err(),
        Some(401)
    );
    let expired = {
        let claims = json!({ "sub": "ann", "exp": 1_000_000_000u64, "docs": { "*": "read" } });
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    };
    assert_eq!(
        EventStream::open_at(server.addr, &format!("/api/events?token={expired}"), &[])
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn with_authentication_off_everyone_sees_everything() {
    let server = TestServer::start().await;
    let mut events = EventStream::open(server.addr, &[]).await.expect("stream");
    let peer = server.connect("anything/at-all").await;
    let event = events
        .next_matching(|event| event["type"] == "doc_presence")
        .await;
    assert_eq!(event["doc"], "anything/at-all");
    drop(peer);
}
