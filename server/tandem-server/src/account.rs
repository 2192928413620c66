//! Accounts for teams without an identity provider: password sign-in, token refresh and the
//! admin API over the `users` table of `tandem-store`.
//!
//! A successful `POST /api/login` returns a token signed with the server's own key
//! ([`Auth::mint`]), with the account's roles as its claims; from then on it is an ordinary
//! token (`auth.rs`). `POST /api/token/refresh` re-reads the account, so removing an account or
//! changing its roles takes effect at the next refresh at the latest.
//!
//! Invariants:
//! - Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//!   lane, the OWASP recommendation; about 40 ms on one core) in `spawn_blocking`, at most
//!   [`MAX_CONCURRENT_HASHES`] at a time and at most [`MAX_QUEUED_HASHES`] waiting, so a flood of
//!   sign-ins cannot take more than two cores or queue without bound.
//! - A name that is not an account is checked against [`DUMMY_PASSWORD_HASH`], so the answer
//!   takes as long as for a real account and says the same thing: which accounts exist does not
//!   leak through sign-in.
//! - Failed attempts are limited per account and per client address ([`LoginLimiter`]); over a
//!   limit, the request is refused before any hashing.
//! - Nothing here logs a password, a hash or a token.
//!
//! The endpoints are specified in `protocol-spec/http.md`; `command.rs` drives the same store
//! operations from the command line.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem_store::{Store, UserRecord};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::auth::{Auth, AuthError, AuthMode, Claims, Role, token_from, unix_now};
use crate::http::{ApiError, AppState};
use crate::proxy::ClientAddr;

/// Default lifetime of a token from `POST /api/login` or a refresh.
pub const DEFAULT_LOGIN_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
/// Default window over which failed sign-ins are counted. Long enough that guessing is slow
/// (5 guesses per account per 15 min is 480 a day), short enough that someone who mistyped
/// five times is back within a coffee break.
pub const DEFAULT_LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Default failed sign-ins allowed per account in the window: enough for typos, few enough for
/// online guessing to be hopeless against any real password.
pub const DEFAULT_MAX_FAILURES_PER_ACCOUNT: u32 = 5;
/// Default failed sign-ins allowed per client address in the window, across accounts: one
/// address spraying one password over many accounts is stopped after 20, while an office
/// behind one NAT still has room for several people's typos.
pub const DEFAULT_MAX_FAILURES_PER_ADDRESS: u32 = 20;

/// Password hashes running at once. Each takes one core for ~40 ms and 19 MiB.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// Requests waiting for a hashing slot; more are answered 503 `login_busy` at once.
pub const MAX_QUEUED_HASHES: usize = 64;
/// Accounts and addresses with failures being remembered. When full (after pruning expired
/// entries), an attempt under a name or address not yet tracked is refused: failing closed keeps
/// an attacker from flushing an account's counter by filling the table.
const MAX_TRACKED_KEYS: usize = 65_536;
/// How long after a sign-in its tokens may still be refreshed: a working day and a night, so an
/// open tab survives until the next morning but a stolen token does not live forever.
const MAX_LOGIN_SESSION: Duration = Duration::from_secs(24 * 3600);
/// Pruning the whole table is linear; when it is full, do it at most this often.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest JSON body of the account endpoints.
pub(crate) const MAX_ACCOUNT_BODY_BYTES: usize = 64 * 1024;

/// Longest account id, in bytes.
pub const MAX_SUB_BYTES: usize = 128;
/// Longest display name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes (hashing cost grows with it).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most document patterns one account may have.
pub const MAX_DOC_PATTERNS: usize = 64;
/// Longest document pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 512;

/// The hash names that are not accounts are checked against: Argon2id with the default
/// parameters (a test checks they match), of a random password nobody knows.
const DUMMY_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$li6IBelavxHOb7DA+/cUIA$zNww34GbLejICowh5Q+6mSv2447qQUSTW3nXrWyPNCo";

