//! Configuration: command-line flags, `TANDEM_*` environment variables and an optional TOML file,
//! layered over the built-in defaults and validated once into a typed [`Config`] split by
//! subsystem.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default.
//! clap resolves flag and environment into a [`ServeArgs`] whose every field is optional; the
//! file deserialises into the same type; [`defaults`] is a third one. [`resolve`] stacks the
//! three with [`ServeArgs::or`] and builds each sub-config from the result. The argument types
//! live in `cli.rs`; this module never names a subcommand.
//!
//! Every default is written once, in [`defaults`], from the constants and `Default`s of the
//! subsystems; `--help` renders the same values (`Cli::command_with_defaults`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::Limits;
pub use tandem_hub::hocuspocus::DEFAULT_MAX_DOCS_PER_SOCKET;
use tandem_hub::{ConnectionConfig, HubConfig, PersistConfig};
pub use tandem_hub::{DEFAULT_MAX_NAMED_VERSIONS, DEFAULT_OUTBOX_CAPACITY};

use crate::accounts::AccountConfig;
use crate::activity::ActivityConfig;
use crate::auth::{AuthConfig, AuthMode};
use crate::cli::{ClusterDurability, HumanDuration, LogFormat, MetricsSwitch, ServeArgs};
use crate::files::FilesConfig;
pub use crate::files::s3::S3Location;
use crate::listener::ListenerConfig;
use crate::proxy::TrustedProxies;
use crate::tls::TlsFiles;
use crate::webhook::WebhookConfig;

// Defaults of the sub-configs that have no `Default` of their own. They sit here until their
// types grow one; everything else comes from `Limits`, `AccountConfig`, `FilesConfig`,
// `ActivityConfig`, `WebhookConfig` and the store's constants.

/// Loopback only: zero configuration must not expose the documents (`--insecure-no-auth`).
pub const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Default of `--port`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default of `--data-dir`, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Log filter when neither `--log`, the file nor `RUST_LOG` sets one.
pub const DEFAULT_LOG: &str = "info";
/// Default of `--doc-unload-grace`.
pub const DEFAULT_DOC_UNLOAD_GRACE: Duration = Duration::from_secs(30);
/// Default of `--ping-interval`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default of `--pong-timeout`: three missed pings.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(15);
/// Default of `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--compact-after-updates`.
pub const DEFAULT_COMPACT_AFTER_UPDATES: u64 = 1000;
/// Default of `--compact-after-bytes`.
pub const DEFAULT_COMPACT_AFTER_BYTES: u64 = 8 * 1024 * 1024;
/// Default of `--auto-version-interval`.
pub const DEFAULT_AUTO_VERSION_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Default of `--max-auto-versions`.
pub const DEFAULT_MAX_AUTO_VERSIONS: u64 = 100;
/// Default of `--commit-interval`: see `persist` for why and what it costs.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(5);
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default of `--max-connections-per-address`.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 512;
/// Default of `--upgrade-timeout`.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Whether metrics are collected and `/metrics` served (`--metrics`).
    pub metrics: MetricsSwitch,
    /// A second listener serving only `/metrics`, without authentication (`--metrics-addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Time between two points of the admin view's series (10 s; no flag: the admin API's
    /// contract is 10 s, tests take shorter ones).
    pub series_interval: Duration,
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
    /// Cluster mode, when `--redis-url`, `--postgres-url` and `--blob-dir` or `--blob-store`
    /// are given.
    pub cluster: Option<ClusterSettings>,
}

/// The settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The engines and what an update waits for.
    pub engines: tandem_cluster::ClusterConfig,
    /// Where the nodes keep the bytes of files.
    pub blobs: BlobStorage,
}

/// Where cluster mode keeps the bytes of files (`protocol-spec/cluster.md`).
#[derive(Debug, Clone)]
pub enum BlobStorage {
    /// A directory every node mounts (`--blob-dir`).
    Dir(PathBuf),
    /// An S3-compatible store (`--blob-store s3://bucket/prefix`).
    S3(S3Location),
}

