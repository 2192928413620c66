//! `GET /api/events`, black-box: a token sees events about the paths it may read and no others;
//! a bad token is refused; with authentication off everyone sees everything.

use serde_json::json;
use tandem_tests::{EventStream, TestServer, bearer, hs256, idp_token};

#[tokio::test]
async fn a_stream_carries_only_what_its_token_may_read() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let team = idp_token("ann", json!({ "team/*": "read" }));
    let admin = idp_token("root", json!({ "*": "admin" }));
    let mut team_events = EventStream::open(server.addr, &[("Authorization", &bearer(&team))])
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
    let server = TestServer::start_jwt_shared(|_| {}).await;
    assert_eq!(EventStream::open(server.addr, &[]).await.err(), Some(401));
    let forged = format!("Bearer {}x", idp_token("ann", json!({ "*": "read" })));
    assert_eq!(
        EventStream::open(server.addr, &[("Authorization", &forged)])
            .await
            .err(),
        Some(401)
    );
    let expired = hs256(&json!({ "sub": "ann", "exp": 1_000_000_000u64, "docs": { "*": "read" } }));
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
