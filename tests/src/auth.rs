//! Tokens and servers with authentication on, written once for every test: tokens an identity
//! provider signs with the shared HS256 secret, tokens a server mints with its own key (as
//! `tandem token mint` and sign-in do), and servers started with `--auth jwt`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tandem_server::Config;
use tandem_server::auth::{AuthMode, Claims, Role, mint_offline};

use crate::TestServer;

/// The HS256 secret [`TestServer::start_jwt_shared`] gives its server (`--jwt-secret-file`), as
/// an identity provider shares it with Tandem; [`hs256`] signs with it.
pub const JWT_SECRET: &[u8] = b"an hs256 secret of at least thirty-two bytes, for tests";

/// Seconds since the Unix epoch, the unit of `exp` and the other JWT times.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What an identity provider signs for `sub`: named `<sub> (verified)` (so a test can tell the
/// verified name from one a client claims), with the doc patterns `docs`, for five minutes.
pub fn jwt_claims(sub: &str, docs: Value) -> Value {
    let mut claims =
        json!({ "sub": sub, "name": format!("{sub} (verified)"), "exp": unix_now() + 300 });
    claims["docs"] = docs;
    claims
}

/// `claims` (any JSON, valid or not) signed with HS256 and [`JWT_SECRET`].
pub fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("sign")
}

/// [`jwt_claims`] for `sub` and `docs` signed with [`hs256`]: the token an identity provider the
/// server trusts hands out.
pub fn idp_token(sub: &str, docs: Value) -> String {
    hs256(&jwt_claims(sub, docs))
}

/// The claims of a token a server mints for `sub`: named `<sub> (verified)`, with `docs`, for ten
/// minutes, not an administrator. Change fields before minting for other tokens.
pub fn own_claims(sub: &str, docs: &[(&str, Role)]) -> Claims {
    Claims {
        sub: sub.into(),
        name: Some(format!("{sub} (verified)")),
        docs: docs
            .iter()
            .map(|(pattern, role)| ((*pattern).to_owned(), *role))
            .collect::<BTreeMap<_, _>>(),
        admin: false,
        exp: unix_now() + 600,
        nbf: None,
        iat: None,
        iss: None,
        session: None,
    }
}

/// The claims of `tandem token mint --admin --sub <sub>`: an administrator without a name or doc
/// patterns, for five minutes.
pub fn admin_claims(sub: &str) -> Claims {
    Claims {
        name: None,
        admin: true,
        exp: unix_now() + 300,
        ..own_claims(sub, &[])
    }
}

/// `claims` signed with the server key in `data_dir` (made there if missing), as `tandem token
/// mint` signs offline.
pub fn mint(data_dir: &Path, claims: &Claims) -> String {
    mint_offline(data_dir, claims).expect("mint a token")
}

impl TestServer {
    /// A server with `--auth jwt` that knows only its own key, settings adjusted by `adjust`,
    /// once it is healthy.
    pub async fn start_jwt(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_healthy(|config| {
            config.auth.mode = AuthMode::Jwt;
            adjust(config);
        })
        .await
    }

    /// [`TestServer::start_jwt`] that also accepts tokens signed with [`JWT_SECRET`] (see
    /// [`hs256`]). The secret file lives as long as the server, because a restart reads it again.
    pub async fn start_jwt_shared(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let secret_dir = tempfile::tempdir().expect("temp dir");
        let secret_file = secret_dir.path().join("secret");
        std::fs::write(&secret_file, JWT_SECRET).expect("write secret");
        let mut server = TestServer::start_jwt(|config| {
            config.auth.secret_file = Some(secret_file);
            adjust(config);
        })
        .await;
        server.keep.push(secret_dir);
        server
    }

    /// `claims` signed with this server's own key.
    pub fn mint(&self, claims: &Claims) -> String {
        mint(self.data_dir(), claims)
    }

    /// A token of this server for `sub` with `docs` (see [`own_claims`]).
    pub fn token(&self, sub: &str, docs: &[(&str, Role)]) -> String {
        self.mint(&own_claims(sub, docs))
    }

    /// An administrator token of this server for `root` (see [`admin_claims`]).
    pub fn admin_token(&self) -> String {
        self.mint(&admin_claims("root"))
    }
}
