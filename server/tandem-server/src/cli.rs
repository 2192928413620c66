//! The command line of the `tandem` binary: [`Cli`], the [`Command`] enum, the flags of every
//! subcommand, and the value types they parse into ([`HumanDuration`], [`DocRole`], ...).
//!
//! This module only declares arguments; it knows neither how flags become a [`crate::Config`]
//! (`config.rs`, which layers them over the file and the defaults) nor what a subcommand does
//! (`command/`). Both of those import from here and never the other way round, so the argument
//! types can be read, and changed, in one place.
//!
//! The `[default: …]` of each `tandem serve` flag is not written in its doc comment: it is
//! appended by [`Cli::command_with_defaults`] from `config::defaults()`, the same value the
//! configuration falls back to.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthMode, Role};
use crate::proxy::{ForwardedHeader, TrustedProxyArg};

/// Command line of the `tandem` binary.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: a real-time collaborative editing server"
)]
pub struct Cli {
    /// `None` runs `serve` ([`Cli::into_command`]).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
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
    User(UserCommand),
    /// Tokens signed with the server's own key.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage webhooks (works beside a running server).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Back up a running server (one node): its store and the blobs it names, as one archive.
    Backup(BackupArgs),
    /// Lay out a backup archive in an empty data directory, verified first.
    RestoreBackup(RestoreBackupArgs),
    /// Write documents out of a running server: a Yjs update (`NAME.yjs`) per document, and
    /// its text (`NAME`) for `.md` and `.txt` documents.
    Export(ExportArgs),
    /// Read documents into a running server from `NAME.yjs` Yjs updates and `.md`/`.txt` text
    /// files.
    Import(ImportArgs),
    /// Verify a data directory offline (the server stopped); prints one line per problem and
    /// exits non-zero if there is any. Changes nothing.
    Check(CheckArgs),
}

