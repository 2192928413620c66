//! File metadata in Postgres: [`FileTable`] for [`PgMeta`], with the semantics of the redb
//! `Store` methods of the same names (`tandem-store/src/files.rs`). The tables are described in
//! `protocol-spec/cluster.md` ("Postgres: files and history").
//!
//! Every write runs in one `SERIALIZABLE` transaction, retried from the start when Postgres
//! reports a conflict with a concurrent one (`serializable`). That keeps the invariants redb's
//! single writer kept, across any number of nodes:
//! - `tandem_file_usage.used` is the sum of the charges of the versions of the workspace's files;
//! - `tandem_blobs.refcount` is the number of versions naming the blob, and a row whose count
//!   reaches zero is deleted in the transaction that released the last reference (the caller then
//!   removes the blob file under the cross-node blob lock, `tandem-server/src/files/blobs.rs`);
//! - a path is either a file or a doc, never both, and a file keeps at most `max_versions`.
//!
//! Unsigned values are stored as `bigint`; nothing the server stores comes near 2^63.

use std::future::Future;

use tandem_store::meta::FileTable;
use tandem_store::{
    BlobRow, Deleted, FileEntry, FileError, FileVersion, UploadRecord, Uploader, workspace_of,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, Row, Transaction};

use super::history::redis_unavailable;
use super::{PgMeta, unavailable};
use crate::keys;

/// Migration 3: file metadata, blob refcounts, workspace usage, uploads in progress, and the
/// per-doc counter of version ids (`tandem_versions` itself is migration 1).
pub(crate) const MIGRATION: &str = "
    CREATE TABLE tandem_file_versions (
        path text NOT NULL,
        version bigint NOT NULL,
        sha256 text NOT NULL,
        size bigint NOT NULL,
        content_type text NOT NULL,
        name text NOT NULL,
        uploader_sub text,
        uploader_name text NOT NULL,
        uploaded_ms bigint NOT NULL,
        PRIMARY KEY (path, version)
    );
    CREATE TABLE tandem_blobs (
        sha256 text PRIMARY KEY,
        size bigint NOT NULL,
        refcount bigint NOT NULL CHECK (refcount > 0)
    );
    CREATE TABLE tandem_file_usage (
        workspace text PRIMARY KEY,
        used bigint NOT NULL CHECK (used > 0)
    );
    CREATE TABLE tandem_uploads (
        id text PRIMARY KEY,
        path text NOT NULL,
        length bigint NOT NULL,
        sha256 text,
        content_type text NOT NULL,
        name text NOT NULL,
        uploader_sub text,
        uploader_name text NOT NULL,
        created_ms bigint NOT NULL,
        expires_ms bigint NOT NULL
    );
    CREATE TABLE tandem_version_ids (
        doc text PRIMARY KEY,
        last_id bigint NOT NULL
    );";

/// A transaction that meets concurrent ones this often in a row gives up (`Unavailable`).
const MAX_TX_ATTEMPTS: usize = 16;

/// The columns of a version row, in the order [`version_of`] reads them.
const VERSION_COLUMNS: &str =
    "version, sha256, size, content_type, name, uploader_sub, uploader_name, uploaded_ms";
/// The columns of an upload row, in the order [`upload_of`] reads them.
const UPLOAD_COLUMNS: &str = "id, path, length, sha256, content_type, name, uploader_sub, \
     uploader_name, created_ms, expires_ms";

/// How a transaction's body ended short of success.
pub(super) enum Abort<E> {
    /// Postgres failed (retried if it was a conflict with a concurrent transaction).
    Pg(tokio_postgres::Error),
    /// The operation was refused; the transaction rolls back.
    Refused(E),
}

impl<E> From<tokio_postgres::Error> for Abort<E> {
    fn from(error: tokio_postgres::Error) -> Self {
        Abort::Pg(error)
    }
}

/// Whether `error` means "a concurrent transaction interfered: run it again".
fn is_conflict(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
    )
}

/// Runs `body` in a `SERIALIZABLE` transaction and commits it, starting over (at most
/// [`MAX_TX_ATTEMPTS`] times) when Postgres reports a conflict with a concurrent transaction.
/// A refusal rolls back and is returned as is; any other Postgres failure is `Unavailable`.
pub(super) async fn serializable<T, E>(
    meta: &PgMeta,
    body: impl AsyncFn(&Transaction<'_>) -> Result<T, Abort<E>>,
) -> Result<T, E>
where
    E: From<tandem_store::StoreError>,
{
    let mut client = meta.client().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await
            .map_err(unavailable)?;
        let error = match body(&tx).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(error) => error,
            },
            Err(Abort::Refused(refused)) => {
                // Dropping the transaction rolls it back.
                return Err(refused);
            }
            Err(Abort::Pg(error)) => error,
        };
        if !is_conflict(&error) || attempt >= MAX_TX_ATTEMPTS {
            return Err(unavailable(error).into());
        }
        tracing::debug!(attempt, %error, "postgres transaction conflicted; retrying");
    }
}