/// Settings of sign-in.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Lifetime of the tokens `POST /api/login` and refresh return.
    pub login_token_ttl: Duration,
    /// Window over which failed sign-ins are counted.
    pub failure_window: Duration,
    /// Failed sign-ins per account in the window before it is refused (429).
    pub max_failures_per_account: u32,
    /// Failed sign-ins per client address in the window before it is refused (429).
    pub max_failures_per_address: u32,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            login_token_ttl: DEFAULT_LOGIN_TOKEN_TTL,
            failure_window: DEFAULT_LOGIN_FAILURE_WINDOW,
            max_failures_per_account: DEFAULT_MAX_FAILURES_PER_ACCOUNT,
            max_failures_per_address: DEFAULT_MAX_FAILURES_PER_ADDRESS,
        }
    }
}

/// Why an account operation was refused. Each maps to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Wrong password or no such account; deliberately the same answer for both.
    #[error("bad username or password (account {account:?}, address {address})")]
    BadCredentials {
        /// The name tried (cut to `MAX_SUB_BYTES`).
        account: String,
        /// The client address.
        address: IpAddr,
    },
    /// Too many failures for the account or from the address.
    #[error(
        "too many failed sign-ins for account {account:?} or from address {address}; retry in {} s",
        retry_after.as_secs()
    )]
    TooManyAttempts {
        /// The name tried.
        account: String,
        /// The client address.
        address: IpAddr,
        /// When the oldest counted failure leaves the window.
        retry_after: Duration,
    },
    /// Every hashing slot and queue place is taken.
    #[error("too many sign-ins in progress; retry shortly")]
    Busy,
    /// A token of an identity provider: refresh it there.
    #[error("only tokens this server signed can be refreshed here")]
    NotRefreshable,
    /// The sign-in this token descends from is older than `MAX_LOGIN_SESSION`.
    #[error("this session is too old to renew; sign in again")]
    SessionTooOld,
    /// The token's account no longer exists.
    #[error("the account {0:?} does not exist")]
    UnknownAccount(String),
    /// `DELETE /api/users/{sub}` of an account that does not exist.
    #[error("no user {0:?}")]
    UserNotFound(String),
    /// A field of an account is invalid.
    #[error("{0}")]
    BadUser(String),
    /// The body is not the JSON the endpoint takes.
    #[error("bad request body: {0}")]
    BadJson(String),
}

impl AccountError {
    /// The status and the stable error code of the JSON body.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AccountError::BadCredentials { .. } => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            AccountError::TooManyAttempts { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
            }
            AccountError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "login_busy"),
            AccountError::NotRefreshable => (StatusCode::BAD_REQUEST, "not_refreshable"),
            AccountError::UnknownAccount(_) => (StatusCode::UNAUTHORIZED, "unknown_account"),
            AccountError::SessionTooOld => (StatusCode::UNAUTHORIZED, "session_expired"),
            AccountError::UserNotFound(_) => (StatusCode::NOT_FOUND, "user_not_found"),
            AccountError::BadUser(_) => (StatusCode::BAD_REQUEST, "bad_user"),
            AccountError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
        }
    }

    /// The `Retry-After` of a 429 or 503, in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AccountError::TooManyAttempts { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            AccountError::Busy => Some(1),
            _ => None,
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(error: AccountError) -> Self {
        ApiError::Account(error)
    }
}

/// Accounts, sign-in and the hashing budget. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Accounts {
    inner: Arc<AccountsInner>,
}

struct AccountsInner {
    store: Arc<Store>,
    config: AccountConfig,
    hashing: Hashing,
    limiter: LoginLimiter,
}

impl Accounts {
    pub(crate) fn new(store: Arc<Store>, config: AccountConfig) -> Accounts {
        let limiter = LoginLimiter::new(&config);
        Accounts {
            inner: Arc::new(AccountsInner {
                store,
                config,
                hashing: Hashing::new(),
                limiter,
            }),
        }
    }

    /// Runs `operation` on the store in a blocking task.
    async fn with_store<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Store) -> Result<T, tandem_store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || operation(&store))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|error| ApiError::from_store(&error, "account store"))
    }
}

