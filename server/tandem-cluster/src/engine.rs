//! The engines cluster mode runs on: connecting to Redis and Postgres, refusing a Redis whose
//! persistence settings would break the promise, and the Postgres migrations.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::info;

use crate::{ClusterConfig, ClusterError, Durability};

/// How long a command to Redis may take before it counts as failed (an fsync on a slow disk
/// takes milliseconds; a Redis that takes seconds is unavailable for editing).
pub(crate) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to Redis or Postgres may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in each node's Postgres pool.
const PG_POOL_SIZE: usize = 8;
/// The lock every node takes while it migrates, so that nodes starting together migrate once.
const MIGRATION_LOCK: i64 = 0x7461_6e64_656d; // "tandem"

/// Connected engines.
pub(crate) struct Engines {
    pub(crate) client: redis::Client,
    pub(crate) redis: ConnectionManager,
    pub(crate) pg: Pool,
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connects to both engines, checks Redis's persistence and runs the migrations.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<Engines, ClusterError> {
    let redis_error = |source| ClusterError::Redis {
        url: redact(&config.redis_url),
        source,
    };
    let client = redis::Client::open(config.redis_url.as_str()).map_err(redis_error)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_max_delay(Duration::from_millis(500));
    let mut redis = ConnectionManager::new_with_config(client.clone(), manager_config)
        .await
        .map_err(redis_error)?;
    check_persistence(&mut redis, config.durability).await?;
    let pg = connect_postgres(&config.postgres_url).await?;
    migrate(&pg).await?;
    Ok(Engines { client, redis, pg })
}

/// Refuses a Redis that would acknowledge an append before it is on disk: "nothing anyone saw
/// is lost" needs `appendonly yes` and `appendfsync always`. With `replica` durability it also
/// needs a replica to wait for.
pub async fn check_persistence(
    redis: &mut ConnectionManager,
    durability: Durability,
) -> Result<(), ClusterError> {
    let setting = |name: &'static str| {
        let mut redis = redis.clone();
        async move {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut redis)
                .await
                .map_err(|source| {
                    ClusterError::Persistence(format!(
                        "cannot read redis setting {name} (CONFIG GET refused: {source}); \
                         cluster mode needs appendonly yes and appendfsync always and must be \
                         able to check them"
                    ))
                })?;
            Ok::<String, ClusterError>(pair.get(1).cloned().unwrap_or_default())
        }
    };
    let appendonly = setting("appendonly").await?;
    let appendfsync = setting("appendfsync").await?;
    if appendonly != "yes" || appendfsync != "always" {
        return Err(ClusterError::Persistence(format!(
            "redis runs with appendonly {appendonly} and appendfsync {appendfsync}: an update \
             could be relayed to other people before it is on disk, and lost. Run redis with \
             `appendonly yes` and `appendfsync always` (redis.conf, or CONFIG SET)"
        )));
    }
    if durability == Durability::Replica {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(redis)
            .await
            .map_err(|source| ClusterError::Persistence(format!("cannot read INFO: {source}")))?;
        let replicas = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if replicas == 0 {
            return Err(ClusterError::Persistence(
                "--cluster-durability replica needs a redis with at least one connected replica"
                    .into(),
            ));
        }
    }
    info!(appendonly, appendfsync, "redis persistence checked");
    Ok(())
}

async fn connect_postgres(url: &str) -> Result<Pool, ClusterError> {
    let mut pg_config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| ClusterError::Postgres(format!("bad --postgres-url: {error}")))?;
    pg_config.connect_timeout(CONNECT_TIMEOUT);
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tandem");
    }
    let manager = Manager::from_config(
        pg_config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(PG_POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| ClusterError::Postgres(error.to_string()))?;
    Ok(pool)
}

/// The migrations, in order. Each runs once, in a transaction, under a lock all nodes share;
/// `tandem_schema` records how many have run. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    // 1: documents' snapshots and versions.
    "CREATE TABLE tandem_docs (
        name text PRIMARY KEY,
        snapshot bytea NOT NULL,
        position_ms bigint NOT NULL,
        position_seq bigint NOT NULL,
        fence bigint NOT NULL,
        updated_ms bigint NOT NULL
    );
    CREATE TABLE tandem_versions (
        doc text NOT NULL,
        id bigint NOT NULL,
        node text NOT NULL,
        kind text NOT NULL,
        name text,
        author_sub text,
        author_name text NOT NULL,
        created_ms bigint NOT NULL,
        seq bigint NOT NULL,
        size_bytes bigint NOT NULL,
        author_subs text[] NOT NULL,
        author_names text[] NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (doc, id)
    );",
    crate::meta::ACCOUNTS_ACTIVITY_WEBHOOKS_MIGRATION,
    crate::meta::FILES_HISTORY_MIGRATION,
    // 4: the janitor's mark (janitor.rs).
    "ALTER TABLE tandem_docs ADD COLUMN trimmed boolean NOT NULL DEFAULT false",
    // 5: secrets every node shares (the server's token-signing key).
    "CREATE TABLE tandem_secrets (name text PRIMARY KEY, value bytea NOT NULL)",
    // 6: the accounts' app passwords (meta/users.rs).
    crate::meta::APP_PASSWORDS_MIGRATION,
    // 7: WebDAV locks (meta/dav_locks.rs).
    crate::meta::LOCKS_MIGRATION,
];

/// The secret `name` every node shares: the first node to ask stores `candidate`, and every
/// node (that one included) gets what is stored.
pub(crate) async fn shared_secret(
    pool: &Pool,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, ClusterError> {
    let pg_error = |error: tokio_postgres::Error| ClusterError::Postgres(error.to_string());
    let client = pool
        .get()
        .await
        .map_err(|error| ClusterError::Postgres(error.to_string()))?;
    client
        .execute(
            "INSERT INTO tandem_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &candidate],
        )
        .await
        .map_err(pg_error)?;
    let row = client
        .query_one("SELECT value FROM tandem_secrets WHERE name = $1", &[&name])
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

async fn migrate(pool: &Pool) -> Result<(), ClusterError> {
    let pg_error = |error: tokio_postgres::Error| ClusterError::Postgres(error.to_string());
    let mut client = pool
        .get()
        .await
        .map_err(|error| ClusterError::Postgres(error.to_string()))?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tandem_schema (version bigint NOT NULL)")
        .await
        .map_err(pg_error)?;
    let current: i64 = match tx
        .query_opt("SELECT version FROM tandem_schema", &[])
        .await
        .map_err(pg_error)?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO tandem_schema (version) VALUES (0)", &[])
                .await
                .map_err(pg_error)?;
            0
        }
    };
    if current > SCHEMA_VERSION {
        return Err(ClusterError::Postgres(format!(
            "the database is at schema version {current}, newer than this build knows \
             ({SCHEMA_VERSION}); run a newer tandem"
        )));
    }
    for (idx, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(migration).await.map_err(pg_error)?;
        info!(version = idx + 1, "postgres migrated");
    }
    tx.execute("UPDATE tandem_schema SET version = $1", &[&SCHEMA_VERSION])
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://user:secret@db:6379/0"),
            "redis://user:***@db:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
