//! [`Backend`]: where a `user` or `webhook` command does its work, so each command is written
//! once against these operations.
//!
//! redb lets one process open a file at a time. When no server runs on the data directory, the
//! command opens `<data-dir>/tandem.redb` itself ([`Backend::Local`]). In cluster mode
//! (`--redis-url` and `--postgres-url`, or their environment variables, as the nodes get them)
//! it works on the shared database directly, the same tables every node reads, whether or not
//! a node runs. While a server runs on it,
//! the store reports [`StoreError::AlreadyOpen`], and the command goes through that server's
//! account and webhook API (`protocol-spec/http.md`) at `--server` instead
//! ([`Backend::Remote`]), with an administrator token signed by the server's key from the same
//! data directory (`auth::mint_offline`), valid for [`ADMIN_TOKEN_TTL`]. Both ways end in the
//! same records: the server's handlers validate as the local branch does.
//!
//! The remote client is `reqwest`: plain `http://` only (a server with TLS is reached offline,
//! or through the API directly), no redirects and no proxies, since the token must go to the
//! server named and nowhere else, and one time limit for the whole exchange.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri, header};
use serde::de::DeserializeOwned;
use std::sync::Arc;

use tandem_store::meta::{UserTable, WebhookTable};
use tandem_store::{DeliveryAttempt, Store, StoreError, UserRecord, WebhookRecord};

use super::CommandError;
use crate::DB_FILE_NAME;
use crate::accounts::{
    AddAppPasswordRequest, AddRefused, AppPasswordView, MAX_APP_PASSWORDS, NewAppPassword,
    PutUserRequest, UserView, add_app_password_to, hash_password, new_app_password, new_record,
    remove_app_password_from,
};
use crate::auth::{Claims, Role, mint_offline};
use crate::cli::Target;
use crate::webhook::{self, AttemptView, NewWebhook, WebhookView};
use tandem_hub::clock::now_s;

/// Lifetime of the administrator token a command mints to call a running server.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// `sub` of that token, as the server's log shows it.
const ADMIN_TOKEN_SUB: &str = "tandem-cli";
/// Longest wait for the running server's answer, connection included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the server (a long account list is well below).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The tables a command works on directly: the local store's, or the cluster's in Postgres.
pub(super) struct LocalTables {
    users: Arc<dyn UserTable>,
    webhooks: Arc<dyn WebhookTable>,
}

impl LocalTables {
    fn get_user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users.get_user(sub)
    }
    fn modify_user(
        &self,
        sub: &str,
        change: &mut dyn FnMut(Option<&UserRecord>) -> Option<UserRecord>,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.users.modify_user(sub, change)
    }
    fn remove_user(&self, sub: &str) -> Result<bool, StoreError> {
        self.users.remove_user(sub)
    }
    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.users.list_users()
    }
    fn put_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        self.webhooks.put_webhook(webhook)
    }
    fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.webhooks.list_webhooks()
    }
    fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.webhooks.remove_webhook(id)
    }
    fn list_deliveries(&self, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.webhooks.list_deliveries(id)
    }
}

/// The store when this process can open it, else the server that has it open.
pub(super) enum Backend {
    /// The tables, opened by this process: the local store, or the cluster's shared database.
    Local {
        /// The open tables.
        store: LocalTables,
        /// The file (or the database's redacted URL), for error messages.
        path: PathBuf,
    },
    /// The server that holds the database open.
    Remote(Remote),
}

/// An account as `user add` creates or changes it; the password is still in clear here.
pub(super) struct NewUser<'a> {
    pub(super) sub: &'a str,
    /// `None` keeps an existing account's name (a new one is named after its `sub`).
    pub(super) name: Option<String>,
    pub(super) password: String,
    pub(super) docs: BTreeMap<String, Role>,
    pub(super) admin: bool,
}