/// Default of `--cluster-trim-margin`.
pub const DEFAULT_CLUSTER_TRIM_MARGIN: Duration = Duration::from_secs(60);
/// How long `--cluster-durability replica` waits for a replica.
pub const CLUSTER_REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// The built-in layer under the file: every setting that has one fixed default. Settings left
/// `None` here either have none (`--web-dir`, the JWT keys, TLS) or one that depends on other
/// settings or on the machine, computed in [`resolve`]: `log` (`RUST_LOG`), `worker_threads`
/// (the CPUs), `auth` (the bind address), `trusted_proxies` and `forwarded_header`.
pub fn defaults() -> ServeArgs {
    let limits = Limits::default();
    let accounts = AccountConfig::default();
    let files = FilesConfig::default();
    let activity = ActivityConfig::default();
    let webhooks = WebhookConfig::default();
    let some = |duration: Duration| Some(HumanDuration(duration));
    ServeArgs {
        bind: Some(DEFAULT_BIND),
        port: Some(DEFAULT_PORT),
        data_dir: Some(PathBuf::from(DEFAULT_DATA_DIR)),
        log_format: Some(LogFormat::default()),
        metrics: Some(MetricsSwitch::default()),
        max_frame_bytes: Some(limits.max_frame_bytes),
        max_awareness_state_bytes: Some(limits.max_awareness_state_bytes),
        max_awareness_clients_per_peer: Some(limits.max_awareness_clients_per_peer),
        awareness_timeout: some(Duration::from_millis(limits.awareness_timeout_ms)),
        max_messages_per_second: Some(limits.max_messages_per_second),
        max_bytes_per_second: Some(limits.max_bytes_per_second),
        max_awareness_per_second: Some(limits.max_awareness_per_second),
        max_doc_bytes: Some(limits.max_doc_bytes),
        doc_unload_grace: some(DEFAULT_DOC_UNLOAD_GRACE),
        ping_interval: some(DEFAULT_PING_INTERVAL),
        pong_timeout: some(DEFAULT_PONG_TIMEOUT),
        shutdown_timeout: some(DEFAULT_SHUTDOWN_TIMEOUT),
        fsync: Some(true),
        commit_interval: some(DEFAULT_COMMIT_INTERVAL),
        db_cache_bytes: Some(tandem_store::DEFAULT_CACHE_BYTES),
        disk_reserve_bytes: Some(tandem_store::space::DEFAULT_RESERVE_BYTES),
        cluster_durability: Some(ClusterDurability::Local),
        cluster_trim_margin: some(DEFAULT_CLUSTER_TRIM_MARGIN),
        compact_after_updates: Some(DEFAULT_COMPACT_AFTER_UPDATES),
        compact_after_bytes: Some(DEFAULT_COMPACT_AFTER_BYTES),
        auto_version_interval: some(DEFAULT_AUTO_VERSION_INTERVAL),
        max_auto_versions: Some(DEFAULT_MAX_AUTO_VERSIONS),
        max_named_versions: Some(DEFAULT_MAX_NAMED_VERSIONS),
        outbox_capacity: Some(DEFAULT_OUTBOX_CAPACITY),
        max_docs_per_socket: Some(DEFAULT_MAX_DOCS_PER_SOCKET as u64),
        max_connections: Some(DEFAULT_MAX_CONNECTIONS),
        max_connections_per_address: Some(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
        upgrade_timeout: some(DEFAULT_UPGRADE_TIMEOUT),
        insecure_no_auth: Some(false),
        jwt_leeway: some(crate::auth::DEFAULT_LEEWAY),
        login_token_ttl: some(accounts.login_token_ttl),
        login_failure_window: some(accounts.failure_window),
        login_max_failures_per_account: Some(accounts.max_failures_per_account),
        login_max_failures_per_address: Some(accounts.max_failures_per_address),
        max_file_bytes: Some(files.max_file_bytes),
        workspace_quota_bytes: Some(files.workspace_quota_bytes),
        upload_expiry: some(files.upload_expiry),
        file_cleanup_interval: some(files.cleanup_interval),
        max_file_versions: Some(files.max_file_versions),
        activity_session_gap: some(activity.session_gap),
        activity_retention: some(activity.retention),
        webhook_debounce: some(webhooks.debounce),
        webhook_max_delay: some(webhooks.max_delay),
        webhook_retry_base: some(webhooks.retry_base),
        webhook_retry_max: some(webhooks.retry_max),
        webhook_give_up: some(webhooks.give_up),
        webhook_timeout: some(webhooks.timeout),
        webhook_allow_private: Some(webhooks.allow_private),
        proxy_protocol: Some(false),
        init: Some(false),
        ..ServeArgs::default()
    }
}

/// Reads the file named by `--config`, if any, and merges it under the flags.
pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => ServeArgs::default(),
    };
    check_tls_pair(&args, &file)?;
    check_version_caps(&file)?;
    check_cluster_settings(&args, &file)?;
    let config = resolve(args, file);
    config
        .auth
        .check_bind(config.addr.ip())
        .map_err(|message| anyhow::anyhow!(message))?;
    check_metrics(&config)?;
    Ok(config)
}

