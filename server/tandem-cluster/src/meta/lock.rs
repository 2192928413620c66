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

use tandem_store::StoreError;
use tandem_store::meta::{SharedLockGuard, SharedLocks};

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

/// A held advisory lock on a connection taken out of the pool: closing it (when this is
/// dropped) ends the session, and Postgres releases the lock.
struct DetachedLock {
    _client: deadpool_postgres::ClientWrapper,
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
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.handle.block_on(release));
        } else {
            self.handle.block_on(release);
        }
    }
}

impl SharedLocks for PgMeta {
    fn lock(&self, name: &str) -> Result<SharedLockGuard, StoreError> {
        let key = lock_key(name);
        self.block(async {
            let client = self.client().await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(unavailable)?;
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
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(unavailable)?
                .get(0);
            Ok(taken.then(|| {
                SharedLockGuard::new(DetachedLock {
                    _client: deadpool_postgres::Object::take(client),
                })
            }))
        })
    }

    fn try_lock_brief(&self, name: &str) -> Result<Option<SharedLockGuard>, StoreError> {
        let key = lock_key(name);
        self.block(async {
            let client = self.client().await?;
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(unavailable)?
                .get(0);
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