impl Backend {
    /// Opens the store of `target`, or, when a server holds it, prepares to call that server.
    pub(super) async fn open(target: &Target) -> Result<Backend, CommandError> {
        match (&target.redis_url, &target.postgres_url) {
            (Some(redis_url), Some(postgres_url)) => {
                let config = tandem_cluster::ClusterConfig {
                    redis_url: redis_url.clone(),
                    postgres_url: postgres_url.clone(),
                    durability: tandem_cluster::Durability::Local,
                    replica_timeout: Duration::from_secs(2),
                    trim_margin: crate::config::DEFAULT_CLUSTER_TRIM_MARGIN,
                    commit_interval: crate::config::DEFAULT_COMMIT_INTERVAL,
                };
                let meta = tandem_cluster::PgMeta::connect(&config)
                    .await
                    .map_err(|error| CommandError::Invalid(format!("cluster mode: {error}")))?;
                let meta = Arc::new(meta);
                return Ok(Backend::Local {
                    store: LocalTables {
                        users: meta.clone(),
                        webhooks: meta,
                    },
                    path: PathBuf::from(tandem_cluster::engine::redact(postgres_url)),
                });
            }
            (None, None) => {}
            _ => {
                return Err(CommandError::Invalid(
                    "cluster mode needs both --redis-url and --postgres-url".into(),
                ));
            }
        }
        let path = target.data_dir.join(DB_FILE_NAME);
        // The same refusal as the server's: creating an empty store beside an earlier store's
        // blobs would let the server's cleanup delete them.
        crate::data_dir::check_store_file(&target.data_dir, &path, false)
            .map_err(|error| CommandError::Invalid(error.to_string()))?;
        match Store::open(&path) {
            Ok(store) => {
                let store = Arc::new(store);
                Ok(Backend::Local {
                    store: LocalTables {
                        users: store.clone(),
                        webhooks: store,
                    },
                    path,
                })
            }
            Err(StoreError::AlreadyOpen) => Ok(Backend::Remote(Remote::new(target)?)),
            Err(source) => Err(CommandError::Store { path, source }),
        }
    }

    /// What a command appends to its line so the user knows a server did the work.
    pub(super) fn via(&self) -> String {
        match self {
            Backend::Local { .. } => String::new(),
            Backend::Remote(remote) => format!(" (through the server at {})", remote.server),
        }
    }

    /// Creates or replaces an account; `true` when it did not exist before.
    pub(super) async fn put_user(&self, user: NewUser<'_>) -> Result<bool, CommandError> {
        match self {
            Backend::Local { store, path } => {
                let existing = store.get_user(user.sub).map_err(store_error(path))?;
                let name = user
                    .name
                    .or_else(|| existing.as_ref().map(|record| record.name.clone()));
                let created_ms = existing
                    .as_ref()
                    .map_or_else(tandem_hub::clock::now_ms, |record| record.created_ms);
                let record = new_record(
                    user.sub,
                    name.as_deref(),
                    hash_password(&user.password),
                    &user.docs,
                    user.admin,
                    created_ms,
                );
                // The account keeps its app passwords, as stored when written.
                store
                    .modify_user(user.sub, &mut |current| {
                        let mut record = record.clone();
                        record.app_passwords = current
                            .map(|user| user.app_passwords.clone())
                            .unwrap_or_default();
                        Some(record)
                    })
                    .map_err(store_error(path))?;
                Ok(existing.is_none())
            }
            Backend::Remote(remote) => {
                let request = PutUserRequest {
                    name: user.name,
                    password: Some(user.password),
                    docs: Some(user.docs),
                    admin: Some(user.admin),
                };
                let body = serde_json::to_vec(&request).expect("a PutUserRequest serialises");
                let path = format!("/api/users/{}", user.sub);
                let (status, _) = remote.call(Method::PUT, &path, Some(body)).await?;
                Ok(status == StatusCode::CREATED)
            }
        }
    }

