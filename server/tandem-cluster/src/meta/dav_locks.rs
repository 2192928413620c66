//! `LockTable` for [`PgMeta`]: the WebDAV locks of every node in `tandem_locks` (migration 7,
//! `protocol-spec/cluster.md`), so all nodes agree on who holds what. A lock is taken in one
//! `SERIALIZABLE` transaction that reads every lock and inserts the new one, so two nodes
//! granting overlapping locks at once cannot both commit: the one that retries sees the other.
//! The conflict rule is the caller's (the server's lock service).

use tandem_store::meta::LockTable;
use tandem_store::{LockRecord, StoreError};
use tokio_postgres::Row;

use super::files::{Abort, serializable};
use super::{PgMeta, to_i64, to_u64, unavailable};

/// Migration 7: the WebDAV locks.
pub(crate) const MIGRATION: &str = "
    CREATE TABLE tandem_locks (
        token text PRIMARY KEY,
        path text NOT NULL,
        deep boolean NOT NULL,
        shared boolean NOT NULL,
        owner text,
        principal text,
        created_ms bigint NOT NULL,
        timeout_ms bigint NOT NULL,
        expires_ms bigint NOT NULL
    );";

/// The columns of a lock row, in the order [`lock_of`] reads them.
const COLUMNS: &str =
    "token, path, deep, shared, owner, principal, created_ms, timeout_ms, expires_ms";

fn lock_of(row: &Row) -> LockRecord {
    LockRecord {
        token: row.get(0),
        path: row.get(1),
        deep: row.get(2),
        shared: row.get(3),
        owner: row.get(4),
        principal: row.get(5),
        created_ms: to_u64(row.get(6)),
        timeout_ms: to_u64(row.get(7)),
        expires_ms: to_u64(row.get(8)),
    }
}

const UPSERT: &str = "INSERT INTO tandem_locks \
     (token, path, deep, shared, owner, principal, created_ms, timeout_ms, expires_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (token) DO UPDATE SET path = $2, deep = $3, shared = $4, owner = $5, \
     principal = $6, created_ms = $7, timeout_ms = $8, expires_ms = $9";

impl LockTable for PgMeta {
    fn put_lock(&self, lock: &LockRecord) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    UPSERT,
                    &[
                        &lock.token,
                        &lock.path,
                        &lock.deep,
                        &lock.shared,
                        &lock.owner,
                        &lock.principal,
                        &to_i64(lock.created_ms),
                        &to_i64(lock.timeout_ms),
                        &to_i64(lock.expires_ms),
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn create_lock(
        &self,
        lock: &LockRecord,
        conflict: &(dyn Fn(&[LockRecord]) -> Option<LockRecord> + Send + Sync),
    ) -> Result<Option<LockRecord>, StoreError> {
        self.block(serializable(self, async |tx| {
            let rows = tx
                .query(&format!("SELECT {COLUMNS} FROM tandem_locks"), &[])
                .await?;
            let stored: Vec<LockRecord> = rows.iter().map(lock_of).collect();
            if let Some(found) = conflict(&stored) {
                return Ok(Some(found));
            }
            tx.execute(
                UPSERT,
                &[
                    &lock.token,
                    &lock.path,
                    &lock.deep,
                    &lock.shared,
                    &lock.owner,
                    &lock.principal,
                    &to_i64(lock.created_ms),
                    &to_i64(lock.timeout_ms),
                    &to_i64(lock.expires_ms),
                ],
            )
            .await?;
            Ok::<_, Abort<StoreError>>(None)
        }))
    }

    fn update_lock(&self, lock: &LockRecord) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE tandem_locks SET timeout_ms = $2, expires_ms = $3 WHERE token = $1",
                    &[
                        &lock.token,
                        &to_i64(lock.timeout_ms),
                        &to_i64(lock.expires_ms),
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(n > 0)
        })
    }

    fn remove_locks(&self, tokens: &[String]) -> Result<usize, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        self.block(async {
            let client = self.client().await?;
            let n = client
                .execute("DELETE FROM tandem_locks WHERE token = ANY($1)", &[&tokens])
                .await
                .map_err(unavailable)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {COLUMNS} FROM tandem_locks ORDER BY token"),
                    &[],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows.iter().map(lock_of).collect())
        })
    }
}
