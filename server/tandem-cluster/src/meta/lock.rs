//! [`SharedLocks`] on Postgres: session-level advisory locks (`pg_advisory_lock`), each held on
//! one connection for the guard's lifetime. A lock belongs to the session, so a node that dies
//! (or loses its connection) releases its locks with it; no lease to expire, no cleanup.
//!
//! A lock waited for ([`SharedLocks::lock`], the blob lock: at most one holder per node, held
//! briefly) keeps its pooled connection and unlocks it before it goes back to the pool. A lock
//! taken without waiting ([`SharedLocks::try_lock`], a tus PATCH's: one per upload being
//! written, held as long as a body takes to arrive) takes its connection out of the pool for
//! good, so that many of them never starve the node's pool; releasing it closes the connection.
//! The files service caps how many of those a node holds. One taken without waiting for a
//! moment ([`SharedLocks::try_lock_brief`], the cleanup's) keeps its pooled connection like a
//! waited-for one.
//!
//! The lock's name becomes the `bigint` key by 64-bit FNV-1a of `tandem:` and the name: fixed
//! by this file, so every node (and every build) computes the same key
//! (`protocol-spec/cluster.md`).

use std::time::Duration;

use tandem_store::StoreError;
use tandem_store::meta::{HeldLock, SharedLockGuard, SharedLocks};

use super::{PgMeta, unavailable};

/// The advisory-lock key of lock `name`.
pub(crate) fn lock_key(name: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"tandem:"
        .iter()
        .chain(name.as_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// How long a node waits for a lock held elsewhere before the request fails (`lock_timeout`).
/// Longer than the longest legitimate hold (a server-side copy of a file of up to 5 GiB).
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// How long checking that a lock is still held may take; beyond it, it is taken for lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on a session before it waits for a lock: it waits at most [`LOCK_WAIT`], and the
/// server probes the connection so that a holder whose node vanished without closing it (a
/// half-open TCP connection) loses its session, and its locks, within about a minute.
fn lock_session_settings() -> String {
    format!(
        "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
         SET tcp_keepalives_count = 3; SET lock_timeout = '{}s'",
        LOCK_WAIT.as_secs()
    )
}

/// Whether this session holds advisory lock `key` (a `bigint` key is stored as two 32-bit
/// halves, `classid` and `objid`, with `objsubid` 1).
const HOLDS_LOCK: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
    AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
    AND classid::bigint = $1 AND objid::bigint = $2)";

/// Asks `client`'s session whether it still holds lock `key`; `false` if it cannot tell.
async fn holds(client: &tokio_postgres::Client, key: i64) -> bool {
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let (high, low) = ((bits >> 32) as i64, (bits & 0xffff_ffff) as i64);
    match tokio::time::timeout(CHECK_TIMEOUT, client.query_one(HOLDS_LOCK, &[&high, &low])).await {
        Ok(Ok(row)) => row.get::<_, bool>(0),
        Ok(Err(error)) => {
            tracing::warn!(%error, key, "checking a shared lock failed; taken for lost");
            false
        }
        Err(_) => {
            tracing::warn!(key, "checking a shared lock timed out; taken for lost");
            false
        }
    }
}

/// A held advisory lock on a connection taken out of the pool: closing it (when this is
/// dropped) ends the session, and Postgres releases the lock.
struct DetachedLock {
    client: deadpool_postgres::ClientWrapper,
    key: i64,
    handle: tokio::runtime::Handle,
}

impl HeldLock for DetachedLock {
    fn still_held(&self) -> bool {
        block_on(&self.handle, holds(&self.client, self.key))
    }
}

/// Runs `work` on `handle` from a blocking thread or, through `block_in_place`, a worker.
fn block_on<T>(handle: &tokio::runtime::Handle, work: impl Future<Output = T>) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| handle.block_on(work))
    } else {
        handle.block_on(work)
    }
}

/// A held advisory lock on a pooled connection: the session that holds it.
struct PgLock {
    /// `None` once released.
    client: Option<deadpool_postgres::Object>,
    key: i64,
    handle: tokio::runtime::Handle,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let key = self.key;
        let release = async move {
            match client
                .query_one("SELECT pg_advisory_unlock($1)", &[&key])
                .await
            {
                // Released: the connection goes back to the pool.
                Ok(row) if row.get::<_, bool>(0) => {}
                res => {
                    // Not released (or unknown): closing the session releases it for sure.
                    tracing::warn!(
                        key,
                        ok = res.is_ok(),
                        "advisory unlock failed; closing its connection"
                    );
                    drop(deadpool_postgres::Object::take(client));
                }
            }
        };
        block_on(&self.handle, release);
    }
}

impl HeldLock for PgLock {
    fn still_held(&self) -> bool {
        match &self.client {
            Some(client) => block_on(&self.handle, holds(client, self.key)),
            None => false,
        }
    }
}

impl SharedLocks for PgMeta {
    fn lock(&self, name: &str) -> Result<SharedLockGuard, StoreError> {
        let key = lock_key(name);
        self.block(async {
            let client = self.client().await?;
            let locked = async {
                client.batch_execute(&lock_session_settings()).await?;
                client
                    .execute("SELECT pg_advisory_lock($1)", &[&key])
                    .await?;
                client.batch_execute("RESET lock_timeout").await
            };
            if let Err(error) = locked.await {
                // Maybe locked after all (the answer was lost): closing the session unlocks.
                drop(deadpool_postgres::Object::take(client));
                return Err(unavailable(error));
            }
            Ok(SharedLockGuard::new(PgLock {
                client: Some(client),
                key,
                handle: self.handle.clone(),
            }))
        })
    }

    fn try_lock(&self, name: &str) -> Result<Option<SharedLockGuard>, StoreError> {
        let key = lock_key(name);
        self.block(async {
            let client = self.client().await?;
            let taken = try_advisory_lock(&client, key).await?;
            Ok(taken.then(|| {
                SharedLockGuard::new(DetachedLock {
                    client: deadpool_postgres::Object::take(client),
                    key,
                    handle: self.handle.clone(),
                })
            }))
        })
    }

    fn try_lock_brief(&self, name: &str) -> Result<Option<SharedLockGuard>, StoreError> {
        let key = lock_key(name);
        self.block(async {
            let client = self.client().await?;
            let taken = try_advisory_lock(&client, key).await?;
            Ok(taken.then(|| {
                SharedLockGuard::new(PgLock {
                    client: Some(client),
                    key,
                    handle: self.handle.clone(),
                })
            }))
        })
    }
}

/// `pg_try_advisory_lock(key)` on `client`'s session: whether it took the lock.
async fn try_advisory_lock(
    client: &deadpool_postgres::Client,
    key: i64,
) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(unavailable)?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_fixed_and_distinct() {
        // Fixed: nodes of different builds must agree on them.
        assert_eq!(lock_key("blobs"), lock_key("blobs"));
        assert_ne!(lock_key("blobs"), lock_key("upload:0123"));
        assert_eq!(
            lock_key(""),
            i64::from_ne_bytes(0xed12_89be_e735_8250_u64.to_ne_bytes())
        );
    }
}
