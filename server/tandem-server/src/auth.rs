//! Authentication and authorisation: tokens in, a [`Grant`] for one doc out.
//!
//! Two modes. `none` grants everyone full access and is refused on a non-loopback address unless
//! `--insecure-no-auth` says so (and the start-up log says it loudly). `jwt` verifies a JSON Web
//! Token with `jsonwebtoken` against the keys the configuration names: an HS256 secret file,
//! public keys in PEM (RS*/PS*, ES256/ES384, EdDSA), a JWKS file (keys picked by `kid`), and
//! always the server's own HS256 key (`server-key` in the data directory), which signs the tokens
//! of `POST /api/login` and `tandem token mint`.
//!
//! Invariants:
//! - Every key is bound to one algorithm when it is loaded. A token is only ever checked with a
//!   key of the algorithm its header names, and only if the configuration accepts that
//!   algorithm, so `alg: none` (unparseable here) and HS/RS confusion (an HS256 token "signed"
//!   with an RSA public key) cannot verify.
//! - `exp` is required; `nbf`, `iss` and `aud` are checked when present or configured, with a
//!   small leeway for clock skew.
//! - Nothing here logs a token or a secret.
//!
//! The claim schema and where tokens travel are the contract in `protocol-spec/auth.md`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Uri, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tandem_core::{DocId, Identity, PeerAccess};
use tandem_hub::PeerGrant;

/// File in the data directory holding the server's own signing secret.
pub const SERVER_KEY_FILE: &str = "server-key";
/// `kid` and `iss` of the tokens the server signs itself.
pub const SERVER_ISSUER: &str = "tandem";
/// Bytes of the server's own HS256 secret (256 bits, the size of the hash).
const SERVER_KEY_BYTES: usize = 32;
/// Prefix of the `Sec-WebSocket-Protocol` entry that carries a token (browsers cannot set
/// headers on a WebSocket). The server answers with the plain [`WS_PROTOCOL`].
pub const WS_TOKEN_PROTOCOL_PREFIX: &str = "tandem.token.";
/// The subprotocol a client offers next to its token entry, and the one the server selects.
pub const WS_PROTOCOL: &str = "tandem";

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may read and write everything.
    None,
    /// A valid JSON Web Token is required.
    Jwt,
}

/// The auth part of the configuration.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The mode.
    pub mode: AuthMode,
    /// Allows `none` on a non-loopback address.
    pub insecure_no_auth: bool,
    /// A file holding the HS256 shared secret (its bytes, trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// Public keys in PEM, each with the one algorithm it verifies.
    pub public_keys: Vec<(Algorithm, PathBuf)>,
    /// A JWKS file; tokens pick a key by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Algorithms accepted; `None` accepts the algorithm of every configured key.
    pub algorithms: Option<Vec<Algorithm>>,
    /// Accepted issuers (`iss`); empty checks nothing.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`); empty checks nothing.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl AuthConfig {
    /// Authentication off, as tests and loopback development use it.
    pub fn none() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::None,
            insecure_no_auth: false,
            secret_file: None,
            public_keys: Vec::new(),
            jwks_file: None,
            algorithms: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Refuses a configuration that would expose documents without saying so.
    pub fn check_bind(&self, bind: IpAddr) -> Result<(), String> {
        if self.mode == AuthMode::None && !bind.is_loopback() && !self.insecure_no_auth {
            return Err(format!(
                "refusing to listen on {bind} with authentication off: use --auth jwt, \
                 or --insecure-no-auth if every client that can reach it may read and change \
                 every document"
            ));
        }
        Ok(())
    }
}

/// Default clock leeway on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// A role on a document; each includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sync and presence; updates are refused.
    Read,
    /// Read, and change the document.
    Write,
    /// Write, and manage it (reserved for administrative operations).
    Admin,
}

/// A role name that is none of `read`, `write`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use read, write or admin")]
pub struct UnknownRole(pub String);