impl Cli {
    /// Parses the process's arguments with `defaults` shown in the help of `tandem serve`;
    /// exits with clap's usage message and status on bad arguments, as `Cli::parse` does.
    pub fn parse_with_defaults(defaults: &ServeArgs) -> Cli {
        let matches = Cli::command_with_defaults(defaults).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// The clap command with ` [default: …]` appended to the help of each `tandem serve` flag
    /// that `defaults` sets. The defaults are rendered from the values the configuration falls
    /// back to, so the help cannot disagree with them; flags whose default is not one value
    /// (`--auth`, `--worker-threads`, ...) describe it in their doc comment instead.
    pub fn command_with_defaults(defaults: &ServeArgs) -> clap::Command {
        let rendered = defaults.rendered();
        Cli::command().mut_subcommand("serve", |serve| {
            rendered.iter().fold(serve, |serve, (id, value)| {
                serve.mut_arg(id, |arg| {
                    let suffix = format!(" [default: {value}]");
                    let help = arg.get_help().map(|help| format!("{help}{suffix}"));
                    let long_help = arg.get_long_help().map(|help| format!("{help}{suffix}"));
                    let arg = match help {
                        Some(help) => arg.help(help),
                        None => arg,
                    };
                    match long_help {
                        Some(help) => arg.long_help(help),
                        None => arg,
                    }
                })
            })
        })
    }

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

/// Flags of `tandem serve`, and the keys of its config file. Precedence: flag > environment >
/// config file > default.
///
/// Every field is optional so that a layer can leave a setting to the layer below: clap fills
/// flag and environment, `toml` the file, `config::defaults()` the defaults, and
/// [`ServeArgs::or`] stacks them. Serialised only to render the defaults into `--help`; fields
/// without one value as default are skipped there.
#[derive(Debug, Default, Args, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, with '_' for '-').
    #[arg(long, env = "TANDEM_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TANDEM_BIND")]
    pub bind: Option<IpAddr>,
    /// Port to listen on; 0 picks a free port.
    #[arg(long, env = "TANDEM_PORT")]
    pub port: Option<u16>,
    /// Directory of the database file `tandem.redb`.
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve the web client from this directory instead of the copy built into the binary.
    #[arg(long, env = "TANDEM_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `tandem_server=debug` [default: info, or RUST_LOG].
    #[arg(long, env = "TANDEM_LOG")]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Collect metrics and serve `GET /metrics` (`off`: nothing is recorded, `/metrics` is 404).
    #[arg(long, env = "TANDEM_METRICS")]
    pub metrics: Option<MetricsSwitch>,
    /// Also serve `GET /metrics` without authentication on this address (HOST:PORT), for a
    /// scraper on a private network.
    #[arg(long, env = "TANDEM_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Largest WebSocket frame in bytes.
    #[arg(long, env = "TANDEM_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u64>,
    /// Largest awareness state in bytes.
    #[arg(long, env = "TANDEM_MAX_AWARENESS_STATE_BYTES")]
    pub max_awareness_state_bytes: Option<usize>,
    /// Awareness client ids one connection may own.
    #[arg(long, env = "TANDEM_MAX_AWARENESS_CLIENTS_PER_PEER")]
    pub max_awareness_clients_per_peer: Option<usize>,
    /// Presence not renewed for this long is removed.
    #[arg(long, env = "TANDEM_AWARENESS_TIMEOUT")]
    pub awareness_timeout: Option<HumanDuration>,
    /// A doc with no peers leaves memory after this long.
    #[arg(long, env = "TANDEM_DOC_UNLOAD_GRACE")]
    pub doc_unload_grace: Option<HumanDuration>,
    /// Interval between pings to each peer.
    #[arg(long, env = "TANDEM_PING_INTERVAL")]
    pub ping_interval: Option<HumanDuration>,
    /// A peer that sends nothing for this long after a ping is closed and its presence removed.
    #[arg(long, env = "TANDEM_PONG_TIMEOUT")]
    pub pong_timeout: Option<HumanDuration>,
    /// Longest wait for docs to flush at shutdown.
    #[arg(long, env = "TANDEM_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<HumanDuration>,
    /// fsync every commit before anything is broadcast; `false` only for benchmarks.
    #[arg(long, env = "TANDEM_FSYNC")]
    pub fsync: Option<bool>,
    /// Shortest time between the starts of two commits holding one doc's updates: a doc that
    /// keeps changing gathers what arrives meanwhile into its next commit, so a busy doc fsyncs
    /// less often. An update of a doc not committed within the interval commits at once (with
    /// whatever else is queued); `0s` commits whatever is queued as soon as the previous commit
    /// ends.
    #[arg(long, env = "TANDEM_COMMIT_INTERVAL")]
    pub commit_interval: Option<HumanDuration>,
    /// Threads that run connections and doc actors [default: one less than the CPUs, at least 1].
    #[arg(long, env = "TANDEM_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Upper bound of the database page cache in bytes.
    #[arg(long, env = "TANDEM_DB_CACHE_BYTES")]
    pub db_cache_bytes: Option<usize>,
    /// Compact a doc's log after this many updates.
    #[arg(long, env = "TANDEM_COMPACT_AFTER_UPDATES")]
    pub compact_after_updates: Option<u64>,
    /// Compact a doc's log after this many bytes.
    #[arg(long, env = "TANDEM_COMPACT_AFTER_BYTES")]
    pub compact_after_bytes: Option<u64>,
    /// A doc with edits not yet in a version gets an automatic version once this long has
    /// passed since its last version (and when it unloads).
    #[arg(long, env = "TANDEM_AUTO_VERSION_INTERVAL")]
    pub auto_version_interval: Option<HumanDuration>,
    /// Automatic versions kept per doc, at least 1; older ones are pruned.
    #[arg(long, env = "TANDEM_MAX_AUTO_VERSIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_auto_versions: Option<u64>,
    /// Named versions per doc, at least 1: saving one more is refused (`too_many_versions`);
    /// also the number of restore versions kept per doc, older ones pruned.
    #[arg(long, env = "TANDEM_MAX_NAMED_VERSIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_named_versions: Option<u64>,
    /// Frames queued for one peer before it counts as a slow consumer.
    #[arg(long, env = "TANDEM_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    /// Most documents one Hocuspocus socket (`/ws`) may have open at once; a token for one
    /// more closes the socket (1008).
    #[arg(long, env = "TANDEM_MAX_DOCS_PER_SOCKET", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_docs_per_socket: Option<u64>,
    /// PEM certificate chain; with --tls-key the port serves https and wss. Re-read when it changes.
    #[arg(long, env = "TANDEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert. Re-read when it changes.
    #[arg(long, env = "TANDEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Open TCP connections in total; more are answered 503 and closed.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open TCP connections from one IP address; more are answered 503 and closed.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// A connection that has not finished its TLS handshake and sent its first request's headers
    /// within this time is dropped; also bounds the headers of every later request.
    #[arg(long, env = "TANDEM_UPGRADE_TIMEOUT")]
    pub upgrade_timeout: Option<HumanDuration>,
    /// Authentication: `none` or `jwt` [default: none on a loopback address, jwt otherwise].
    #[arg(long, env = "TANDEM_AUTH")]
    #[serde(skip_serializing)]
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
    #[serde(skip_serializing)]
    pub jwt_public_key: Option<Vec<PublicKeyArg>>,
    /// A JWKS file (JSON Web Key Set); a token picks its key by `kid`.
    #[arg(long, env = "TANDEM_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted token algorithms, comma-separated [default: those of the configured keys].
    #[arg(long, env = "TANDEM_JWT_ALGORITHMS", value_delimiter = ',')]
    #[serde(skip_serializing)]
    pub jwt_algorithms: Option<Vec<JwtAlgorithm>>,
    /// Accepted issuers (`iss`), comma-separated; unset checks none.
    #[arg(long, env = "TANDEM_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Option<Vec<String>>,
    /// Accepted audiences (`aud`), comma-separated; unset checks none.
    #[arg(long, env = "TANDEM_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Option<Vec<String>>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "TANDEM_JWT_LEEWAY")]
    pub jwt_leeway: Option<HumanDuration>,
    /// Lifetime of the tokens `POST /api/login` and `POST /api/token/refresh` return.
    #[arg(long, env = "TANDEM_LOGIN_TOKEN_TTL")]
    pub login_token_ttl: Option<HumanDuration>,
    /// Window over which failed sign-ins are counted.
    #[arg(long, env = "TANDEM_LOGIN_FAILURE_WINDOW")]
    pub login_failure_window: Option<HumanDuration>,
    /// Failed sign-ins per account in the window before it is refused with 429.
    #[arg(long, env = "TANDEM_LOGIN_MAX_FAILURES_PER_ACCOUNT")]
    pub login_max_failures_per_account: Option<u32>,
    /// Failed sign-ins per client address in the window before it is refused with 429.
    #[arg(long, env = "TANDEM_LOGIN_MAX_FAILURES_PER_ADDRESS")]
    pub login_max_failures_per_address: Option<u32>,
    /// Messages one connection may send per second, with bursts of twice that; over it the
    /// connection is closed with 4429; 0 disables.
    #[arg(long, env = "TANDEM_MAX_MESSAGES_PER_SECOND")]
    pub max_messages_per_second: Option<u64>,
    /// Bytes one connection may send per second, with bursts up to --max-frame-bytes; over it
    /// the connection is closed with 4429; 0 disables.
    #[arg(long, env = "TANDEM_MAX_BYTES_PER_SECOND")]
    pub max_bytes_per_second: Option<u64>,
    /// Awareness messages one connection may send per second, with bursts of twice that; over it
    /// the connection is closed with 4429; 0 disables.
    #[arg(long, env = "TANDEM_MAX_AWARENESS_PER_SECOND")]
    pub max_awareness_per_second: Option<u64>,
    /// Largest stored size of one document (snapshot plus update log) in bytes; an update that
    /// would pass it is refused and its sender closed with 1009.
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES")]
    pub max_doc_bytes: Option<u64>,
    /// Largest uploaded file in bytes.
    #[arg(long, env = "TANDEM_MAX_FILE_BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Bytes of files (all versions) each workspace may store; 0 is unlimited.
    #[arg(long, env = "TANDEM_WORKSPACE_QUOTA_BYTES")]
    pub workspace_quota_bytes: Option<u64>,
    /// An unfinished resumable upload is deleted, with its bytes, this long after it was created.
    #[arg(long, env = "TANDEM_UPLOAD_EXPIRY")]
    pub upload_expiry: Option<HumanDuration>,
    /// How often expired uploads and orphaned file bytes are removed.
    #[arg(long, env = "TANDEM_FILE_CLEANUP_INTERVAL")]
    pub file_cleanup_interval: Option<HumanDuration>,
    /// Versions kept per file: storing one more drops the oldest; 0 is unlimited.
    #[arg(long, env = "TANDEM_MAX_FILE_VERSIONS")]
    pub max_file_versions: Option<usize>,
    /// Edits of one author on one doc within this time of the last one extend the same
    /// activity entry (an edit session).
    #[arg(long, env = "TANDEM_ACTIVITY_SESSION_GAP")]
    pub activity_session_gap: Option<HumanDuration>,
    /// Activity entries older than this are deleted.
    #[arg(long, env = "TANDEM_ACTIVITY_RETENTION")]
    pub activity_retention: Option<HumanDuration>,
    /// A `doc.changed` webhook is sent after the doc has been quiet this long.
    #[arg(long, env = "TANDEM_WEBHOOK_DEBOUNCE")]
    pub webhook_debounce: Option<HumanDuration>,
    /// ... but no later than this after the first change it reports.
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_DELAY")]
    pub webhook_max_delay: Option<HumanDuration>,
    /// First retry delay of a failed delivery; it doubles on each failure.
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_BASE")]
    pub webhook_retry_base: Option<HumanDuration>,
    /// Longest retry delay.
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_MAX")]
    pub webhook_retry_max: Option<HumanDuration>,
    /// A delivery not acknowledged this long after it was queued is given up and logged as
    /// failed.
    #[arg(long, env = "TANDEM_WEBHOOK_GIVE_UP")]
    pub webhook_give_up: Option<HumanDuration>,
    /// Time limit of one delivery attempt, connection included.
    #[arg(long, env = "TANDEM_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<HumanDuration>,
    /// Allow webhooks to loopback, private, link-local and other internal addresses; without it
    /// they are refused at registration and at every delivery, so the webhook API cannot reach
    /// internal services.
    #[arg(long, env = "TANDEM_WEBHOOK_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private: Option<bool>,
    /// Proxies whose X-Forwarded-For or Forwarded header (and PROXY header, with
    /// --proxy-protocol) names the client: addresses or CIDR blocks, comma-separated, or `none`
    /// to trust nobody [default: 127.0.0.0/8,::1].
    #[arg(long, env = "TANDEM_TRUSTED_PROXIES", value_delimiter = ',')]
    #[serde(skip_serializing)]
    pub trusted_proxies: Option<Vec<TrustedProxyArg>>,
    /// Read a PROXY protocol header (v1 or v2) at the start of each connection from a trusted
    /// proxy, for TCP balancers such as haproxy's `send-proxy`.
    #[arg(long, env = "TANDEM_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// Bytes of the reserve file `reserve` in the data directory: deleted when the disk fills up,
    /// so that deletes still commit, and written again when space returns; `0` disables it.
    #[arg(long, env = "TANDEM_DISK_RESERVE_BYTES")]
    pub disk_reserve_bytes: Option<u64>,
    /// Create a new, empty database even though the data directory holds blobs, uploads or a
    /// server key; without it the server refuses to start when `tandem.redb` is missing or
    /// empty beside such data.
    #[arg(long, env = "TANDEM_INIT", num_args = 0..=1, default_missing_value = "true")]
    pub init: Option<bool>,
    /// The header a trusted proxy names the client in: `xff` (X-Forwarded-For, which nginx and
    /// haproxy append to) or `forwarded` (RFC 7239, for a proxy that writes only that one); the
    /// other header is ignored, since a proxy passes it through from the client [default: xff].
    #[arg(long, env = "TANDEM_FORWARDED_HEADER")]
    #[serde(skip_serializing)]
    pub forwarded_header: Option<ForwardedHeader>,
    /// Cluster mode: the Redis every node shares (`redis://host:port/db`), holding each doc's
    /// update log; it must run with `appendonly yes` and `appendfsync always`. Needs
    /// `--postgres-url` and one of `--blob-dir` or `--blob-store` too.
    #[arg(long, env = "TANDEM_REDIS_URL")]
    #[serde(skip_serializing)]
    pub redis_url: Option<String>,
    /// Cluster mode: the Postgres every node shares (`postgres://user@host:port/db`), holding
    /// snapshots and shared metadata; migrated at start.
    #[arg(long, env = "TANDEM_POSTGRES_URL")]
    #[serde(skip_serializing)]
    pub postgres_url: Option<String>,
    /// Cluster mode: the directory every node mounts for file blobs.
    #[arg(long, env = "TANDEM_BLOB_DIR")]
    #[serde(skip_serializing)]
    pub blob_dir: Option<PathBuf>,
    /// Cluster mode, instead of `--blob-dir`: file blobs on an S3-compatible store,
    /// `s3://bucket/optional/prefix`. Endpoint, region and credentials come from the `AWS_*`
    /// environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a plain-http endpoint).
    #[arg(long, env = "TANDEM_BLOB_STORE")]
    #[serde(skip_serializing)]
    pub blob_store: Option<String>,
    /// Cluster mode: what an update waits for before anyone sees it: `local` (Redis fsynced
    /// it) or `replica` (and one replica received it, `WAIT 1`).
    #[arg(long, env = "TANDEM_CLUSTER_DURABILITY")]
    pub cluster_durability: Option<ClusterDurability>,
    /// Cluster mode: stream entries younger than this stay after a compaction, for nodes whose
    /// tail is a little behind.
    #[arg(long, env = "TANDEM_CLUSTER_TRIM_MARGIN")]
    pub cluster_trim_margin: Option<HumanDuration>,
}

impl ServeArgs {
    /// Each setting of `self`, or of `lower` where `self` leaves it unset: flags and environment
    /// `.or(file)`, then `.or(defaults)`. A whole list counts as one setting (a file's
    /// `trusted_proxies` is replaced by the flag's, not extended).
    #[must_use]
    pub fn or(self, lower: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(lower.config),
            bind: self.bind.or(lower.bind),
            port: self.port.or(lower.port),
            data_dir: self.data_dir.or(lower.data_dir),
            web_dir: self.web_dir.or(lower.web_dir),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            metrics: self.metrics.or(lower.metrics),
            metrics_addr: self.metrics_addr.or(lower.metrics_addr),
            max_frame_bytes: self.max_frame_bytes.or(lower.max_frame_bytes),
            max_awareness_state_bytes: self
                .max_awareness_state_bytes
                .or(lower.max_awareness_state_bytes),
            max_awareness_clients_per_peer: self
                .max_awareness_clients_per_peer
                .or(lower.max_awareness_clients_per_peer),
            awareness_timeout: self.awareness_timeout.or(lower.awareness_timeout),
            doc_unload_grace: self.doc_unload_grace.or(lower.doc_unload_grace),
            ping_interval: self.ping_interval.or(lower.ping_interval),
            pong_timeout: self.pong_timeout.or(lower.pong_timeout),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            fsync: self.fsync.or(lower.fsync),
            commit_interval: self.commit_interval.or(lower.commit_interval),
            worker_threads: self.worker_threads.or(lower.worker_threads),
            db_cache_bytes: self.db_cache_bytes.or(lower.db_cache_bytes),
            compact_after_updates: self.compact_after_updates.or(lower.compact_after_updates),
            compact_after_bytes: self.compact_after_bytes.or(lower.compact_after_bytes),
            auto_version_interval: self.auto_version_interval.or(lower.auto_version_interval),
            max_auto_versions: self.max_auto_versions.or(lower.max_auto_versions),
            max_named_versions: self.max_named_versions.or(lower.max_named_versions),
            outbox_capacity: self.outbox_capacity.or(lower.outbox_capacity),
            max_docs_per_socket: self.max_docs_per_socket.or(lower.max_docs_per_socket),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(lower.max_connections_per_address),
            upgrade_timeout: self.upgrade_timeout.or(lower.upgrade_timeout),
            auth: self.auth.or(lower.auth),
            insecure_no_auth: self.insecure_no_auth.or(lower.insecure_no_auth),
            jwt_secret_file: self.jwt_secret_file.or(lower.jwt_secret_file),
            jwt_public_key: self.jwt_public_key.or(lower.jwt_public_key),
            jwks_file: self.jwks_file.or(lower.jwks_file),
            jwt_algorithms: self.jwt_algorithms.or(lower.jwt_algorithms),
            jwt_issuer: self.jwt_issuer.or(lower.jwt_issuer),
            jwt_audience: self.jwt_audience.or(lower.jwt_audience),
            jwt_leeway: self.jwt_leeway.or(lower.jwt_leeway),
            login_token_ttl: self.login_token_ttl.or(lower.login_token_ttl),
            login_failure_window: self.login_failure_window.or(lower.login_failure_window),
            login_max_failures_per_account: self
                .login_max_failures_per_account
                .or(lower.login_max_failures_per_account),
            login_max_failures_per_address: self
                .login_max_failures_per_address
                .or(lower.login_max_failures_per_address),
            max_messages_per_second: self
                .max_messages_per_second
                .or(lower.max_messages_per_second),
            max_bytes_per_second: self.max_bytes_per_second.or(lower.max_bytes_per_second),
            max_awareness_per_second: self
                .max_awareness_per_second
                .or(lower.max_awareness_per_second),
            max_doc_bytes: self.max_doc_bytes.or(lower.max_doc_bytes),
            max_file_bytes: self.max_file_bytes.or(lower.max_file_bytes),
            workspace_quota_bytes: self.workspace_quota_bytes.or(lower.workspace_quota_bytes),
            upload_expiry: self.upload_expiry.or(lower.upload_expiry),
            file_cleanup_interval: self.file_cleanup_interval.or(lower.file_cleanup_interval),
            max_file_versions: self.max_file_versions.or(lower.max_file_versions),
            activity_session_gap: self.activity_session_gap.or(lower.activity_session_gap),
            activity_retention: self.activity_retention.or(lower.activity_retention),
            webhook_debounce: self.webhook_debounce.or(lower.webhook_debounce),
            webhook_max_delay: self.webhook_max_delay.or(lower.webhook_max_delay),
            webhook_retry_base: self.webhook_retry_base.or(lower.webhook_retry_base),
            webhook_retry_max: self.webhook_retry_max.or(lower.webhook_retry_max),
            webhook_give_up: self.webhook_give_up.or(lower.webhook_give_up),
            webhook_timeout: self.webhook_timeout.or(lower.webhook_timeout),
            webhook_allow_private: self.webhook_allow_private.or(lower.webhook_allow_private),
            trusted_proxies: self.trusted_proxies.or(lower.trusted_proxies),
            proxy_protocol: self.proxy_protocol.or(lower.proxy_protocol),
            disk_reserve_bytes: self.disk_reserve_bytes.or(lower.disk_reserve_bytes),
            init: self.init.or(lower.init),
            forwarded_header: self.forwarded_header.or(lower.forwarded_header),
            redis_url: self.redis_url.or(lower.redis_url),
            postgres_url: self.postgres_url.or(lower.postgres_url),
            blob_dir: self.blob_dir.or(lower.blob_dir),
            blob_store: self.blob_store.or(lower.blob_store),
            cluster_durability: self.cluster_durability.or(lower.cluster_durability),
            cluster_trim_margin: self.cluster_trim_margin.or(lower.cluster_trim_margin),
        }
    }

