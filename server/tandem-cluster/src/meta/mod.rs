//! The services' shared state in Postgres: [`PgMeta`] implements the storage contracts of
//! `tandem_store::meta` (accounts, activity, webhooks, files, history, WebDAV locks) for cluster mode, so every
//! node sees the same accounts, feed, deliveries and files.
//!
//! The contracts are synchronous (the services call them on blocking threads, as they call
//! redb); each method runs its queries on the runtime and waits for them
//! ([`PgMeta::block`]). Every write is one transaction; where the one-node store relied on
//! redb's single writer to make a read-modify-write safe, the Postgres one takes row locks or
//! runs `SERIALIZABLE` and retries, so concurrent nodes keep the same invariants.
//!
//! # Layout
//!
//! - this file: [`PgMeta`], blocking on a query, mapping errors.
//! - `users`, `activity`, `webhooks`: accounts, the feed, the webhook outbox and log.
//! - `files`, `history`: file metadata and uploads; docs' versions and the list of docs.
//! - `dav_locks`: WebDAV locks, one row each, taken in one serializable transaction.

mod activity;
mod dav_locks;
mod files;
mod history;
mod lock;
mod users;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tandem_store::StoreError;

/// The migrations of each part, in the order `engine::MIGRATIONS` runs them.
pub(crate) const ACCOUNTS_ACTIVITY_WEBHOOKS_MIGRATION: &str = users::MIGRATION;
/// Files and history.
pub(crate) const FILES_HISTORY_MIGRATION: &str = files::MIGRATION;
/// The accounts' app passwords.
pub(crate) const APP_PASSWORDS_MIGRATION: &str = users::APP_PASSWORDS_MIGRATION;
/// WebDAV locks.
pub(crate) const LOCKS_MIGRATION: &str = dav_locks::MIGRATION;

/// The services' tables in Postgres. Cheap to share (`Arc`).
pub struct PgMeta {
    pub(crate) pool: deadpool_postgres::Pool,
    /// The runtime the queries run on.
    handle: tokio::runtime::Handle,
    /// This node's id (claims on webhook deliveries name it).
    // Read by the webhook outbox (`webhooks.rs`), which is not on it yet.
    #[allow(dead_code)]
    pub(crate) node: Arc<str>,
    /// Redis, for what is not a table (the list of docs reads the streams too).
    // Until the history contract is implemented on it.
    #[allow(dead_code)]
    pub(crate) redis: redis::aio::ConnectionManager,
}

impl PgMeta {
    pub(crate) fn new(
        pool: deadpool_postgres::Pool,
        node: Arc<str>,
        redis: redis::aio::ConnectionManager,
    ) -> PgMeta {
        PgMeta {
            pool,
            handle: tokio::runtime::Handle::current(),
            node,
            redis,
        }
    }

    /// Runs `work` on the runtime and waits for it: from a blocking thread (where the services
    /// call the contracts) or, through `block_in_place`, from a runtime worker.
    pub(crate) fn block<T>(&self, work: impl Future<Output = T>) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.handle.block_on(work))
        } else {
            self.handle.block_on(work)
        }
    }

    /// A pooled connection, or `Unavailable`.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }
}

/// Any Postgres failure, as the services' error: retry later, nothing was stored.
pub(crate) fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        backend: "postgres",
        detail: error.to_string(),
    }
}

/// A count or time of the contracts as a Postgres `bigint`; beyond `i64::MAX` (never reached by
/// ids, counts or milliseconds) it saturates.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` read back; a negative one (never written) reads as 0.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