impl std::fmt::Display for Role {
    /// The name of a role as stored, sent and typed: `read`, `write`, `admin` (the same as its
    /// serde name).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    /// A role from its exact name, as [`Display`](std::fmt::Display) writes it.
    fn from_str(name: &str) -> Result<Self, UnknownRole> {
        match name {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownRole(name.to_owned())),
        }
    }
}

/// The claims Tandem reads from a token (`protocol-spec/auth.md`). Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id; stamped into the holder's presence.
    pub sub: String,
    /// The display name; `sub` is shown when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Document name patterns and the role each grants. `*` matches any run of characters.
    #[serde(default)]
    pub docs: BTreeMap<String, Role>,
    /// Server administration: accounts and tokens over HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// When the sign-in this token descends from happened (Unix seconds). Set only by
    /// `POST /api/login` and carried by refreshes: only such tokens can be refreshed, and only
    /// within `MAX_LOGIN_SESSION` of the sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

impl Claims {
    /// The role these claims give on `doc`: the most specific matching pattern (most literal
    /// characters) decides, so `{"team/*": "write", "team/archive/*": "read"}` makes the archive
    /// read-only. Among equally specific patterns the higher role wins.
    pub fn role_for(&self, doc: &str) -> Option<Role> {
        self.docs
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, doc))
            .max_by_key(|(pattern, role)| (pattern.chars().filter(|c| *c != '*').count(), **role))
            .map(|(_, role)| *role)
    }

    /// The verified identity of the holder.
    pub fn identity(&self) -> Identity {
        let name = self.name.as_deref().filter(|name| !name.trim().is_empty());
        Identity {
            sub: Arc::from(self.sub.as_str()),
            name: Arc::from(name.unwrap_or(&self.sub)),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (`/` included).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    // Greedy wildcard matching with one backtrack point: linear in practice, no recursion.
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|byte| *byte == b'*')
}

/// What a request or connection may do with one doc.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The role on the doc.
    pub role: Role,
    /// Who it is; `None` when authentication is off.
    pub identity: Option<Identity>,
    /// When the token expires; the connection is closed with 4401 then. `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    /// What everyone gets with authentication off.
    fn open() -> Grant {
        Grant {
            role: Role::Admin,
            identity: None,
            expires_at: None,
        }
    }

    /// Whether the holder may change the doc.
    pub fn can_write(&self) -> bool {
        self.role >= Role::Write
    }

    /// The core's view of this grant.
    pub fn access(&self) -> PeerAccess {
        PeerAccess {
            can_write: self.can_write(),
            identity: self.identity.clone(),
        }
    }

    /// What a WebSocket connection keeps of this grant (the hub knows nothing of tokens).
    pub fn peer_grant(&self) -> PeerGrant {
        PeerGrant {
            access: self.access(),
            expires_at: self.expires_at,
            // As the connection's span has always named it (the role's `Debug` form).
            role: match self.role {
                Role::Read => "Read",
                Role::Write => "Write",
                Role::Admin => "Admin",
            },
        }
    }
}

/// Why a request was refused. Each maps to a status and a stable code (`protocol-spec/auth.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("a token is required")]
    MissingToken,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// Any other reason the token cannot be trusted (signature, algorithm, issuer, shape).
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token is valid but grants nothing on this doc.
    #[error("token grants no access to this document")]
    Forbidden,
    /// The token grants only reading; this is a write.
    #[error("token grants read-only access to this document")]
    ReadOnly,
    /// The operation needs the `admin` claim.
    #[error("this operation needs an administrator token")]
    NotAdmin,
}

impl AuthError {
    /// Whether this is "who are you" (401) rather than "you may not" (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::MissingToken
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::Invalid(_)
        )
    }

    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden => "forbidden",
            AuthError::ReadOnly => "read_only",
            AuthError::NotAdmin => "not_admin",
        }
    }
}