    /// The settings this holds, as (clap argument id, value as a user would write it).
    fn rendered(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("ServeArgs serialises: plain values only");
        let serde_json::Value::Object(fields) = value else {
            unreachable!("a struct serialises to a JSON object")
        };
        fields
            .into_iter()
            .filter_map(|(key, value)| match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => Some((key, text)),
                other => Some((key, other.to_string())),
            })
            .collect()
    }
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

/// What an update waits for in cluster mode (`--cluster-durability`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterDurability {
    /// Redis wrote and fsynced it.
    #[default]
    Local,
    /// ... and at least one replica received it.
    Replica,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Whether metrics are collected (`--metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsSwitch {
    /// Collected and served at `/metrics`.
    #[default]
    On,
    /// Nothing recorded; `/metrics` answers 404 (to measure what they cost).
    Off,
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

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The duration in its largest whole unit, as it parses back: `5ms`, `30s`, `10m`, `72h`,
/// `90days`. Days only beyond three, so a day-multiple in hours (`24h`, `72h`) stays in hours.
impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DAY_S: u64 = 24 * 3600;
        let duration = self.0;
        if duration.subsec_nanos() != 0 || duration.is_zero() {
            return write!(f, "{}ms", duration.as_millis());
        }
        let seconds = duration.as_secs();
        if seconds.is_multiple_of(DAY_S) && seconds / DAY_S > 3 {
            write!(f, "{}days", seconds / DAY_S)
        } else if seconds.is_multiple_of(3600) {
            write!(f, "{}h", seconds / 3600)
        } else if seconds.is_multiple_of(60) {
            write!(f, "{}m", seconds / 60)
        } else {
            write!(f, "{seconds}s")
        }
    }
}

/// `tandem user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account, or change one: password, and name, documents and admin flag.
    Add(UserAddArgs),
    /// Remove an account. Its tokens stop refreshing and expire within --login-token-ttl.
    Remove(UserRemoveArgs),
    /// List the accounts (never their passwords).
    List(UserListArgs),
    /// Make, list or revoke an account's app passwords (for HTTP Basic, e.g. WebDAV).
    #[command(subcommand)]
    AppPassword(AppPasswordCommand),
}

