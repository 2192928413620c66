//! Tandem's cluster mode: many equal nodes share every document through Redis and Postgres.
//!
//! No node owns a document. Each node appends the updates its peers send to the document's
//! Redis stream and relays them to its own peers only once Redis has acknowledged the append,
//! with Redis configured to fsync its append-only file before it acknowledges (`appendonly yes`,
//! `appendfsync always`; [`engine::check_persistence`] refuses to start otherwise). Each node
//! tails the streams of the documents it has open and relays what the other nodes appended.
//! Snapshots live in Postgres; a compaction, leased and fenced in Redis, merges a stream into a
//! snapshot and trims the stream only after the snapshot has committed. Presence never enters
//! a stream: it travels over pub/sub, and heartbeat keys tell the nodes when one of them is gone.
//!
//! The hub sees none of this: [`ClusterLog`] implements the hub's [`DocLog`], the same seam the
//! redb log implements on one node. `protocol-spec/cluster.md` describes every key, channel and
//! table, the lease protocol, and what each failure does.
//!
//! # Layout
//!
//! - this file: [`ClusterConfig`], [`ClusterLog`] (the `DocLog`), [`ClusterError`], start-up.
//! - `keys`: the names of every Redis key and channel.
//! - [`engine`]: the connections to Redis and Postgres, the persistence check, migrations.
//! - `appender`: the task that turns [`LogCommand`]s into pipelined `XADD`s (group commit).
//! - `tail`: the one blocking `XREAD` loop that follows every open doc's stream.
//! - `presence`: presence over pub/sub, node heartbeats, and removing a gone node's peers.
//! - `snapshot`: snapshots and versions in Postgres, loading a doc, and compaction.
//! - `janitor`: trims the streams of docs nobody edits any more.
//! - [`meta`]: the services' shared state in Postgres ([`PgMeta`]).

mod appender;
pub mod engine;
mod janitor;
mod keys;
pub mod meta;
mod presence;
mod snapshot;
mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tandem_core::DocId;
use tandem_hub::log::LogFuture;
use tandem_hub::{DocLog, Feed, HubMetrics, Lifecycle, LoadFailure, LoadedLog, LogCommand};
use tokio::sync::{Notify, mpsc};
use tracing::info;

pub use crate::meta::PgMeta;

/// Capacity of the channel into the appender; a full channel makes doc actors wait, and so
/// connections stop reading (backpressure, as with redb's writer).
const APPEND_QUEUE_CAPACITY: usize = 4096;

/// What each accepted update waits for before anyone sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Redis has written it to its append-only file and fsynced it (`appendfsync always`).
    #[default]
    Local,
    /// ... and at least one replica has received it (`WAIT 1`).
    Replica,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "local" => Ok(Durability::Local),
            "replica" => Ok(Durability::Replica),
            other => Err(format!(
                "unknown cluster durability {other:?} (local or replica)"
            )),
        }
    }
}

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db` of the Redis every node shares.
    pub redis_url: String,
    /// The Postgres every node shares (`postgres://user@host:port/db` or key=value form).
    pub postgres_url: String,
    /// What an update waits for before it is relayed.
    pub durability: Durability,
    /// How long `WAIT` waits for a replica before the update is refused.
    pub replica_timeout: Duration,
    /// Stream entries younger than this are kept by a compaction even when a snapshot covers
    /// them, for nodes whose tail is a little behind.
    pub trim_margin: Duration,
    /// A doc that keeps changing is appended at most this often (the `--commit-interval` of
    /// one node); an append of a doc not appended within it goes at once.
    pub commit_interval: Duration,
}

/// Why cluster mode did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis is unreachable or answered an error.
    #[error("redis at {url}: {source}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        #[source]
        source: redis::RedisError,
    },
    /// Redis's persistence settings would break "nothing anyone saw is lost".
    #[error("{0}")]
    Persistence(String),
    /// Postgres is unreachable, or the migrations failed.
    #[error("postgres: {0}")]
    Postgres(String),
}

/// What [`ClusterLog::health`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Redis answered: edits can be appended.
    pub redis: bool,
    /// Postgres answered: docs can be loaded, accounts read, files stored.
    pub postgres: bool,
}

/// One doc this node follows: where its tail is, and where to deliver.
struct Follow {
    /// The actor generation that asked; a newer one replaces it.
    generation: u64,
    feed: Feed,
    /// The newest stream entry read for it.
    position: Arc<str>,
    /// Bumped on every (re)follow, so a read that raced with one is not applied to it.
    epoch: u64,
}

