//! Accounts for teams without an identity provider: the service behind password sign-in,
//! token refresh and the admin API over the `users` table of `tandem-store` (the handlers are
//! `api/accounts.rs`).
//!
//! Besides sign-in, [`Accounts::verify_basic`] checks the credentials of HTTP Basic (WebDAV):
//! an app password of the account (`app_password.rs`) or the account password, with recently
//! verified credentials cached (`credential_cache.rs`) so that a client's every request does
//! not pay an Argon2 hash. Sign-in takes the account password only.
//!
//! A successful sign-in yields a token signed with the server's own key (`Auth::mint`), with
//! the account's roles as its claims; from then on it is an ordinary token (`auth.rs`). A refresh
//! re-reads the account, so removing an account or changing its roles takes effect at the next
//! refresh at the latest.
//!
//! Invariants:
//! - Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//!   lane, the OWASP recommendation) in `spawn_blocking`, at most [`MAX_CONCURRENT_HASHES`] at a
//!   time and at most [`MAX_QUEUED_HASHES`] waiting, so a flood of sign-ins cannot take more than
//!   two cores or queue without bound.
//! - A name that is not an account is checked against [`DUMMY_PASSWORD_HASH`], so the answer
//!   takes as long as for a real account and says the same thing: which accounts exist does not
//!   leak through sign-in.
//! - Failed attempts are limited per account and per client address (`limiter.rs`); over a
//!   limit, the request is refused before any hashing. In cluster mode the failures are also
//!   counted in the shared database (`FailureLog`), and the limits hold for all nodes together.
//! - HTTP Basic with the account password goes through the same limiter and hashing budget as
//!   sign-in; a failed Basic attempt counts as a failed sign-in. A correct app password is
//!   accepted without either (it cannot be guessed, and costs one SHA-256).
//! - Every change of an account here (password, app passwords, removal) drops its cached
//!   credentials at once; and a cached hit re-reads the account and checks that what was
//!   verified still holds, so changes made by another node or the offline CLI count too.
//! - Nothing here logs a password, an app password's secret, a hash or a token.
//! - This is a service: it returns [`AccountError`] and never names HTTP or the API layer.
//!
//! `command/` drives the same store operations from the command line.

mod app_password;
mod credential_cache;
mod limiter;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use tandem_store::meta::{FailureLog, UserTable};
use tandem_store::{StoreError, UserRecord};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::auth::{Claims, Role};
pub use app_password::{
    APP_PASSWORD_PREFIX, AddAppPasswordRequest, AppPasswordView, MAX_APP_PASSWORDS,
    MAX_LABEL_BYTES, NewAppPassword, new_app_password, validate_label,
};
pub(crate) use app_password::{
    AddRefused, add_to as add_app_password_to, remove_from as remove_app_password_from,
};
pub use credential_cache::{CREDENTIAL_CACHE_TTL, MAX_CACHED_CREDENTIALS};
use credential_cache::{CredentialCache, Via};
use limiter::LoginLimiter;
use tandem_hub::clock::{now_ms, now_s};

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
/// How long after a sign-in its tokens may still be refreshed: a working day and a night, so an
/// open tab survives until the next morning but a stolen token does not live forever.
const MAX_LOGIN_SESSION: Duration = Duration::from_secs(24 * 3600);
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
/// How stale an app password's "last used" time may get before a use writes it again: an
/// hour, so a busy client costs one account write an hour, not one a request.
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(3600);

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

/// Why an account operation was refused. `api/error.rs` maps each to a status and a stable code.
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
    /// The account has [`MAX_APP_PASSWORDS`] app passwords already.
    #[error("user {0:?} has {MAX_APP_PASSWORDS} app passwords already; remove one first")]
    TooManyAppPasswords(String),
    /// No app password of that id for that account.
    #[error("user {sub:?} has no app password {id:?}")]
    AppPasswordNotFound {
        /// The account.
        sub: String,
        /// The id asked for.
        id: String,
    },
    /// The store failed or is read-only.
    #[error("account store: {0}")]
    Store(#[source] StoreError),
    /// A blocking task failed, or a stored account holds a role this build does not know.
    #[error("internal error")]
    Internal,
}

