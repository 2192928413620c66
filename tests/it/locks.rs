//! WebDAV locks over the rest of the HTTP API, black-box (`protocol-spec/webdav.md`, "Locks"):
//! a locked file refuses uploads (PUT and tus), renames, deletes and doc writes with 423 naming
//! the holder; the holder's token lets its own writes through; an expired lock frees the path;
//! a restart restores the locks that have not expired; an admin lists and breaks them.
//!
//! The WebDAV routes that take locks are not part of this binary's subject, so the locks are
//! written into the store of a stopped server, exactly as the server writes them when a WebDAV
//! client locks (`tandem_store::Store::put_lock`), and the server is started on it: which also
//! is the restart the locks must survive.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_server::auth::Role;
use tandem_store::{LockRecord, Store};
use tandem_tests::{TestServer, bearer, wait_until};

use crate::files::tus;

const ANN_TOKEN: &str = "urn:uuid:00000000-0000-4000-8000-0000000000a1";
const FOLDER_TOKEN: &str = "urn:uuid:00000000-0000-4000-8000-0000000000f0";
const DOC_TOKEN: &str = "urn:uuid:00000000-0000-4000-8000-0000000000d0";

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// A lock held by `principal` on `path`, lapsing `lasts` from now.
fn lock(token: &str, path: &str, deep: bool, principal: &str, lasts: Duration) -> LockRecord {
    let now = now_ms();
    let lasts_ms = u64::try_from(lasts.as_millis()).expect("ms");
    LockRecord {
        token: token.into(),
        path: path.into(),
        deep,
        shared: false,
        owner: Some(format!(
            "<D:owner xmlns:D=\"DAV:\"><D:href>{principal}'s laptop</D:href></D:owner>"
        )),
        principal: Some(principal.into()),
        created_ms: now,
        timeout_ms: lasts_ms,
        expires_ms: now.saturating_add(lasts_ms),
    }
}

/// Stores `locks` as the server does when a WebDAV client takes them (server stopped).
fn put_locks(data_dir: &Path, locks: &[LockRecord]) {
    let store = Store::open(&data_dir.join("tandem.redb")).expect("store of a stopped server");
    for lock in locks {
        store.put_lock(lock).expect("put lock");
    }
}

fn stored_tokens(data_dir: &Path) -> Vec<String> {
    let store = Store::open(&data_dir.join("tandem.redb")).expect("store of a stopped server");
    let locks = store.list_locks().expect("list");
    locks.into_iter().map(|lock| lock.token).collect()
}

async fn put(server: &TestServer, path: &str, token: &str, extra: &[(&str, &str)]) -> u16 {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let response = server
        .request("PUT", &format!("/api/files/{path}"), &headers, b"bytes")
        .await;
    response.status
}

/// The 423 of a locked path: its code, and the lock's holder and path.
fn assert_locked(response: &tandem_tests::HttpResponse, holder: &str, locked_path: &str) {
    assert_eq!(response.status, 423, "{}", response.text());
    let json = response.json();
    assert_eq!(json["error"], "locked", "{json}");
    assert!(
        json["message"].as_str().is_some_and(|m| m.contains(holder)),
        "{json}"
    );
    assert_eq!(json["lock"]["principal"], holder, "{json}");
    assert_eq!(
        json["lock"]["owner"],
        format!("{holder}'s laptop"),
        "{json}"
    );
    assert_eq!(json["lock"]["path"], locked_path, "{json}");
    assert!(
        json["lock"]["expires_at"]
            .as_u64()
            .is_some_and(|at| at > now_ms()),
        "{json}"
    );
    assert!(
        json["lock"].get("token").is_none(),
        "no token to others: {json}"
    );
}

