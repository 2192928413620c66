//! Accounts in Postgres: `tandem_users`, one row per account, written whole by one statement,
//! so a reader sees the old account or the new one, never a mix (as `tandem_store::accounts`);
//! and `tandem_sign_in_failures`, the failed sign-ins every node counts (one row per failure
//! and key, kept for the failure window).
//!
//! This file also holds migration 2, the tables of accounts, the activity feed and webhooks
//! (`protocol-spec/cluster.md`, "Postgres: accounts, activity, webhooks"), and migration 6, the
//! accounts' app passwords: parallel arrays in the account's row, like its documents, so that an
//! account and its app passwords are still read and written whole.

use std::collections::BTreeMap;

use tandem_store::meta::{FailureLog, UserTable};
use tandem_store::{AppPasswordRecord, StoreError, UserRecord};

use super::{PgMeta, to_i64, to_u64, unavailable};

/// Migration 2: accounts, the activity feed, webhooks. Keys are `COLLATE "C"`, so lists come
/// back in byte order as redb's do.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE tandem_users (
    sub text COLLATE "C" PRIMARY KEY,
    name text NOT NULL,
    password_hash text NOT NULL,
    admin boolean NOT NULL,
    created_ms bigint NOT NULL,
    doc_patterns text[] NOT NULL,
    doc_roles text[] NOT NULL
);

CREATE TABLE tandem_sign_in_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL
);
CREATE INDEX tandem_sign_in_failures_by_key ON tandem_sign_in_failures (key, at_ms);
CREATE INDEX tandem_sign_in_failures_by_time ON tandem_sign_in_failures (at_ms);

CREATE SEQUENCE tandem_activity_ids AS bigint START WITH 1;
CREATE TABLE tandem_activity (
    id bigint PRIMARY KEY,
    kind text NOT NULL,
    path text NOT NULL,
    other_paths text[] NOT NULL,
    actor_sub text,
    actor_name text NOT NULL,
    actor_id text COLLATE "C" NOT NULL,
    started_ms bigint NOT NULL,
    ended_ms bigint NOT NULL,
    n_updates bigint NOT NULL,
    details text NOT NULL
);
CREATE INDEX tandem_activity_by_actor ON tandem_activity (actor_id, id);
CREATE INDEX tandem_activity_by_end ON tandem_activity (ended_ms);
CREATE TABLE tandem_activity_paths (
    path text COLLATE "C" NOT NULL,
    id bigint NOT NULL REFERENCES tandem_activity (id) ON DELETE CASCADE,
    PRIMARY KEY (path, id)
);
CREATE INDEX tandem_activity_paths_by_id ON tandem_activity_paths (id);

CREATE TABLE tandem_webhooks (
    id text COLLATE "C" PRIMARY KEY,
    url text NOT NULL,
    events text[] NOT NULL,
    secret text NOT NULL,
    docs text,
    created_ms bigint NOT NULL
);
CREATE TABLE tandem_webhook_outbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id text NOT NULL,
    webhook_id text COLLATE "C" NOT NULL REFERENCES tandem_webhooks (id) ON DELETE CASCADE,
    event text NOT NULL,
    body text NOT NULL,
    created_ms bigint NOT NULL,
    attempts bigint NOT NULL,
    next_attempt_ms bigint NOT NULL,
    claimed_by text,
    claimed_until_ms bigint
);
CREATE INDEX tandem_webhook_outbox_by_webhook ON tandem_webhook_outbox (webhook_id);
CREATE TABLE tandem_webhook_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id text COLLATE "C" NOT NULL REFERENCES tandem_webhooks (id) ON DELETE CASCADE,
    delivery_id text NOT NULL,
    event text NOT NULL,
    at_ms bigint NOT NULL,
    status integer,
    error text,
    duration_ms bigint NOT NULL,
    outcome text NOT NULL
);
CREATE INDEX tandem_webhook_log_by_webhook ON tandem_webhook_log (webhook_id, seq);
"#;

/// Migration 6: app passwords, as arrays of the same length (index `i` of each is one app
/// password), as the documents are.
pub(crate) const APP_PASSWORDS_MIGRATION: &str = "
ALTER TABLE tandem_users
    ADD COLUMN app_password_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN app_password_labels text[] NOT NULL DEFAULT '{}',
    ADD COLUMN app_password_hashes bytea[] NOT NULL DEFAULT '{}',
    ADD COLUMN app_password_created_ms bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN app_password_last_used_ms bigint[] NOT NULL DEFAULT '{}';