/// What the tasks of cluster mode share.
struct Shared {
    /// This process's node id: random at every start, so a restarted node is a new node.
    node: Arc<str>,
    config: ClusterConfig,
    /// Commands (appends, publishes, leases); reconnects by itself.
    redis: redis::aio::ConnectionManager,
    client: redis::Client,
    pg: deadpool_postgres::Pool,
    /// The docs this node has open. A std mutex: held briefly, never across an `.await`.
    follows: Mutex<HashMap<DocId, Follow>>,
    next_epoch: std::sync::atomic::AtomicU64,
    /// Wakes the task that unblocks the tail's `XREAD` when the set of docs changes.
    follows_changed: Notify,
    /// The commit histograms (`tandem_commit_*`), fed by the appender.
    metrics: HubMetrics,
    /// Presence to publish (best effort: dropped when full).
    presence_tx: mpsc::Sender<presence::Outgoing>,
    /// Cluster mode's own tasks (see [`ClusterLog`]).
    lifecycle: Lifecycle,
    /// Which presence channels to listen to, and which other nodes were heard from.
    presence: presence::State,
    /// Loads in progress at once (`MAX_CONCURRENT_LOADS`).
    loads: tokio::sync::Semaphore,
}

/// Docs loaded at once by one node: a burst (every open doc resyncing after Redis returned)
/// queues here instead of taking the whole Postgres pool.
const MAX_CONCURRENT_LOADS: usize = 4;

/// The document log of cluster mode: implements the hub's [`DocLog`].
pub struct ClusterLog {
    shared: Arc<Shared>,
    commands: mpsc::Sender<LogCommand>,
    /// The services' tables.
    meta: Arc<PgMeta>,
    /// Cluster mode's own tasks. They outlive the doc actors (whose last appends and presence
    /// removals they carry), so they run under a lifecycle of their own, stopped by
    /// [`ClusterLog::close`] after the server's tracker is empty.
    lifecycle: Lifecycle,
}

impl ClusterLog {
    /// Connects to Redis and Postgres, checks Redis's persistence settings, runs the
    /// migrations, and starts the appender, the tail, presence and the heartbeat.
    pub async fn start(config: ClusterConfig) -> Result<Arc<ClusterLog>, ClusterError> {
        ClusterLog::start_with_metrics(config, HubMetrics::default()).await
    }

    /// [`ClusterLog::start`], timing each appended group (its pipeline to Redis, and the wait
    /// for a replica if asked) and counting its size into `metrics`, as the redb writer does.
    pub async fn start_with_metrics(
        config: ClusterConfig,
        metrics: HubMetrics,
    ) -> Result<Arc<ClusterLog>, ClusterError> {
        let lifecycle = Lifecycle::default();
        let engines = engine::connect(&config).await?;
        let node: Arc<str> = Arc::from(keys::new_node_id());
        let (presence_tx, presence_rx) = mpsc::channel(presence::OUTGOING_CAPACITY);
        let shared = Arc::new(Shared {
            node: node.clone(),
            config,
            redis: engines.redis,
            client: engines.client,
            pg: engines.pg,
            follows: Mutex::new(HashMap::new()),
            next_epoch: std::sync::atomic::AtomicU64::new(1),
            follows_changed: Notify::new(),
            presence_tx,
            lifecycle: lifecycle.clone(),
            presence: presence::State::default(),
            loads: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOADS),
            metrics,
        });
        let (commands, rx) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        // The appender stops on `LogCommand::Close`, sent after the last actor has flushed.
        lifecycle.spawn(
            tracing::info_span!("cluster-append"),
            appender::run(shared.clone(), rx),
        );
        lifecycle.spawn(
            tracing::info_span!("cluster-tail"),
            tail::run(shared.clone(), lifecycle.cancel.clone()),
        );
        lifecycle.spawn(
            tracing::info_span!("cluster-janitor"),
            janitor::run(shared.clone(), lifecycle.cancel.clone()),
        );
        lifecycle.spawn(
            tracing::info_span!("cluster-wake"),
            tail::run_waker(shared.clone(), lifecycle.cancel.clone()),
        );
        presence::spawn(shared.clone(), presence_rx, &lifecycle).await?;
        info!(node = %node, durability = ?shared.config.durability, "cluster mode: joined");
        let meta = Arc::new(PgMeta::new(
            shared.pg.clone(),
            shared.node.clone(),
            shared.redis.clone(),
        ));
        Ok(Arc::new(ClusterLog {
            shared,
            commands,
            meta,
            lifecycle,
        }))
    }

    /// Shows a workspace event (the server's JSON) to every other node's live streams.
    pub fn publish_event(&self, payload: Bytes) {
        presence::publish_event(&self.shared, payload);
    }

    /// The workspace events other nodes publish. Call once.
    pub fn subscribe_events(&self) -> mpsc::Receiver<Bytes> {
        presence::subscribe_events(&self.shared)
    }

    /// The services' tables in Postgres.
    pub fn meta(&self) -> &Arc<PgMeta> {
        &self.meta
    }

    /// The secret `name` every node shares (the first node to ask stores `candidate`).
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Vec<u8>, ClusterError> {
        engine::shared_secret(&self.shared.pg, name, candidate).await
    }

    /// Whether this node reaches Redis and Postgres now (each asked with a short timeout).
    pub async fn health(&self) -> ClusterHealth {
        const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
        let redis = async {
            let mut redis = self.shared.redis.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut redis)
                .await
                .is_ok()
        };
        let postgres = async {
            match self.shared.pg.get().await {
                Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        };
        let (redis, postgres) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, redis),
            tokio::time::timeout(PROBE_TIMEOUT, postgres)
        );
        ClusterHealth {
            redis: redis.unwrap_or(false),
            postgres: postgres.unwrap_or(false),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Finishes what is queued and stops the appender; then says goodbye (the heartbeat key is
    /// removed, so other nodes drop this node's presence at once) and stops the other tasks.
    /// Called once, after every doc actor has exited.
    pub async fn close(&self, timeout: Duration) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.commands.send(LogCommand::Close { done }).await.is_ok() {
            let _ = tokio::time::timeout(timeout, finished).await;
        }
        presence::goodbye(&self.shared).await;
        self.lifecycle.cancel.cancel();
        self.lifecycle.tracker.close();
        let _ = tokio::time::timeout(timeout, self.lifecycle.tracker.wait()).await;
    }
}

