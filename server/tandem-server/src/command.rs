//! The binary's one-shot commands besides `serve`: `tandem user add|remove|list`,
//! `tandem webhook add|list|remove|log` and `tandem token mint`.
//!
//! `user` and `webhook` commands work on `<data-dir>/tandem.redb` directly. redb lets one process open a file
//! at a time, so while a server runs on that directory the store reports
//! [`StoreError::AlreadyOpen`], and the command goes through that server's account API
//! (`protocol-spec/http.md`) at `--server` instead, with an administrator token signed by the
//! server's key from the same data directory (`auth::mint_offline`), valid for
//! [`ADMIN_TOKEN_TTL`]. The client is one HTTP/1.1 request on one connection (hyper), plain
//! `http://` only.
//!
//! Each function returns the one line to print; `main.rs` prints it, or the error, and sets the
//! exit code. Passwords are never printed or logged.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, Uri, header};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tandem_store::{Store, StoreError};

use crate::DB_FILE_NAME;
use crate::accounts::{
    self, MAX_PASSWORD_BYTES, PutUserRequest, UserView, hash_password, new_record, validate_docs,
    validate_name, validate_password, validate_sub,
};
use crate::auth::{AuthLoadError, Claims, Role, mint_offline};
use crate::clock::unix_now_s;
use crate::config::HumanDuration;
use crate::webhook;

/// Lifetime of the administrator token a `user` command mints to call a running server.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// `sub` of that token, as the server's log shows it.
const ADMIN_TOKEN_SUB: &str = "tandem-cli";
/// Longest wait for the running server's answer, connection included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the server (a long account list is well below).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// `tandem user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account, or change one: password, and name, documents and admin flag.
    Add(UserAddArgs),
    /// Remove an account. Its tokens stop refreshing and expire within --login-token-ttl.
    Remove(UserRemoveArgs),
    /// List the accounts (never their passwords).
    List(UserListArgs),
}

/// `tandem webhook ...`.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register a webhook; prints its id and signing secret.
    Add(WebhookAddArgs),
    /// List the webhooks (never their secrets).
    List(WebhookListArgs),
    /// Remove a webhook with its pending deliveries and its log.
    Remove(WebhookIdArgs),
    /// Show a webhook's delivery log, newest attempt first.
    Log(WebhookIdArgs),
}

/// Flags of `tandem webhook add`.
#[derive(Debug, Args)]
pub struct WebhookAddArgs {
    /// Where deliveries are POSTed (http:// or https://).
    pub url: String,
    /// Events to deliver, comma-separated: doc.changed, file.uploaded, file.renamed,
    /// file.deleted, version.created, version.restored.
    #[arg(long, value_delimiter = ',', required = true)]
    pub events: Vec<String>,
    /// The signing secret [default: a random one, printed].
    #[arg(long)]
    pub secret: Option<String>,
    /// Only events about docs and files matching this pattern (`*` matches any run).
    #[arg(long)]
    pub docs: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem webhook list`.
#[derive(Debug, Args)]
pub struct WebhookListArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem webhook remove` and `tandem webhook log`.
#[derive(Debug, Args)]
pub struct WebhookIdArgs {
    /// The webhook id (`wh_...`).
    pub id: String,
    #[command(flatten)]
    pub target: Target,
}

/// `tandem token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token signed with the server's key (`server-key` in the data directory).
    Mint(TokenMintArgs),
}