";

const USER_COLUMNS: &str = "sub, name, password_hash, admin, created_ms, doc_patterns, doc_roles, \
     app_password_ids, app_password_labels, app_password_hashes, app_password_created_ms, \
     app_password_last_used_ms";

/// The upsert of a whole account: `$1` to `$12` in the order of [`USER_COLUMNS`].
const PUT_USER: &str = "INSERT INTO tandem_users
         (sub, name, password_hash, admin, created_ms, doc_patterns, doc_roles,
          app_password_ids, app_password_labels, app_password_hashes, app_password_created_ms,
          app_password_last_used_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (sub) DO UPDATE SET
         name = EXCLUDED.name, password_hash = EXCLUDED.password_hash,
         admin = EXCLUDED.admin, created_ms = EXCLUDED.created_ms,
         doc_patterns = EXCLUDED.doc_patterns, doc_roles = EXCLUDED.doc_roles,
         app_password_ids = EXCLUDED.app_password_ids,
         app_password_labels = EXCLUDED.app_password_labels,
         app_password_hashes = EXCLUDED.app_password_hashes,
         app_password_created_ms = EXCLUDED.app_password_created_ms,
         app_password_last_used_ms = EXCLUDED.app_password_last_used_ms";

/// Writes `user` whole on `client` (a connection or a transaction).
async fn put_user_on(
    client: &impl deadpool_postgres::GenericClient,
    user: &UserRecord,
) -> Result<(), StoreError> {
    let patterns: Vec<&str> = user.docs.keys().map(String::as_str).collect();
    let roles: Vec<&str> = user.docs.values().map(String::as_str).collect();
    let apps = &user.app_passwords;
    let ids: Vec<&str> = apps.iter().map(|app| app.id.as_str()).collect();
    let labels: Vec<&str> = apps.iter().map(|app| app.label.as_str()).collect();
    let hashes: Vec<&[u8]> = apps.iter().map(|app| &app.secret_sha256[..]).collect();
    let created: Vec<i64> = apps.iter().map(|app| to_i64(app.created_ms)).collect();
    let last_used: Vec<i64> = apps.iter().map(|app| to_i64(app.last_used_ms)).collect();
    client
        .execute(
            PUT_USER,
            &[
                &user.sub,
                &user.name,
                &user.password_hash,
                &user.admin,
                &to_i64(user.created_ms),
                &patterns,
                &roles,
                &ids,
                &labels,
                &hashes,
                &created,
                &last_used,
            ],
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn user_from_row(row: &tokio_postgres::Row) -> Result<UserRecord, StoreError> {
    let patterns: Vec<String> = row.try_get("doc_patterns").map_err(unavailable)?;
    let roles: Vec<String> = row.try_get("doc_roles").map_err(unavailable)?;
    let sub: String = row.try_get("sub").map_err(unavailable)?;
    if patterns.len() != roles.len() {
        return Err(StoreError::CorruptUser {
            sub,
            detail: "doc patterns and roles differ in number".into(),
        });
    }
    let ids: Vec<String> = row.try_get("app_password_ids").map_err(unavailable)?;
    let labels: Vec<String> = row.try_get("app_password_labels").map_err(unavailable)?;
    let hashes: Vec<Vec<u8>> = row.try_get("app_password_hashes").map_err(unavailable)?;
    let created: Vec<i64> = row
        .try_get("app_password_created_ms")
        .map_err(unavailable)?;
    let last_used: Vec<i64> = row
        .try_get("app_password_last_used_ms")
        .map_err(unavailable)?;
    let n_apps = ids.len();
    if [labels.len(), hashes.len(), created.len(), last_used.len()] != [n_apps; 4] {
        return Err(StoreError::CorruptUser {
            sub,
            detail: "app password columns differ in number".into(),
        });
    }
    let mut app_passwords = Vec::with_capacity(n_apps);
    for ((((id, label), hash), created_ms), last_used_ms) in ids
        .into_iter()
        .zip(labels)
        .zip(hashes)
        .zip(created)
        .zip(last_used)
    {
        let Ok(secret_sha256) = <[u8; 32]>::try_from(hash.as_slice()) else {
            return Err(StoreError::CorruptUser {
                sub,
                detail: format!("app password {id:?} has no 32-byte hash"),
            });
        };
        app_passwords.push(AppPasswordRecord {
            id,
            label,
            secret_sha256,
            created_ms: to_u64(created_ms),
            last_used_ms: to_u64(last_used_ms),
        });
    }
    Ok(UserRecord {
        sub,
        name: row.try_get("name").map_err(unavailable)?,
        password_hash: row.try_get("password_hash").map_err(unavailable)?,
        docs: patterns.into_iter().zip(roles).collect::<BTreeMap<_, _>>(),
        admin: row.try_get("admin").map_err(unavailable)?,
        created_ms: to_u64(row.try_get("created_ms").map_err(unavailable)?),
        app_passwords,
    })
}

impl UserTable for PgMeta {
    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            put_user_on(&client, user).await
        })
    }

    fn modify_user(
        &self,
        sub: &str,
        change: &mut dyn FnMut(Option<&UserRecord>) -> Option<UserRecord>,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            // The row lock serialises changes of one account across nodes. An account created
            // meanwhile by another node is overwritten whole, as by `put_user`.
            let row = tx
                .query_opt(
                    &format!("SELECT {USER_COLUMNS} FROM tandem_users WHERE sub = $1 FOR UPDATE"),
                    &[&sub],
                )
                .await
                .map_err(unavailable)?;
            let current = row.as_ref().map(user_from_row).transpose()?;
            let Some(new) = change(current.as_ref()) else {
                return Ok(None);
            };
            put_user_on(&tx, &new).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Some(new))
        })
    }

    fn remove_user(&self, sub: &str) -> Result<bool, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let n_removed = client
                .execute("DELETE FROM tandem_users WHERE sub = $1", &[&sub])
                .await
                .map_err(unavailable)?;
            Ok(n_removed > 0)
        })
    }

    fn get_user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {USER_COLUMNS} FROM tandem_users WHERE sub = $1"),
                    &[&sub],
                )
                .await
                .map_err(unavailable)?;
            row.as_ref().map(user_from_row).transpose()
        })
    }

    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {USER_COLUMNS} FROM tandem_users ORDER BY sub"),
                    &[],
                )
                .await
                .map_err(unavailable)?;
            let mut users = Vec::with_capacity(rows.len());
            for row in &rows {
                match user_from_row(row) {
                    Ok(user) => users.push(user),
                    // As the store: a damaged account is left out of the list.
                    Err(error @ StoreError::CorruptUser { .. }) => {
                        tracing::error!(%error, "damaged account left out of the list");
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(users)
        })
    }

    fn count_users(&self) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT count(*) FROM tandem_users", &[])
                .await
                .map_err(unavailable)?;
            let n: i64 = row.try_get(0).map_err(unavailable)?;
            Ok(to_u64(n))
        })
    }
}

