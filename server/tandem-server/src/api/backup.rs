//! `GET /api/backup` (admins): the backup archive of this node's store and blobs, streamed
//! (`backup/`, `protocol-spec/http.md`). A streaming route: outside the request timeout, since
//! an archive takes as long as its blobs take to send.
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
        (status = 409, description = "`cluster_mode`: a cluster is backed up with its engines' own tools", body = super::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`: no room for the copy", body = super::openapi::ErrorJson),
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
    let store = state.store.clone();
    let files = state.files.clone();
    let prepared = super::blocking(
        move || backup::prepare(&store, &files),
        |error| match error {
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
