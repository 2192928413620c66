//! The Tandem server: the services and the HTTP API around the real-time engine `tandem-hub`
//! (which owns open docs, doc actors, WebSocket connections, the redb writer and the lifecycle).
//!
//! [`run`] serves a listener until a shutdown future resolves, then closes every connection
//! with 1001, flushes every open doc and stops the redb writer. The binary (`main.rs`) only
//! parses configuration, sets up logging, binds, and calls [`run_with_ready`], which tells it
//! when the server can serve (store open, start-up checks passed); tests call either directly.
//!
//! # Layout
//!
//! - [`auth`]: tokens to grants: JWT verification, roles per doc pattern, the server's own key.
//! - [`accounts`]: the accounts service: password sign-in, token refresh, the `users` table.
//! - [`activity`]: the activity recorder (edit sessions, batching).
//! - [`webhook`]: webhook registrations, debounced `doc.changed`, the signed delivery worker.
//! - `files`: the files service: uploads, versions, blobs, cleanup.
//! - `backup`: backups of a running node: the store copied from one read transaction, its
//!   blobs pinned, streamed as a tar archive (`backup/archive.rs`, also read by the commands).
//! - `locks`: WebDAV write locks on workspace paths, durable, checked by every way of writing.
//! - `tables`: the storage each service works on: the local store, or cluster mode's shared one.
//! - [`cli`]: the command line: `Cli`, its subcommands and the argument types; imports neither
//!   `config` nor `command`, which both import it.
//! - [`command`]: `tandem user ...`, `tandem webhook ...` and `tandem token mint`, one file each,
//!   offline or through a running server (one `Backend` for both).
//! - [`config`]: defaults, TOML file, environment and flags layered into one validated `Config`.
//! - `data_dir`: start-up refusal of a missing or empty database beside an earlier store's data.
//! - `api`: the HTTP layer over the services: `AppState`, the router, `ApiError`, the
//!   extractors and one file per resource (docs, versions, files, accounts, webhooks, ...).
//! - `error_id`: the random id of a 5xx answer, shared with its log line.
//! - `bus`: the workspace events and their bus (activity, webhooks, live streams); the hub's
//!   `DocEventSink`.
//! - `name`: the characters a version, display or file name may not contain.
//! - `outbound`: the one outbound HTTP client's settings (reqwest over rustls with ring, no
//!   redirects, no proxy), for webhook delivery and the commands' remote backend.
//! - `listener`: the accept loop: connection caps, TLS handshakes, the upgrade deadline, hyper.
//! - `proxy`: the client's address behind trusted proxies (forwarding headers, PROXY protocol).
//! - `tls`: certificate and key files into rustls, re-read when they change.
//! - `metrics`: what operators see: the Prometheus metrics and the admin view's data (the
//!   series sampler, the newest errors through [`ErrorLayer`], failing webhook deliveries).

pub mod accounts;
pub mod activity;
mod api;
pub mod auth;
mod backup;
mod bus;
pub mod cli;
pub mod command;
pub mod config;
mod data_dir;
mod doc_text;
mod error_id;
mod files;
mod listener;
mod locks;
pub(crate) mod metrics;
mod name;
mod outbound;
mod proxy;
mod tables;
#[cfg(test)]
mod tidy;
mod tls;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tandem_hub::{Hub, Lifecycle};
use tandem_store::Store;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use config::Config;
pub use files::FilesConfig;
pub use listener::ListenerConfig;
pub use metrics::ErrorLayer;
pub use metrics::series::DEFAULT_INTERVAL as DEFAULT_SERIES_INTERVAL;
pub use proxy::{ForwardedHeader, TrustedProxies, TrustedProxyArg};
pub use tandem_hub::alloc;
pub use tandem_hub::lifecycle::signal;
pub use tandem_hub::{ConnectionConfig, HubConfig, PersistConfig};
pub use tls::{TlsError, TlsFiles};

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "tandem.redb";

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory or database could not be opened.
    #[error("opening store at {path}: {source}")]
    Store {
        /// The database file.
        path: std::path::PathBuf,
        /// The store's error.
        #[source]
        source: tandem_store::StoreError,
    },
    /// The configuration is unsafe or its keys cannot be used.
    #[error("{0}")]
    Config(String),
    /// A filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("loading tls certificate: {0}")]
    Tls(#[source] TlsError),
    /// The database file is missing, empty or not a file beside the data of an earlier store;
    /// the text says which file and what to do.
    #[error("{0}")]
    UnsafeDataDir(String),
    /// Cluster mode could not start: an engine is unreachable, or Redis's persistence settings
    /// would lose updates.
    #[error("cluster mode: {0}")]
    Cluster(#[source] tandem_cluster::ClusterError),
    /// Cluster mode's S3-compatible blob store is misconfigured or unreachable.
    #[error("{0}")]
    BlobStore(String),
}

/// Where the server serves, passed to the `ready` callback of [`run_with_ready`].
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The bound address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.addr)
    }
}