    /// Removes an account; `false` when there was none.
    pub(super) async fn remove_user(&self, sub: &str) -> Result<bool, CommandError> {
        match self {
            Backend::Local { store, path } => store.remove_user(sub).map_err(store_error(path)),
            Backend::Remote(remote) => remote
                .call_unless_missing(Method::DELETE, &format!("/api/users/{sub}"))
                .await
                .map(|answer| answer.is_some()),
        }
    }

    /// Every account, as the API shows them (no password hashes).
    pub(super) async fn list_users(&self) -> Result<Vec<UserView>, CommandError> {
        match self {
            Backend::Local { store, path } => Ok(store
                .list_users()
                .map_err(store_error(path))?
                .into_iter()
                .map(UserView::from)
                .collect()),
            Backend::Remote(remote) => {
                #[derive(serde::Deserialize)]
                struct List {
                    users: Vec<UserView>,
                }
                let list: List = remote.get_json("/api/users").await?;
                Ok(list.users)
            }
        }
    }

    /// Makes an app password (`label` already validated) for the account `sub`.
    pub(super) async fn add_app_password(
        &self,
        sub: &str,
        label: &str,
    ) -> Result<NewAppPassword, CommandError> {
        match self {
            Backend::Local { store, path } => {
                let (record, secret) = new_app_password(label, tandem_hub::clock::now_ms());
                let mut outcome = Ok(());
                store
                    .modify_user(sub, &mut |current| {
                        add_app_password_to(current, &record, &mut outcome)
                    })
                    .map_err(store_error(path))?;
                match outcome {
                    Ok(()) => Ok(NewAppPassword {
                        app_password: AppPasswordView::from(&record),
                        secret,
                    }),
                    Err(AddRefused::NoSuchUser) => Err(CommandError::NoSuchUser(sub.to_owned())),
                    Err(AddRefused::Full) => Err(CommandError::Invalid(format!(
                        "user {sub:?} has {MAX_APP_PASSWORDS} app passwords already; remove one \
                         first"
                    ))),
                }
            }
            Backend::Remote(remote) => {
                let request = AddAppPasswordRequest {
                    label: label.to_owned(),
                };
                let body = serde_json::to_vec(&request).expect("the request serialises");
                let path = format!("/api/users/{sub}/app-passwords");
                let (_, answer) = remote.call(Method::POST, &path, Some(body)).await?;
                remote.decode(&path, &answer)
            }
        }
    }

    /// The app passwords of the account `sub`; `None` when there is no such account.
    pub(super) async fn list_app_passwords(
        &self,
        sub: &str,
    ) -> Result<Option<Vec<AppPasswordView>>, CommandError> {
        match self {
            Backend::Local { store, path } => {
                Ok(store.get_user(sub).map_err(store_error(path))?.map(|user| {
                    user.app_passwords
                        .iter()
                        .map(AppPasswordView::from)
                        .collect()
                }))
            }
            Backend::Remote(remote) => {
                #[derive(serde::Deserialize)]
                struct List {
                    app_passwords: Vec<AppPasswordView>,
                }
                let path = format!("/api/users/{sub}/app-passwords");
                let Some(body) = remote.call_unless_missing(Method::GET, &path).await? else {
                    return Ok(None);
                };
                let list: List = remote.decode(&path, &body)?;
                Ok(Some(list.app_passwords))
            }
        }
    }