/// Accounts, sign-in and the hashing budget. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Accounts {
    inner: Arc<AccountsInner>,
}

struct AccountsInner {
    store: Arc<dyn UserTable>,
    /// Cluster mode: the failures every node counts, checked after this node's own limiter.
    shared_failures: Option<Arc<dyn FailureLog>>,
    config: AccountConfig,
    hashing: Hashing,
    limiter: LoginLimiter,
    /// HTTP Basic credentials verified recently.
    basic_cache: CredentialCache,
}

impl Accounts {
    /// The service over `store`; `shared_failures` (cluster mode) adds the failures counted by
    /// every node to this node's.
    pub(crate) fn new(
        store: Arc<dyn UserTable>,
        shared_failures: Option<Arc<dyn FailureLog>>,
        config: AccountConfig,
    ) -> Accounts {
        let limiter = LoginLimiter::new(&config);
        Accounts {
            inner: Arc::new(AccountsInner {
                store,
                shared_failures,
                config,
                hashing: Hashing::new(),
                limiter,
                basic_cache: CredentialCache::new(CREDENTIAL_CACHE_TTL, MAX_CACHED_CREDENTIALS),
            }),
        }
    }

    /// Runs `operation` on the shared failure log, if there is one, in a blocking task.
    async fn with_failures<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&dyn FailureLog) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Option<T>, AccountError> {
        let Some(log) = self.inner.shared_failures.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || operation(&*log))
            .await
            .map_err(|_| AccountError::Internal)?
            .map(Some)
            .map_err(AccountError::Store)
    }

    /// Runs `operation` on the store in a blocking task.
    async fn with_store<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&dyn UserTable) -> Result<T, tandem_store::StoreError> + Send + 'static,
    ) -> Result<T, AccountError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || operation(&*store))
            .await
            .map_err(|_| AccountError::Internal)?
            .map_err(AccountError::Store)
    }

    /// Whether any account exists.
    pub(crate) async fn any_users(&self) -> Result<bool, AccountError> {
        Ok(self.with_store(|store| store.count_users()).await? > 0)
    }

    /// Every account.
    pub(crate) async fn list_users(&self) -> Result<Vec<UserRecord>, AccountError> {
        self.with_store(|store| store.list_users()).await
    }

    /// Checks a password sign-in from `address` (the client through trusted proxies, so a
    /// proxy's clients are limited one by one) and returns the account.
    pub(crate) async fn sign_in(
        &self,
        username: &str,
        password: String,
        address: IpAddr,
    ) -> Result<UserRecord, AccountError> {
        let user = self.check_password(username, password, address).await?;
        info!(account = %user.sub, %address, "signed in");
        Ok(user)
    }

    /// Checks the credentials of HTTP Basic from `address` and returns the account: `secret`
    /// is one of the account's app passwords, or its password (checked as [`Self::sign_in`]
    /// does: Argon2, limited per account and address, a failure counted as a failed sign-in).
    /// Credentials verified in the last [`CREDENTIAL_CACHE_TTL`] are not hashed again; the
    /// account is re-read on every call, so its roles are current and a changed password, a
    /// revoked app password or a removed account is refused at once.
    pub(crate) async fn verify_basic(
        &self,
        name: &str,
        secret: String,
        address: IpAddr,
    ) -> Result<UserRecord, AccountError> {
        let cache = &self.inner.basic_cache;
        let key = cache.key_of(name, &secret);
        if let Some((sub, via)) = cache.get(&key, Instant::now()) {
            let current = self.with_store(move |store| store.get_user(&sub)).await?;
            match current.filter(|user| via.holds_for(user)) {
                Some(user) => return Ok(user),
                // Changed since: verify afresh (and fail, unless the secret is valid some
                // other way now).
                None => cache.remove(&key),
            }
        }
        if app_password::looks_like_app_password(&secret) && validate_sub(name).is_ok() {
            let sub = name.to_owned();
            let user = self.with_store(move |store| store.get_user(&sub)).await?;
            let secret_sha256 = app_password::secret_sha256(&secret);
            let found = user.as_ref().and_then(|user| {
                app_password::find(user, &secret_sha256)
                    .map(|app| (app.id.clone(), app.last_used_ms))
            });
            if let (Some(user), Some((id, last_used_ms))) = (user, found) {
                self.note_use(&user.sub, &id, last_used_ms).await;
                let via = Via::AppPassword {
                    id: id.clone(),
                    secret_sha256,
                };
                cache.insert(key, &user.sub, via, Instant::now());
                debug!(account = %user.sub, app_password = %id, %address, "basic credentials verified");
                return Ok(user);
            }
            // Not an app password of the account: maybe its password has this form. Checking
            // it also counts the failure.
        }
        let user = self.check_password(name, secret, address).await?;
        cache.insert(key, &user.sub, Via::password(&user), Instant::now());
        debug!(account = %user.sub, %address, "basic credentials verified by password");
        Ok(user)
    }

    /// Writes the app password's "last used" time when it is older than
    /// [`LAST_USED_RESOLUTION`]. A failure (a read-only store) is logged and the request goes on.
    async fn note_use(&self, sub: &str, id: &str, last_used_ms: u64) {
        let now = now_ms();
        if now.saturating_sub(last_used_ms) < LAST_USED_RESOLUTION.as_millis() as u64 {
            return;
        }
        let (sub, id) = (sub.to_owned(), id.to_owned());
        let res = self
            .with_store(move |store| {
                store.modify_user(&sub, &mut |current| {
                    let mut user = current?.clone();
                    let app = user.app_passwords.iter_mut().find(|app| app.id == id)?;
                    app.last_used_ms = now;
                    Some(user)
                })
            })
            .await;
        if let Err(error) = res {
            warn!(%error, "recording when an app password was last used");
        }
    }

    /// The account password check behind sign-in and HTTP Basic: limiter, Argon2, failures.
    async fn check_password(
        &self,
        username: &str,
        password: String,
        address: IpAddr,
    ) -> Result<UserRecord, AccountError> {
        let accounts = &self.inner;
        // Names longer than any account are cut, which keeps the limiter's keys bounded.
        let account: String = truncate(username, MAX_SUB_BYTES).to_owned();
        let attempt = match accounts.limiter.check(&account, address, Instant::now()) {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                return Err(AccountError::TooManyAttempts {
                    account,
                    address,
                    retry_after,
                });
            }
        };
        let shared_keys = limiter::shared_keys(&account, address);
        let window_ms = accounts.limiter.window().as_millis() as u64;
        let counts = {
            let keys = shared_keys.clone();
            self.with_failures(move |log| {
                let keys = [keys[0].as_str(), keys[1].as_str()];
                log.failures(&keys, now_ms(), window_ms)
            })
            .await?
        };
        if let Some(retry_after) =
            counts.and_then(|counts| accounts.limiter.shared_verdict(&counts, now_ms()))
        {
            return Err(AccountError::TooManyAttempts {
                account,
                address,
                retry_after,
            });
        }
        let user = if validate_sub(username).is_ok() {
            let sub = username.to_owned();
            self.with_store(move |store| store.get_user(&sub)).await?
        } else {
            None
        };
        let hash = user
            .as_ref()
            .map_or(DUMMY_PASSWORD_HASH.to_owned(), |user| {
                user.password_hash.clone()
            });
        let matches = accounts
            .hashing
            .run(move || verify_password(&password, &hash))
            .await?;
        let Some(user) = user.filter(|_| matches) else {
            attempt.failed(Instant::now());
            let keys = shared_keys;
            let recorded = self
                .with_failures(move |log| {
                    let keys = [keys[0].as_str(), keys[1].as_str()];
                    log.record_failure(&keys, now_ms(), window_ms)
                })
                .await;
            if let Err(error) = recorded {
                // This node's own limiter counted it; the answer stays the same.
                warn!(%error, %account, "recording a failed sign-in in the shared log");
            }
            return Err(AccountError::BadCredentials { account, address });
        };
        drop(attempt);
        accounts.limiter.reset_account(&account);
        let [account_key, _] = shared_keys;
        if let Err(error) = self
            .with_failures(move |log| log.clear_failures(&account_key))
            .await
        {
            warn!(%error, %account, "clearing failed sign-ins in the shared log");
        }
        Ok(user)
    }

    /// The account behind the claims of a token this server signed, if its sign-in session may
    /// still be renewed, with that session's start. Only sign-in sessions are renewed, and not
    /// forever: a minted token (narrow on purpose) cannot be turned into its account's full
    /// rights, and a stolen session dies with age.
    pub(crate) async fn renewable(
        &self,
        claims: Claims,
    ) -> Result<(UserRecord, u64), AccountError> {
        let Some(session) = claims.session else {
            return Err(AccountError::NotRefreshable);
        };
        if now_s().saturating_sub(session) > MAX_LOGIN_SESSION.as_secs() {
            return Err(AccountError::SessionTooOld);
        }
        let sub = claims.sub.clone();
        let user = self
            .with_store(move |store| store.get_user(&sub))
            .await?
            .ok_or(AccountError::UnknownAccount(claims.sub))?;
        Ok((user, session))
    }

    /// The claims of a fresh token for `user`, in the sign-in session that began at `session`.
    pub(crate) fn token_claims(
        &self,
        user: &UserRecord,
        session: u64,
    ) -> Result<Claims, AccountError> {
        let now = now_s();
        let ttl = self.inner.config.login_token_ttl.as_secs().max(1);
        Ok(Claims {
            sub: user.sub.clone(),
            name: Some(user.name.clone()).filter(|name| !name.trim().is_empty()),
            docs: record_docs(user)?,
            admin: user.admin,
            exp: now.saturating_add(ttl),
            nbf: None,
            iat: Some(now),
            iss: None,
            session: Some(session),
        })
    }

    /// Creates or changes the account `sub` (already validated). Returns the stored account and
    /// whether it was created. Absent fields keep their current value; a new account needs a
    /// password.
    pub(crate) async fn put_user(
        &self,
        sub: String,
        request: PutUserRequest,
    ) -> Result<(UserRecord, bool), AccountError> {
        if let Some(name) = &request.name {
            validate_name(name).map_err(AccountError::BadUser)?;
        }
        if let Some(password) = &request.password {
            validate_password(password).map_err(AccountError::BadUser)?;
        }
        if let Some(docs) = &request.docs {
            validate_docs(docs).map_err(AccountError::BadUser)?;
        }
        let existing = {
            let sub = sub.clone();
            self.with_store(move |store| store.get_user(&sub)).await?
        };
        let password_hash = match (request.password, &existing) {
            (Some(password), _) => {
                self.inner
                    .hashing
                    .run(move || hash_password(&password))
                    .await?
            }
            (None, Some(existing)) => existing.password_hash.clone(),
            (None, None) => {
                return Err(AccountError::BadUser("a new user needs a password".into()));
            }
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
            .map_or_else(now_ms, |user| user.created_ms);
        let record = new_record(
            &sub,
            name.as_deref(),
            password_hash,
            &docs,
            admin,
            created_ms,
        );
        // The app passwords are the stored ones at the moment of writing, so that one added or
        // revoked meanwhile is neither lost nor brought back.
        let record = {
            let sub = sub.clone();
            self.with_store(move |store| {
                store.modify_user(&sub, &mut |current| {
                    let mut record = record.clone();
                    record.app_passwords = current
                        .map(|user| user.app_passwords.clone())
                        .unwrap_or_default();
                    Some(record)
                })
            })
            .await?
            .expect("the change always writes")
        };
        self.inner.basic_cache.forget_account(&sub);
        let created = existing.is_none();
        info!(account = %sub, created, admin, n_patterns = docs.len(), "account saved");
        Ok((record, created))
    }

    /// Removes the account `sub`.
    pub(crate) async fn remove_user(&self, sub: String) -> Result<(), AccountError> {
        let removed = {
            let sub = sub.clone();
            self.with_store(move |store| store.remove_user(&sub))
                .await?
        };
        self.inner.basic_cache.forget_account(&sub);
        if !removed {
            return Err(AccountError::UserNotFound(sub));
        }
        warn!(account = %sub, "account removed");
        Ok(())
    }

    /// The app passwords of the account `sub`, oldest first.
    pub(crate) async fn list_app_passwords(
        &self,
        sub: String,
    ) -> Result<Vec<AppPasswordView>, AccountError> {
        let user = {
            let sub = sub.clone();
            self.with_store(move |store| store.get_user(&sub)).await?
        };
        let user = user.ok_or(AccountError::UserNotFound(sub))?;
        Ok(user
            .app_passwords
            .iter()
            .map(AppPasswordView::from)
            .collect())
    }

    /// Makes an app password for the account `sub`; the answer holds its secret, which is
    /// never shown again.
    pub(crate) async fn add_app_password(
        &self,
        sub: String,
        label: String,
    ) -> Result<NewAppPassword, AccountError> {
        validate_label(&label).map_err(AccountError::BadUser)?;
        let (record, secret) = new_app_password(&label, now_ms());
        let view = AppPasswordView::from(&record);
        let outcome = {
            let sub = sub.clone();
            self.with_store(move |store| {
                let mut outcome = Ok(());
                store.modify_user(&sub, &mut |current| {
                    add_app_password_to(current, &record, &mut outcome)
                })?;
                Ok(outcome)
            })
            .await?
        };
        match outcome {
            Ok(()) => {}
            Err(AddRefused::NoSuchUser) => return Err(AccountError::UserNotFound(sub)),
            Err(AddRefused::Full) => return Err(AccountError::TooManyAppPasswords(sub)),
        }
        info!(account = %sub, app_password = %view.id, "app password added");
        Ok(NewAppPassword {
            app_password: view,
            secret,
        })
    }

    /// Revokes the app password `id` of the account `sub`; from the next request on it is
    /// refused.
    pub(crate) async fn remove_app_password(
        &self,
        sub: String,
        id: String,
    ) -> Result<(), AccountError> {
        let (user_found, app_found) = {
            let (sub, id) = (sub.clone(), id.clone());
            self.with_store(move |store| {
                let mut found = (false, false);
                store.modify_user(&sub, &mut |current| {
                    remove_app_password_from(current, &id, &mut found)
                })?;
                Ok(found)
            })
            .await?
        };
        self.inner.basic_cache.forget_account(&sub);
        if !user_found {
            return Err(AccountError::UserNotFound(sub));
        }
        if !app_found {
            return Err(AccountError::AppPasswordNotFound { sub, id });
        }
        warn!(account = %sub, app_password = %id, "app password revoked");
        Ok(())
    }
}