impl DocLog for ClusterLog {
    fn sender(&self) -> &mpsc::Sender<LogCommand> {
        &self.commands
    }

    fn load(&self, doc: &DocId) -> LogFuture<Result<LoadedLog, LoadFailure>> {
        let shared = self.shared.clone();
        let doc = doc.clone();
        Box::pin(async move { snapshot::load(&shared, &doc).await })
    }

    fn exists(&self, doc: &DocId) -> LogFuture<Result<bool, LoadFailure>> {
        let shared = self.shared.clone();
        let doc = doc.clone();
        Box::pin(async move { snapshot::exists(&shared, &doc).await })
    }

    fn follow(&self, doc: &DocId, generation: u64, position: Option<Arc<str>>, feed: Feed) {
        let epoch = self
            .shared
            .next_epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let position = position.unwrap_or_else(|| Arc::from(keys::STREAM_START));
        let is_new = {
            let mut follows = self.shared.follows.lock().expect("follows lock poisoned");
            // An older actor of the doc (one that is stopping) never takes a newer one's place.
            if follows
                .get(doc)
                .is_some_and(|follow| follow.generation > generation)
            {
                return;
            }
            follows
                .insert(
                    doc.clone(),
                    Follow {
                        generation,
                        feed,
                        position,
                        epoch,
                    },
                )
                .is_none()
        };
        self.shared.follows_changed.notify_one();
        if is_new {
            presence::subscribe(&self.shared, doc);
        }
    }

    fn unfollow(&self, doc: &DocId, generation: u64) {
        let removed = {
            let mut follows = self.shared.follows.lock().expect("follows lock poisoned");
            match follows.get(doc) {
                Some(follow) if follow.generation == generation => follows.remove(doc).is_some(),
                _ => false,
            }
        };
        if removed {
            self.shared.follows_changed.notify_one();
            presence::unsubscribe(&self.shared, doc);
        }
    }

    fn publish_presence(&self, doc: &DocId, frame: &Bytes) {
        presence::publish(&self.shared, doc, presence::Kind::Awareness, frame.clone());
    }

    fn is_shared(&self) -> bool {
        true
    }
}

// In the crate root, not in `meta`: `engine` migrates the tables `meta` defines, so `meta`
// depending on `engine` would make the two a cycle.
impl PgMeta {
    /// The services' tables for a process that is not a node (the `tandem user` and `tandem
    /// webhook` commands): connects to both engines as a node would (checking Redis's
    /// persistence and migrating Postgres). Its methods need a multi-threaded runtime.
    pub async fn connect(config: &crate::ClusterConfig) -> Result<PgMeta, crate::ClusterError> {
        let engines = crate::engine::connect(config).await?;
        let node: Arc<str> = Arc::from(format!("cli-{}", crate::keys::new_node_id()));
        Ok(PgMeta::new(engines.pg, node, engines.redis))
    }
}
