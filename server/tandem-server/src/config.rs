//! Configuration: command-line flags, `TANDEM_*` environment variables and an optional TOML file,
//! validated once into a typed [`Config`] split by subsystem.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default.
//! clap resolves flag and environment; every field is optional there, so a value missing from
//! both falls through to the file and then to the default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tandem_core::Limits;
use tandem_core::limits::{
    DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER, DEFAULT_MAX_AWARENESS_PER_SECOND,
    DEFAULT_MAX_AWARENESS_STATE_BYTES, DEFAULT_MAX_BYTES_PER_SECOND, DEFAULT_MAX_DOC_BYTES,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_MESSAGES_PER_SECOND,
};

use crate::accounts::AccountConfig;
use crate::activity::ActivityConfig;
use crate::auth::{AuthConfig, AuthMode};
use crate::connection::ConnectionConfig;
use crate::files::FilesConfig;
use crate::hub::HubConfig;
use crate::listener::ListenerConfig;
use crate::persist::PersistConfig;
use crate::proxy::{ForwardedHeader, TrustedProxies, TrustedProxyArg};
use crate::tls::TlsFiles;
use crate::webhook::WebhookConfig;

/// Frames queued for one peer before it is closed as a slow consumer. A group commit releases up
/// to `persist::MAX_BATCH_OPS` (2,048) deliveries to every peer of a busy doc at once, faster than
/// any connection drains them; the queue holds several such bursts, so only a peer that stops
/// reading is closed. The queue grows in blocks as it fills, so an idle peer does not pay for it.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8192;
/// Default of `--commit-interval`: see `persist` for why and what it costs.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(5);
/// Named versions per doc, and restore versions kept per doc.
pub const DEFAULT_MAX_NAMED_VERSIONS: u64 = 1000;

/// Command line of the `tandem` binary.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: a real-time collaborative editing server"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// What the binary was asked to do.
// Parsed once per process; boxing `ServeArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    /// Settings precedence: flag > environment variable > config file > default.
    Serve(ServeArgs),
    /// Manage the accounts of password sign-in (works beside a running server).
    #[command(subcommand)]
    User(crate::command::UserCommand),
    /// Tokens signed with the server's own key.
    #[command(subcommand)]
    Token(crate::command::TokenCommand),
    /// Manage webhooks (works beside a running server).
    #[command(subcommand)]
    Webhook(crate::command::WebhookCommand),
}

impl Cli {
    /// The command; `serve` with its defaults when none was given.
    pub fn into_command(self) -> Command {
        match self.command {
            Some(command) => command,
            None => Command::Serve(Cli::default_serve_args()),
        }
    }

    fn default_serve_args() -> ServeArgs {
        // Parse `serve` with no flags so the environment still applies.
        match Cli::parse_from(["tandem", "serve"]).command {
            Some(Command::Serve(args)) => args,
            _ => ServeArgs::default(),
        }
    }
}