/// A `u64` as a `bigint` column.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` column as a `u64` (a negative one, which the server never writes, as 0).
pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn version_of(row: &Row) -> FileVersion {
    FileVersion {
        version: uint(row.get(0)),
        sha256: row.get(1),
        size: uint(row.get(2)),
        content_type: row.get(3),
        name: row.get(4),
        uploader: Uploader {
            sub: row.get(5),
            name: row.get(6),
        },
        uploaded_ms: uint(row.get(7)),
    }
}

fn upload_of(row: &Row) -> UploadRecord {
    UploadRecord {
        id: row.get(0),
        path: row.get(1),
        length: uint(row.get(2)),
        sha256: row.get(3),
        content_type: row.get(4),
        name: row.get(5),
        uploader: Uploader {
            sub: row.get(6),
            name: row.get(7),
        },
        created_ms: uint(row.get(8)),
        expires_ms: uint(row.get(9)),
    }
}

/// The versions of `path`, oldest first (empty if it is no file).
async fn versions_of(
    tx: &Transaction<'_>,
    path: &str,
) -> Result<Vec<FileVersion>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM tandem_file_versions WHERE path = $1 \
                 ORDER BY version"
            ),
            &[&path],
        )
        .await?;
    Ok(rows.iter().map(version_of).collect())
}

/// Whether `path` has a snapshot row (a doc compacted at least once). A doc that lives only as
/// its Redis stream is checked before the transaction ([`PgMeta::stream_exists`]).
async fn has_snapshot(tx: &Transaction<'_>, path: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt("SELECT 1 FROM tandem_docs WHERE name = $1", &[&path])
        .await?
        .is_some())
}

async fn usage_of(tx: &Transaction<'_>, workspace: &str) -> Result<u64, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT used FROM tandem_file_usage WHERE workspace = $1",
            &[&workspace],
        )
        .await?
        .map_or(0, |row| uint(row.get(0))))
}

/// Sets the usage of `workspace` (a workspace using nothing has no row, as in redb).
async fn set_usage(
    tx: &Transaction<'_>,
    workspace: &str,
    used: u64,
) -> Result<(), tokio_postgres::Error> {
    if used == 0 {
        tx.execute(
            "DELETE FROM tandem_file_usage WHERE workspace = $1",
            &[&workspace],
        )
        .await?;
    } else {
        tx.execute(
            "INSERT INTO tandem_file_usage (workspace, used) VALUES ($1, $2) \
             ON CONFLICT (workspace) DO UPDATE SET used = EXCLUDED.used",
            &[&workspace, &int(used)],
        )
        .await?;
    }
    Ok(())
}

/// Adds `size` to `workspace`'s usage, refused beyond `quota` (see the redb `add_usage`).
async fn add_usage(
    tx: &Transaction<'_>,
    workspace: &str,
    size: u64,
    quota: Option<u64>,
) -> Result<(), Abort<FileError>> {
    let used = usage_of(tx, workspace).await?;
    if let Some(limit) = quota
        && used.saturating_add(size) > limit
    {
        return Err(Abort::Refused(FileError::QuotaExceeded {
            workspace: workspace.to_owned(),
            used,
            size,
            limit,
        }));
    }
    set_usage(tx, workspace, used.saturating_add(size)).await?;
    Ok(())
}

async fn sub_usage(
    tx: &Transaction<'_>,
    workspace: &str,
    size: u64,
) -> Result<(), tokio_postgres::Error> {
    let used = usage_of(tx, workspace).await?;
    set_usage(tx, workspace, used.saturating_sub(size)).await
}

async fn add_blob_ref(
    tx: &Transaction<'_>,
    sha256: &str,
    size: u64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO tandem_blobs (sha256, size, refcount) VALUES ($1, $2, 1) \
         ON CONFLICT (sha256) DO UPDATE SET size = EXCLUDED.size, \
         refcount = tandem_blobs.refcount + 1",
        &[&sha256, &int(size)],
    )
    .await?;
    Ok(())
}

/// Drops one reference to blob `sha256`; a blob left without any loses its row and is added to
/// `unreferenced` (once).
async fn release_blob(
    tx: &Transaction<'_>,
    sha256: &str,
    unreferenced: &mut Vec<String>,
) -> Result<(), tokio_postgres::Error> {
    let left = tx
        .query_opt(
            "UPDATE tandem_blobs SET refcount = refcount - 1 WHERE sha256 = $1 AND refcount > 1 \
             RETURNING refcount",
            &[&sha256],
        )
        .await?;
    if left.is_none() {
        let removed = tx
            .execute("DELETE FROM tandem_blobs WHERE sha256 = $1", &[&sha256])
            .await?;
        if removed > 0 && !unreferenced.iter().any(|known| known == sha256) {
            unreferenced.push(sha256.to_owned());
        }
    }
    Ok(())
}