/// What shutdown achieved.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownSummary {
    /// Whether every task finished within the shutdown timeout.
    pub clean: bool,
}

/// Serves `listener` with `config` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ShutdownSummary, ServerError> {
    run_with_ready(config, listener, shutdown, |_| {}).await
}

/// Like [`run`], and calls `ready` once the server can serve: the store is open, the start-up
/// checks and cleanup have passed, and the next step is accepting connections. Nothing before
/// it may tell a supervisor the server is up (`main.rs` prints its readiness line there).
pub async fn run_with_ready(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Ready) + Send,
) -> Result<ShutdownSummary, ServerError> {
    // Before the store: a bad certificate fails the start without touching the data directory.
    let tls = match &config.listener.tls {
        Some(files) => Some(tls::open(files).await.map_err(ServerError::Tls)?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        context: "creating data directory",
        source,
    })?;
    let db_path = config.data_dir.join(DB_FILE_NAME);
    data_dir::check_store_file(&config.data_dir, &db_path, config.init)?;
    // A store made now (an empty data directory, or `--init`) cannot vouch for files an earlier
    // store left: the start-up cleanup, which deletes without a grace period, is skipped.
    let creating_store = std::fs::metadata(&db_path).map_or(true, |meta| meta.len() == 0);
    let store = {
        let path = db_path.clone();
        let cache_bytes = config.persist.cache_bytes;
        tokio::task::spawn_blocking(move || Store::open_with_cache(&path, cache_bytes))
            .await
            .map_err(|error| ServerError::Io {
                context: "opening store",
                source: std::io::Error::other(error),
            })?
            .map_err(|source| ServerError::Store {
                path: db_path.clone(),
                source,
            })?
    };
    if let Some(from) = store.migrated_from() {
        info!(db = %db_path.display(), from, to = tandem_store::FORMAT_VERSION, "store migrated");
    }
    let store = Arc::new(store);
    {
        // Written before anything else can fill the disk; a disk already too full for it starts
        // the store read-only (logged once).
        let store = store.clone();
        let reserve_bytes = config.persist.reserve_bytes;
        let _ = tokio::task::spawn_blocking(move || store.set_reserve(reserve_bytes)).await;
    }
    // The address actually bound decides, not the configured one (tests and embedders bind
    // their own listener).
    let bound_ip = listener
        .local_addr()
        .map_or(config.addr.ip(), |addr| addr.ip());
    config
        .auth
        .check_bind(bound_ip)
        .map_err(ServerError::Config)?;
    // Made before anything that records: cluster mode's appender, the hub, the
    // redb writer, the services.
    let telemetry = metrics::Telemetry::new(
        config.metrics == cli::MetricsSwitch::On,
        config.series_interval,
    );
    // Cluster mode: documents live in Redis and Postgres, shared by every node.
    let cluster = match &config.cluster {
        Some(settings) => Some(
            tandem_cluster::ClusterLog::start_with_metrics(
                settings.engines.clone(),
                telemetry.hub().clone(),
            )
            .await
            .map_err(ServerError::Cluster)?,
        ),
        None => None,
    };
    // Cluster mode: every node signs and verifies its own tokens (sign-in, refresh) with one
    // key, kept in Postgres, so a token from one node is good on all.
    if let Some(cluster) = &cluster {
        let key = cluster
            .shared_secret("server-key", &auth::new_server_key())
            .await
            .map_err(ServerError::Cluster)?;
        let replaced = auth::install_server_key(&config.data_dir, &key)
            .map_err(|error| ServerError::Config(error.to_string()))?;
        if replaced {
            warn!(
                "the cluster's server key replaced this node's own: tokens it signed before stop working"
            );
        }
    }
    let auth = auth::Auth::load(&config.auth, &config.data_dir)
        .map_err(|error| ServerError::Config(error.to_string()))?;
    match auth.mode() {
        auth::AuthMode::Jwt => {
            info!(algorithms = ?auth.accepted_algorithms(), "authentication: jwt")
        }
        auth::AuthMode::None if !bound_ip.is_loopback() => warn!(
            addr = %bound_ip,
            "AUTHENTICATION IS OFF on a non-loopback address (--insecure-no-auth): anyone who can \
             reach this port can read and change every document"
        ),
        auth::AuthMode::None => info!("authentication: none (loopback only)"),
    }
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Io {
                    context: "binding --metrics-addr",
                    source,
                })?,
        ),
        None => None,
    };
    let persist = tandem_hub::persist::spawn_writer_with_metrics(
        store.clone(),
        config.persist.clone(),
        telemetry.hub().clone(),
    )
    .map_err(|source| ServerError::Io {
        context: "starting redb writer",
        source,
    })?;
    if !config.persist.fsync {
        warn!("fsync is off: acknowledged edits can be lost on power failure (benchmarks only)");
    }

    let log: Arc<dyn tandem_hub::DocLog> = match &cluster {
        Some(cluster) => cluster.clone(),
        None => Arc::new(tandem_hub::RedbLog::new(store.clone(), persist.clone())),
    };

    let lifecycle = Lifecycle::default();
    let (events, records) = bus::Events::new();
    // Cluster mode: every local event also goes to the other nodes' live streams, and theirs
    // come to ours (never to our recorder: each event is recorded where it happened).
    let events = match &cluster {
        Some(cluster) => {
            let relay = cluster.clone();
            let mut relayed = cluster.subscribe_events();
            let local = events.with_relay(Arc::new(move |envelope| relay.publish_event(envelope)));
            let live = local.clone();
            let cancel = lifecycle.cancel.clone();
            lifecycle.spawn(tracing::info_span!("cluster-events"), async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        payload = relayed.recv() => match payload {
                            Some(payload) => {
                                if let Some(event) = bus::Event::from_relay(&payload) {
                                    live.publish_relayed(event);
                                }
                            }
                            None => break,
                        },
                    }
                }
            });
            local
        }
        None => events,
    };
    let hub_config = tandem_hub::HubConfig {
        metrics: telemetry.hub().clone(),
        ..config.hub.clone()
    };
    let hub = Hub::new(log, hub_config, lifecycle.clone(), Arc::new(events.clone()));
    // The activity recorder has its own lifecycle: it must outlive the doc actors, whose final
    // events it records, so it is closed only after the main tracker is empty (below).
    // Where the services keep their data: the local store, or the shared database in cluster
    // mode (`tables.rs`).
    let tables = match &cluster {
        Some(cluster) => tables::Tables::shared(cluster.meta()),
        None => tables::Tables::local(&store),
    };
    let webhooks = webhook::Webhooks::load(tables.webhooks.clone(), &config.webhooks)
        .await
        .map_err(|source| ServerError::Store {
            path: db_path.clone(),
            source,
        })?;
    let recorder = activity::Recorder::new(
        tables.activity.clone(),
        events.clone(),
        webhooks.clone(),
        config.activity.clone(),
        &config.webhooks,
    )
    .await
    .map_err(|source| ServerError::Store {
        path: db_path.clone(),
        source,
    })?;
    let recorder_lifecycle = Lifecycle::default();
    recorder_lifecycle.spawn(
        tracing::info_span!("activity"),
        recorder
            .with_telemetry(telemetry.clone())
            .run(records, recorder_lifecycle.cancel.clone()),
    );
    lifecycle.spawn(
        tracing::info_span!("webhooks"),
        webhook::run_worker(
            webhooks.clone(),
            config.webhooks.clone(),
            telemetry.clone(),
            lifecycle.cancel.clone(),
        ),
    );
    // The admin view's series: a point now, then every 10 s; the outbox depth with it.
    telemetry.sample();
    lifecycle.spawn(tracing::info_span!("metrics-sampler"), {
        let webhooks = webhooks.clone();
        let sampled = telemetry.clone();
        metrics::series::run(
            telemetry.clone(),
            config.series_interval,
            move || {
                let webhooks = webhooks.clone();
                let sampled = sampled.clone();
                async move {
                    if sampled.enabled()
                        && let Some(depth) = webhooks.outbox_depth().await
                    {
                        sampled.set_webhook_outbox(depth);
                    }
                }
            },
            lifecycle.cancel.clone(),
        )
    });
    if cluster.is_some() {
        // Any node may change the registrations; each node's cache follows the shared table.
        lifecycle.spawn(
            tracing::info_span!("webhook-refresh"),
            webhooks
                .clone()
                .run_refresh(webhook::CLUSTER_REFRESH_INTERVAL, lifecycle.cancel.clone()),
        );
    }
    // In cluster mode the bytes go to the blob directory every node mounts, or to the S3
    // store (checked reachable now; its locks are Postgres's), the bodies being received to
    // this node's data directory.
    let (files_dir, sharing, s3) = match (&config.cluster, &cluster) {
        (Some(settings), Some(cluster)) => match &settings.blobs {
            config::BlobStorage::Dir(dir) => (dir.as_path(), files::Sharing::Cluster, None),
            config::BlobStorage::S3(location) => {
                if config.files.max_file_bytes > files::s3::MAX_COPY_BYTES {
                    return Err(ServerError::BlobStore(format!(
                        "max_file_bytes {} is more than the {} bytes one S3 copy can make; lower it to use blob_store",
                        config.files.max_file_bytes,
                        files::s3::MAX_COPY_BYTES
                    )));
                }
                let s3 = files::s3::S3::connect(location)
                    .await
                    .map_err(ServerError::BlobStore)?;
                info!(store = %location, "file blobs on an S3-compatible store");
                let locks: Arc<dyn tandem_store::meta::SharedLocks> = cluster.meta().clone();
                (
                    config.data_dir.as_path(),
                    files::Sharing::Cluster,
                    Some((s3, locks)),
                )
            }
        },
        _ => (config.data_dir.as_path(), files::Sharing::Local, None),
    };
    let files = files::Files::open(
        tables.files.clone(),
        store.clone(),
        config.files.clone(),
        files_dir,
        sharing,
        s3,
    )
    .map_err(|source| ServerError::Io {
        context: "opening file storage",
        source,
    })?;
    // Nothing is in progress yet on this node: leftovers of a crash go now (without a grace
    // period, unless other nodes share the blob directory: `files/cleanup.rs`).
    if creating_store && sharing == files::Sharing::Local {
        info!(db = %db_path.display(), "new store: start-up file cleanup skipped");
    } else {
        files.cleanup_at_start().await;
    }
    // A backup's temporary copy outlives its stream only if the process died; none runs yet.
    if sharing == files::Sharing::Local {
        backup::remove_leftovers(&config.data_dir);
    }
    lifecycle.spawn(
        tracing::info_span!("file-cleanup"),
        files.clone().run_cleanup(lifecycle.cancel.clone()),
    );
    // WebDAV locks: restored from the store into memory on one node; read from the shared
    // database each time in cluster mode (`locks/mod.rs`).
    let locks = match &cluster {
        Some(_) => locks::Locks::shared(tables.locks.clone(), events.clone()),
        None => locks::Locks::open(tables.locks.clone(), events.clone()).await,
    };
    lifecycle.spawn(
        tracing::info_span!("lock-sweep"),
        locks.clone().run_sweep(lifecycle.cancel.clone()),
    );
    let state = api::AppState {
        files,
        locks,
        events,
        auth,
        hub: hub.clone(),
        store: store.clone(),
        lifecycle: lifecycle.clone(),
        limits: config.hub.limits.clone(),
        connection: config.connection.clone(),
        accounts: accounts::Accounts::new(
            tables.users.clone(),
            tables.sign_in_failures.clone(),
            config.accounts.clone(),
        ),
        tables,
        webhooks,
        cluster: cluster.clone(),
        telemetry: telemetry.clone(),
        doc_text: doc_text::DocText::new(hub.clone()),
    };
    let web = api::web_client::Source::new(config.web_dir.clone());
    if !web.has_index() {
        warn!(source = ?web, "no web client to serve; build it with `bash scripts/run.sh`");
    }
    if let Some(metrics_listener) = metrics_listener {
        let addr = metrics_listener.local_addr().ok();
        match addr {
            Some(addr) if !addr.ip().is_loopback() => warn!(
                %addr,
                "metrics without authentication on a non-loopback --metrics-addr: anyone who can \
                 reach this port can read them"
            ),
            _ => info!(addr = ?addr, "metrics without authentication on --metrics-addr"),
        }
        let cancel = lifecycle.cancel.clone();
        let app = api::metrics_router(state.clone());
        lifecycle.spawn(tracing::info_span!("metrics-listener"), async move {
            let served = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(error) = served {
                warn!(%error, "metrics listener failed");
            }
        });
    }
    let app = api::router(state, web);

    let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
        context: "reading local address",
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(addr = %local_addr, scheme, db = %db_path.display(), fsync = config.persist.fsync, "listening");
    ready(Ready {
        scheme,
        addr: local_addr,
    });

    let cancel = lifecycle.cancel.clone();
    lifecycle.spawn(tracing::info_span!("shutdown-signal"), {
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                () = shutdown => cancel.cancel(),
                () = cancel.cancelled() => {}
            }
        }
    });

    let acceptor = tls.map(|(acceptor, reloader)| {
        reloader.spawn(&lifecycle, config.listener.tls_poll_interval);
        acceptor
    });
    // Returns once the token is cancelled; open connections wind down in their tracked tasks.
    listener::Listener::new(listener, app, &config.listener, acceptor, lifecycle.clone())
        .run()
        .await;
    cancel.cancel();

    // Connections close with 1001; doc actors drain and flush; then the writer stops.
    lifecycle.tracker.close();
    let n_open_docs = hub.open_docs().len();
    let clean = tokio::time::timeout(config.shutdown_timeout, lifecycle.tracker.wait())
        .await
        .is_ok();
    if !clean {
        warn!(timeout = ?config.shutdown_timeout, remaining_tasks = lifecycle.tracker.len(), "shutdown timed out");
    }
    // Every doc actor has published its last event: the recorder drains its queue, commits and
    // stops, before the store closes.
    recorder_lifecycle.cancel.cancel();
    recorder_lifecycle.tracker.close();
    if tokio::time::timeout(config.shutdown_timeout, recorder_lifecycle.tracker.wait())
        .await
        .is_err()
    {
        warn!(timeout = ?config.shutdown_timeout, "activity recorder did not finish in time");
    }
    drop(hub);
    if let Some(cluster) = cluster {
        cluster.close(config.shutdown_timeout).await;
    }
    drop(store);
    persist.close(config.shutdown_timeout).await;
    info!(flushed_docs = n_open_docs, clean, "shutdown complete");
    Ok(ShutdownSummary { clean })
}