/// Flags of `tandem serve`. Precedence: flag > environment > config file > default.
#[derive(Debug, Default, Args, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, with '_' for '-').
    #[arg(long, env = "TANDEM_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "TANDEM_BIND")]
    pub bind: Option<IpAddr>,
    /// Port to listen on; 0 picks a free port [default: 8080].
    #[arg(long, env = "TANDEM_PORT")]
    pub port: Option<u16>,
    /// Directory of the database file `tandem.redb` [default: ./data].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve the web client from this directory instead of the copy built into the binary.
    #[arg(long, env = "TANDEM_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `tandem_server=debug` [default: info, or RUST_LOG].
    #[arg(long, env = "TANDEM_LOG")]
    pub log: Option<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "TANDEM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest WebSocket frame in bytes [default: 16777216].
    #[arg(long, env = "TANDEM_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u64>,
    /// Largest awareness state in bytes [default: 65536].
    #[arg(long, env = "TANDEM_MAX_AWARENESS_STATE_BYTES")]
    pub max_awareness_state_bytes: Option<usize>,
    /// Awareness client ids one connection may own [default: 4].
    #[arg(long, env = "TANDEM_MAX_AWARENESS_CLIENTS_PER_PEER")]
    pub max_awareness_clients_per_peer: Option<usize>,
    /// Presence not renewed for this long is removed [default: 30s].
    #[arg(long, env = "TANDEM_AWARENESS_TIMEOUT")]
    pub awareness_timeout: Option<HumanDuration>,
    /// A doc with no peers leaves memory after this long [default: 30s].
    #[arg(long, env = "TANDEM_DOC_UNLOAD_GRACE")]
    pub doc_unload_grace: Option<HumanDuration>,
    /// Interval between pings to each peer [default: 5s].
    #[arg(long, env = "TANDEM_PING_INTERVAL")]
    pub ping_interval: Option<HumanDuration>,
    /// A peer that sends nothing for this long after a ping is closed and its presence removed
    /// [default: 15s].
    #[arg(long, env = "TANDEM_PONG_TIMEOUT")]
    pub pong_timeout: Option<HumanDuration>,
    /// Longest wait for docs to flush at shutdown [default: 10s].
    #[arg(long, env = "TANDEM_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<HumanDuration>,
    /// fsync every commit before anything is broadcast; `false` only for benchmarks [default: true].
    #[arg(long, env = "TANDEM_FSYNC")]
    pub fsync: Option<bool>,
    /// Shortest time between the starts of two commits holding one doc's updates: a doc that
    /// keeps changing gathers what arrives meanwhile into its next commit, so a busy doc fsyncs
    /// less often. An update of a doc not committed within the interval commits at once (with
    /// whatever else is queued); `0s` commits whatever is queued as soon as the previous commit
    /// ends [default: 5ms].
    #[arg(long, env = "TANDEM_COMMIT_INTERVAL")]
    pub commit_interval: Option<HumanDuration>,
    /// Threads that run connections and doc actors [default: one less than the CPUs, at least 1].
    #[arg(long, env = "TANDEM_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Upper bound of the database page cache in bytes [default: 33554432].
    #[arg(long, env = "TANDEM_DB_CACHE_BYTES")]
    pub db_cache_bytes: Option<usize>,
    /// Compact a doc's log after this many updates [default: 1000].
    #[arg(long, env = "TANDEM_COMPACT_AFTER_UPDATES")]
    pub compact_after_updates: Option<u64>,
    /// Compact a doc's log after this many bytes [default: 8388608].
    #[arg(long, env = "TANDEM_COMPACT_AFTER_BYTES")]
    pub compact_after_bytes: Option<u64>,
    /// A doc with edits not yet in a version gets an automatic version once this long has
    /// passed since its last version (and when it unloads) [default: 10m].
    #[arg(long, env = "TANDEM_AUTO_VERSION_INTERVAL")]
    pub auto_version_interval: Option<HumanDuration>,
    /// Automatic versions kept per doc, at least 1; older ones are pruned [default: 100].
    #[arg(long, env = "TANDEM_MAX_AUTO_VERSIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_auto_versions: Option<u64>,
    /// Named versions per doc, at least 1: saving one more is refused (`too_many_versions`);
    /// also the number of restore versions kept per doc, older ones pruned [default: 1000].
    #[arg(long, env = "TANDEM_MAX_NAMED_VERSIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_named_versions: Option<u64>,
    /// Frames queued for one peer before it counts as a slow consumer [default: 8192].
    #[arg(long, env = "TANDEM_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    /// PEM certificate chain; with --tls-key the port serves https and wss. Re-read when it changes.
    #[arg(long, env = "TANDEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert. Re-read when it changes.
    #[arg(long, env = "TANDEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Open TCP connections in total; more are answered 503 and closed [default: 20000].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open TCP connections from one IP address; more are answered 503 and closed [default: 512].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// A connection that has not finished its TLS handshake and sent its first request's headers
    /// within this time is dropped; also bounds the headers of every later request [default: 10s].
    #[arg(long, env = "TANDEM_UPGRADE_TIMEOUT")]
    pub upgrade_timeout: Option<HumanDuration>,
    /// Authentication: `none` or `jwt` [default: none on a loopback address, jwt otherwise].
    #[arg(long, env = "TANDEM_AUTH")]
    pub auth: Option<AuthMode>,
    /// Allow `--auth none` on a non-loopback address: anyone who reaches the port may read and
    /// change every document. Logged as a warning at start-up.
    #[arg(long, env = "TANDEM_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
    /// File with the HS256 shared secret of an identity provider (at least 32 bytes).
    #[arg(long, env = "TANDEM_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// A public key in PEM and the one algorithm it verifies, as `ALG=PATH` (RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA). Repeat or separate with commas for several.
    #[arg(long, env = "TANDEM_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Option<Vec<PublicKeyArg>>,
    /// A JWKS file (JSON Web Key Set); a token picks its key by `kid`.
    #[arg(long, env = "TANDEM_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted token algorithms, comma-separated [default: those of the configured keys].
    #[arg(long, env = "TANDEM_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Option<Vec<JwtAlgorithm>>,
    /// Accepted issuers (`iss`), comma-separated; unset checks none.
    #[arg(long, env = "TANDEM_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Option<Vec<String>>,
    /// Accepted audiences (`aud`), comma-separated; unset checks none.
    #[arg(long, env = "TANDEM_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Option<Vec<String>>,
    /// Clock skew tolerated on `exp` and `nbf` [default: 30s].
    #[arg(long, env = "TANDEM_JWT_LEEWAY")]
    pub jwt_leeway: Option<HumanDuration>,
    /// Lifetime of the tokens `POST /api/login` and `POST /api/token/refresh` return [default: 1h].
    #[arg(long, env = "TANDEM_LOGIN_TOKEN_TTL")]
    pub login_token_ttl: Option<HumanDuration>,
    /// Window over which failed sign-ins are counted [default: 15m].
    #[arg(long, env = "TANDEM_LOGIN_FAILURE_WINDOW")]
    pub login_failure_window: Option<HumanDuration>,
    /// Failed sign-ins per account in the window before it is refused with 429 [default: 5].
    #[arg(long, env = "TANDEM_LOGIN_MAX_FAILURES_PER_ACCOUNT")]
    pub login_max_failures_per_account: Option<u32>,
    /// Failed sign-ins per client address in the window before it is refused with 429
    /// [default: 20].
    #[arg(long, env = "TANDEM_LOGIN_MAX_FAILURES_PER_ADDRESS")]
    pub login_max_failures_per_address: Option<u32>,
    /// Messages one connection may send per second, with bursts of twice that; over it the
    /// connection is closed with 4429; 0 disables [default: 500].
    #[arg(long, env = "TANDEM_MAX_MESSAGES_PER_SECOND")]
    pub max_messages_per_second: Option<u64>,
    /// Bytes one connection may send per second, with bursts up to --max-frame-bytes; over it
    /// the connection is closed with 4429; 0 disables [default: 8388608].
    #[arg(long, env = "TANDEM_MAX_BYTES_PER_SECOND")]
    pub max_bytes_per_second: Option<u64>,
    /// Awareness messages one connection may send per second, with bursts of twice that; over it
    /// the connection is closed with 4429; 0 disables [default: 60].
    #[arg(long, env = "TANDEM_MAX_AWARENESS_PER_SECOND")]
    pub max_awareness_per_second: Option<u64>,
    /// Largest stored size of one document (snapshot plus update log) in bytes; an update that
    /// would pass it is refused and its sender closed with 1009 [default: 268435456].
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES")]
    pub max_doc_bytes: Option<u64>,
    /// Largest uploaded file in bytes [default: 2147483648].
    #[arg(long, env = "TANDEM_MAX_FILE_BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Bytes of files (all versions) each workspace may store; 0 is unlimited
    /// [default: 21474836480].
    #[arg(long, env = "TANDEM_WORKSPACE_QUOTA_BYTES")]
    pub workspace_quota_bytes: Option<u64>,
    /// An unfinished resumable upload is deleted, with its bytes, this long after it was created
    /// [default: 24h].
    #[arg(long, env = "TANDEM_UPLOAD_EXPIRY")]
    pub upload_expiry: Option<HumanDuration>,
    /// How often expired uploads and orphaned file bytes are removed [default: 5m].
    #[arg(long, env = "TANDEM_FILE_CLEANUP_INTERVAL")]
    pub file_cleanup_interval: Option<HumanDuration>,
    /// Versions kept per file: storing one more drops the oldest; 0 is unlimited
    /// [default: 100].
    #[arg(long, env = "TANDEM_MAX_FILE_VERSIONS")]
    pub max_file_versions: Option<usize>,
    /// Edits of one author on one doc within this time of the last one extend the same
    /// activity entry (an edit session) [default: 5m].
    #[arg(long, env = "TANDEM_ACTIVITY_SESSION_GAP")]
    pub activity_session_gap: Option<HumanDuration>,
    /// Activity entries older than this are deleted [default: 90days].
    #[arg(long, env = "TANDEM_ACTIVITY_RETENTION")]
    pub activity_retention: Option<HumanDuration>,
    /// A `doc.changed` webhook is sent after the doc has been quiet this long [default: 2s].
    #[arg(long, env = "TANDEM_WEBHOOK_DEBOUNCE")]
    pub webhook_debounce: Option<HumanDuration>,
    /// ... but no later than this after the first change it reports [default: 30s].
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_DELAY")]
    pub webhook_max_delay: Option<HumanDuration>,
    /// First retry delay of a failed delivery; it doubles on each failure [default: 1s].
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_BASE")]
    pub webhook_retry_base: Option<HumanDuration>,
    /// Longest retry delay [default: 1h].
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_MAX")]
    pub webhook_retry_max: Option<HumanDuration>,
    /// A delivery not acknowledged this long after it was queued is given up and logged as
    /// failed [default: 72h].
    #[arg(long, env = "TANDEM_WEBHOOK_GIVE_UP")]
    pub webhook_give_up: Option<HumanDuration>,
    /// Time limit of one delivery attempt, connection included [default: 10s].
    #[arg(long, env = "TANDEM_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<HumanDuration>,
    /// Allow webhooks to loopback, private, link-local and other internal addresses; without it
    /// they are refused at registration and at every delivery, so the webhook API cannot reach
    /// internal services [default: false].
    #[arg(long, env = "TANDEM_WEBHOOK_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private: Option<bool>,
    /// Proxies whose X-Forwarded-For or Forwarded header (and PROXY header, with
    /// --proxy-protocol) names the client: addresses or CIDR blocks, comma-separated, or `none`
    /// to trust nobody [default: 127.0.0.0/8,::1].
    #[arg(long, env = "TANDEM_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<TrustedProxyArg>>,
    /// Read a PROXY protocol header (v1 or v2) at the start of each connection from a trusted
    /// proxy, for TCP balancers such as haproxy's `send-proxy` [default: false].
    #[arg(long, env = "TANDEM_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// Bytes of the reserve file `reserve` in the data directory: deleted when the disk fills up,
    /// so that deletes still commit, and written again when space returns; `0` disables it
    /// [default: 4194304].
    #[arg(long, env = "TANDEM_DISK_RESERVE_BYTES")]
    pub disk_reserve_bytes: Option<u64>,
    /// Create a new, empty database even though the data directory holds blobs, uploads or a
    /// server key; without it the server refuses to start when `tandem.redb` is missing or
    /// empty beside such data [default: false].
    #[arg(long, env = "TANDEM_INIT", num_args = 0..=1, default_missing_value = "true")]
    pub init: Option<bool>,
    /// The header a trusted proxy names the client in: `xff` (X-Forwarded-For, which nginx and
    /// haproxy append to) or `forwarded` (RFC 7239, for a proxy that writes only that one); the
    /// other header is ignored, since a proxy passes it through from the client [default: xff].
    #[arg(long, env = "TANDEM_FORWARDED_HEADER")]
    pub forwarded_header: Option<ForwardedHeader>,
}