/// The CPU budget for password hashing: a bounded queue in front of a few slots.
struct Hashing {
    /// Taken without waiting for the whole time a request wants to hash; bounds the queue.
    queue: Arc<Semaphore>,
    /// Taken (waiting) for the hash itself, and moved into the blocking task so it is held
    /// until the hash finishes even if the request is dropped meanwhile.
    slots: Arc<Semaphore>,
    /// Hashes started, ever (the tests tell a cached answer from a hashed one by it).
    n_started: std::sync::atomic::AtomicU64,
}

impl Hashing {
    fn new() -> Hashing {
        Hashing {
            queue: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES + MAX_QUEUED_HASHES)),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            n_started: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
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
        self.n_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|_| AccountError::Internal)
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

/// The roles of a stored account; a role name this build does not know is an error, so a stored
/// typo never silently grants or removes access.
fn record_docs(user: &UserRecord) -> Result<BTreeMap<String, Role>, AccountError> {
    user.docs
        .iter()
        .map(|(pattern, role)| match role.parse::<Role>() {
            Ok(role) => Ok((pattern.clone(), role)),
            Err(_) => {
                tracing::error!(account = %user.sub, role, "stored account has an unknown role");
                Err(AccountError::Internal)
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
            .map(|(pattern, role)| (pattern.clone(), role.to_string()))
            .collect(),
        admin,
        created_ms,
        app_passwords: Vec::new(),
    }
}

/// One account in `GET /api/users` and the answer of `PUT /api/users/{sub}`; never the hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
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
#[derive(utoipa::ToSchema)]
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
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;
    use tandem_store::Store;

    const PASSWORD: &str = "correct horse battery staple";
    const ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    /// The service over a real redb file, with the account `ada`; the store too, to change it
    /// behind the service's back as another node or the offline CLI would.
    async fn accounts_with_ada() -> (tempfile::TempDir, Arc<Store>, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.redb")).unwrap());
        let accounts = Accounts::new(store.clone(), None, AccountConfig::default());
        let request = PutUserRequest {
            password: Some(PASSWORD.into()),
            ..PutUserRequest::default()
        };
        accounts.put_user("ada".into(), request).await.unwrap();
        (dir, store, accounts)
    }

    fn hashes(accounts: &Accounts) -> u64 {
        accounts.inner.hashing.n_started.load(Ordering::Relaxed)
    }

    async fn basic(accounts: &Accounts, secret: &str) -> Result<UserRecord, AccountError> {
        accounts.verify_basic("ada", secret.into(), ADDRESS).await
    }

    fn is_bad_credentials(res: &Result<UserRecord, AccountError>) -> bool {
        matches!(res, Err(AccountError::BadCredentials { account, .. }) if account == "ada")
    }

    #[tokio::test]
    async fn basic_hashes_the_password_once_then_answers_from_the_cache() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        let before = hashes(&accounts);
        assert_eq!(basic(&accounts, PASSWORD).await.unwrap().sub, "ada");
        assert_eq!(hashes(&accounts), before + 1);
        for _ in 0..3 {
            assert_eq!(basic(&accounts, PASSWORD).await.unwrap().sub, "ada");
        }
        assert_eq!(hashes(&accounts), before + 1, "hits do not hash");
        // A wrong password is never a hit; it is hashed and refused.
        assert!(is_bad_credentials(
            &basic(&accounts, "correct horse battery stapler").await
        ));
        assert_eq!(hashes(&accounts), before + 2);
        // The cache keeps no secret: only keyed hashes.
        assert_eq!(accounts.inner.basic_cache.len(), 1);
    }

    #[tokio::test]
    async fn app_passwords_pass_basic_without_hashing_but_not_sign_in() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        let added = accounts
            .add_app_password("ada".into(), "laptop".into())
            .await
            .unwrap();
        assert!(added.secret.starts_with(APP_PASSWORD_PREFIX));
        let before = hashes(&accounts);
        assert_eq!(basic(&accounts, &added.secret).await.unwrap().sub, "ada");
        assert_eq!(basic(&accounts, &added.secret).await.unwrap().sub, "ada");
        assert_eq!(hashes(&accounts), before, "an app password costs no Argon2");
        // Its use was noted (once: the second call was a cache hit).
        let listed = accounts.list_app_passwords("ada".into()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_ms.is_some());
        // Another account's name with this secret is refused.
        let res = accounts
            .verify_basic("bob", added.secret.clone(), ADDRESS)
            .await;
        assert!(
            matches!(res, Err(AccountError::BadCredentials { .. })),
            "{res:?}"
        );
        // Sign-in takes the account password only.
        let res = accounts.sign_in("ada", added.secret.clone(), ADDRESS).await;
        assert!(is_bad_credentials(&res), "{res:?}");
    }

    #[tokio::test]
    async fn revoking_an_app_password_refuses_it_at_once_and_failures_are_limited() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        let added = accounts
            .add_app_password("ada".into(), "rclone".into())
            .await
            .unwrap();
        let kept = accounts
            .add_app_password("ada".into(), "phone".into())
            .await
            .unwrap();
        basic(&accounts, &added.secret).await.unwrap();
        basic(&accounts, &kept.secret).await.unwrap();
        accounts
            .remove_app_password("ada".into(), added.app_password.id.clone())
            .await
            .unwrap();
        assert!(is_bad_credentials(&basic(&accounts, &added.secret).await));
        assert_eq!(basic(&accounts, &kept.secret).await.unwrap().sub, "ada");
        let res = accounts
            .remove_app_password("ada".into(), added.app_password.id.clone())
            .await;
        assert!(
            matches!(res, Err(AccountError::AppPasswordNotFound { .. })),
            "{res:?}"
        );
        // Each refusal counted as a failed sign-in: the fifth closes the account to guesses,
        // the account password included.
        for _ in 0..DEFAULT_MAX_FAILURES_PER_ACCOUNT - 1 {
            assert!(is_bad_credentials(&basic(&accounts, &added.secret).await));
        }
        let res = basic(&accounts, &added.secret).await;
        assert!(
            matches!(res, Err(AccountError::TooManyAttempts { .. })),
            "{res:?}"
        );
        let res = accounts.sign_in("ada", PASSWORD.into(), ADDRESS).await;
        assert!(
            matches!(res, Err(AccountError::TooManyAttempts { .. })),
            "{res:?}"
        );
    }

    #[tokio::test]
    async fn a_password_change_refuses_the_cached_old_password() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        basic(&accounts, PASSWORD).await.unwrap();
        let change = PutUserRequest {
            password: Some("a new password".into()),
            ..PutUserRequest::default()
        };
        accounts.put_user("ada".into(), change).await.unwrap();
        assert!(is_bad_credentials(&basic(&accounts, PASSWORD).await));
        assert_eq!(basic(&accounts, "a new password").await.unwrap().sub, "ada");
    }

    #[tokio::test]
    async fn removing_the_account_refuses_its_cached_credentials() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        let added = accounts
            .add_app_password("ada".into(), "laptop".into())
            .await
            .unwrap();
        basic(&accounts, PASSWORD).await.unwrap();
        basic(&accounts, &added.secret).await.unwrap();
        accounts.remove_user("ada".into()).await.unwrap();
        assert_eq!(accounts.inner.basic_cache.len(), 0);
        assert!(is_bad_credentials(&basic(&accounts, PASSWORD).await));
        assert!(is_bad_credentials(&basic(&accounts, &added.secret).await));
    }

    /// Another node (or `tandem user` offline) changes the account without telling this
    /// node's cache: a hit re-reads the account and refuses what no longer holds.
    #[tokio::test]
    async fn a_hit_is_checked_against_the_stored_account() {
        let (_dir, store, accounts) = accounts_with_ada().await;
        let added = accounts
            .add_app_password("ada".into(), "laptop".into())
            .await
            .unwrap();
        basic(&accounts, PASSWORD).await.unwrap();
        basic(&accounts, &added.secret).await.unwrap();
        assert_eq!(accounts.inner.basic_cache.len(), 2);
        let mut user = store.get_user("ada").unwrap().unwrap();
        user.app_passwords.clear();
        user.password_hash = hash_password("changed elsewhere");
        store.put_user(&user).unwrap();
        assert!(is_bad_credentials(&basic(&accounts, &added.secret).await));
        assert!(is_bad_credentials(&basic(&accounts, PASSWORD).await));
        // A change that keeps the credentials (roles) is seen at once by a hit too.
        basic(&accounts, "changed elsewhere").await.unwrap();
        user.admin = true;
        store.put_user(&user).unwrap();
        assert!(basic(&accounts, "changed elsewhere").await.unwrap().admin);
    }

    #[tokio::test]
    async fn app_passwords_are_limited_labelled_and_kept_by_account_changes() {
        let (_dir, _store, accounts) = accounts_with_ada().await;
        let res = accounts.add_app_password("ada".into(), "a\nb".into()).await;
        assert!(matches!(res, Err(AccountError::BadUser(_))), "{res:?}");
        let res = accounts
            .add_app_password("bob".into(), "laptop".into())
            .await;
        assert!(matches!(res, Err(AccountError::UserNotFound(_))), "{res:?}");
        for n in 0..MAX_APP_PASSWORDS {
            accounts
                .add_app_password("ada".into(), format!("client {n}"))
                .await
                .unwrap();
        }
        let res = accounts
            .add_app_password("ada".into(), "one too many".into())
            .await;
        assert!(
            matches!(res, Err(AccountError::TooManyAppPasswords(_))),
            "{res:?}"
        );
        let change = PutUserRequest {
            name: Some("Ada L.".into()),
            ..PutUserRequest::default()
        };
        accounts.put_user("ada".into(), change).await.unwrap();
        let listed = accounts.list_app_passwords("ada".into()).await.unwrap();
        assert_eq!(listed.len(), MAX_APP_PASSWORDS);
        assert_eq!(listed[0].label, "client 0");
        assert_eq!(listed[0].last_used_ms, None);
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