/// A key a token may be verified with.
struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// The server's own key: its tokens carry `iss: tandem` and no audience.
    own: bool,
}

/// Verifies tokens and signs the server's own. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    mode: AuthMode,
    keys: Vec<VerifyKey>,
    accepted: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    signing: EncodingKey,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.inner.mode)
            .field("n_keys", &self.inner.keys.len())
            .field("accepted", &self.inner.accepted)
            .finish_non_exhaustive()
    }
}

/// Why the auth configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthLoadError {
    /// A key file could not be read or created.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key or JWKS could not be used.
    #[error("{0}")]
    Key(String),
}

impl Auth {
    /// Loads the keys `config` names and the server's own key from `data_dir` (created on first
    /// start, mode 0600).
    pub fn load(config: &AuthConfig, data_dir: &Path) -> Result<Auth, AuthLoadError> {
        let own_secret = load_or_create_server_key(data_dir)?;
        let mut keys = vec![VerifyKey {
            kid: Some(SERVER_ISSUER.into()),
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(&own_secret),
            own: true,
        }];
        if let Some(path) = &config.secret_file {
            let secret = read_file(path, "reading the JWT secret")?;
            let secret = trim_trailing_newline(&secret);
            if secret.len() < 32 {
                return Err(AuthLoadError::Key(format!(
                    "the JWT secret in {} is {} bytes; HS256 needs at least 32",
                    path.display(),
                    secret.len()
                )));
            }
            for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                keys.push(VerifyKey {
                    kid: None,
                    algorithm,
                    key: DecodingKey::from_secret(secret),
                    own: false,
                });
            }
        }
        for (algorithm, path) in &config.public_keys {
            let pem = read_file(path, "reading a JWT public key")?;
            let key = match algorithm.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Hmac => {
                    return Err(AuthLoadError::Key(format!(
                        "{algorithm:?} is not a public-key algorithm; use --jwt-secret-file"
                    )));
                }
            }
            .map_err(|error| {
                AuthLoadError::Key(format!(
                    "{} is not a {algorithm:?} public key in PEM: {error}",
                    path.display()
                ))
            })?;
            keys.push(VerifyKey {
                kid: None,
                algorithm: *algorithm,
                key,
                own: false,
            });
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(load_jwks(path)?);
        }
        // The configured list, or every algorithm some external key verifies. The server's own
        // HS256 key is accepted apart from this list, for its own tokens only (kid and iss
        // "tandem"; see `verify`).
        let accepted = match &config.algorithms {
            Some(list) => list.clone(),
            None => {
                let mut all: Vec<Algorithm> = keys
                    .iter()
                    .filter(|key| {
                        let opt_in_hmac = key.kid.is_none() && is_extra_hmac(key.algorithm);
                        !key.own && !opt_in_hmac
                    })
                    .map(|key| key.algorithm)
                    .collect();
                all.sort_by_key(|algorithm| format!("{algorithm:?}"));
                all.dedup();
                all
            }
        };
        Ok(Auth {
            inner: Arc::new(AuthInner {
                mode: config.mode,
                keys,
                accepted,
                issuers: config.issuers.clone(),
                audiences: config.audiences.clone(),
                leeway: config.leeway,
                signing: EncodingKey::from_secret(&own_secret),
            }),
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.inner.mode
    }

    /// The algorithms a token may use.
    pub fn accepted_algorithms(&self) -> &[Algorithm] {
        &self.inner.accepted
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unsupported algorithm"))?;
        // The server's own tokens (HS256, kid "tandem") are accepted whatever the configured
        // list says: they are checked only with the server's own key.
        let own_header =
            header.alg == Algorithm::HS256 && header.kid.as_deref() == Some(SERVER_ISSUER);
        if !own_header && !self.inner.accepted.contains(&header.alg) {
            return Err(AuthError::Invalid("algorithm not accepted"));
        }
        let candidates = self.inner.keys.iter().filter(|key| {
            key.algorithm == header.alg
                && (key.own || self.inner.accepted.contains(&key.algorithm))
                && match (&header.kid, &key.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    (Some(_), None) => false,
                    // A token without a kid is tried against keys without one.
                    (None, kid) => kid.is_none(),
                }
        });
        let mut error = AuthError::Invalid("no key for this token");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key)) {
                Ok(data) => return Ok(data.claims),
                Err(failure) => {
                    let mapped = map_error(failure.kind());
                    // A signature that verified but a claim that failed is the better answer.
                    if !matches!(error, AuthError::Expired | AuthError::NotYetValid)
                        || !matches!(mapped, AuthError::Invalid(_))
                    {
                        error = mapped;
                    }
                }
            }
        }
        Err(error)
    }

    /// Verifies a token the server signed itself (`POST /api/login`, `tandem token mint`) and
    /// returns its claims; a token of an identity provider is `Invalid` here even if `verify`
    /// accepts it. `POST /api/token/refresh` uses this (`api/accounts.rs`).
    pub fn verify_own(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unsupported algorithm"))?;
        let own = self
            .inner
            .keys
            .iter()
            .find(|key| key.own)
            .expect("Auth::load always puts the server's own key first");
        if header.alg != own.algorithm || header.kid.as_deref() != Some(SERVER_ISSUER) {
            return Err(AuthError::Invalid("not a token of this server"));
        }
        jsonwebtoken::decode::<Claims>(token, &own.key, &self.validation(own))
            .map(|data| data.claims)
            .map_err(|failure| map_error(failure.kind()))
    }

    fn validation(&self, key: &VerifyKey) -> Validation {
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.inner.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if key.own {
            validation.set_issuer(&[SERVER_ISSUER]);
            validation.validate_aud = false;
        } else {
            if !self.inner.issuers.is_empty() {
                validation.set_issuer(&self.inner.issuers);
            }
            if self.inner.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&self.inner.audiences);
            }
        }
        validation
    }

    /// Claims for a request, or `None` when authentication is off.
    pub fn claims(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        match self.inner.mode {
            AuthMode::None => Ok(None),
            AuthMode::Jwt => {
                let token = token.ok_or(AuthError::MissingToken)?;
                self.verify(token).map(Some)
            }
        }
    }

    /// What `token` may do on `doc`: at least `Role::Read`, or an error.
    pub fn grant(&self, token: Option<&str>, doc: &DocId) -> Result<Grant, AuthError> {
        let Some(claims) = self.claims(token)? else {
            return Ok(Grant::open());
        };
        let role = claims.role_for(doc.as_str()).ok_or(AuthError::Forbidden)?;
        Ok(Grant {
            role,
            identity: Some(claims.identity()),
            // The token was accepted up to `exp + leeway`; closing earlier would only make the
            // client reconnect with the same token and be accepted again.
            // An `exp` too far out to represent never expires in practice.
            expires_at: UNIX_EPOCH
                .checked_add(Duration::from_secs(claims.exp))
                .and_then(|at| at.checked_add(self.inner.leeway)),
        })
    }

    /// Signs `claims` with the server's own key (`kid` and `iss` "tandem").
    pub fn mint(&self, claims: &Claims) -> String {
        mint_with(&self.inner.signing, claims)
    }
}