/// A JWT algorithm name as accepted on the command line (`RS256`, `EdDSA`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtAlgorithm(pub jsonwebtoken::Algorithm);

impl std::str::FromStr for JwtAlgorithm {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse()
            .map(JwtAlgorithm)
            .map_err(|_| format!("unknown JWT algorithm {text:?}"))
    }
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `ALG=PATH`: a public key file and the one algorithm it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyArg {
    /// The algorithm.
    pub algorithm: jsonwebtoken::Algorithm,
    /// The PEM file.
    pub path: PathBuf,
}

impl std::str::FromStr for PublicKeyArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (algorithm, path) = text
            .split_once('=')
            .ok_or_else(|| format!("expected ALG=PATH, got {text:?}"))?;
        Ok(PublicKeyArg {
            algorithm: algorithm.parse::<JwtAlgorithm>()?.0,
            path: PathBuf::from(path),
        })
    }
}

impl<'de> Deserialize<'de> for PublicKeyArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A duration written as `500ms`, `10s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The validated configuration of one server process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Directory of the database file.
    pub data_dir: PathBuf,
    /// Directory to serve the web client from; `None` serves the client built into the binary.
    pub web_dir: Option<PathBuf>,
    /// Log filter directive.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Doc lifecycle and per-peer limits.
    pub hub: HubConfig,
    /// Ping and timeouts of connections.
    pub connection: ConnectionConfig,
    /// The redb writer.
    pub persist: PersistConfig,
    /// Longest wait for the final flush at shutdown.
    pub shutdown_timeout: Duration,
    /// Worker threads of the async runtime.
    pub worker_threads: usize,
    /// TLS, connection caps and the upgrade deadline of the accept loop.
    pub listener: ListenerConfig,
    /// Authentication and the keys tokens are verified with.
    pub auth: AuthConfig,
    /// Password sign-in: token lifetime and the limits on failed attempts.
    pub accounts: AccountConfig,
    /// File uploads: size limit, quota, upload expiry, cleanup.
    pub files: FilesConfig,
    /// The activity feed: edit sessions and retention.
    pub activity: ActivityConfig,
    /// Webhook debounce, retries and timeouts.
    pub webhooks: WebhookConfig,
    /// Create the database even beside existing data (`--init`).
    pub init: bool,
}

/// Reads the file named by `--config`, if any, and merges it under the flags.
pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => ServeArgs::default(),
    };
    check_tls_pair(&args, &file)?;
    check_version_caps(&file)?;
    let config = resolve(args, file);
    config
        .auth
        .check_bind(config.addr.ip())
        .map_err(|message| anyhow::anyhow!(message))?;
    Ok(config)
}

/// The TLS certificate and key come as a pair, whichever of flag, environment or file names them
/// (so not clap's `requires`, which would refuse a cert flag whose key is in the file).
fn check_tls_pair(args: &ServeArgs, file: &ServeArgs) -> anyhow::Result<()> {
    let cert = args.tls_cert.as_ref().or(file.tls_cert.as_ref());
    let key = args.tls_key.as_ref().or(file.tls_key.as_ref());
    match (cert, key) {
        (Some(_), None) => anyhow::bail!("tls_cert is set but tls_key is not: TLS needs both"),
        (None, Some(_)) => anyhow::bail!("tls_key is set but tls_cert is not: TLS needs both"),
        _ => Ok(()),
    }
}

/// The version caps are at least 1: a cap of 0 would prune the automatic version just
/// announced, or refuse every named one. Flags and environment are checked by clap.
fn check_version_caps(file: &ServeArgs) -> anyhow::Result<()> {
    for (key, value) in [
        ("max_auto_versions", file.max_auto_versions),
        ("max_named_versions", file.max_named_versions),
    ] {
        if value == Some(0) {
            anyhow::bail!("{key} must be at least 1");
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// Merges flags/environment (`args`) over the file (`file`) over the defaults.
pub fn resolve(args: ServeArgs, file: ServeArgs) -> Config {
    let duration =
        |flag: Option<HumanDuration>, from_file: Option<HumanDuration>, default_s: u64| {
            flag.or(from_file)
                .map_or(Duration::from_secs(default_s), |d| d.0)
        };
    let bind = args
        .bind
        .or(file.bind)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = args.port.or(file.port).unwrap_or(8080);
    let limits = Limits {
        max_frame_bytes: args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(DEFAULT_MAX_FRAME_BYTES),
        max_awareness_state_bytes: args
            .max_awareness_state_bytes
            .or(file.max_awareness_state_bytes)
            .unwrap_or(DEFAULT_MAX_AWARENESS_STATE_BYTES),
        max_awareness_clients_per_peer: args
            .max_awareness_clients_per_peer
            .or(file.max_awareness_clients_per_peer)
            .unwrap_or(DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER),
        awareness_timeout_ms: duration(args.awareness_timeout, file.awareness_timeout, 30)
            .as_millis() as u64,
        max_messages_per_second: args
            .max_messages_per_second
            .or(file.max_messages_per_second)
            .unwrap_or(DEFAULT_MAX_MESSAGES_PER_SECOND),
        max_bytes_per_second: args
            .max_bytes_per_second
            .or(file.max_bytes_per_second)
            .unwrap_or(DEFAULT_MAX_BYTES_PER_SECOND),
        max_awareness_per_second: args
            .max_awareness_per_second
            .or(file.max_awareness_per_second)
            .unwrap_or(DEFAULT_MAX_AWARENESS_PER_SECOND),
        max_doc_bytes: args
            .max_doc_bytes
            .or(file.max_doc_bytes)
            .unwrap_or(DEFAULT_MAX_DOC_BYTES),
    };
    Config {
        addr: SocketAddr::new(bind, port),
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data")),
        web_dir: args.web_dir.or(file.web_dir),
        log: args
            .log
            .or(file.log)
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".into()),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        hub: HubConfig {
            doc_unload_grace: duration(args.doc_unload_grace, file.doc_unload_grace, 30),
            compact_after_updates: args
                .compact_after_updates
                .or(file.compact_after_updates)
                .unwrap_or(1000),
            compact_after_bytes: args
                .compact_after_bytes
                .or(file.compact_after_bytes)
                .unwrap_or(8 * 1024 * 1024),
            outbox_capacity: args
                .outbox_capacity
                .or(file.outbox_capacity)
                .unwrap_or(DEFAULT_OUTBOX_CAPACITY)
                .max(1),
            auto_version_interval: duration(
                args.auto_version_interval,
                file.auto_version_interval,
                600,
            ),
            max_auto_versions: args
                .max_auto_versions
                .or(file.max_auto_versions)
                .unwrap_or(100),
            max_named_versions: args
                .max_named_versions
                .or(file.max_named_versions)
                .unwrap_or(DEFAULT_MAX_NAMED_VERSIONS),
            limits,
        },
        connection: ConnectionConfig {
            ping_interval: duration(args.ping_interval, file.ping_interval, 5),
            pong_timeout: duration(args.pong_timeout, file.pong_timeout, 15),
        },
        persist: PersistConfig {
            fsync: args.fsync.or(file.fsync).unwrap_or(true),
            commit_interval: args
                .commit_interval
                .or(file.commit_interval)
                .map_or(DEFAULT_COMMIT_INTERVAL, |d| d.0),
            cache_bytes: args
                .db_cache_bytes
                .or(file.db_cache_bytes)
                .unwrap_or(tandem_store::DEFAULT_CACHE_BYTES),
            reserve_bytes: args
                .disk_reserve_bytes
                .or(file.disk_reserve_bytes)
                .unwrap_or(tandem_store::space::DEFAULT_RESERVE_BYTES),
        },
        shutdown_timeout: duration(args.shutdown_timeout, file.shutdown_timeout, 10),
        worker_threads: args
            .worker_threads
            .or(file.worker_threads)
            .unwrap_or_else(default_worker_threads)
            .max(1),
        listener: ListenerConfig {
            // `load` has refused a lone cert or key; `resolve` keeps TLS off for one.
            tls: match (
                args.tls_cert.or(file.tls_cert),
                args.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(20_000)
                .max(1),
            max_connections_per_address: args
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(512)
                .max(1),
            upgrade_timeout: duration(args.upgrade_timeout, file.upgrade_timeout, 10),
            trusted_proxies: args
                .trusted_proxies
                .or(file.trusted_proxies)
                .map_or_else(TrustedProxies::loopback, |entries| {
                    TrustedProxies::new(entries.into_iter().filter_map(|e| e.0).collect())
                }),
            proxy_protocol: args.proxy_protocol.or(file.proxy_protocol).unwrap_or(false),
            forwarded_header: args
                .forwarded_header
                .or(file.forwarded_header)
                .unwrap_or_default(),
        },
        auth: AuthConfig {
            // Off by default only where nobody else can connect.
            mode: args.auth.or(file.auth).unwrap_or(if bind.is_loopback() {
                AuthMode::None
            } else {
                AuthMode::Jwt
            }),
            insecure_no_auth: args
                .insecure_no_auth
                .or(file.insecure_no_auth)
                .unwrap_or(false),
            secret_file: args.jwt_secret_file.or(file.jwt_secret_file),
            public_keys: args
                .jwt_public_key
                .or(file.jwt_public_key)
                .unwrap_or_default()
                .into_iter()
                .map(|key| (key.algorithm, key.path))
                .collect(),
            jwks_file: args.jwks_file.or(file.jwks_file),
            algorithms: args
                .jwt_algorithms
                .or(file.jwt_algorithms)
                .map(|list| list.into_iter().map(|algorithm| algorithm.0).collect()),
            issuers: args.jwt_issuer.or(file.jwt_issuer).unwrap_or_default(),
            audiences: args.jwt_audience.or(file.jwt_audience).unwrap_or_default(),
            leeway: args
                .jwt_leeway
                .or(file.jwt_leeway)
                .map_or(crate::auth::DEFAULT_LEEWAY, |leeway| leeway.0),
        },
        accounts: {
            let defaults = AccountConfig::default();
            AccountConfig {
                login_token_ttl: args
                    .login_token_ttl
                    .or(file.login_token_ttl)
                    .map_or(defaults.login_token_ttl, |ttl| ttl.0),
                failure_window: args
                    .login_failure_window
                    .or(file.login_failure_window)
                    .map_or(defaults.failure_window, |window| window.0),
                max_failures_per_account: args
                    .login_max_failures_per_account
                    .or(file.login_max_failures_per_account)
                    .unwrap_or(defaults.max_failures_per_account)
                    .max(1),
                max_failures_per_address: args
                    .login_max_failures_per_address
                    .or(file.login_max_failures_per_address)
                    .unwrap_or(defaults.max_failures_per_address)
                    .max(1),
            }
        },
        files: {
            let defaults = FilesConfig::default();
            FilesConfig {
                max_file_bytes: args
                    .max_file_bytes
                    .or(file.max_file_bytes)
                    .unwrap_or(defaults.max_file_bytes),
                workspace_quota_bytes: args
                    .workspace_quota_bytes
                    .or(file.workspace_quota_bytes)
                    .unwrap_or(defaults.workspace_quota_bytes),
                upload_expiry: args
                    .upload_expiry
                    .or(file.upload_expiry)
                    .map_or(defaults.upload_expiry, |expiry| expiry.0),
                cleanup_interval: args
                    .file_cleanup_interval
                    .or(file.file_cleanup_interval)
                    .map_or(defaults.cleanup_interval, |interval| interval.0),
                max_file_versions: args
                    .max_file_versions
                    .or(file.max_file_versions)
                    .unwrap_or(defaults.max_file_versions),
                ..defaults
            }
        },
        activity: ActivityConfig {
            session_gap: duration(args.activity_session_gap, file.activity_session_gap, 5 * 60),
            retention: duration(
                args.activity_retention,
                file.activity_retention,
                90 * 24 * 3600,
            ),
        },
        webhooks: WebhookConfig {
            debounce: duration(args.webhook_debounce, file.webhook_debounce, 2),
            max_delay: duration(args.webhook_max_delay, file.webhook_max_delay, 30),
            retry_base: duration(args.webhook_retry_base, file.webhook_retry_base, 1)
                .max(Duration::from_millis(1)),
            retry_max: duration(args.webhook_retry_max, file.webhook_retry_max, 3600),
            give_up: duration(args.webhook_give_up, file.webhook_give_up, 72 * 3600),
            timeout: duration(args.webhook_timeout, file.webhook_timeout, 10),
            allow_private: args
                .webhook_allow_private
                .or(file.webhook_allow_private)
                .unwrap_or(false),
        },
        init: args.init.or(file.init).unwrap_or(false),
    }
}

impl Config {
    /// Defaults for everything, listening on `127.0.0.1:0` and storing in `data_dir`.
    /// Used by tests and embedders.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = resolve(ServeArgs::default(), ServeArgs::default());
        config.addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        config.data_dir = data_dir.into();
        config
    }
}

/// One worker thread less than the CPUs: the redb writer thread and the blocking pool (loads,
/// password hashes) need a core too, and with fewer workers than busy cores the runtime stops
/// waking idle workers for every task it schedules. On 2 CPUs, one worker halved the server's
/// CPU for 500 peers' presence (`benches/RESULTS.md`).
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: ServeArgs =
            toml::from_str("port = 9000\nbind = \"0.0.0.0\"\nping_interval = \"2s\"").unwrap();
        let args = ServeArgs {
            port: Some(7000),
            ..ServeArgs::default()
        };
        let config = resolve(args, file);
        assert_eq!(config.addr, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(config.connection.ping_interval, Duration::from_secs(2));
        assert_eq!(config.connection.pong_timeout, Duration::from_secs(15));
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert_eq!(config.web_dir, None, "the built-in client by default");
    }

    #[test]
    fn tls_needs_both_cert_and_key_from_any_source() {
        let file: ServeArgs = toml::from_str("tls_cert = \"cert.pem\"").unwrap();
        let error = check_tls_pair(&ServeArgs::default(), &file).unwrap_err();
        assert!(error.to_string().contains("tls_key is not"), "{error}");
        let args = ServeArgs {
            tls_key: Some("key.pem".into()),
            ..ServeArgs::default()
        };
        check_tls_pair(&args, &file).unwrap();
        let config = resolve(args, file);
        let tls = config.listener.tls.expect("tls on");
        assert_eq!(tls.cert, PathBuf::from("cert.pem"));
        assert_eq!(tls.key, PathBuf::from("key.pem"));
        assert!(
            resolve(ServeArgs::default(), ServeArgs::default())
                .listener
                .tls
                .is_none()
        );
    }

    #[test]
    fn version_settings_have_defaults_and_come_from_flags_over_the_file() {
        let defaults = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(defaults.hub.auto_version_interval, Duration::from_secs(600));
        assert_eq!(defaults.hub.max_auto_versions, 100);
        let file: ServeArgs =
            toml::from_str("auto_version_interval = \"2m\"\nmax_auto_versions = 7").unwrap();
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--auto-version-interval", "90s"])
                .unwrap()
                .command
        else {
            panic!("serve");
        };
        let config = resolve(args, file);
        assert_eq!(config.hub.auto_version_interval, Duration::from_secs(90));
        assert_eq!(config.hub.max_auto_versions, 7);
        assert_eq!(defaults.hub.max_named_versions, 1000);
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--max-named-versions", "3"])
                .unwrap()
                .command
        else {
            panic!("serve");
        };
        assert_eq!(
            resolve(args, ServeArgs::default()).hub.max_named_versions,
            3
        );
    }

    #[test]
    fn version_caps_of_zero_are_refused() {
        for flag in ["--max-auto-versions", "--max-named-versions"] {
            assert!(
                Cli::try_parse_from(["tandem", "serve", flag, "0"]).is_err(),
                "{flag}"
            );
        }
        for key in ["max_auto_versions", "max_named_versions"] {
            let file: ServeArgs = toml::from_str(&format!("{key} = 0")).unwrap();
            let error = check_version_caps(&file).unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
        let file: ServeArgs = toml::from_str("max_auto_versions = 1").unwrap();
        assert!(check_version_caps(&file).is_ok());
    }

    #[test]
    fn connection_caps_and_upgrade_timeout_have_defaults() {
        let file: ServeArgs =
            toml::from_str("max_connections_per_address = 3\nupgrade_timeout = \"1s\"").unwrap();
        let config = resolve(ServeArgs::default(), file);
        assert_eq!(config.listener.max_connections, 20_000);
        assert_eq!(config.listener.max_connections_per_address, 3);
        assert_eq!(config.listener.upgrade_timeout, Duration::from_secs(1));
    }

    #[test]
    fn rate_and_doc_size_limits_come_from_flags_over_the_file() {
        let file: ServeArgs = toml::from_str(
            "max_messages_per_second = 7\nmax_bytes_per_second = 1000\nmax_awareness_per_second = 3\nmax_doc_bytes = 4096",
        )
        .unwrap();
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--max-doc-bytes", "9000"])
                .unwrap()
                .command
        else {
            panic!("serve command")
        };
        let limits = resolve(args, file).hub.limits;
        assert_eq!(limits.max_messages_per_second, 7);
        assert_eq!(limits.max_bytes_per_second, 1000);
        assert_eq!(limits.max_awareness_per_second, 3);
        assert_eq!(limits.max_doc_bytes, 9000);
        let defaults = resolve(ServeArgs::default(), ServeArgs::default())
            .hub
            .limits;
        assert_eq!(defaults, Limits::default());
    }

    #[test]
    fn authentication_is_on_by_default_beyond_loopback() {
        let local = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(local.auth.mode, AuthMode::None);
        let file: ServeArgs = toml::from_str("bind = \"0.0.0.0\"").unwrap();
        let public = resolve(ServeArgs::default(), file);
        assert_eq!(public.auth.mode, AuthMode::Jwt);
        let file: ServeArgs = toml::from_str(
            "bind = \"0.0.0.0\"\nauth = \"none\"\njwt_public_key = [\"ES256=/k.pem\"]",
        )
        .unwrap();
        let open = resolve(ServeArgs::default(), file);
        assert!(open.auth.check_bind(open.addr.ip()).is_err());
        assert_eq!(
            open.auth.public_keys,
            vec![(jsonwebtoken::Algorithm::ES256, PathBuf::from("/k.pem"))]
        );
        let insecure = ServeArgs {
            insecure_no_auth: Some(true),
            ..ServeArgs::default()
        };
        let file: ServeArgs = toml::from_str("bind = \"0.0.0.0\"\nauth = \"none\"").unwrap();
        let allowed = resolve(insecure, file);
        assert!(allowed.auth.check_bind(allowed.addr.ip()).is_ok());
    }

    #[test]
    fn activity_and_webhook_settings_come_from_flags_over_the_file_over_defaults() {
        let file: ServeArgs =
            toml::from_str("activity_retention = \"7days\"\nwebhook_debounce = \"5s\"").unwrap();
        let Some(Command::Serve(args)) = Cli::try_parse_from([
            "tandem",
            "serve",
            "--webhook-debounce",
            "500ms",
            "--activity-session-gap",
            "1m",
        ])
        .unwrap()
        .command
        else {
            panic!("serve command")
        };
        let config = resolve(args, file);
        assert_eq!(config.activity.session_gap, Duration::from_secs(60));
        assert_eq!(
            config.activity.retention,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(config.webhooks.debounce, Duration::from_millis(500));
        assert_eq!(config.webhooks.max_delay, Duration::from_secs(30));
        assert_eq!(config.webhooks.retry_base, Duration::from_secs(1));
        assert_eq!(config.webhooks.retry_max, Duration::from_secs(3600));
        assert_eq!(config.webhooks.give_up, Duration::from_secs(72 * 3600));
        assert_eq!(config.webhooks.timeout, Duration::from_secs(10));
        let defaults = resolve(ServeArgs::default(), ServeArgs::default()).activity;
        assert_eq!(defaults.session_gap, Duration::from_secs(300));
        assert_eq!(defaults.retention, Duration::from_secs(90 * 24 * 3600));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<ServeArgs>("prot = 1").is_err());
    }

    #[test]
    fn file_limits_come_from_flags_over_the_file_over_defaults() {
        let file: ServeArgs =
            toml::from_str("workspace_quota_bytes = 0\nupload_expiry = \"2h\"").unwrap();
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--max-file-bytes", "1000"])
                .unwrap()
                .command
        else {
            panic!("serve command")
        };
        let files = resolve(args, file).files;
        assert_eq!(files.max_file_bytes, 1000);
        assert_eq!(files.workspace_quota_bytes, 0);
        assert_eq!(files.upload_expiry, Duration::from_secs(2 * 60 * 60));
        assert_eq!(files.cleanup_interval, Duration::from_secs(5 * 60));
        assert_eq!(files.max_file_versions, 100);
        let defaults = resolve(ServeArgs::default(), ServeArgs::default()).files;
        assert_eq!(defaults.max_file_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(defaults.workspace_quota_bytes, 20 * 1024 * 1024 * 1024);
    }

    #[test]
    fn login_settings_come_from_flags_over_the_file_over_defaults() {
        let file: ServeArgs =
            toml::from_str("login_token_ttl = \"10m\"\nlogin_max_failures_per_account = 3")
                .unwrap();
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--login-token-ttl", "30s"])
                .unwrap()
                .command
        else {
            panic!("serve command")
        };
        let accounts = resolve(args, file).accounts;
        assert_eq!(accounts.login_token_ttl, Duration::from_secs(30));
        assert_eq!(accounts.max_failures_per_account, 3);
        assert_eq!(accounts.max_failures_per_address, 20);
        assert_eq!(accounts.failure_window, Duration::from_secs(15 * 60));
    }

    #[test]
    fn private_webhook_targets_are_refused_unless_the_flag_or_the_file_allows_them() {
        let serve = |argv: &[&str]| {
            let mut all = vec!["tandem", "serve"];
            all.extend_from_slice(argv);
            match Cli::try_parse_from(all).unwrap().command {
                Some(Command::Serve(args)) => args,
                _ => panic!("serve command"),
            }
        };
        assert!(
            !resolve(serve(&[]), ServeArgs::default())
                .webhooks
                .allow_private
        );
        assert!(
            resolve(serve(&["--webhook-allow-private"]), ServeArgs::default())
                .webhooks
                .allow_private
        );
        let file: ServeArgs = toml::from_str("webhook_allow_private = true").unwrap();
        assert!(resolve(serve(&[]), file).webhooks.allow_private);
        let file: ServeArgs = toml::from_str("webhook_allow_private = true").unwrap();
        assert!(
            !resolve(serve(&["--webhook-allow-private", "false"]), file)
                .webhooks
                .allow_private
        );
    }

    #[test]
    fn trusted_proxies_default_to_loopback_and_can_be_none() {
        let config = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(config.listener.trusted_proxies, TrustedProxies::loopback());
        assert!(!config.listener.proxy_protocol);
        let file: ServeArgs =
            toml::from_str("trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true").unwrap();
        let config = resolve(ServeArgs::default(), file.clone());
        assert_eq!(
            config.listener.trusted_proxies,
            "10.0.0.0/8".parse::<TrustedProxies>().unwrap()
        );
        assert!(config.listener.proxy_protocol);
        assert_eq!(
            config.listener.forwarded_header,
            ForwardedHeader::XForwardedFor
        );
        let args: ServeArgs = toml::from_str("forwarded_header = \"forwarded\"").unwrap();
        assert_eq!(
            resolve(args, ServeArgs::default())
                .listener
                .forwarded_header,
            ForwardedHeader::Forwarded
        );
        assert!(toml::from_str::<ServeArgs>("forwarded_header = \"both\"").is_err());
        let args = Cli::parse_from(["tandem", "serve", "--trusted-proxies", "none"]);
        let Some(Command::Serve(args)) = args.command else {
            panic!("serve");
        };
        let config = resolve(args, file);
        assert!(config.listener.trusted_proxies.nets().is_empty());
        let args = Cli::parse_from([
            "tandem",
            "serve",
            "--trusted-proxies",
            "192.0.2.1,10.0.0.0/8",
        ]);
        let Some(Command::Serve(args)) = args.command else {
            panic!("serve");
        };
        let nets = resolve(args, ServeArgs::default()).listener.trusted_proxies;
        assert!(nets.contains("192.0.2.1".parse().unwrap()));
        assert!(nets.contains("10.9.9.9".parse().unwrap()));
        assert!(!nets.contains("127.0.0.1".parse().unwrap()));
        assert!(toml::from_str::<ServeArgs>("trusted_proxies = [\"nonsense\"]").is_err());
    }
}