/// The CPU budget for password hashing: a bounded queue in front of a few slots.
struct Hashing {
    /// Taken without waiting for the whole time a request wants to hash; bounds the queue.
    queue: Arc<Semaphore>,
    /// Taken (waiting) for the hash itself, and moved into the blocking task so it is held
    /// until the hash finishes even if the request is dropped meanwhile.
    slots: Arc<Semaphore>,
}

impl Hashing {
    fn new() -> Hashing {
        Hashing {
            queue: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES + MAX_QUEUED_HASHES)),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _queued = self
            .queue
            .clone()
            .try_acquire_owned()
            .map_err(|_| AccountError::Busy)?;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|_| ApiError::Internal)
    }
}

/// Hashes `password` with Argon2id (default parameters, random 16-byte salt) into a PHC string.
/// Blocking: ~40 ms of one core.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("Argon2 with default parameters hashes any password within MAX_PASSWORD_BYTES")
        .to_string()
}

/// Whether `password` matches the PHC string `hash`. Blocking, as long as hashing. A hash that
/// does not parse matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Failed sign-ins per account and per address over a sliding window.
///
/// A hand-written sliding log in one std mutex rather than `governor`: we count *failures* and
/// reset an account's count on success, which a token bucket (governor's GCRA) does not offer,
/// and a `Retry-After` exact to the second falls out of the oldest timestamp. Each key keeps at
/// most its limit of timestamps, and the table at most [`MAX_TRACKED_KEYS`] keys, so memory is
/// bounded. The lock is never held across an `.await`; the work under it is O(limit), plus an
/// occasional prune.
struct LoginLimiter {
    window: Duration,
    max_per_account: u32,
    max_per_address: u32,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    failures: HashMap<LimitKey, VecDeque<Instant>>,
    /// Attempts admitted by `check` whose password is still being verified. They count against
    /// the limits, so a burst of concurrent guesses cannot all pass the check before the first
    /// failure is recorded. At most the number of requests in flight (bounded by the hashing
    /// queue); a key leaves when its count returns to zero.
    pending: HashMap<LimitKey, u32>,
    last_prune: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Account(String),
    Address(IpAddr),
}