/// `--metrics-addr` serves the metrics, which `--metrics off` turns off: together they are a
/// mistake, refused rather than serving an empty page.
fn check_metrics(config: &Config) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_addr
        && config.metrics == MetricsSwitch::Off
    {
        anyhow::bail!(
            "--metrics-addr {addr} serves the metrics, but --metrics is off; drop one of the two"
        );
    }
    Ok(())
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

/// Cluster mode takes Redis, Postgres and exactly one place for blobs (a shared directory or an
/// S3-compatible store), or none of them. An S3 store is cluster mode only: one node keeps its
/// files in its data directory, and the store's locks live in Postgres.
fn check_cluster_settings(args: &ServeArgs, file: &ServeArgs) -> anyhow::Result<()> {
    let blob_dir = args.blob_dir.is_some() || file.blob_dir.is_some();
    let blob_store = args.blob_store.as_ref().or(file.blob_store.as_ref());
    if blob_dir && blob_store.is_some() {
        anyhow::bail!(
            "blob_dir and blob_store are mutually exclusive: give cluster mode one place for file blobs"
        );
    }
    if let Some(url) = blob_store {
        S3Location::parse(url).map_err(|message| anyhow::anyhow!(message))?;
    }
    let given = [
        (
            "redis_url",
            args.redis_url.is_some() || file.redis_url.is_some(),
        ),
        (
            "postgres_url",
            args.postgres_url.is_some() || file.postgres_url.is_some(),
        ),
        ("blob_dir or blob_store", blob_dir || blob_store.is_some()),
    ];
    let n_given = given.iter().filter(|(_, set)| *set).count();
    if n_given != 0 && n_given != given.len() {
        let missing: Vec<&str> = given
            .iter()
            .filter(|(_, set)| !*set)
            .map(|(key, _)| *key)
            .collect();
        let only_store = if blob_store.is_some() {
            " (blob_store is for cluster mode only; one node keeps files in its data directory)"
        } else {
            ""
        };
        anyhow::bail!(
            "cluster mode needs redis_url, postgres_url and blob_dir or blob_store together; missing: {}{only_store}",
            missing.join(", ")
        );
    }
    Ok(())
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

/// A setting [`defaults`] sets, after the merge. A miss is a bug in `defaults`, caught by the
/// tests that resolve the defaults alone.
macro_rules! set {
    ($layered:ident . $field:ident) => {
        $layered
            .$field
            .expect(concat!("config::defaults() sets ", stringify!($field)))
    };
}

/// Merges flags/environment (`args`) over the file (`file`) over the [`defaults`].
pub fn resolve(args: ServeArgs, file: ServeArgs) -> Config {
    let layered = args.or(file);
    // `RUST_LOG` ranks between the file and the default.
    let log = layered
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_LOG.into());
    let s = layered.or(defaults());
    let bind = set!(s.bind);
    let limits = Limits {
        max_frame_bytes: set!(s.max_frame_bytes),
        max_awareness_state_bytes: set!(s.max_awareness_state_bytes),
        max_awareness_clients_per_peer: set!(s.max_awareness_clients_per_peer),
        awareness_timeout_ms: set!(s.awareness_timeout).0.as_millis() as u64,
        max_messages_per_second: set!(s.max_messages_per_second),
        max_bytes_per_second: set!(s.max_bytes_per_second),
        max_awareness_per_second: set!(s.max_awareness_per_second),
        max_doc_bytes: set!(s.max_doc_bytes),
    };
    Config {
        addr: SocketAddr::new(bind, set!(s.port)),
        data_dir: set!(s.data_dir),
        web_dir: s.web_dir,
        log,
        log_format: set!(s.log_format),
        metrics: set!(s.metrics),
        metrics_addr: s.metrics_addr,
        series_interval: crate::metrics::series::DEFAULT_INTERVAL,
        hub: HubConfig {
            doc_unload_grace: set!(s.doc_unload_grace).0,
            compact_after_updates: set!(s.compact_after_updates),
            compact_after_bytes: set!(s.compact_after_bytes),
            outbox_capacity: set!(s.outbox_capacity).max(1),
            auto_version_interval: set!(s.auto_version_interval).0,
            max_auto_versions: set!(s.max_auto_versions),
            max_named_versions: set!(s.max_named_versions),
            limits,
            ..HubConfig::default()
        },
        connection: ConnectionConfig {
            ping_interval: set!(s.ping_interval).0,
            pong_timeout: set!(s.pong_timeout).0,
            max_docs_per_socket: usize::try_from(set!(s.max_docs_per_socket))
                .unwrap_or(usize::MAX)
                .max(1),
        },
        persist: PersistConfig {
            fsync: set!(s.fsync),
            commit_interval: set!(s.commit_interval).0,
            cache_bytes: set!(s.db_cache_bytes),
            reserve_bytes: set!(s.disk_reserve_bytes),
        },
        shutdown_timeout: set!(s.shutdown_timeout).0,
        worker_threads: s
            .worker_threads
            .unwrap_or_else(default_worker_threads)
            .max(1),
        listener: ListenerConfig {
            // `load` has refused a lone cert or key; `resolve` keeps TLS off for one.
            tls: match (s.tls_cert, s.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            max_connections: set!(s.max_connections).max(1),
            max_connections_per_address: set!(s.max_connections_per_address).max(1),
            upgrade_timeout: set!(s.upgrade_timeout).0,
            trusted_proxies: s
                .trusted_proxies
                .map_or_else(TrustedProxies::loopback, |entries| {
                    TrustedProxies::new(entries.into_iter().filter_map(|e| e.0).collect())
                }),
            proxy_protocol: set!(s.proxy_protocol),
            forwarded_header: s.forwarded_header.unwrap_or_default(),
            tls_poll_interval: crate::tls::DEFAULT_TLS_POLL_INTERVAL,
        },
        auth: AuthConfig {
            // Off by default only where nobody else can connect.
            mode: s.auth.unwrap_or(if bind.is_loopback() {
                AuthMode::None
            } else {
                AuthMode::Jwt
            }),
            insecure_no_auth: set!(s.insecure_no_auth),
            secret_file: s.jwt_secret_file,
            public_keys: s
                .jwt_public_key
                .unwrap_or_default()
                .into_iter()
                .map(|key| (key.algorithm, key.path))
                .collect(),
            jwks_file: s.jwks_file,
            algorithms: s
                .jwt_algorithms
                .map(|list| list.into_iter().map(|algorithm| algorithm.0).collect()),
            issuers: s.jwt_issuer.unwrap_or_default(),
            audiences: s.jwt_audience.unwrap_or_default(),
            leeway: set!(s.jwt_leeway).0,
        },
        accounts: AccountConfig {
            login_token_ttl: set!(s.login_token_ttl).0,
            failure_window: set!(s.login_failure_window).0,
            max_failures_per_account: set!(s.login_max_failures_per_account).max(1),
            max_failures_per_address: set!(s.login_max_failures_per_address).max(1),
        },
        files: FilesConfig {
            max_file_bytes: set!(s.max_file_bytes),
            workspace_quota_bytes: set!(s.workspace_quota_bytes),
            upload_expiry: set!(s.upload_expiry).0,
            cleanup_interval: set!(s.file_cleanup_interval).0,
            max_file_versions: set!(s.max_file_versions),
            ..FilesConfig::default()
        },
        activity: ActivityConfig {
            session_gap: set!(s.activity_session_gap).0,
            retention: set!(s.activity_retention).0,
        },
        webhooks: WebhookConfig {
            debounce: set!(s.webhook_debounce).0,
            max_delay: set!(s.webhook_max_delay).0,
            // A zero base would retry a failing receiver in a busy loop.
            retry_base: set!(s.webhook_retry_base).0.max(Duration::from_millis(1)),
            retry_max: set!(s.webhook_retry_max).0,
            give_up: set!(s.webhook_give_up).0,
            timeout: set!(s.webhook_timeout).0,
            allow_private: set!(s.webhook_allow_private),
        },
        init: set!(s.init),
        cluster: match (
            s.redis_url,
            s.postgres_url,
            blob_storage(s.blob_dir, s.blob_store),
        ) {
            (Some(redis_url), Some(postgres_url), Some(blobs)) => Some(ClusterSettings {
                engines: tandem_cluster::ClusterConfig {
                    redis_url,
                    postgres_url,
                    durability: match set!(s.cluster_durability) {
                        ClusterDurability::Local => tandem_cluster::Durability::Local,
                        ClusterDurability::Replica => tandem_cluster::Durability::Replica,
                    },
                    replica_timeout: CLUSTER_REPLICA_TIMEOUT,
                    trim_margin: set!(s.cluster_trim_margin).0,
                    commit_interval: set!(s.commit_interval).0,
                },
                blobs,
            }),
            // `load` refused a partial set.
            _ => None,
        },
    }
}

/// The place for blobs `load` checked: a directory or a store, not both.
fn blob_storage(dir: Option<PathBuf>, store: Option<String>) -> Option<BlobStorage> {
    match (dir, store) {
        (Some(dir), _) => Some(BlobStorage::Dir(dir)),
        (None, Some(url)) => S3Location::parse(&url).ok().map(BlobStorage::S3),
        (None, None) => None,
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
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::proxy::ForwardedHeader;

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
    fn metrics_settings_come_from_the_file_and_flags_with_metrics_on_by_default() {
        let defaults = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(defaults.metrics, MetricsSwitch::On);
        assert_eq!(defaults.metrics_addr, None);
        let file: ServeArgs =
            toml::from_str("metrics = \"off\"\nmetrics_addr = \"10.0.0.5:9464\"").unwrap();
        let config = resolve(ServeArgs::default(), file.clone());
        assert_eq!(config.metrics, MetricsSwitch::Off);
        assert_eq!(config.metrics_addr, Some("10.0.0.5:9464".parse().unwrap()));
        let refused = check_metrics(&config).unwrap_err().to_string();
        assert!(refused.contains("--metrics is off"), "{refused}");
        let Some(Command::Serve(args)) = Cli::try_parse_from([
            "tandem",
            "serve",
            "--metrics",
            "on",
            "--metrics-addr",
            "127.0.0.1:9100",
        ])
        .unwrap()
        .command
        else {
            panic!("serve");
        };
        let config = resolve(args, file);
        assert_eq!(config.metrics, MetricsSwitch::On);
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(check_metrics(&config).is_ok());
    }

    #[test]
    fn cluster_mode_takes_its_three_engines_together_from_any_source() {
        let file: ServeArgs = toml::from_str(
            "redis_url = \"redis://10.0.0.5:6379/0\"\ncluster_durability = \"replica\"",
        )
        .unwrap();
        let error = check_cluster_settings(&ServeArgs::default(), &file).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("missing: postgres_url, blob_dir or blob_store"),
            "{error}"
        );
        let args = ServeArgs {
            postgres_url: Some("postgres://tandem@10.0.0.6/tandem".into()),
            blob_dir: Some("/mnt/blobs".into()),
            cluster_trim_margin: Some(HumanDuration(Duration::from_secs(5))),
            ..ServeArgs::default()
        };
        check_cluster_settings(&args, &file).unwrap();
        let cluster = resolve(args, file).cluster.expect("cluster mode");
        assert_eq!(cluster.engines.redis_url, "redis://10.0.0.5:6379/0");
        assert_eq!(
            cluster.engines.durability,
            tandem_cluster::Durability::Replica
        );
        assert_eq!(cluster.engines.trim_margin, Duration::from_secs(5));
        assert!(matches!(&cluster.blobs, BlobStorage::Dir(dir) if dir == Path::new("/mnt/blobs")));
        let one_node = resolve(ServeArgs::default(), ServeArgs::default());
        assert!(one_node.cluster.is_none(), "one node by default");
    }

    #[test]
    fn blobs_go_to_one_directory_or_one_s3_store_and_the_store_only_in_cluster_mode() {
        let engines = ServeArgs {
            redis_url: Some("redis://10.0.0.5:6379/0".into()),
            postgres_url: Some("postgres://tandem@10.0.0.6/tandem".into()),
            ..ServeArgs::default()
        };
        let file: ServeArgs = toml::from_str("blob_store = \"s3://tandem-files/prod/eu\"").unwrap();
        check_cluster_settings(&engines, &file).unwrap();
        let cluster = resolve(engines, file).cluster.expect("cluster mode");
        let BlobStorage::S3(location) = &cluster.blobs else {
            panic!("an S3 store: {:?}", cluster.blobs);
        };
        assert_eq!(location.bucket, "tandem-files");
        assert_eq!(location.prefix, "prod/eu");

        let both = ServeArgs {
            blob_dir: Some("/mnt/blobs".into()),
            blob_store: Some("s3://tandem-files".into()),
            ..ServeArgs::default()
        };
        let error = check_cluster_settings(&both, &ServeArgs::default()).unwrap_err();
        assert!(error.to_string().contains("mutually exclusive"), "{error}");
        let alone = ServeArgs {
            blob_store: Some("s3://tandem-files".into()),
            ..ServeArgs::default()
        };
        let error = check_cluster_settings(&alone, &ServeArgs::default()).unwrap_err();
        assert!(error.to_string().contains("cluster mode only"), "{error}");
    }

    #[test]
    fn s3_locations_parse_into_bucket_and_prefix() {
        let parsed = S3Location::parse("s3://bucket-1/a/b/").unwrap();
        assert_eq!(
            (parsed.bucket.as_str(), parsed.prefix.as_str()),
            ("bucket-1", "a/b")
        );
        assert_eq!(parsed.to_string(), "s3://bucket-1/a/b");
        assert_eq!(S3Location::parse("s3://bucket").unwrap().prefix, "");
        for bad in [
            "bucket/x",
            "s3://",
            "s3://Bucket",
            "s3://b/a//c",
            "s3://b/../x",
            "https://b",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
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
    fn max_docs_per_socket_comes_from_flags_over_the_file_over_the_default() {
        let defaults = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(
            defaults.connection.max_docs_per_socket,
            DEFAULT_MAX_DOCS_PER_SOCKET
        );
        let file: ServeArgs = toml::from_str("max_docs_per_socket = 5").unwrap();
        assert_eq!(
            resolve(ServeArgs::default(), file.clone())
                .connection
                .max_docs_per_socket,
            5
        );
        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tandem", "serve", "--max-docs-per-socket", "9"])
                .unwrap()
                .command
        else {
            panic!("serve command")
        };
        assert_eq!(resolve(args, file).connection.max_docs_per_socket, 9);
        assert!(Cli::try_parse_from(["tandem", "serve", "--max-docs-per-socket", "0"]).is_err());
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

    #[test]
    fn serve_help_shows_the_defaults_the_config_falls_back_to() {
        let command = Cli::command_with_defaults(&defaults());
        let serve = command.find_subcommand("serve").expect("serve subcommand");
        let help = |id: &str| {
            serve
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .and_then(|arg| arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_else(|| panic!("no help for {id}"))
        };
        for (id, shown) in [
            ("port", "[default: 8080]"),
            ("data_dir", "[default: data]"),
            ("max_frame_bytes", "[default: 16777216]"),
            ("commit_interval", "[default: 5ms]"),
            ("auto_version_interval", "[default: 10m]"),
            ("activity_retention", "[default: 90days]"),
            ("webhook_give_up", "[default: 72h]"),
            ("fsync", "[default: true]"),
            ("log_format", "[default: pretty]"),
            ("metrics", "[default: on]"),
            ("log", "[default: info, or RUST_LOG]"),
        ] {
            assert!(help(id).ends_with(shown), "{id}: {}", help(id));
        }
        // Flags without one fixed default keep the description in their doc comment only.
        assert!(!help("web_dir").contains("[default"));
        assert_eq!(help("auth").matches("[default").count(), 1);
    }

    #[test]
    fn the_defaults_alone_resolve_to_every_subsystem_default() {
        let config = resolve(ServeArgs::default(), ServeArgs::default());
        assert_eq!(config.addr, SocketAddr::new(DEFAULT_BIND, DEFAULT_PORT));
        assert_eq!(config.hub.limits, Limits::default());
        assert_eq!(
            config.accounts.login_token_ttl,
            AccountConfig::default().login_token_ttl
        );
        assert_eq!(
            config.files.orphan_grace,
            FilesConfig::default().orphan_grace
        );
        assert_eq!(config.webhooks.give_up, WebhookConfig::default().give_up);
        assert_eq!(
            config.persist.cache_bytes,
            tandem_store::DEFAULT_CACHE_BYTES
        );
        assert!(config.persist.fsync);
        assert!(!config.init);
    }

    #[test]
    fn the_subcommands_default_to_the_directory_and_address_serve_defaults_to() {
        // `--data-dir` and `--server` of `user`, `webhook` and `token` are clap literals (the
        // argument types cannot import this module); this keeps them equal to `serve`'s.
        let Some(Command::User(crate::cli::UserCommand::List(args))) =
            Cli::try_parse_from(["tandem", "user", "list"])
                .unwrap()
                .command
        else {
            panic!("user list");
        };
        if std::env::var_os("TANDEM_DATA_DIR").is_none() {
            assert_eq!(args.target.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        }
        if std::env::var_os("TANDEM_SERVER").is_none() {
            assert_eq!(
                args.target.server,
                format!("http://{}", SocketAddr::new(DEFAULT_BIND, DEFAULT_PORT))
            );
        }
    }
}
