//! Accounts, black-box: `tandem user ...` and `tandem token mint` run as the real binary, then
//! sign-in, token refresh, the admin API and the limits on failed sign-ins over HTTP, and the
//! tokens they hand out used on real WebSockets.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_server::auth::AuthMode;
use tandem_tests::{
    HttpResponse, TestServer, WAIT, bearer, hs256, run_tandem, unix_now, upgrade_refusal,
};

const PASSWORD: &str = "correct horse battery staple";

async fn login(server: &TestServer, username: &str, password: &str) -> HttpResponse {
    let body = json!({ "username": username, "password": password }).to_string();
    server
        .request(
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
}

/// Signs in and returns the token; panics unless the answer is 200.
async fn login_token(server: &TestServer, username: &str, password: &str) -> String {
    let response = login(server, username, password).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["token"]
        .as_str()
        .expect("token in the answer")
        .to_owned()
}

async fn refresh(server: &TestServer, token: &str) -> HttpResponse {
    server
        .request(
            "POST",
            "/api/token/refresh",
            &[("Authorization", &bearer(token))],
            b"",
        )
        .await
}

async fn put_user(server: &TestServer, admin: &str, sub: &str, body: Value) -> HttpResponse {
    server
        .request(
            "PUT",
            &format!("/api/users/{sub}"),
            &[
                ("Authorization", &bearer(admin)),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
}

/// The JSON error code of a response, after checking its status.
fn error_code(response: &HttpResponse, status: u16) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    response.json()["error"]
        .as_str()
        .expect("error code")
        .to_owned()
}

/// The status and JSON error code of a refused WebSocket upgrade.
async fn refused_upgrade(server: &TestServer, doc: &str, token: &str) -> (u16, String) {
    let (status, body) = upgrade_refusal(server.try_connect_with_token(doc, token).await);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Opens `doc` with `token`, writes `text` and waits for it to come back through a second peer.
async fn can_write(server: &TestServer, doc: &str, token: &str, text: &str) {
    let mut writer = server.connect_with_token(doc, token).await;
    writer.append_text(text).await;
    let mut reader = server.connect_with_token(doc, token).await;
    reader.wait_text(|got| got.contains(text)).await;
}

#[tokio::test]
async fn an_account_added_offline_signs_in_and_opens_only_its_documents() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = data_dir.path().to_str().expect("utf-8 path").to_owned();
    let added = run_tandem(
        &[
            "user",
            "add",
            "ada",
            "--name",
            "Ada Lovelace",
            "--doc",
            "team/*=write",
            "--password-stdin",
            "--data-dir",
            &dir,
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(added.success, "{added:?}");
    assert_eq!(added.stdout.trim(), "added user ada");

    let server = TestServer::start_in(data_dir, |config| config.auth.mode = AuthMode::Jwt).await;
    server.wait_healthy().await;
    let info = server.request("GET", "/api/auth", &[], b"").await;
    assert_eq!(info.json(), json!({ "mode": "jwt", "login": true }));

    let response = login(&server, "ada", PASSWORD).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["sub"], "ada");
    assert_eq!(body["name"], "Ada Lovelace");
    let expires_at = body["expires_at"].as_u64().expect("expires_at");
    assert!(
        (unix_now() + 3500..=unix_now() + 3700).contains(&expires_at),
        "default lifetime is one hour: {expires_at}"
    );
    let token = body["token"].as_str().expect("token");

    can_write(&server, "team/plan.md", token, "hello from ada").await;
    assert_eq!(
        refused_upgrade(&server, "private/diary.md", token).await,
        (403, "forbidden".into())
    );

    let garbage = server
        .request("POST", "/api/login", &[], b"{\"username\": 1}")
        .await;
    assert_eq!(error_code(&garbage, 400), "bad_json");
}

#[tokio::test]
async fn wrong_and_unknown_names_get_the_same_refusal() {
    let server = TestServer::start_jwt(|_| {}).await;
    let admin = server.admin_token();
    let created = put_user(&server, &admin, "ada", json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let wrong = login(&server, "ada", "not the password").await;
    let unknown = login(&server, "nobody", "not the password").await;
    assert_eq!(error_code(&wrong, 401), "bad_credentials");
    assert_eq!(error_code(&unknown, 401), "bad_credentials");
    let message = |response: &HttpResponse| {
        let text = response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        text.replace("nobody", "ada")
    };
    assert_eq!(message(&wrong), message(&unknown));
}

#[tokio::test]
async fn wrong_passwords_lock_the_account_until_the_window_passes() {
    let window = Duration::from_secs(2);
    let server = TestServer::start_jwt(|config| {
        config.accounts.failure_window = window;
        config.accounts.max_failures_per_account = 3;
        config.accounts.max_failures_per_address = 100;
    })
    .await;
    let admin = server.admin_token();
    let created = put_user(&server, &admin, "ada", json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());

    for _ in 0..3 {
        let response = login(&server, "ada", "guess").await;
        assert_eq!(error_code(&response, 401), "bad_credentials");
    }
    let limited = login(&server, "ada", "guess").await;
    assert_eq!(error_code(&limited, 429), "too_many_attempts");
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=window.as_secs()).contains(&retry_after),
        "{retry_after}"
    );
    // The right password is refused too, without being checked.
    let right = login(&server, "ada", PASSWORD).await;
    assert_eq!(error_code(&right, 429), "too_many_attempts");
    // Another account from the same address is not affected by this account's limit.
    let other = login(&server, "grace", "guess").await;
    assert_eq!(error_code(&other, 401), "bad_credentials");

    // Once the oldest failure leaves the window, the right password works again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = login(&server, "ada", PASSWORD).await;
        if response.status == 200 {
            break;
        }
        assert_eq!(error_code(&response, 429), "too_many_attempts");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still limited after the window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Success reset the account's count: a fresh run of failures starts from zero.
    let response = login(&server, "ada", "guess").await;
    assert_eq!(error_code(&response, 401), "bad_credentials");
}

#[tokio::test]
async fn one_address_is_limited_across_accounts() {
    let server = TestServer::start_jwt(|config| {
        config.accounts.max_failures_per_account = 100;
        config.accounts.max_failures_per_address = 4;
    })
    .await;
    let admin = server.admin_token();
    let created = put_user(&server, &admin, "ada", json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    for name in ["amy", "bob", "cy", "dee"] {
        let response = login(&server, name, "password1").await;
        assert_eq!(error_code(&response, 401), "bad_credentials");
    }
    let sprayed = login(&server, "eve", "password1").await;
    assert_eq!(error_code(&sprayed, 429), "too_many_attempts");
    assert!(sprayed.header("retry-after").is_some());
    let real = login(&server, "ada", PASSWORD).await;
    assert_eq!(error_code(&real, 429), "too_many_attempts");
}

#[tokio::test]
async fn refresh_follows_the_account_and_stops_when_it_is_removed() {
    let server = TestServer::start_jwt_shared(|_| {}).await;
    let admin = server.admin_token();
    let created = put_user(
        &server,
        &admin,
        "ada",
        json!({ "name": "Ada", "password": PASSWORD, "docs": { "a/*": "write" } }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["docs"], json!({ "a/*": "write" }));
    let first = login_token(&server, "ada", PASSWORD).await;

    let refreshed = refresh(&server, &first).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let body = refreshed.json();
    assert_eq!(
        (body["sub"].clone(), body["name"].clone()),
        (json!("ada"), json!("Ada"))
    );
    let second = body["token"].as_str().expect("token").to_owned();
    can_write(&server, "a/x", &second, "refreshed").await;

    // New roles apply at the next refresh; the password is kept when none is sent.
    let changed = put_user(
        &server,
        &admin,
        "ada",
        json!({ "docs": { "b/*": "write" } }),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    let third = refresh(&server, &second).await.json()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    can_write(&server, "b/x", &third, "new role").await;
    assert_eq!(refused_upgrade(&server, "a/x", &third).await.0, 403);
    login_token(&server, "ada", PASSWORD).await;

    // Only administrators manage accounts.
    let listing = server
        .request(
            "GET",
            "/api/users",
            &[("Authorization", &bearer(&third))],
            b"",
        )
        .await;
    assert_eq!(error_code(&listing, 403), "not_admin");
    let listing = server
        .request(
            "GET",
            "/api/users",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(listing.status, 200, "{}", listing.text());
    let users = listing.json()["users"].clone();
    assert_eq!(users[0]["sub"], "ada");
    assert!(
        users[0].get("password_hash").is_none(),
        "no hash leaves the server"
    );

    let removed = server
        .request(
            "DELETE",
            "/api/users/ada",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!(
        error_code(&refresh(&server, &third).await, 401),
        "unknown_account"
    );
    let again = server
        .request(
            "DELETE",
            "/api/users/ada",
            &[("Authorization", &bearer(&admin))],
            b"",
        )
        .await;
    assert_eq!(error_code(&again, 404), "user_not_found");

    // Tokens of an identity provider are refreshed there, not here.
    let external =
        hs256(&json!({ "sub": "ada", "exp": unix_now() + 300, "docs": { "*": "read" } }));
    assert_eq!(
        error_code(&refresh(&server, &external).await, 400),
        "not_refreshable"
    );
    let missing = server.request("POST", "/api/token/refresh", &[], b"").await;
    assert_eq!(error_code(&missing, 401), "missing_token");
}

#[tokio::test]
async fn user_commands_go_through_the_running_server() {
    let server = TestServer::start_jwt(|_| {}).await;
    let dir = server.data_dir().to_str().expect("utf-8 path").to_owned();
    let url = format!("http://{}", server.addr);
    let target = ["--data-dir", dir.as_str(), "--server", url.as_str()];

    let mut args = vec![
        "user",
        "add",
        "grace",
        "--doc",
        "g/*=write",
        "--password-stdin",
    ];
    args.extend(target);
    let added = run_tandem(&args, &format!("{PASSWORD}\n")).await;
    assert!(added.success, "{added:?}");
    assert!(
        added
            .stdout
            .starts_with("added user grace (through the server at"),
        "{added:?}"
    );
    let mut args = vec!["user", "list"];
    args.extend(target);
    let listed = run_tandem(&args, "").await;
    assert!(listed.success, "{listed:?}");
    assert!(
        listed.stdout.contains("grace") && listed.stdout.contains("g/*=write"),
        "{listed:?}"
    );

    let token = login_token(&server, "grace", PASSWORD).await;
    can_write(&server, "g/notes.md", &token, "grace was here").await;

    let mut args = vec!["user", "remove", "grace"];
    args.extend(target);
    let removed = run_tandem(&args, "").await;
    assert!(removed.success, "{removed:?}");
    assert_eq!(removed.stdout.trim(), "removed user grace");
    let again = run_tandem(&args, "").await;
    assert!(!again.success, "{again:?}");
    assert_eq!(again.stderr.trim(), "error: no user \"grace\"");
    assert_eq!(
        error_code(&login(&server, "grace", PASSWORD).await, 401),
        "bad_credentials"
    );
}

#[tokio::test]
async fn a_minted_token_opens_its_documents_without_signing_in() {
    let server = TestServer::start_jwt(|_| {}).await;
    let dir = server.data_dir().to_str().expect("utf-8 path").to_owned();
    let minted = run_tandem(
        &[
            "token",
            "mint",
            "--sub",
            "ci-bot",
            "--name",
            "CI",
            "--doc",
            "ci/*=write",
            "--ttl",
            "10m",
            "--data-dir",
            &dir,
        ],
        "",
    )
    .await;
    assert!(minted.success, "{minted:?}");
    let token = minted.stdout.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    can_write(&server, "ci/build.log", token, "build 42 passed").await;
    assert_eq!(
        refused_upgrade(&server, "team/plan.md", token).await,
        (403, "forbidden".into())
    );
    // Only sign-in sessions are renewed: a minted token is narrow on purpose and must not turn
    // into the full rights of an account that happens to share its `sub` (review finding).
    assert_eq!(
        error_code(&refresh(&server, token).await, 400),
        "not_refreshable"
    );
}

#[tokio::test]
async fn without_authentication_sign_in_is_offered_once_accounts_exist() {
    let server = TestServer::start().await;
    server.wait_healthy().await;
    let info = server.request("GET", "/api/auth", &[], b"").await;
    assert_eq!(info.json(), json!({ "mode": "none", "login": false }));
    // With authentication off (loopback only), everyone may manage accounts.
    let created = put_user(&server, "ignored", "ada", json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let short = put_user(&server, "ignored", "bob", json!({ "password": "short" })).await;
    assert_eq!(error_code(&short, 400), "bad_user");
    let nameless = put_user(&server, "ignored", "bob", json!({ "name": "Bob" })).await;
    assert_eq!(error_code(&nameless, 400), "bad_user");
    let info = server.request("GET", "/api/auth", &[], b"").await;
    assert_eq!(info.json(), json!({ "mode": "none", "login": true }));
    login_token(&server, "ada", PASSWORD).await;
}

/// `path` on `server` with the admin token `admin` and a JSON `body`.
async fn admin_call(
    server: &TestServer,
    admin: &str,
    method: &str,
    path: &str,
    body: &str,
) -> HttpResponse {
    server
        .request(
            method,
            path,
            &[
                ("Authorization", &bearer(admin)),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
}

/// The labels `GET /api/users/{sub}/app-passwords` lists, after checking that no secret or
/// hash is in the answer.
async fn app_password_labels(server: &TestServer, admin: &str, sub: &str) -> Vec<String> {
    let path = format!("/api/users/{sub}/app-passwords");
    let listed = admin_call(server, admin, "GET", &path, "").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let body = listed.json();
    let apps = body["app_passwords"].as_array().expect("a list");
    for app in apps {
        let mut keys: Vec<&str> = app
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.retain(|key| *key != "last_used_ms");
        assert_eq!(keys, ["created_ms", "id", "label"], "{app}");
    }
    apps.iter()
        .map(|app| app["label"].as_str().expect("label").to_owned())
        .collect()
}

/// App passwords made, listed and revoked through the admin API and through `tandem user
/// app-password` (against the running server and offline), stored only as a hash, kept across
/// restarts, and never accepted by password sign-in.
#[tokio::test]
async fn app_passwords_are_managed_by_the_admin_api_and_the_cli() {
    let mut server = TestServer::start_jwt_shared(|_| {}).await;
    let admin = server.admin_token();
    let created = put_user(&server, &admin, "ada", json!({ "password": PASSWORD })).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let apps = "/api/users/ada/app-passwords";

    let made = admin_call(&server, &admin, "POST", apps, r#"{"label":"laptop"}"#).await;
    assert_eq!(made.status, 201, "{}", made.text());
    let made = made.json();
    let laptop_secret = made["secret"].as_str().expect("secret").to_owned();
    let laptop_id = made["id"].as_str().expect("id").to_owned();
    assert!(laptop_secret.starts_with("tandem_app_"), "{made}");
    assert_eq!(laptop_secret.len(), "tandem_app_".len() + 43);
    assert_eq!(made["label"], "laptop");
    assert!(made["created_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(
        app_password_labels(&server, &admin, "ada").await,
        ["laptop"]
    );

    // Bad requests, each with its JSON error.
    let cases: [(&str, &str, &str, u16, &str); 6] = [
        (
            "POST",
            "/api/users/bob/app-passwords",
            r#"{"label":"x"}"#,
            404,
            "user_not_found",
        ),
        ("POST", apps, r#"{"label":""}"#, 400, "bad_user"),
        (
            "POST",
            apps,
            r#"{"label":"x","secret":"mine"}"#,
            400,
            "bad_json",
        ),
        (
            "GET",
            "/api/users/bob/app-passwords",
            "",
            404,
            "user_not_found",
        ),
        (
            "DELETE",
            "/api/users/ada/app-passwords/nope",
            "",
            404,
            "app_password_not_found",
        ),
        (
            "DELETE",
            "/api/users/bob/app-passwords/nope",
            "",
            404,
            "user_not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let response = admin_call(&server, &admin, method, path, body).await;
        assert_eq!(
            error_code(&response, status),
            code,
            "{method} {path} {body}"
        );
    }
    // Admins only.
    let ada = login_token(&server, "ada", PASSWORD).await;
    let own = admin_call(&server, &ada, "GET", apps, "").await;
    assert_eq!(error_code(&own, 403), "not_admin");
    // Sign-in takes the account password only.
    assert_eq!(
        error_code(&login(&server, "ada", &laptop_secret).await, 401),
        "bad_credentials"
    );

    // The CLI, through the running server.
    let dir = server.data_dir().to_str().expect("utf-8 path").to_owned();
    let url = format!("http://{}", server.addr);
    let target = ["--data-dir", dir.as_str(), "--server", url.as_str()];
    let cli = |words: &[&str]| {
        let mut args = vec!["user", "app-password"];
        args.extend(words);
        args.extend(target);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tandem(&args, "").await
    };
    let added = run(cli(&["add", "ada", "--label", "rclone"])).await;
    assert!(added.success, "{added:?}");
    assert!(
        added.stdout.starts_with("added app password ")
            && added
                .stdout
                .contains("(\"rclone\") for user ada (through the server at"),
        "{added:?}"
    );
    let rclone_secret = added.stdout.trim().lines().last().expect("the secret line");
    assert!(rclone_secret.starts_with("tandem_app_"), "{added:?}");
    let listed = run(cli(&["list", "ada"])).await;
    assert!(listed.success, "{listed:?}");
    let lines: Vec<&str> = listed.stdout.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{listed:?}");
    assert!(
        lines[0].starts_with(&format!("{laptop_id}  \"laptop\"  created ")),
        "{listed:?}"
    );
    assert!(lines[0].ends_with("never used"), "{listed:?}");
    assert!(!listed.stdout.contains("tandem_app_"), "{listed:?}");
    let rclone_id = lines[1]
        .split_whitespace()
        .next()
        .expect("an id")
        .to_owned();

    let removed = run(cli(&["remove", "ada", &laptop_id])).await;
    assert!(removed.success, "{removed:?}");
    assert_eq!(
        removed.stdout.trim(),
        format!("removed app password {laptop_id} of user ada")
    );
    let again = run(cli(&["remove", "ada", &laptop_id])).await;
    assert!(!again.success, "{again:?}");
    assert_eq!(
        again.stderr.trim(),
        format!("error: user \"ada\" has no app password \"{laptop_id}\"")
    );
    let third = admin_call(&server, &admin, "POST", apps, r#"{"label":"phone"}"#).await;
    assert_eq!(third.status, 201, "{}", third.text());
    let phone_id = third.json()["id"].as_str().expect("id").to_owned();
    let revoked = admin_call(&server, &admin, "DELETE", &format!("{apps}/{phone_id}"), "").await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json(), json!({ "removed": phone_id }));
    // Changing the account keeps its app passwords.
    let renamed = put_user(&server, &admin, "ada", json!({ "name": "Ada L." })).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    assert_eq!(
        app_password_labels(&server, &admin, "ada").await,
        ["rclone"]
    );

    // Offline: the command opens the database itself, which holds only the secret's hash.
    assert!(server.shutdown().await, "clean shutdown");
    let offline = |words: &[&str]| {
        let mut args = vec!["user", "app-password"];
        args.extend(words);
        args.extend(["--data-dir", dir.as_str()]);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let listed = run(offline(&["list", "ada"])).await;
    assert!(listed.success, "{listed:?}");
    assert!(listed.stdout.trim().starts_with(&rclone_id), "{listed:?}");
    let added = run(offline(&["add", "ada", "--label", "cadaver"])).await;
    assert!(added.success, "{added:?}");
    assert!(!added.stdout.contains("through the server"), "{added:?}");
    let bad = run(offline(&["add", "ada", "--label", ""])).await;
    assert!(!bad.success, "{bad:?}");
    assert!(
        bad.stderr.contains("label must be 1 to 64 bytes"),
        "{bad:?}"
    );
    let nobody = run(offline(&["list", "bob"])).await;
    assert_eq!(nobody.stderr.trim(), "error: no user \"bob\"", "{nobody:?}");
    let db = std::fs::read(server.data_dir().join("tandem.redb")).expect("the database");
    for secret in [rclone_secret, laptop_secret.as_str()] {
        assert!(
            !db.windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "a secret is stored in clear"
        );
    }
    {
        use sha2::Digest;
        let store = tandem_store::Store::open(&server.data_dir().join("tandem.redb"))
            .expect("open the database");
        let ada = store.get_user("ada").expect("read").expect("ada");
        let stored: Vec<[u8; 32]> = ada
            .app_passwords
            .iter()
            .map(|app| app.secret_sha256)
            .collect();
        assert_eq!(stored.len(), 2);
        let rclone_hash: [u8; 32] = sha2::Sha256::digest(rclone_secret.as_bytes()).into();
        assert_eq!(stored[0], rclone_hash);
    }

    server.restart().await;
    server.wait_healthy().await;
    assert_eq!(
        app_password_labels(&server, &admin, "ada").await,
        ["rclone", "cadaver"]
    );
}