impl LoginLimiter {
    fn new(config: &AccountConfig) -> LoginLimiter {
        LoginLimiter {
            window: config.failure_window,
            max_per_account: config.max_failures_per_account.max(1),
            max_per_address: config.max_failures_per_address.max(1),
            state: Mutex::new(LimiterState {
                failures: HashMap::new(),
                pending: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    fn keys(account: &str, address: IpAddr) -> [(LimitKey, usize); 2] {
        [
            (LimitKey::Account(account.to_owned()), 0),
            (LimitKey::Address(crate::listener::client_key(address)), 1),
        ]
    }

    /// Admits one attempt (counted as pending until [`Attempt`] is dropped or fails), or
    /// `Err(retry_after)` when the account or the address is over its limit, attempts in flight
    /// included.
    fn check(&self, account: &str, address: IpAddr, now: Instant) -> Result<Attempt<'_>, Duration> {
        let limits = [self.max_per_account, self.max_per_address];
        let mut guard = self.state.lock().expect("limiter lock is never poisoned");
        let state = &mut *guard;
        let mut retry_after = Duration::ZERO;
        let mut untracked = false;
        for (key, idx) in Self::keys(account, address) {
            let in_flight = state.pending.get(&key).copied().unwrap_or(0) as usize;
            match state.failures.get_mut(&key) {
                Some(times) => {
                    expire(times, now, self.window);
                    if times.len() + in_flight >= limits[idx] as usize {
                        let oldest = times.front().copied().unwrap_or(now);
                        retry_after = retry_after
                            .max((oldest + self.window).saturating_duration_since(now))
                            .max(Duration::from_secs(1));
                    }
                }
                None if in_flight >= limits[idx] as usize => {
                    // Only attempts in flight so far: the first answer comes within seconds.
                    retry_after = retry_after.max(Duration::from_secs(1));
                }
                None => untracked = true,
            }
        }
        let mut state = guard;
        if untracked && state.failures.len() >= MAX_TRACKED_KEYS {
            self.prune(&mut state, now);
            if state.failures.len() >= MAX_TRACKED_KEYS {
                retry_after = retry_after.max(PRUNE_INTERVAL);
            }
        }
        if retry_after > Duration::ZERO {
            return Err(retry_after);
        }
        for (key, _) in Self::keys(account, address) {
            *state.pending.entry(key).or_default() += 1;
        }
        Ok(Attempt {
            limiter: self,
            account: account.to_owned(),
            address,
        })
    }

    /// Ends one pending attempt of `check`.
    fn release(&self, account: &str, address: IpAddr) {
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        for (key, _) in Self::keys(account, address) {
            if let Some(count) = state.pending.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.pending.remove(&key);
                }
            }
        }
    }

    fn record_failure(&self, account: &str, address: IpAddr, now: Instant) {
        let limits = [self.max_per_account, self.max_per_address];
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        for (key, idx) in Self::keys(account, address) {
            let full = state.failures.len() >= MAX_TRACKED_KEYS;
            if full && !state.failures.contains_key(&key) {
                // `check` refuses untracked keys while the table is full.
                continue;
            }
            let times = state.failures.entry(key).or_default();
            expire(times, now, self.window);
            times.push_back(now);
            // Only the newest `limit` failures matter for the decision.
            while times.len() > limits[idx] as usize {
                times.pop_front();
            }
        }
    }

    fn reset_account(&self, account: &str) {
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        state
            .failures
            .remove(&LimitKey::Account(account.to_owned()));
    }

    fn prune(&self, state: &mut LimiterState, now: Instant) {
        if state
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_INTERVAL)
        {
            return;
        }
        state.last_prune = Some(now);
        let window = self.window;
        state.failures.retain(|_, times| {
            expire(times, now, window);
            !times.is_empty()
        });
    }
}

/// One sign-in attempt admitted by [`LoginLimiter::check`]: pending until dropped. A failed
/// attempt is recorded with [`Attempt::failed`]; any other ending (success, a storage error, a
/// dropped request) only releases it.
struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    account: String,
    address: IpAddr,
}

impl Attempt<'_> {
    /// Records this attempt as a failure (and releases it).
    fn failed(self, now: Instant) {
        self.limiter
            .record_failure(&self.account, self.address, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.limiter.release(&self.account, self.address);
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|first| now.saturating_duration_since(*first) >= window)
    {
        times.pop_front();
    }
}