#[tokio::test]
async fn a_locked_file_refuses_every_http_write_but_its_holders() {
    let mut server = TestServer::start_jwt(|_| {}).await;
    let ann = server.token("ann", &[("*", Role::Write)]);
    let bob = server.token("bob", &[("*", Role::Write)]);
    let admin = server.admin_token();
    assert_eq!(put(&server, "team/a.txt", &ann, &[]).await, 201);
    assert_eq!(put(&server, "team/locked/b.txt", &ann, &[]).await, 201);
    assert!(server.shutdown().await, "clean shutdown");
    put_locks(
        server.data_dir(),
        &[
            lock(
                ANN_TOKEN,
                "team/a.txt",
                false,
                "ann",
                Duration::from_secs(3600),
            ),
            lock(
                FOLDER_TOKEN,
                "team/locked",
                true,
                "ann",
                Duration::from_secs(3600),
            ),
            lock(
                DOC_TOKEN,
                "team/notes",
                false,
                "ann",
                Duration::from_secs(3600),
            ),
        ],
    );
    server.restart_with(|_| {}).await;
    server.wait_healthy().await;
    let bob_auth = bearer(&bob);
    let as_bob = [("Authorization", bob_auth.as_str())];

    // The listing shows the locks, the folder's deep one on the file below it.
    let listed = server
        .request("GET", "/api/files", &as_bob, b"")
        .await
        .json();
    let files = listed["files"].as_array().expect("files");
    let lock_of = |path: &str| {
        files
            .iter()
            .find(|file| file["path"] == path)
            .map(|file| file["lock"].clone())
            .expect("listed")
    };
    assert_eq!(lock_of("team/a.txt")["principal"], "ann");
    assert_eq!(lock_of("team/locked/b.txt")["path"], "team/locked");
    assert_eq!(lock_of("team/locked/b.txt")["deep"], true);
    assert!(files.iter().all(|file| file["path"] == "team/a.txt"
        || file["path"] == "team/locked/b.txt"
        || file.get("lock").is_none()));

    // Bob: upload, tus, rename (from and onto), delete, doc update are all refused.
    let refused = server
        .request("PUT", "/api/files/team/a.txt", &as_bob, b"other")
        .await;
    assert_locked(&refused, "ann", "team/a.txt");
    let below = server
        .request("PUT", "/api/files/team/locked/new.txt", &as_bob, b"x")
        .await;
    assert_locked(&below, "ann", "team/locked");
    let metadata = format!("path {}", b64("team/a.txt"));
    let mut tus_headers = tus(&[("Upload-Length", "3"), ("Upload-Metadata", &metadata)]);
    tus_headers.push(("Authorization", &bob_auth));
    let tus_create = server
        .request("POST", "/api/uploads", &tus_headers, b"")
        .await;
    assert_locked(&tus_create, "ann", "team/a.txt");
    let move_from = server
        .request(
            "POST",
            "/api/file-moves",
            &[
                ("Authorization", &bob_auth),
                ("Content-Type", "application/json"),
            ],
            br#"{"from":"team/a.txt","to":"team/c.txt"}"#,
        )
        .await;
    assert_locked(&move_from, "ann", "team/a.txt");
    assert_eq!(put(&server, "team/d.txt", &bob, &[]).await, 201);
    let move_onto = server
        .request(
            "POST",
            "/api/file-moves",
            &[
                ("Authorization", &bob_auth),
                ("Content-Type", "application/json"),
            ],
            br#"{"from":"team/d.txt","to":"team/locked/d.txt"}"#,
        )
        .await;
    assert_locked(&move_onto, "ann", "team/locked");
    let delete = server
        .request("DELETE", "/api/files/team/a.txt", &as_bob, b"")
        .await;
    assert_locked(&delete, "ann", "team/a.txt");
    let doc_update = server
        .request(
            "POST",
            "/api/docs/team/notes/update",
            &as_bob,
            &yjs_update(),
        )
        .await;
    assert_locked(&doc_update, "ann", "team/notes");
    let restore = server
        .request(
            "POST",
            "/api/docs/team/notes/versions/1/restore",
            &as_bob,
            b"",
        )
        .await;
    assert_locked(&restore, "ann", "team/notes");
    let text_save = server
        .request(
            "PUT",
            "/api/docs/team/notes",
            &[("Authorization", &bob_auth), ("Content-Type", "text/plain")],
            b"bob's text",
        )
        .await;
    assert_locked(&text_save, "ann", "team/notes");
    // Bob holding ann's token is still not ann.
    let stolen = format!("(<{ANN_TOKEN}>)");
    assert_eq!(
        put(&server, "team/a.txt", &bob, &[("If", &stolen)]).await,
        423
    );

    // Ann needs her token too; with it (either header) she writes.
    assert_eq!(put(&server, "team/a.txt", &ann, &[]).await, 423);
    assert_eq!(
        put(&server, "team/a.txt", &ann, &[("If", &stolen)]).await,
        201
    );
    let folder_token = format!("<{FOLDER_TOKEN}>");
    assert_eq!(
        put(
            &server,
            "team/locked/b.txt",
            &ann,
            &[("Lock-Token", &folder_token)]
        )
        .await,
        201
    );
    let ann_auth = bearer(&ann);
    let ann_update = server
        .request(
            "POST",
            "/api/docs/team/notes/update",
            &[
                ("Authorization", &ann_auth),
                ("If", &format!("(<{DOC_TOKEN}>)")),
            ],
            &yjs_update(),
        )
        .await;
    assert_eq!(ann_update.status, 200, "{}", ann_update.text());
    let ann_save = server
        .request(
            "PUT",
            "/api/docs/team/notes",
            &[
                ("Authorization", &ann_auth),
                ("Lock-Token", &format!("<{DOC_TOKEN}>")),
                ("Content-Type", "text/plain"),
            ],
            b"ann's text",
        )
        .await;
    assert_eq!(ann_save.status, 200, "{}", ann_save.text());
    // The document's row shows its lock too.
    let docs = server
        .request("GET", "/api/docs", &as_bob, b"")
        .await
        .json();
    let notes = docs["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .find(|doc| doc["name"] == "team/notes")
        .cloned()
        .expect("listed");
    assert_eq!(notes["lock"]["principal"], "ann", "{notes}");

    // Her delete with the token removes the file and its lock.
    let deleted = server
        .request(
            "DELETE",
            "/api/files/team/a.txt",
            &[
                ("Authorization", &ann_auth),
                ("Lock-Token", &format!("<{ANN_TOKEN}>")),
            ],
            b"",
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(put(&server, "team/a.txt", &bob, &[]).await, 201);

    // An admin sees the rest, with tokens, and breaks the folder's; live streams hear of it.
    let admin_auth = bearer(&admin);
    let as_admin = [("Authorization", admin_auth.as_str())];
    let forbidden = server.request("GET", "/api/locks", &as_bob, b"").await;
    assert_eq!(forbidden.status, 403);
    let listed = server.request("GET", "/api/locks", &as_admin, b"").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let tokens: Vec<String> = listed.json()["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .map(|lock| lock["token"].as_str().expect("token").to_owned())
        .collect();
    assert_eq!(tokens, [FOLDER_TOKEN, DOC_TOKEN]);
    let mut events =
        tandem_tests::EventStream::open(server.addr, &[("Authorization", bob_auth.as_str())])
            .await
            .expect("events");
    let broken = server
        .request(
            "DELETE",
            &format!("/api/locks/{FOLDER_TOKEN}"),
            &as_admin,
            b"",
        )
        .await;
    assert_eq!(broken.status, 204, "{}", broken.text());
    loop {
        let event = tokio::time::timeout(tandem_tests::WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open");
        if event["type"] == "file_unlocked" {
            assert_eq!(event["path"], "team/locked");
            assert_eq!(event["reason"], "broken");
            assert_eq!(event["still_locked"], false);
            assert!(event["lock"].get("token").is_none());
            break;
        }
    }
    let again = server
        .request(
            "DELETE",
            &format!("/api/locks/{FOLDER_TOKEN}"),
            &as_admin,
            b"",
        )
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["error"], "lock_not_found");
    assert_eq!(put(&server, "team/locked/b.txt", &bob, &[]).await, 201);

    // What was broken or removed stays gone after a restart; the doc's lock is back.
    server.restart_with(|_| {}).await;
    server.wait_healthy().await;
    assert_eq!(put(&server, "team/locked/c.txt", &bob, &[]).await, 201);
    let doc_update = server
        .request(
            "POST",
            "/api/docs/team/notes/update",
            &as_bob,
            &yjs_update(),
        )
        .await;
    assert_locked(&doc_update, "ann", "team/notes");
    assert!(server.shutdown().await);
    assert_eq!(stored_tokens(server.data_dir()), [DOC_TOKEN]);
}

#[tokio::test]
async fn an_expired_lock_frees_the_path_and_is_not_restored() {
    let mut server = TestServer::start().await;
    assert!(server.shutdown().await);
    put_locks(
        server.data_dir(),
        &[
            lock(
                ANN_TOKEN,
                "soon.txt",
                false,
                "ann",
                Duration::from_millis(1500),
            ),
            lock(FOLDER_TOKEN, "gone.txt", false, "ann", Duration::ZERO),
        ],
    );
    server.restart_with(|_| {}).await;
    server.wait_healthy().await;
    // Expired before the start: dropped, and the path is free.
    assert_eq!(put_anon(&server, "gone.txt").await.status, 201);
    let refused = put_anon(&server, "soon.txt").await;
    assert_locked(&refused, "ann", "soon.txt");
    // Free once it lapses, with no one unlocking it.
    wait_until("the lock expires", async || {
        put_anon(&server, "soon.txt").await.status == 201
    })
    .await;
    assert!(server.shutdown().await);
    // Nothing expired is kept past a start (the start dropped one, the next sweep or start the
    // other; the start that follows finds none to restore).
    let store_tokens = stored_tokens(server.data_dir());
    assert!(
        !store_tokens.contains(&FOLDER_TOKEN.to_owned()),
        "{store_tokens:?}"
    );
    server.restart_with(|_| {}).await;
    server.wait_healthy().await;
    assert_eq!(put_anon(&server, "soon.txt").await.status, 201);
    assert!(server.shutdown().await);
    assert!(stored_tokens(server.data_dir()).is_empty());
}

/// `PUT /api/files/{path}` without a token (authentication off).
async fn put_anon(server: &TestServer, path: &str) -> tandem_tests::HttpResponse {
    server
        .request("PUT", &format!("/api/files/{path}"), &[], b"x")
        .await
}

/// A Yjs update inserting some text, as `POST /api/docs/{name}/update` takes it.
fn yjs_update() -> Vec<u8> {
    use yrs::{ReadTxn, Text, Transact};
    let replica = yrs::Doc::new();
    let text = replica.get_or_insert_text("t");
    text.insert(&mut replica.transact_mut(), 0, "locked? ");
    replica
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Cluster mode (`webdav.md`, "Locks", Cluster mode): the locks are rows in Postgres, so a
/// lock taken through one node refuses writes through every node, the holder's token works on
/// any of them, an admin on one node breaks it for all, and an expired row refuses nothing.
/// The lock is written as the node that grants it writes it (`tandem_locks`, `cluster.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_every_node_honours_the_same_locks() {
    let redis = tandem_tests::engines::Redis::start();
    let postgres = tandem_tests::engines::Postgres::start();
    let blobs = tempfile::tempdir().expect("temp dir");
    let jwt = |config: &mut tandem_server::Config| {
        config.auth.mode = tandem_server::auth::AuthMode::Jwt;
    };
    let one = TestServer::start_node(&redis, &postgres, blobs.path(), jwt).await;
    one.wait_healthy().await;
    let two = TestServer::start_node(&redis, &postgres, blobs.path(), jwt).await;
    two.wait_healthy().await;
    let ann = one.token("ann", &[("*", Role::Write)]);
    let bob = two.token("bob", &[("*", Role::Write)]);
    let admin = one.admin_token();
    assert_eq!(put(&one, "team/a.txt", &ann, &[]).await, 201);

    let row = |token: &str, path: &str, expires_ms: u64| {
        format!(
            "INSERT INTO tandem_locks (token, path, deep, shared, owner, principal, created_ms, \
             timeout_ms, expires_ms) VALUES ('{token}', '{path}', false, false, \
             '<D:owner xmlns:D=\"DAV:\">ann''s laptop</D:owner>', 'ann', {now}, 3600000, \
             {expires_ms})",
            now = now_ms()
        )
    };
    postgres.psql(&row(ANN_TOKEN, "team/a.txt", now_ms() + 3_600_000));
    postgres.psql(&row(FOLDER_TOKEN, "team/old.txt", now_ms() - 1));

    let bob_auth = bearer(&bob);
    for node in [&one, &two] {
        let refused = node
            .request(
                "PUT",
                "/api/files/team/a.txt",
                &[("Authorization", &bob_auth)],
                b"x",
            )
            .await;
        assert_locked(&refused, "ann", "team/a.txt");
    }
    let token = format!("(<{ANN_TOKEN}>)");
    assert_eq!(put(&two, "team/a.txt", &ann, &[("If", &token)]).await, 201);
    assert_eq!(put(&two, "team/old.txt", &bob, &[]).await, 201, "expired");
    let listed = two
        .request("GET", "/api/files", &[("Authorization", &bob_auth)], b"")
        .await;
    let files = listed.json()["files"].clone();
    let a = files
        .as_array()
        .expect("files")
        .iter()
        .find(|file| file["path"] == "team/a.txt")
        .cloned()
        .expect("listed");
    assert_eq!(a["lock"]["principal"], "ann", "{a}");

    let admin_auth = bearer(&admin);
    let as_admin = [("Authorization", admin_auth.as_str())];
    let locks = one
        .request("GET", "/api/locks", &as_admin, b"")
        .await
        .json();
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(1), "{locks}");
    assert_eq!(locks["locks"][0]["token"], ANN_TOKEN);
    let broken = one
        .request("DELETE", &format!("/api/locks/{ANN_TOKEN}"), &as_admin, b"")
        .await;
    assert_eq!(broken.status, 204, "{}", broken.text());
    assert_eq!(put(&two, "team/a.txt", &bob, &[]).await, 201);
    let gone = two
        .request("DELETE", &format!("/api/locks/{ANN_TOKEN}"), &as_admin, b"")
        .await;
    assert_eq!(gone.status, 404);

    // Two nodes taking overlapping locks at once: the shared table's one transaction lets one
    // of them in; the other sees it (the conflict rule is the server's: here, same path).
    let meta = tandem_cluster::PgMeta::connect(&tandem_cluster::ClusterConfig {
        redis_url: redis.url(),
        postgres_url: postgres.url(),
        durability: tandem_cluster::Durability::Local,
        replica_timeout: Duration::from_secs(2),
        trim_margin: tandem_server::config::DEFAULT_CLUSTER_TRIM_MARGIN,
        commit_interval: tandem_server::config::DEFAULT_COMMIT_INTERVAL,
    })
    .await
    .expect("connect");
    let meta = std::sync::Arc::new(meta);
    let take = |token: &'static str| {
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            use tandem_store::meta::LockTable;
            let wanted = lock(
                token,
                "team/race.txt",
                false,
                "ann",
                Duration::from_secs(60),
            );
            meta.create_lock(&wanted, &|stored: &[LockRecord]| {
                stored
                    .iter()
                    .find(|other| other.path == "team/race.txt")
                    .cloned()
            })
        })
    };
    let (first, second) = tokio::join!(take(DOC_TOKEN), take(FOLDER_TOKEN));
    let outcomes = [
        first.expect("task").expect("pg"),
        second.expect("task").expect("pg"),
    ];
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_none()).count(),
        1,
        "exactly one granted: {outcomes:?}"
    );
    let refused = two
        .request(
            "PUT",
            "/api/files/team/race.txt",
            &[("Authorization", &bob_auth)],
            b"x",
        )
        .await;
    assert_locked(&refused, "ann", "team/race.txt");
}