/// Signs `claims` with the server's key found in `data_dir`, creating the key if needed. Used
/// by `tandem token mint`, which may run beside a running server (the key is a plain file).
pub fn mint_offline(data_dir: &Path, claims: &Claims) -> Result<String, AuthLoadError> {
    let secret = load_or_create_server_key(data_dir)?;
    Ok(mint_with(&EncodingKey::from_secret(&secret), claims))
}

fn mint_with(key: &EncodingKey, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(SERVER_ISSUER.into());
    let mut claims = claims.clone();
    claims.iss = Some(SERVER_ISSUER.into());
    jsonwebtoken::encode(&header, &claims, key)
        .expect("HS256 signing with an in-memory secret and serialisable claims cannot fail")
}

/// The token a request carries: `Authorization: Bearer`, else the `token` query parameter,
/// else a `Sec-WebSocket-Protocol` entry `tandem.token.<jwt>`.
pub fn token_from(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some((scheme, token)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_owned());
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                let decoded = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .ok()?;
                return Some(decoded.into_owned());
            }
        }
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',') {
            if let Some(token) = protocol.trim().strip_prefix(WS_TOKEN_PROTOCOL_PREFIX) {
                return Some(token.to_owned());
            }
        }
    }
    None
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted"),
        ErrorKind::InvalidIssuer => AuthError::Invalid("issuer not accepted"),
        ErrorKind::InvalidAudience => AuthError::Invalid("audience not accepted"),
        ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("a required claim is missing"),
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            AuthError::Invalid("claims do not follow the schema")
        }
        _ => AuthError::Invalid("malformed token"),
    }
}