/// Where the accounts are: the data directory, and the server to ask when it has the file open.
#[derive(Debug, Args)]
pub struct Target {
    /// Directory of `tandem.redb` and `server-key`.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The server running on that directory, asked when it holds the database open.
    #[arg(long, env = "TANDEM_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

/// Flags of `tandem user add`.
#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The account id (the `sub` of its tokens): letters, digits, '.', '_', '@', '-'.
    pub sub: String,
    /// Display name [default: the account id, or the current name when changing an account].
    #[arg(long)]
    pub name: Option<String>,
    /// A document pattern and the role it grants (read, write, admin); `*` matches any run of
    /// characters. Repeat for several. Replaces the account's documents.
    #[arg(long = "doc", value_name = "PATTERN=ROLE")]
    pub docs: Vec<DocRole>,
    /// The account may manage accounts.
    #[arg(long)]
    pub admin: bool,
    /// Read the password from the first line of standard input instead of prompting.
    /// Without a terminal, standard input is read anyway.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem user remove`.
#[derive(Debug, Args)]
pub struct UserRemoveArgs {
    /// The account id.
    pub sub: String,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem user list`.
#[derive(Debug, Args)]
pub struct UserListArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem token mint`.
#[derive(Debug, Args)]
pub struct TokenMintArgs {
    /// The account id the token speaks for.
    #[arg(long)]
    pub sub: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// A document pattern and its role, as for `user add`. Repeat for several.
    #[arg(long = "doc", value_name = "PATTERN=ROLE")]
    pub docs: Vec<DocRole>,
    /// The token may manage accounts.
    #[arg(long)]
    pub admin: bool,
    /// Lifetime, e.g. `10m`, `1h`, `30d`.
    #[arg(long, default_value = "1h")]
    pub ttl: HumanDuration,
    /// Directory of `server-key`.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// `PATTERN=ROLE` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRole {
    /// The document pattern.
    pub pattern: String,
    /// Its role.
    pub role: Role,
}

impl std::str::FromStr for DocRole {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The role never contains '=', the pattern might.
        let (pattern, role) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("expected PATTERN=ROLE, got {text:?}"))?;
        let role = accounts::parse_role(role)
            .ok_or_else(|| format!("unknown role {role:?}: use read, write or admin"))?;
        Ok(DocRole {
            pattern: pattern.to_owned(),
            role,
        })
    }
}

/// Why a command failed; `main.rs` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// An argument or the password is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The password could not be read.
    #[error("reading the password: {0}")]
    Password(#[source] std::io::Error),
    /// The database could not be used.
    #[error("opening {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The server key could not be read or created.
    #[error("{0}")]
    Key(#[from] AuthLoadError),
    /// The database is in use and the server at `--server` did not answer.
    #[error(
        "the database is in use (is the server running?) and the server at {server} cannot be \
         reached: {detail}"
    )]
    Unreachable {
        /// `--server`.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The running server refused the request.
    #[error("the server at {server} answered {status} {code}: {message}")]
    Refused {
        /// `--server`.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The `error` code of the body.
        code: String,
        /// The `message` of the body.
        message: String,
    },
    /// `user remove` of an account that does not exist.
    #[error("no user {0:?}")]
    NoSuchUser(String),
    /// `webhook remove` or `log` of a webhook that does not exist.
    #[error("no webhook {0:?}")]
    NoSuchWebhook(String),
}

/// Runs a `tandem user` command and returns the line to print.
pub async fn run_user(command: UserCommand) -> Result<String, CommandError> {
    match command {
        UserCommand::Add(args) => add_user(args).await,
        UserCommand::Remove(args) => remove_user(args).await,
        UserCommand::List(args) => list_users(args).await,
    }
}

/// Runs a `tandem webhook` command and returns the lines to print.
pub async fn run_webhook(command: WebhookCommand) -> Result<String, CommandError> {
    match command {
        WebhookCommand::Add(args) => add_webhook(args).await,
        WebhookCommand::List(args) => list_webhooks(&args.target).await,
        WebhookCommand::Remove(args) => remove_webhook(args).await,
        WebhookCommand::Log(args) => webhook_log(args).await,
    }
}

async fn add_webhook(args: WebhookAddArgs) -> Result<String, CommandError> {
    let request = webhook::NewWebhook {
        url: args.url,
        events: args.events,
        secret: args.secret,
        docs: args.docs,
    };
    let (id, secret, via) = match open(&args.target)? {
        Backend::Local(store) => {
            let record = webhook::new_record(request, crate::clock::unix_now_ms())
                .map_err(CommandError::Invalid)?;
            store
                .put_webhook(&record)
                .map_err(store_error(&args.target))?;
            (record.id, record.secret, String::new())
        }
        Backend::Remote(remote) => {
            let body = serde_json::to_vec(&request).expect("a NewWebhook serialises");
            let (_, answer) = remote
                .call(Method::POST, "/api/webhooks", Some(body))
                .await?;
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            let field = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
            (
                field(&answer["webhook"]["id"]),
                field(&answer["secret"]),
                format!(" (through the server at {})", remote.server),
            )
        }
    };
    Ok(format!("added webhook {id}{via}\nsecret {secret}"))
}