/// `tandem user app-password ...`.
#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Make an app password; prints its secret, which is never shown again.
    Add(AppPasswordAddArgs),
    /// List an account's app passwords (never their secrets).
    List(AppPasswordListArgs),
    /// Revoke an app password; clients using it are refused from their next request.
    Remove(AppPasswordRemoveArgs),
}

/// Flags of `tandem user app-password add`.
#[derive(Debug, Args)]
pub struct AppPasswordAddArgs {
    /// The account id.
    pub sub: String,
    /// What the client is, e.g. `laptop` (1 to 64 bytes).
    #[arg(long)]
    pub label: String,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem user app-password list`.
#[derive(Debug, Args)]
pub struct AppPasswordListArgs {
    /// The account id.
    pub sub: String,
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `tandem user app-password remove`.
#[derive(Debug, Args)]
pub struct AppPasswordRemoveArgs {
    /// The account id.
    pub sub: String,
    /// The app password's id, as `app-password list` shows it.
    pub id: String,
    #[command(flatten)]
    pub target: Target,
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
    /// Cluster mode: the Redis the nodes share; with `--postgres-url`, the command works on the
    /// cluster's shared tables instead of a data directory.
    #[arg(long, env = "TANDEM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Cluster mode: the Postgres the nodes share.
    #[arg(long, env = "TANDEM_POSTGRES_URL")]
    pub postgres_url: Option<String>,
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

/// The running server a command talks to over HTTP, and its credentials.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's URL (`http://` or `https://`).
    #[arg(
        long,
        visible_alias = "url",
        env = "TANDEM_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// A token the server accepts: admin for `backup`, read access for `export`, write access
    /// for `import`. Without it, a short-lived admin token is signed with the `server-key` in
    /// `--data-dir` (on the server's machine).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory of the running server's `server-key`, used when no `--token` is given.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Flags of `tandem backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The archive to write (a tar file; it must not exist yet).
    pub dest: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Flags of `tandem restore-backup`.
#[derive(Debug, Args)]
pub struct RestoreBackupArgs {
    /// The archive `tandem backup` wrote.
    pub src: PathBuf,
    /// The data directory to restore into: new or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Flags of `tandem export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The directory to write into (created if needed); a document `team/a.md` becomes
    /// `team/a.md.yjs` and `team/a.md`.
    pub dir: PathBuf,
    /// Only documents whose name starts with this, e.g. `team/`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Flags of `tandem import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The directory to read: `NAME.yjs` files are merged into document `NAME`; `.md` and
    /// `.txt` files without a `.yjs` beside them become the text of the document of their name.
    pub dir: PathBuf,
    /// Only documents whose name starts with this, e.g. `team/`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Replace the text of a document that already has content by the file's text (without
    /// it, such a text file is refused).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Flags of `tandem check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The data directory (of a stopped server).
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
        let role = role.parse::<Role>().map_err(|error| error.to_string())?;
        Ok(DocRole {
            pattern: pattern.to_owned(),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_display_in_their_largest_whole_unit_and_parse_back() {
        for (text, duration) in [
            ("5ms", Duration::from_millis(5)),
            ("0ms", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(24 * 3600)),
            ("72h", Duration::from_secs(72 * 3600)),
            ("90days", Duration::from_secs(90 * 24 * 3600)),
        ] {
            assert_eq!(HumanDuration(duration).to_string(), text);
            assert_eq!(text.parse::<HumanDuration>().unwrap().0, duration, "{text}");
        }
    }

    #[test]
    fn a_layer_keeps_its_settings_and_takes_the_rest_from_the_one_below() {
        let upper = ServeArgs {
            port: Some(7000),
            ..ServeArgs::default()
        };
        let lower = ServeArgs {
            port: Some(9000),
            bind: Some(IpAddr::from([0, 0, 0, 0])),
            ..ServeArgs::default()
        };
        let merged = upper.or(lower);
        assert_eq!(merged.port, Some(7000));
        assert_eq!(merged.bind, Some(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(merged.data_dir, None);
    }

    /// The architecture invariant of this module (ARCHITECTURE.md): `config` and `command`
    /// import the argument types, never the other way round, so the two never import each other.
    #[test]
    fn the_argument_types_import_neither_the_config_nor_the_commands() {
        let source = include_str!("cli.rs");
        for module in ["config", "command"] {
            for prefix in ["crate::", "super::"] {
                let path = [prefix, module, "::"].concat();
                assert!(!source.contains(&path), "cli.rs names {path}");
            }
        }
    }
}