/// HS384/HS512 entries made from the shared secret: accepted only when listed explicitly.
fn is_extra_hmac(algorithm: Algorithm) -> bool {
    matches!(algorithm, Algorithm::HS384 | Algorithm::HS512)
}

fn load_jwks(path: &Path) -> Result<Vec<VerifyKey>, AuthLoadError> {
    let text = read_file(path, "reading the JWKS file")?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|error| {
        AuthLoadError::Key(format!(
            "{} is not a JWKS document: {error}",
            path.display()
        ))
    })?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(algorithm), _) => key_algorithm(*algorithm),
            (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            (None, AlgorithmParameters::OctetKeyPair(_)) => Some(Algorithm::EdDSA),
            (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
            (None, _) => None,
        };
        let kid = jwk.common.key_id.clone();
        let Some(algorithm) = algorithm else {
            return Err(AuthLoadError::Key(format!(
                "JWKS key {kid:?} in {} has no usable signing algorithm",
                path.display()
            )));
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| {
            AuthLoadError::Key(format!(
                "JWKS key {kid:?} in {} cannot be used: {error}",
                path.display()
            ))
        })?;
        keys.push(VerifyKey {
            kid,
            algorithm,
            key,
            own: false,
        });
    }
    Ok(keys)
}

fn key_algorithm(algorithm: KeyAlgorithm) -> Option<Algorithm> {
    Some(match algorithm {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn read_file(path: &Path, context: &'static str) -> Result<Vec<u8>, AuthLoadError> {
    std::fs::read(path).map_err(|source| AuthLoadError::Io {
        context,
        path: path.to_owned(),
        source,
    })
}

fn trim_trailing_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// A fresh random server key, as [`load_or_create_server_key`] makes one.
pub fn new_server_key() -> Vec<u8> {
    let mut secret = vec![0u8; SERVER_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    secret
}

/// Makes `secret` the server key in `data_dir` (cluster mode: the key every node shares, kept
/// in Postgres), replacing a different one; returns whether it replaced one. Written to a
/// temporary file, synced and renamed, owner-only, so a concurrent reader sees the old key or
/// the new one.
pub fn install_server_key(data_dir: &Path, secret: &[u8]) -> Result<bool, AuthLoadError> {
    use base64::Engine;
    use std::io::Write;
    let path = data_dir.join(SERVER_KEY_FILE);
    let text = base64::engine::general_purpose::STANDARD.encode(secret);
    let replaced = match std::fs::read(&path) {
        Ok(existing) if trim_trailing_newline(&existing) == text.as_bytes() => return Ok(false),
        Ok(_) => true,
        Err(_) => false,
    };
    let io_error = |context: &'static str| {
        let path = path.clone();
        move |source| AuthLoadError::Io {
            context,
            path,
            source,
        }
    };
    std::fs::create_dir_all(data_dir).map_err(io_error("creating the data directory"))?;
    let temp = data_dir.join(format!("{SERVER_KEY_FILE}.new"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temp)
        .map_err(io_error("writing the server key"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing the server key"))?;
    std::fs::rename(&temp, &path).map_err(io_error("writing the server key"))?;
    Ok(replaced)
}

/// Reads the server's secret, or creates it (random, owner-only permissions) on first use.
fn load_or_create_server_key(data_dir: &Path) -> Result<Vec<u8>, AuthLoadError> {
    use base64::Engine;
    use std::io::Write;
    let path = data_dir.join(SERVER_KEY_FILE);
    let io_error = |context: &'static str| {
        let path = path.clone();
        move |source| AuthLoadError::Io {
            context,
            path,
            source,
        }
    };
    let decode = |text: &[u8]| {
        base64::engine::general_purpose::STANDARD
            .decode(trim_trailing_newline(text))
            .ok()
            .filter(|key| key.len() >= SERVER_KEY_BYTES)
            .ok_or_else(|| {
                AuthLoadError::Key(format!(
                    "{} does not hold a server key; remove it to make a new one \
                     (every token it signed stops working)",
                    path.display()
                ))
            })
    };
    match std::fs::read(&path) {
        Ok(text) => return decode(&text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("reading the server key")(error)),
    }
    std::fs::create_dir_all(data_dir).map_err(io_error("creating the data directory"))?;
    let mut secret = vec![0u8; SERVER_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            let text = base64::engine::general_purpose::STANDARD.encode(&secret);
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error("writing the server key"))?;
            Ok(secret)
        }
        // Another process (a `tandem token mint` beside a starting server) made it first.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read(&path).map_err(io_error("reading the server key"))?;
            decode(&text)
        }
        Err(error) => Err(io_error("creating the server key")(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_hub::clock::now_s;

    #[test]
    fn role_names_round_trip_and_match_the_json_names() {
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).expect("json"),
                serde_json::Value::from(role.to_string())
            );
        }
        assert_eq!(
            "Read".parse::<Role>().map_err(|error| error.to_string()),
            Err("unknown role \"Read\": use read, write or admin".to_owned())
        );
    }

    #[test]
    fn patterns_match_with_star_as_any_run() {
        for (pattern, name, expected) in [
            ("team/*", "team/a", true),
            ("team/*", "team/a/b.md", true),
            ("team/*", "team", false),
            ("team/*", "teams/a", false),
            ("*", "anything/at/all", true),
            ("notes.md", "notes.md", true),
            ("notes.md", "notes.mdx", false),
            ("*.md", "a/b.md", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("", "", true),
        ] {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn the_most_specific_pattern_decides_the_role() {
        let claims = Claims {
            sub: "ada".into(),
            name: None,
            docs: BTreeMap::from([
                ("team/*".into(), Role::Write),
                ("team/archive/*".into(), Role::Read),
                ("*".into(), Role::Read),
            ]),
            admin: false,
            exp: 0,
            nbf: None,
            iat: None,
            iss: None,
            session: None,
        };
        assert_eq!(claims.role_for("team/plan.md"), Some(Role::Write));
        assert_eq!(claims.role_for("team/archive/2024.md"), Some(Role::Read));
        assert_eq!(claims.role_for("other"), Some(Role::Read));
        let narrow = Claims {
            docs: BTreeMap::from([("a/*".into(), Role::Admin)]),
            ..claims
        };
        assert_eq!(narrow.role_for("b/x"), None);
        assert_eq!(narrow.identity().name.as_ref(), "ada");
    }

    #[test]
    fn tokens_are_found_in_header_query_and_subprotocol() {
        let uri: Uri = "/ws/doc?x=1&token=abc%2Edef".parse().unwrap();
        assert_eq!(
            token_from(&HeaderMap::new(), &uri).as_deref(),
            Some("abc.def")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "tandem, tandem.token.aaa.bbb.ccc".parse().unwrap(),
        );
        let plain: Uri = "/ws/doc".parse().unwrap();
        assert_eq!(token_from(&headers, &plain).as_deref(), Some("aaa.bbb.ccc"));
        headers.insert(header::AUTHORIZATION, "Bearer hdr".parse().unwrap());
        assert_eq!(token_from(&headers, &uri).as_deref(), Some("hdr"));
    }

    #[test]
    fn own_tokens_verify_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::none()
        };
        let auth = Auth::load(&config, dir.path()).unwrap();
        let claims = Claims {
            sub: "ada".into(),
            name: Some("Ada".into()),
            docs: BTreeMap::from([("team/*".into(), Role::Write)]),
            admin: false,
            exp: now_s() + 60,
            nbf: None,
            iat: Some(now_s()),
            iss: None,
            session: None,
        };
        let token = auth.mint(&claims);
        let verified = auth.verify(&token).unwrap();
        assert_eq!(verified.sub, "ada");
        assert_eq!(verified.iss.as_deref(), Some(SERVER_ISSUER));
        // The key survives a restart: a second load reads the same file.
        let again = Auth::load(&config, dir.path()).unwrap();
        assert!(again.verify(&token).is_ok());
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(auth.verify(&tampered), Err(AuthError::Invalid(_))));
        let expired = auth.mint(&Claims {
            exp: now_s() - 3600,
            ..claims
        });
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
    }
}

/// The role-pattern vectors of `protocol-spec/vectors/role-patterns.json`, checked against
/// `pattern_matches` and `Claims::role_for`. The web client's unit tests
/// (`web-client/src/auth/roles.test.ts`) read the same file; Rust is the contract.
#[cfg(test)]
mod role_pattern_vectors {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::{Claims, Role, pattern_matches};

    const VECTORS: &str = include_str!("../../../protocol-spec/vectors/role-patterns.json");

    /// Fewer vectors than this means the file was lost or cut short.
    const MIN_MATCHES: usize = 20;
    const MIN_ROLES: usize = 8;

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).expect("role-patterns.json is JSON")
    }

    fn text<'a>(case: &'a Value, key: &str) -> &'a str {
        case[key]
            .as_str()
            .unwrap_or_else(|| panic!("role-patterns.json: no string `{key}` in {case}"))
    }

    #[test]
    fn pattern_matches_follows_the_vectors() {
        let vectors = vectors();
        let cases = vectors["matches"].as_array().expect("`matches` is a list");
        assert!(
            cases.len() >= MIN_MATCHES,
            "only {} match cases",
            cases.len()
        );
        for case in cases {
            let (pattern, doc) = (text(case, "pattern"), text(case, "doc"));
            let expected = case["matches"].as_bool().expect("`matches` is a boolean");
            assert_eq!(
                pattern_matches(pattern, doc),
                expected,
                "pattern {pattern:?}, doc {doc:?} ({})",
                case["note"]
            );
        }
    }

    #[test]
    fn role_for_follows_the_vectors() {
        let vectors = vectors();
        let cases = vectors["roles"].as_array().expect("`roles` is a list");
        assert!(cases.len() >= MIN_ROLES, "only {} role cases", cases.len());
        for case in cases {
            let docs: BTreeMap<String, Role> = serde_json::from_value(case["docs"].clone())
                .expect("`docs` maps patterns to roles");
            let expected: Option<Role> =
                serde_json::from_value(case["role"].clone()).expect("`role` is a role or null");
            let claims = Claims {
                sub: "vector".into(),
                name: None,
                docs,
                admin: false,
                exp: 0,
                nbf: None,
                iat: None,
                iss: None,
                session: None,
            };
            let doc = text(case, "doc");
            assert_eq!(
                claims.role_for(doc),
                expected,
                "doc {doc:?} ({})",
                case["note"]
            );
        }
    }
}