async fn insert_version(
    tx: &Transaction<'_>,
    path: &str,
    version: &FileVersion,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!("INSERT INTO tandem_file_versions (path, {VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        &[
            &path,
            &int(version.version),
            &version.sha256,
            &int(version.size),
            &version.content_type,
            &version.name,
            &version.uploader.sub,
            &version.uploader.name,
            &int(version.uploaded_ms),
        ],
    )
    .await?;
    Ok(())
}

impl PgMeta {
    /// Whether `doc` has a Redis stream (a doc written but perhaps never compacted).
    pub(super) async fn stream_exists(&self, doc: &str) -> Result<bool, tandem_store::StoreError> {
        let mut redis = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(keys::doc_stream_of(doc))
            .query_async(&mut redis)
            .await
            .map_err(redis_unavailable)
    }

    /// Runs `work`, a read or a single statement (atomic by itself), on a pooled connection.
    fn on_client<T, F>(
        &self,
        work: impl FnOnce(deadpool_postgres::Client) -> F,
    ) -> Result<T, FileError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.block(async {
            let client = self.client().await?;
            work(client)
                .await
                .map_err(|error| FileError::Store(unavailable(error)))
        })
    }
}

impl FileTable for PgMeta {
    fn put_file_version(
        &self,
        path: &str,
        version: FileVersion,
        quota: Option<u64>,
        upload_id: Option<&str>,
        max_versions: Option<usize>,
    ) -> Result<(FileEntry, Vec<String>), FileError> {
        let taken = || FileError::PathTaken { path: path.into() };
        self.block(async {
            if self.stream_exists(path).await? {
                return Err(taken());
            }
            serializable(self, async |tx| {
                if has_snapshot(tx, path).await? {
                    return Err(Abort::Refused(taken()));
                }
                let mut versions = versions_of(tx, path).await?;
                let workspace = workspace_of(path);
                add_blob_ref(tx, &version.sha256, version.size).await?;
                let number = versions.last().map_or(1, |last| last.version + 1);
                let charge = FileVersion::charge_for(version.size);
                let new = FileVersion {
                    version: number,
                    ..version.clone()
                };
                versions.push(new.clone());
                let excess =
                    max_versions.map_or(0, |max| versions.len().saturating_sub(max.max(1)));
                let dropped: Vec<FileVersion> = versions.drain(..excess).collect();
                let freed: u64 = dropped
                    .iter()
                    .map(|old| FileVersion::charge_for(old.size))
                    .sum();
                // What the dropped versions free counts before the new one is checked.
                sub_usage(tx, workspace, freed).await?;
                add_usage(tx, workspace, charge, quota).await?;
                let mut unreferenced = Vec::new();
                for old in &dropped {
                    tx.execute(
                        "DELETE FROM tandem_file_versions WHERE path = $1 AND version = $2",
                        &[&path, &int(old.version)],
                    )
                    .await?;
                    release_blob(tx, &old.sha256, &mut unreferenced).await?;
                }
                insert_version(tx, path, &new).await?;
                if let Some(id) = upload_id {
                    tx.execute("DELETE FROM tandem_uploads WHERE id = $1", &[&id])
                        .await?;
                }
                Ok((
                    FileEntry {
                        path: path.to_owned(),
                        versions,
                    },
                    unreferenced,
                ))
            })
            .await
        })
    }