/// Checks an account id: 1 to [`MAX_SUB_BYTES`] ASCII letters, digits and `.`, `_`, `@`, `-`,
/// starting with a letter or digit, so it is safe in a URL path, a log line and a file name.
pub fn validate_sub(sub: &str) -> Result<(), String> {
    let valid_chars = sub
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'@' | b'-'));
    let starts_well = sub
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if sub.len() > MAX_SUB_BYTES || !valid_chars || !starts_well {
        return Err(format!(
            "user name must be 1 to {MAX_SUB_BYTES} letters, digits, '.', '_', '@' or '-', \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a display name: at most [`MAX_NAME_BYTES`] bytes, nothing `name.rs` forbids
/// (control characters, direction overrides, line separators).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES || crate::name::has_forbidden(name) {
        return Err(format!(
            "display name must be at most {MAX_NAME_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// Checks a new password: [`MIN_PASSWORD_CHARS`] characters to [`MAX_PASSWORD_BYTES`] bytes.
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters and at most \
             {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Checks document patterns: at most [`MAX_DOC_PATTERNS`], each 1 to [`MAX_PATTERN_BYTES`]
/// bytes without control characters.
pub fn validate_docs(docs: &BTreeMap<String, Role>) -> Result<(), String> {
    if docs.len() > MAX_DOC_PATTERNS {
        return Err(format!("at most {MAX_DOC_PATTERNS} document patterns"));
    }
    for pattern in docs.keys() {
        if pattern.is_empty()
            || pattern.len() > MAX_PATTERN_BYTES
            || pattern.chars().any(char::is_control)
        {
            return Err(format!(
                "document pattern {pattern:?} must be 1 to {MAX_PATTERN_BYTES} bytes without \
                 control characters"
            ));
        }
    }
    Ok(())
}

/// The name of a role as stored and sent: `read`, `write`, `admin`.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Write => "write",
        Role::Admin => "admin",
    }
}

/// A role from its name.
pub fn parse_role(name: &str) -> Option<Role> {
    match name {
        "read" => Some(Role::Read),
        "write" => Some(Role::Write),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// The roles of a stored account; a role name this build does not know is an error, so a stored
/// typo never silently grants or removes access.
fn record_docs(user: &UserRecord) -> Result<BTreeMap<String, Role>, ApiError> {
    user.docs
        .iter()
        .map(|(pattern, role)| match parse_role(role) {
            Some(role) => Ok((pattern.clone(), role)),
            None => {
                tracing::error!(account = %user.sub, role, "stored account has an unknown role");
                Err(ApiError::Internal)
            }
        })
        .collect()
}

/// A stored account from validated fields.
pub fn new_record(
    sub: &str,
    name: Option<&str>,
    password_hash: String,
    docs: &BTreeMap<String, Role>,
    admin: bool,
    created_ms: u64,
) -> UserRecord {
    UserRecord {
        sub: sub.to_owned(),
        name: name.unwrap_or(sub).to_owned(),
        password_hash,
        docs: docs
            .iter()
            .map(|(pattern, role)| (pattern.clone(), role_name(*role).to_owned()))
            .collect(),
        admin,
        created_ms,
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Body of `POST /api/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

/// Body of a successful login or refresh.
#[derive(Serialize)]
struct TokenResponse {
    token: String,
    expires_at: u64,
    sub: String,
    name: String,
}

/// One account in `GET /api/users` and the answer of `PUT /api/users/{sub}`; never the hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    /// The account id.
    pub sub: String,
    /// The display name.
    pub name: String,
    /// Pattern to role name.
    pub docs: BTreeMap<String, String>,
    /// May manage accounts.
    pub admin: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl From<UserRecord> for UserView {
    fn from(user: UserRecord) -> Self {
        UserView {
            sub: user.sub,
            name: user.name,
            docs: user.docs,
            admin: user.admin,
            created_ms: user.created_ms,
        }
    }
}

/// Body of `PUT /api/users/{sub}`. Absent fields keep their current value (new accounts: the
/// sub as name, no documents, not admin); a new account needs a password.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PutUserRequest {
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Pattern to role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<BTreeMap<String, Role>>,
    /// May manage accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = crate::http::body_within_limit(body, MAX_ACCOUNT_BODY_BYTES)?;
    serde_json::from_slice(&body).map_err(|error| AccountError::BadJson(error.to_string()).into())
}

/// `GET /api/auth`: whether clients need to sign in.
pub(crate) async fn auth_info(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mode = state.auth.mode();
    let login = match mode {
        AuthMode::Jwt => true,
        AuthMode::None => {
            state
                .accounts
                .with_store(|store| store.count_users())
                .await?
                > 0
        }
    };
    let mode = match mode {
        AuthMode::None => "none",
        AuthMode::Jwt => "jwt",
    };
    Ok(axum::Json(serde_json::json!({ "mode": mode, "login": login })).into_response())
}

/// `POST /api/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: LoginRequest = parse_json(body)?;
    let accounts = &state.accounts.inner;
    // The client through trusted proxies, so a proxy's clients are limited one by one.
    let address = client.ip;
    // Names longer than any account are cut, which keeps the limiter's keys bounded.
    let account: String = truncate(&request.username, MAX_SUB_BYTES).to_owned();
    let attempt = match accounts.limiter.check(&account, address, Instant::now()) {
        Ok(attempt) => attempt,
        Err(retry_after) => {
            return Err(AccountError::TooManyAttempts {
                account,
                address,
                retry_after,
            }
            .into());
        }
    };
    let user = if validate_sub(&request.username).is_ok() {
        let sub = request.username.clone();
        state
            .accounts
            .with_store(move |store| store.get_user(&sub))
            .await?
    } else {
        None
    };
    let hash = user
        .as_ref()
        .map_or(DUMMY_PASSWORD_HASH.to_owned(), |user| {
            user.password_hash.clone()
        });
    let password = request.password;
    let matches = accounts
        .hashing
        .run(move || verify_password(&password, &hash))
        .await?;
    let Some(user) = user.filter(|_| matches) else {
        attempt.failed(Instant::now());
        return Err(AccountError::BadCredentials { account, address }.into());
    };
    drop(attempt);
    accounts.limiter.reset_account(&account);
    info!(account = %user.sub, %address, "signed in");
    let session = unix_now();
    Ok(axum::Json(token_for(&state.auth, &accounts.config, &user, session)?).into_response())
}

/// `POST /api/token/refresh`: a fresh token for the account of a token this server signed.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // It takes no body; one over the limit is refused like on every route, never ignored.
    crate::http::body_within_limit(body, MAX_ACCOUNT_BODY_BYTES)?;
    let token = token_from(&headers, &uri).ok_or(ApiError::Auth(AuthError::MissingToken))?;
    let claims = match state.auth.verify_own(&token) {
        Ok(claims) => claims,
        // Valid, but from an identity provider: the provider refreshes it.
        Err(_) if state.auth.verify(&token).is_ok() => {
            return Err(AccountError::NotRefreshable.into());
        }
        Err(error) => return Err(ApiError::Auth(error)),
    };
    // Only sign-in sessions are renewed, and not forever: a minted token (narrow on purpose)
    // cannot be turned into its account's full rights, and a stolen session dies with age.
    let Some(session) = claims.session else {
        return Err(AccountError::NotRefreshable.into());
    };
    if unix_now().saturating_sub(session) > MAX_LOGIN_SESSION.as_secs() {
        return Err(AccountError::SessionTooOld.into());
    }
    let sub = claims.sub.clone();
    let user = state
        .accounts
        .with_store(move |store| store.get_user(&sub))
        .await?
        .ok_or(AccountError::UnknownAccount(claims.sub))?;
    let config = &state.accounts.inner.config;
    Ok(axum::Json(token_for(&state.auth, config, &user, session)?).into_response())
}

fn token_for(
    auth: &Auth,
    config: &AccountConfig,
    user: &UserRecord,
    session: u64,
) -> Result<TokenResponse, ApiError> {
    let now = unix_now();
    let expires_at = now.saturating_add(config.login_token_ttl.as_secs().max(1));
    let claims = Claims {
        sub: user.sub.clone(),
        name: Some(user.name.clone()).filter(|name| !name.trim().is_empty()),
        docs: record_docs(user)?,
        admin: user.admin,
        exp: expires_at,
        nbf: None,
        iat: Some(now),
        iss: None,
        session: Some(session),
    };
    Ok(TokenResponse {
        token: auth.mint(&claims),
        expires_at,
        name: claims.identity().name.to_string(),
        sub: claims.sub,
    })
}

/// Allows the account API to administrators; with authentication off, to everyone.
fn require_admin(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let claims = crate::http::request_claims(state, headers, uri)?;
    match claims {
        Some(claims) if !claims.admin => Err(ApiError::Auth(AuthError::NotAdmin)),
        _ => Ok(()),
    }
}

/// `GET /api/users`.
pub(crate) async fn list_users(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let users = state
        .accounts
        .with_store(|store| store.list_users())
        .await?;
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(axum::Json(serde_json::json!({ "users": users })).into_response())
}

/// `PUT /api/users/{sub}`: creates or changes an account. 201 when created, 200 when changed.
pub(crate) async fn put_user(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let sub = sub_from(&uri)?;
    let request: PutUserRequest = parse_json(body)?;
    let bad = |message: String| ApiError::from(AccountError::BadUser(message));
    if let Some(name) = &request.name {
        validate_name(name).map_err(bad)?;
    }
    if let Some(password) = &request.password {
        validate_password(password).map_err(bad)?;
    }
    if let Some(docs) = &request.docs {
        validate_docs(docs).map_err(bad)?;
    }
    let existing = {
        let sub = sub.clone();
        state
            .accounts
            .with_store(move |store| store.get_user(&sub))
            .await?
    };
    let password_hash = match (request.password, &existing) {
        (Some(password), _) => {
            state
                .accounts
                .inner
                .hashing
                .run(move || hash_password(&password))
                .await?
        }
        (None, Some(existing)) => existing.password_hash.clone(),
        (None, None) => return Err(bad("a new user needs a password".into())),
    };
    let docs = match (request.docs, &existing) {
        (Some(docs), _) => docs,
        (None, Some(existing)) => record_docs(existing)?,
        (None, None) => BTreeMap::new(),
    };
    let name = request
        .name
        .or_else(|| existing.as_ref().map(|user| user.name.clone()));
    let admin = request
        .admin
        .or(existing.as_ref().map(|user| user.admin))
        .unwrap_or(false);
    let created_ms = existing
        .as_ref()
        .map_or_else(unix_now_ms, |user| user.created_ms);
    let record = new_record(
        &sub,
        name.as_deref(),
        password_hash,
        &docs,
        admin,
        created_ms,
    );
    let view = UserView::from(record.clone());
    state
        .accounts
        .with_store(move |store| store.put_user(&record))
        .await?;
    let created = existing.is_none();
    info!(account = %sub, created, admin, n_patterns = docs.len(), "account saved");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

/// `DELETE /api/users/{sub}`.
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers, &uri)?;
    let sub = sub_from(&uri)?;
    let removed = {
        let sub = sub.clone();
        state
            .accounts
            .with_store(move |store| store.remove_user(&sub))
            .await?
    };
    if !removed {
        return Err(AccountError::UserNotFound(sub).into());
    }
    warn!(account = %sub, "account removed");
    Ok(axum::Json(serde_json::json!({ "removed": sub })).into_response())
}

/// The account id of `/api/users/{sub}`, percent-decoded and validated.
fn sub_from(uri: &Uri) -> Result<String, ApiError> {
    let raw = uri
        .path()
        .strip_prefix("/api/users/")
        .ok_or(ApiError::NotFound)?;
    let sub = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| AccountError::BadUser("user name is not UTF-8".into()))?;
    validate_sub(&sub).map_err(AccountError::BadUser)?;
    Ok(sub.into_owned())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check`, with the attempt released at once (the unit tests record outcomes themselves).
    fn admit(
        limiter: &LoginLimiter,
        account: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        limiter.check(account, address, now).map(drop)
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let limiter = LoginLimiter::new(&AccountConfig {
            max_failures_per_account: 3,
            ..AccountConfig::default()
        });
        let now = Instant::now();
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        // Three concurrent guesses are admitted; the fourth waits for their outcome.
        let in_flight: Vec<Attempt<'_>> = (0..3)
            .map(|_| limiter.check("ada", address, now).expect("admitted"))
            .collect();
        assert!(limiter.check("ada", address, now).is_err());
        for attempt in in_flight {
            attempt.failed(now);
        }
        assert!(
            limiter.check("ada", address, now).is_err(),
            "three failures recorded"
        );
        // A success (or an error) only releases: the count goes back down.
        let limiter = LoginLimiter::new(&AccountConfig::default());
        drop(limiter.check("bob", address, now).expect("admitted"));
        assert!(limiter.state.lock().unwrap().pending.is_empty());
    }

    fn limiter(per_account: u32, per_address: u32) -> LoginLimiter {
        LoginLimiter::new(&AccountConfig {
            failure_window: Duration::from_secs(60),
            max_failures_per_account: per_account,
            max_failures_per_address: per_address,
            ..AccountConfig::default()
        })
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_account_is_refused_after_its_failures_until_the_oldest_expires() {
        let limiter = limiter(3, 100);
        let start = Instant::now();
        for second in 0..3 {
            let now = start + Duration::from_secs(second);
            assert_eq!(admit(&limiter, "ada", HOME, now), Ok(()));
            limiter.record_failure("ada", HOME, now);
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(
            admit(&limiter, "ada", AWAY, now),
            Err(Duration::from_secs(50)),
            "the account is limited from any address"
        );
        assert_eq!(admit(&limiter, "bob", HOME, now), Ok(()));
        assert_eq!(
            admit(&limiter, "ada", HOME, start + Duration::from_secs(60)),
            Ok(()),
            "one failure left the window"
        );
    }

    #[test]
    fn an_address_is_refused_across_accounts() {
        let limiter = limiter(100, 2);
        let now = Instant::now();
        limiter.record_failure("ada", HOME, now);
        limiter.record_failure("bob", HOME, now);
        assert!(admit(&limiter, "carol", HOME, now).is_err());
        assert_eq!(admit(&limiter, "carol", AWAY, now), Ok(()));
    }

    #[test]
    fn success_resets_the_account_but_not_the_address() {
        let limiter = limiter(2, 3);
        let now = Instant::now();
        limiter.record_failure("ada", HOME, now);
        limiter.record_failure("ada", HOME, now);
        assert!(admit(&limiter, "ada", AWAY, now).is_err());
        limiter.reset_account("ada");
        assert_eq!(admit(&limiter, "ada", AWAY, now), Ok(()));
        limiter.record_failure("bob", HOME, now);
        assert!(
            admit(&limiter, "ada", HOME, now).is_err(),
            "address keeps 3"
        );
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_bit_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            crate::listener::client_key(a),
            crate::listener::client_key(b)
        );
        assert_ne!(
            crate::listener::client_key(a),
            crate::listener::client_key(other)
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(crate::listener::client_key(mapped), HOME);
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_prunes_expired_ones() {
        let limiter = limiter(5, 5);
        let start = Instant::now();
        {
            let mut state = limiter.state.lock().unwrap();
            for n in 0..MAX_TRACKED_KEYS {
                state
                    .failures
                    .insert(LimitKey::Account(format!("u{n}")), VecDeque::from([start]));
            }
        }
        assert!(admit(&limiter, "new", HOME, start).is_err(), "fails closed");
        assert_eq!(
            admit(&limiter, "u1", HOME, start + Duration::from_secs(61)),
            Ok(()),
            "after the window everything expired and was pruned"
        );
        assert!(limiter.state.lock().unwrap().failures.len() < 10);
    }

    #[test]
    fn passwords_verify_and_the_dummy_hash_uses_the_default_parameters() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("anything", "not a phc string"));
        // Same cost for unknown names as for real accounts.
        let params_of = |phc: &str| phc.split('$').nth(3).map(str::to_owned);
        assert_eq!(params_of(DUMMY_PASSWORD_HASH), params_of(&hash));
        assert!(!verify_password("", DUMMY_PASSWORD_HASH));
    }

    #[test]
    fn account_fields_are_validated() {
        for good in ["ada", "ada.lovelace@example.org", "a-b_c", "7"] {
            assert_eq!(validate_sub(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_SUB_BYTES + 1);
        for bad in ["", ".ada", "ada lovelace", "ada/x", "ädа", long.as_str()] {
            assert!(validate_sub(bad).is_err(), "{bad}");
        }
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_name("Ada\nLovelace").is_err());
        assert!(validate_name("Ada\u{202e}ecalevol").is_err());
        assert!(validate_name("Ada \u{1f469}\u{200d}\u{1f4bb}").is_ok());
        let docs = BTreeMap::from([(String::new(), Role::Read)]);
        assert!(validate_docs(&docs).is_err());
        assert_eq!(truncate("héllo", 2), "h");
    }
}