    /// Revokes the app password `id` of the account `sub`.
    pub(super) async fn remove_app_password(
        &self,
        sub: &str,
        id: &str,
    ) -> Result<(), CommandError> {
        let no_such = || CommandError::NoSuchAppPassword {
            sub: sub.to_owned(),
            id: id.to_owned(),
        };
        match self {
            Backend::Local { store, path } => {
                let mut found = (false, false);
                store
                    .modify_user(sub, &mut |current| {
                        remove_app_password_from(current, id, &mut found)
                    })
                    .map_err(store_error(path))?;
                match found {
                    (false, _) => Err(CommandError::NoSuchUser(sub.to_owned())),
                    (true, false) => Err(no_such()),
                    (true, true) => Ok(()),
                }
            }
            Backend::Remote(remote) => {
                let path = format!("/api/users/{sub}/app-passwords/{}", percent_path(id));
                match remote.call(Method::DELETE, &path, None).await {
                    Ok(_) => Ok(()),
                    Err(CommandError::Refused {
                        status: 404, code, ..
                    }) if code == "app_password_not_found" => Err(no_such()),
                    Err(CommandError::Refused {
                        status: 404, code, ..
                    }) if code == "user_not_found" => Err(CommandError::NoSuchUser(sub.to_owned())),
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Registers a webhook; its id and signing secret.
    pub(super) async fn add_webhook(
        &self,
        request: NewWebhook,
    ) -> Result<(String, String), CommandError> {
        match self {
            Backend::Local { store, path } => {
                let record = webhook::new_record(request, tandem_hub::clock::now_ms())
                    .map_err(CommandError::Invalid)?;
                store.put_webhook(&record).map_err(store_error(path))?;
                Ok((record.id, record.secret))
            }
            Backend::Remote(remote) => {
                let body = serde_json::to_vec(&request).expect("a NewWebhook serialises");
                let (_, answer) = remote
                    .call(Method::POST, "/api/webhooks", Some(body))
                    .await?;
                // A 2xx answer is the server's own; a field it lacks prints as empty rather
                // than hiding that the webhook was registered.
                let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                let field =
                    |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
                Ok((field(&answer["webhook"]["id"]), field(&answer["secret"])))
            }
        }
    }

    /// Every webhook, without secrets.
    pub(super) async fn list_webhooks(&self) -> Result<Vec<WebhookView>, CommandError> {
        match self {
            Backend::Local { store, path } => Ok(store
                .list_webhooks()
                .map_err(store_error(path))?
                .iter()
                .map(WebhookView::from)
                .collect()),
            Backend::Remote(remote) => {
                #[derive(serde::Deserialize)]
                struct List {
                    webhooks: Vec<WebhookView>,
                }
                let list: List = remote.get_json("/api/webhooks").await?;
                Ok(list.webhooks)
            }
        }
    }

    /// Removes a webhook with its deliveries and log; `false` when there was none.
    pub(super) async fn remove_webhook(&self, id: &str) -> Result<bool, CommandError> {
        match self {
            Backend::Local { store, path } => store.remove_webhook(id).map_err(store_error(path)),
            Backend::Remote(remote) => remote
                .call_unless_missing(
                    Method::DELETE,
                    &format!("/api/webhooks/{}", percent_path(id)),
                )
                .await
                .map(|answer| answer.is_some()),
        }
    }

    /// A webhook's delivery attempts, newest first; `None` when there is no such webhook.
    pub(super) async fn webhook_log(
        &self,
        id: &str,
    ) -> Result<Option<Vec<AttemptView>>, CommandError> {
        match self {
            Backend::Local { store, path } => {
                let exists = store
                    .list_webhooks()
                    .map_err(store_error(path))?
                    .iter()
                    .any(|hook| hook.id == id);
                if !exists {
                    return Ok(None);
                }
                Ok(Some(
                    store
                        .list_deliveries(id)
                        .map_err(store_error(path))?
                        .into_iter()
                        .map(AttemptView::from)
                        .collect(),
                ))
            }
            Backend::Remote(remote) => {
                #[derive(serde::Deserialize)]
                struct Log {
                    deliveries: Vec<AttemptView>,
                }
                let path = format!("/api/webhooks/{}/deliveries", percent_path(id));
                let Some(body) = remote.call_unless_missing(Method::GET, &path).await? else {
                    return Ok(None);
                };
                let log: Log = remote.decode(&path, &body)?;
                Ok(Some(log.deliveries))
            }
        }
    }
}

fn store_error(path: &Path) -> impl Fn(StoreError) -> CommandError + '_ {
    move |source| CommandError::Store {
        path: path.to_owned(),
        source,
    }
}

/// An id as one path segment (ids the server makes need no escaping; others are refused by it).
fn percent_path(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A running server's account and webhook API.
pub(super) struct Remote {
    /// `--server` as given, for messages.
    server: String,
    /// `http://host:port`, without a path: request paths are absolute.
    origin: String,
    /// An administrator token for [`ADMIN_TOKEN_TTL`].
    token: String,
    client: reqwest::Client,
}

impl Remote {
    fn new(target: &Target) -> Result<Remote, CommandError> {
        let unreachable = |detail: String| CommandError::Unreachable {
            server: target.server.clone(),
            detail,
        };
        // `http::Uri` rather than a URL parser: `host:port` without a scheme is an authority
        // to it, so the message can say what is missing.
        let uri: Uri = target
            .server
            .parse()
            .map_err(|error| unreachable(format!("not a URL: {error}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(unreachable(format!(
                    "only http:// is supported here, not {other}://; stop the server to change \
                     accounts offline, or call PUT /api/users with an admin token"
                )));
            }
            None => return Err(unreachable("the URL needs http://".into())),
        }
        let host = uri
            .host()
            .ok_or_else(|| unreachable("the URL has no host".into()))?;
        let origin = format!("http://{host}:{}", uri.port_u16().unwrap_or(80));
        let client = crate::outbound::client_builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|error| unreachable(format!("starting the HTTP client: {error}")))?;
        let token = admin_token(&target.data_dir)?;
        Ok(Remote {
            server: target.server.clone(),
            origin,
            token,
            client,
        })
    }

    fn unreachable(&self, detail: String) -> CommandError {
        CommandError::Unreachable {
            server: self.server.clone(),
            detail,
        }
    }

    /// One request; a non-2xx answer becomes [`CommandError::Refused`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), CommandError> {
        let mut response = self
            .client
            .request(method, format!("{}{path}", self.origin))
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.unwrap_or_default())
            .send()
            .await
            .map_err(|error| self.unreachable(describe(&error)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| {
            self.unreachable(format!("reading the answer: {}", describe(&error)))
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.unreachable(format!(
                    "reading the answer: longer than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((status, body));
        }
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |name: &str| error[name].as_str().unwrap_or_default().to_owned();
        Err(CommandError::Refused {
            server: self.server.clone(),
            status: status.as_u16(),
            code: field("error"),
            message: field("message"),
        })
    }

    /// A request whose 404 means "no such record": its body, or `None` for a 404.
    async fn call_unless_missing(
        &self,
        method: Method,
        path: &str,
    ) -> Result<Option<Vec<u8>>, CommandError> {
        match self.call(method, path, None).await {
            Ok((_, body)) => Ok(Some(body)),
            Err(CommandError::Refused { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `GET path`, decoded as `T`.
    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, CommandError> {
        let (_, body) = self.call(Method::GET, path, None).await?;
        self.decode(path, &body)
    }

    /// The answer to `GET path` as `T`; anything else did not come from a Tandem server.
    fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, CommandError> {
        serde_json::from_slice(body)
            .map_err(|error| self.unreachable(format!("unexpected answer to GET {path}: {error}")))
    }
}

/// What went wrong, as the innermost cause says it ("Connection refused (os error 111)"):
/// reqwest's own text only names the request ("error sending request for url (...)") and the
/// layers between add nothing a user can act on.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within {HTTP_TIMEOUT:?}");
    }
    let mut innermost: &dyn std::error::Error = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    innermost.to_string()
}

fn admin_token(data_dir: &Path) -> Result<String, CommandError> {
    let now = now_s();
    let claims = Claims {
        sub: ADMIN_TOKEN_SUB.into(),
        name: None,
        docs: BTreeMap::new(),
        admin: true,
        exp: now + ADMIN_TOKEN_TTL.as_secs(),
        nbf: None,
        iat: Some(now),
        iss: None,
        session: None,
    };
    Ok(mint_offline(data_dir, &claims)?)
}
