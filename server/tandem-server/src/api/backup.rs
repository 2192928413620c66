//! `GET /api/backup` (admins): the backup archive of this node's store and blobs, streamed
//! (`backup/`, `protocol-spec/http.md`). A streaming route: outside the request timeout, since
//! an archive takes as long as its blobs take to send.
//!
//! One backup runs at a time: another one meanwhile is `409 backup_running`. A client that stops
//! reading for 60 s ends its backup (`backup/mod.rs`).
//!
//! In cluster mode the answer is `409 cluster_mode`: the documents live in Redis and Postgres
//! and the blobs in the shared directory or bucket, each backed up by its own tools.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::extract::Admin;
use super::{ApiError, AppState};
use crate::backup::{self, BackupError};
use crate::files::Sharing;

/// The route, merged into the streaming routes by `api::router`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/backup", get(download))
}

/// The backup archive of this node, streamed as it is read.
#[utoipa::path(
    get,
    path = "/api/backup",
    operation_id = "backup",
    tag = "server",
    responses(
        (status = 200, description = "A tar archive: a manifest, then `tandem.redb`, `server-key` and every blob it names, each with its size and SHA-256 (storage.md, \"Backups\")", content_type = "application/x-tar"),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 409, description = "`cluster_mode`: a cluster is backed up with its engines' own tools; `backup_running`: another backup is running (one at a time)", body = super::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`: no room for the copy (the data directory's file system needs the store file's size plus 64 MiB free)", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn download(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    if state.cluster.is_some() || state.files.sharing() == Sharing::Cluster {
        let body = serde_json::json!({
            "error": "cluster_mode",
            "message": "a cluster is backed up with its engines' own tools: Redis (RDB/AOF), \
                        Postgres (pg_dump or base backups) and the shared blob directory or bucket",
        });
        return Ok((StatusCode::CONFLICT, axum::Json(body)).into_response());
    }
    let Some(slot) = state.files.try_start_backup() else {
        let body = serde_json::json!({
            "error": "backup_running",
            "message": "another backup is running; one runs at a time, retry once it has ended",
        });
        return Ok((StatusCode::CONFLICT, axum::Json(body)).into_response());
    };
    let store = state.store.clone();
    let files = state.files.clone();
    let prepared = super::blocking(
        move || backup::prepare(&store, &files, slot),
        |error| match error {
            error if error.is_disk_full() => {
                tracing::warn!(%error, "backup refused");
                ApiError::InsufficientStorage
            }
            BackupError::Store(error) => ApiError::from_store(&error, "backup"),
            BackupError::File(error) => error.into(),
            error => {
                tracing::error!(%error, "backup failed");
                ApiError::Internal
            }
        },
    )
    .await?;
    let filename = format!("tandem-backup-{}.tar", prepared.manifest().created_ms);
    let chunks = backup::spawn_stream(&state.lifecycle, prepared);
    let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