impl FailureLog for PgMeta {
    fn failures(
        &self,
        keys: &[&str],
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<(u64, Option<u64>)>, StoreError> {
        let after = to_i64(now_ms.saturating_sub(window_ms));
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT key, count(*), min(at_ms) FROM tandem_sign_in_failures
                     WHERE key = ANY($1) AND at_ms > $2 GROUP BY key",
                    &[&keys, &after],
                )
                .await
                .map_err(unavailable)?;
            let mut counts = vec![(0, None); keys.len()];
            for row in &rows {
                let key: String = row.try_get(0).map_err(unavailable)?;
                let n: i64 = row.try_get(1).map_err(unavailable)?;
                let oldest: Option<i64> = row.try_get(2).map_err(unavailable)?;
                for (idx, wanted) in keys.iter().enumerate() {
                    if *wanted == key {
                        counts[idx] = (to_u64(n), oldest.map(to_u64));
                    }
                }
            }
            Ok(counts)
        })
    }

    fn record_failure(&self, keys: &[&str], now_ms: u64, window_ms: u64) -> Result<(), StoreError> {
        let cutoff = to_i64(now_ms.saturating_sub(window_ms));
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            tx.execute(
                "INSERT INTO tandem_sign_in_failures (key, at_ms)
                 SELECT k, $2 FROM unnest($1::text[]) AS k",
                &[&keys, &to_i64(now_ms)],
            )
            .await
            .map_err(unavailable)?;
            // Each failure cost a password hash, so what expires per call stays small.
            tx.execute(
                "DELETE FROM tandem_sign_in_failures WHERE at_ms <= $1",
                &[&cutoff],
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM tandem_sign_in_failures WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