    fn file(&self, path: &str) -> Result<Option<FileEntry>, FileError> {
        self.on_client(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM tandem_file_versions WHERE path = $1 \
                         ORDER BY version"
                    ),
                    &[&path],
                )
                .await?;
            Ok((!rows.is_empty()).then(|| FileEntry {
                path: path.to_owned(),
                versions: rows.iter().map(version_of).collect(),
            }))
        })
    }

    fn list_files(&self) -> Result<Vec<FileEntry>, FileError> {
        self.on_client(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {VERSION_COLUMNS}, path FROM tandem_file_versions \
                         ORDER BY path COLLATE \"C\", version"
                    ),
                    &[],
                )
                .await?;
            let mut out: Vec<FileEntry> = Vec::new();
            for row in &rows {
                let path: String = row.get(8);
                let version = version_of(row);
                match out.last_mut() {
                    Some(entry) if entry.path == path => entry.versions.push(version),
                    _ => out.push(FileEntry {
                        path,
                        versions: vec![version],
                    }),
                }
            }
            Ok(out)
        })
    }

    fn file_paths(&self) -> Result<Vec<String>, FileError> {
        self.on_client(async |client| {
            let rows = client
                .query(
                    "SELECT DISTINCT path COLLATE \"C\" FROM tandem_file_versions \
                     ORDER BY 1",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    fn move_file(&self, from: &str, to: &str, quota: Option<u64>) -> Result<FileEntry, FileError> {
        let taken = || FileError::PathTaken { path: to.into() };
        self.block(async {
            if self.stream_exists(to).await? {
                return Err(taken());
            }
            serializable(self, async |tx| {
                if has_snapshot(tx, to).await? || !versions_of(tx, to).await?.is_empty() {
                    return Err(Abort::Refused(taken()));
                }
                let versions = versions_of(tx, from).await?;
                if versions.is_empty() {
                    return Err(Abort::Refused(FileError::NotFound));
                }
                let entry = FileEntry {
                    path: to.to_owned(),
                    versions,
                };
                let (from_ws, to_ws) = (workspace_of(from), workspace_of(to));
                if from_ws != to_ws {
                    let size = entry.total_size();
                    sub_usage(tx, from_ws, size).await?;
                    add_usage(tx, to_ws, size, quota).await?;
                }
                tx.execute(
                    "UPDATE tandem_file_versions SET path = $2 WHERE path = $1",
                    &[&from, &to],
                )
                .await?;
                Ok(entry)
            })
            .await
        })
    }

    fn delete_file(&self, path: &str) -> Result<Deleted, FileError> {
        self.block(serializable(self, async |tx| {
            let versions = versions_of(tx, path).await?;
            if versions.is_empty() {
                return Err(Abort::Refused(FileError::NotFound));
            }
            let entry = FileEntry {
                path: path.to_owned(),
                versions,
            };
            tx.execute("DELETE FROM tandem_file_versions WHERE path = $1", &[&path])
                .await?;
            sub_usage(tx, workspace_of(path), entry.total_size()).await?;
            let mut unreferenced = Vec::new();
            for version in &entry.versions {
                release_blob(tx, &version.sha256, &mut unreferenced).await?;
            }
            Ok(Deleted {
                entry,
                unreferenced,
            })
        }))
    }

    fn blob(&self, sha256: &str) -> Result<Option<BlobRow>, FileError> {
        self.on_client(async |client| {
            let row = client
                .query_opt(
                    "SELECT size, refcount FROM tandem_blobs WHERE sha256 = $1",
                    &[&sha256],
                )
                .await?;
            Ok(row.map(|row| BlobRow {
                size: uint(row.get(0)),
                refcount: uint(row.get(1)),
            }))
        })
    }

    fn workspace_usage(&self, workspace: &str) -> Result<u64, FileError> {
        self.on_client(async |client| {
            Ok(client
                .query_opt(
                    "SELECT used FROM tandem_file_usage WHERE workspace = $1",
                    &[&workspace],
                )
                .await?
                .map_or(0, |row| uint(row.get(0))))
        })
    }

    fn put_upload(&self, record: &UploadRecord) -> Result<(), FileError> {
        self.on_client(async |client| {
            client
                .execute(
                    &format!(
                        "INSERT INTO tandem_uploads ({UPLOAD_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (id) DO UPDATE SET path = EXCLUDED.path, \
                         length = EXCLUDED.length, sha256 = EXCLUDED.sha256, \
                         content_type = EXCLUDED.content_type, name = EXCLUDED.name, \
                         uploader_sub = EXCLUDED.uploader_sub, \
                         uploader_name = EXCLUDED.uploader_name, \
                         created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms"
                    ),
                    &[
                        &record.id,
                        &record.path,
                        &int(record.length),
                        &record.sha256,
                        &record.content_type,
                        &record.name,
                        &record.uploader.sub,
                        &record.uploader.name,
                        &int(record.created_ms),
                        &int(record.expires_ms),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, FileError> {
        self.on_client(async |client| {
            let row = client
                .query_opt(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM tandem_uploads WHERE id = $1"),
                    &[&id],
                )
                .await?;
            Ok(row.as_ref().map(upload_of))
        })
    }

    fn list_uploads(&self) -> Result<Vec<UploadRecord>, FileError> {
        self.on_client(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {UPLOAD_COLUMNS} FROM tandem_uploads ORDER BY id COLLATE \"C\""
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(upload_of).collect())
        })
    }

    fn remove_upload(&self, id: &str) -> Result<bool, FileError> {
        self.on_client(async |client| {
            Ok(client
                .execute("DELETE FROM tandem_uploads WHERE id = $1", &[&id])
                .await?
                > 0)
        })
    }
}