async fn list_webhooks(target: &Target) -> Result<String, CommandError> {
    let webhooks: Vec<webhook::WebhookView> = match open(target)? {
        Backend::Local(store) => store
            .list_webhooks()
            .map_err(store_error(target))?
            .iter()
            .map(webhook::WebhookView::from)
            .collect(),
        Backend::Remote(remote) => {
            let (_, body) = remote.call(Method::GET, "/api/webhooks", None).await?;
            #[derive(serde::Deserialize)]
            struct List {
                webhooks: Vec<webhook::WebhookView>,
            }
            serde_json::from_slice::<List>(&body)
                .map_err(|error| CommandError::Unreachable {
                    server: remote.server.clone(),
                    detail: format!("unexpected answer to GET /api/webhooks: {error}"),
                })?
                .webhooks
        }
    };
    if webhooks.is_empty() {
        return Ok("no webhooks".into());
    }
    let lines: Vec<String> = webhooks
        .iter()
        .map(|hook| {
            format!(
                "{}  {}  {}  {}",
                hook.id,
                hook.url,
                hook.events.join(","),
                hook.docs.as_deref().unwrap_or("*")
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

async fn remove_webhook(args: WebhookIdArgs) -> Result<String, CommandError> {
    let removed = match open(&args.target)? {
        Backend::Local(store) => store
            .remove_webhook(&args.id)
            .map_err(store_error(&args.target))?,
        Backend::Remote(remote) => {
            let path = format!("/api/webhooks/{}", percent_path(&args.id));
            match remote.call(Method::DELETE, &path, None).await {
                Ok(_) => true,
                Err(CommandError::Refused { status: 404, .. }) => false,
                Err(error) => return Err(error),
            }
        }
    };
    if !removed {
        return Err(CommandError::NoSuchWebhook(args.id));
    }
    Ok(format!("removed webhook {}", args.id))
}

async fn webhook_log(args: WebhookIdArgs) -> Result<String, CommandError> {
    let attempts: Vec<webhook::AttemptView> = match open(&args.target)? {
        Backend::Local(store) => {
            let exists = store
                .list_webhooks()
                .map_err(store_error(&args.target))?
                .iter()
                .any(|hook| hook.id == args.id);
            if !exists {
                return Err(CommandError::NoSuchWebhook(args.id));
            }
            store
                .list_deliveries(&args.id)
                .map_err(store_error(&args.target))?
                .into_iter()
                .map(webhook::AttemptView::from)
                .collect()
        }
        Backend::Remote(remote) => {
            let path = format!("/api/webhooks/{}/deliveries", percent_path(&args.id));
            let body = match remote.call(Method::GET, &path, None).await {
                Ok((_, body)) => body,
                Err(CommandError::Refused { status: 404, .. }) => {
                    return Err(CommandError::NoSuchWebhook(args.id));
                }
                Err(error) => return Err(error),
            };
            #[derive(serde::Deserialize)]
            struct Log {
                deliveries: Vec<webhook::AttemptView>,
            }
            serde_json::from_slice::<Log>(&body)
                .map_err(|error| CommandError::Unreachable {
                    server: remote.server.clone(),
                    detail: format!("unexpected answer to GET {path}: {error}"),
                })?
                .deliveries
        }
    };
    if attempts.is_empty() {
        return Ok("no deliveries yet".into());
    }
    let lines: Vec<String> = attempts
        .iter()
        .map(|attempt| {
            let answer = match (&attempt.status, &attempt.error) {
                (Some(status), _) => status.to_string(),
                (None, Some(error)) => error.clone(),
                (None, None) => "-".into(),
            };
            format!(
                "{}  {}  {}  {}  {} ms  {}",
                attempt.at_ms,
                attempt.delivery_id,
                attempt.event,
                answer,
                attempt.duration_ms,
                attempt.outcome
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// An id as one path segment (ids the server makes need no escaping; others are refused by it).
fn percent_path(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs a `tandem token` command and returns the line to print (the token).
pub fn run_token(command: TokenCommand) -> Result<String, CommandError> {
    match command {
        TokenCommand::Mint(args) => mint_token(&args),
    }
}

/// The store when this process can open it, else the server that has it open.
enum Backend {
    Local(Store),
    Remote(Remote),
}

fn open(target: &Target) -> Result<Backend, CommandError> {
    let path = target.data_dir.join(DB_FILE_NAME);
    // The same refusal as the server's: creating an empty store beside an earlier store's blobs
    // would let the server's cleanup delete them.
    crate::data_dir::check_store_file(&target.data_dir, &path, false)
        .map_err(|error| CommandError::Invalid(error.to_string()))?;
    match Store::open(&path) {
        Ok(store) => Ok(Backend::Local(store)),
        Err(StoreError::AlreadyOpen) => Ok(Backend::Remote(Remote::new(target)?)),
        Err(source) => Err(CommandError::Store { path, source }),
    }
}

fn store_error(target: &Target) -> impl Fn(StoreError) -> CommandError + '_ {
    move |source| CommandError::Store {
        path: target.data_dir.join(DB_FILE_NAME),
        source,
    }
}

fn docs_of(docs: &[DocRole]) -> Result<BTreeMap<String, Role>, CommandError> {
    let docs: BTreeMap<String, Role> = docs
        .iter()
        .map(|doc| (doc.pattern.clone(), doc.role))
        .collect();
    validate_docs(&docs).map_err(CommandError::Invalid)?;
    Ok(docs)
}

async fn add_user(args: UserAddArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    if let Some(name) = &args.name {
        validate_name(name).map_err(CommandError::Invalid)?;
    }
    let docs = docs_of(&args.docs)?;
    let password = read_password(&args.sub, args.password_stdin)?;
    validate_password(&password).map_err(CommandError::Invalid)?;
    match open(&args.target)? {
        Backend::Local(store) => {
            let existing = store
                .get_user(&args.sub)
                .map_err(store_error(&args.target))?;
            let name = args
                .name
                .or_else(|| existing.as_ref().map(|user| user.name.clone()));
            let created_ms = existing
                .as_ref()
                .map_or_else(crate::clock::unix_now_ms, |user| user.created_ms);
            let record = new_record(
                &args.sub,
                name.as_deref(),
                hash_password(&password),
                &docs,
                args.admin,
                created_ms,
            );
            store.put_user(&record).map_err(store_error(&args.target))?;
            let verb = if existing.is_some() {
                "updated"
            } else {
                "added"
            };
            Ok(format!("{verb} user {}", args.sub))
        }
        Backend::Remote(remote) => {
            let request = PutUserRequest {
                name: args.name,
                password: Some(password),
                docs: Some(docs),
                admin: Some(args.admin),
            };
            let body = serde_json::to_vec(&request).expect("a PutUserRequest serialises");
            let (status, _) = remote
                .call(Method::PUT, &format!("/api/users/{}", args.sub), Some(body))
                .await?;
            let verb = if status == StatusCode::CREATED {
                "added"
            } else {
                "updated"
            };
            Ok(format!(
                "{verb} user {} (through the server at {})",
                args.sub, remote.server
            ))
        }
    }
}

async fn remove_user(args: UserRemoveArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    let removed = match open(&args.target)? {
        Backend::Local(store) => store
            .remove_user(&args.sub)
            .map_err(store_error(&args.target))?,
        Backend::Remote(remote) => {
            match remote
                .call(Method::DELETE, &format!("/api/users/{}", args.sub), None)
                .await
            {
                Ok(_) => true,
                Err(CommandError::Refused { status: 404, .. }) => false,
                Err(error) => return Err(error),
            }
        }
    };
    if !removed {
        return Err(CommandError::NoSuchUser(args.sub));
    }
    Ok(format!("removed user {}", args.sub))
}

async fn list_users(args: UserListArgs) -> Result<String, CommandError> {
    let users: Vec<UserView> = match open(&args.target)? {
        Backend::Local(store) => store
            .list_users()
            .map_err(store_error(&args.target))?
            .into_iter()
            .map(UserView::from)
            .collect(),
        Backend::Remote(remote) => {
            let (_, body) = remote.call(Method::GET, "/api/users", None).await?;
            #[derive(serde::Deserialize)]
            struct List {
                users: Vec<UserView>,
            }
            serde_json::from_slice::<List>(&body)
                .map_err(|error| CommandError::Unreachable {
                    server: remote.server.clone(),
                    detail: format!("unexpected answer to GET /api/users: {error}"),
                })?
                .users
        }
    };
    Ok(format_users(&users))
}

/// One line per account: `sub`, name, `admin` or `-`, and its patterns.
fn format_users(users: &[UserView]) -> String {
    if users.is_empty() {
        return "no users".into();
    }
    let width = users.iter().map(|user| user.sub.len()).max().unwrap_or(0);
    let lines: Vec<String> = users
        .iter()
        .map(|user| {
            let docs: Vec<String> = user
                .docs
                .iter()
                .map(|(pattern, role)| format!("{pattern}={role}"))
                .collect();
            format!(
                "{:width$}  {:?}  {}  {}",
                user.sub,
                user.name,
                if user.admin { "admin" } else { "-" },
                if docs.is_empty() {
                    "(no documents)".to_owned()
                } else {
                    docs.join(" ")
                },
            )
        })
        .collect();
    lines.join("\n")
}

fn mint_token(args: &TokenMintArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    if let Some(name) = &args.name {
        validate_name(name).map_err(CommandError::Invalid)?;
    }
    let now = unix_now_s();
    let claims = Claims {
        sub: args.sub.clone(),
        name: args.name.clone(),
        docs: docs_of(&args.docs)?,
        admin: args.admin,
        exp: now.saturating_add(args.ttl.0.as_secs().max(1)),
        nbf: None,
        iat: Some(now),
        iss: None,
        session: None,
    };
    Ok(mint_offline(&args.data_dir, &claims)?)
}

/// The password: a line of standard input with `--password-stdin` or without a terminal,
/// otherwise typed twice at a prompt without echo.
fn read_password(sub: &str, from_stdin: bool) -> Result<String, CommandError> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        // Bounded: a longer line fails validation rather than filling memory.
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES as u64 + 2)
            .read_line(&mut line)
            .map_err(CommandError::Password)?;
        let password = line.trim_end_matches(['\n', '\r']);
        return Ok(password.to_owned());
    }
    let first = rpassword::prompt_password(format!("password for {sub}: "))
        .map_err(CommandError::Password)?;
    let again =
        rpassword::prompt_password("the same password again: ").map_err(CommandError::Password)?;
    if first != again {
        return Err(CommandError::Invalid("the two passwords differ".into()));
    }
    Ok(first)
}

/// A running server's account API.
struct Remote {
    /// `--server` as given, for messages.
    server: String,
    /// `host:port` to connect to.
    authority: String,
    /// An administrator token for [`ADMIN_TOKEN_TTL`].
    token: String,
}

impl Remote {
    fn new(target: &Target) -> Result<Remote, CommandError> {
        let unreachable = |detail: String| CommandError::Unreachable {
            server: target.server.clone(),
            detail,
        };
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
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let token = admin_token(&target.data_dir)?;
        Ok(Remote {
            server: target.server.clone(),
            authority,
            token,
        })
    }

    /// One request; a non-2xx answer becomes [`CommandError::Refused`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), CommandError> {
        let unreachable = |detail: String| CommandError::Unreachable {
            server: self.server.clone(),
            detail,
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| unreachable(format!("building the request: {error}")))?;
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|error| unreachable(error.to_string()))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|error| unreachable(error.to_string()))?;
            // The connection future does the I/O; it is polled beside the request instead of
            // being spawned, and ends once the sender is dropped.
            let request = async move {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|error| unreachable(error.to_string()))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|error| unreachable(format!("reading the answer: {error}")))?
                    .to_bytes();
                Ok::<_, CommandError>((status, body))
            };
            let (result, _) = tokio::join!(request, connection);
            result
        };
        let (status, body) = tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {HTTP_TIMEOUT:?}")))??;
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
}

fn admin_token(data_dir: &Path) -> Result<String, CommandError> {
    let now = unix_now_s();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_roles_parse_with_the_last_equals_sign() {
        let parsed: DocRole = "team/a=b/*=write".parse().unwrap();
        assert_eq!(parsed.pattern, "team/a=b/*");
        assert_eq!(parsed.role, Role::Write);
        assert!("team/*".parse::<DocRole>().is_err());
        assert!("team/*=owner".parse::<DocRole>().is_err());
    }

    #[test]
    fn users_are_listed_one_per_line() {
        let users = [
            UserView {
                sub: "ada".into(),
                name: "Ada".into(),
                docs: BTreeMap::from([("team/*".into(), "write".into())]),
                admin: true,
                created_ms: 0,
            },
            UserView {
                sub: "grace".into(),
                name: "Grace".into(),
                docs: BTreeMap::new(),
                admin: false,
                created_ms: 0,
            },
        ];
        assert_eq!(
            format_users(&users),
            "ada    \"Ada\"  admin  team/*=write\ngrace  \"Grace\"  -  (no documents)"
        );
        assert_eq!(format_users(&[]), "no users");
    }
}
