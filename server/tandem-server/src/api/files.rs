//! The file endpoints (`protocol-spec/files.md`): `PUT|DELETE /api/files/{path}`,
//! `GET /api/files`, `GET /api/file-versions/{path}` and `POST /api/file-moves`, and the routes
//! of downloads (`download.rs`) and tus uploads (`tus.rs`). The rules (quota, versions, blobs,
//! durability before visibility) live in the files service (`files/`).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_core::{DocId, DocIdError};
use tandem_store::{FileEntry, FileVersion, Uploader, workspace_of};

use super::error::ApiError;
use super::extract::{AppJson, JsonBody, doc_id_from, request_grant};
use super::locks::check_write;
use super::{AppState, blocking, openapi};
use crate::auth::{AuthError, Grant};
use tandem_hub::Actor;
use tandem_hub::clock::now_ms;

use crate::bus::{Event, LockJson};
use crate::files::blobs::{UploadFile, new_upload_id};
use crate::files::upload::{ReceiveError, TempGuard, content_type_for, parse_sha256, receive};
use crate::files::{FileError, Files, actor_of, last_segment};
use crate::locks::index::Index;

/// Largest JSON body of `POST /api/file-moves`.
const MAX_MOVE_BODY_BYTES: usize = 8 * 1024;
/// The header carrying the SHA-256 a client declares for a PUT.
const SHA256_HEADER: &str = "x-tandem-sha256";

/// A file as the API shows it (`protocol-spec/files.md`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FileJson {
    path: String,
    /// The last segment of the path.
    name: String,
    size: u64,
    content_type: String,
    /// Lower-case hex.
    sha256: String,
    /// Counts from 1 per path.
    version: u64,
    #[schema(value_type = openapi::ActorJson)]
    uploader: Actor,
    uploaded_ms: u64,
    /// How many versions the file has.
    n_versions: usize,
    /// The file name the version was uploaded with.
    original_name: String,
    /// The WebDAV lock covering the file, if any (its own, or a deep one on a folder above):
    /// writes without its token are refused with 423 (`webdav.md`, "Locks"). Only on the
    /// current version's JSON; absent when unlocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<LockJson>,
}

impl FileJson {
    pub(super) fn new(entry: &FileEntry, version: &FileVersion) -> FileJson {
        FileJson {
            path: entry.path.clone(),
            name: last_segment(&entry.path).to_owned(),
            size: version.size,
            content_type: version.content_type.clone(),
            sha256: version.sha256.clone(),
            version: version.version,
            uploader: actor_of(&version.uploader),
            uploaded_ms: version.uploaded_ms,
            n_versions: entry.versions.len(),
            original_name: version.name.clone(),
            lock: None,
        }
    }

    /// The same, with the lock that covers the file in `locks` (a view of them, `Locks::view`).
    pub(super) fn with_lock(mut self, locks: &Index) -> FileJson {
        self.lock = locks.shown(&self.path, now_ms()).map(LockJson::of);
        self
    }
}

/// Routes whose bodies stream (uploads) or whose answers may take long (downloads): outside the
/// request timeout and the body limit of the rest of the API. Each enforces its own limits.
pub(crate) fn streaming_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/files/{*path}",
            get(super::download::get_file)
                .head(super::download::get_file)
                .put(put_file)
                .delete(delete_file),
        )
        .route(
            "/api/uploads",
            post(super::tus::create).options(super::tus::options),
        )
        .route(
            "/api/uploads/{id}",
            axum::routing::head(super::tus::head)
                .patch(super::tus::patch)
                .delete(super::tus::terminate)
                .options(super::tus::options),
        )
}

/// Routes with small requests and answers, under the API's timeout and body limit.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/files", get(list_files))
        .route("/api/file-versions/{*path}", get(list_versions))
        .route(
            "/api/file-moves",
            post(move_file).layer(axum::extract::DefaultBodyLimit::max(MAX_MOVE_BODY_BYTES)),
        )
}

/// The uploader behind a request (see `actor_of_request`).
pub(super) fn uploader_of(grant: &Grant, headers: &HeaderMap) -> Uploader {
    let actor = super::events::actor_of_request(grant, headers);
    Uploader {
        sub: actor.sub,
        name: actor.name,
    }
}

/// The validated file path after `prefix` in the request path.
pub(super) fn path_from(uri: &Uri, prefix: &str) -> Result<DocId, ApiError> {
    doc_id_from(uri, prefix)
}

/// Refuses a path a new file may not take: on top of the `DocId` rules, no character that
/// `name.rs` forbids (existing files stay reachable under the `DocId` rules alone).
pub(super) fn check_new_path(path: &DocId) -> Result<(), ApiError> {
    if crate::name::has_forbidden(path.as_str()) {
        return Err(ApiError::BadDocName(DocIdError::ForbiddenCharacter));
    }
    Ok(())
}

/// What the request's token may do on `path` (at least read).
pub(super) fn grant_for(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &DocId,
) -> Result<Grant, ApiError> {
    request_grant(state, headers, uri, path)
}

/// Like [`grant_for`], but the write role is required.
pub(super) fn write_grant(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &DocId,
) -> Result<Grant, ApiError> {
    let grant = grant_for(state, headers, uri, path)?;
    if !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    Ok(grant)
}

/// Refuses `path` if it names a doc, open or stored. The store checks stored docs again in the
/// transaction that creates the file.
pub(super) async fn check_not_doc(state: &AppState, path: &DocId) -> Result<(), ApiError> {
    let taken = || -> ApiError {
        FileError::PathTaken {
            path: path.to_string(),
        }
        .into()
    };
    if state.hub.get(path).is_some() {
        return Err(taken());
    }
    let store = state.tables.history.clone();
    let name = path.to_string();
    let stored = blocking(move || store.doc_meta(&name), |_| ApiError::Internal).await?;
    if stored.is_some() {
        return Err(taken());
    }
    Ok(())
}

/// The `Content-Length` of a request, if it has a valid one.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// `PUT /api/files/{path}`: the body is the file.
///
/// Streamed to disk as it arrives; answered once the new version is durable. Write role.
#[utoipa::path(
    put,
    path = "/api/files/{path}",
    operation_id = "put_file",
    tag = "files",
    params(
        openapi::FilePath,
        ("X-Tandem-Sha256" = Option<String>, Header, description = "The SHA-256 (64 hex digits) the bytes must have"),
    ),
    request_body(content = openapi::Binary, content_type = "*/*", description = "The file; its `Content-Type` is stored (guessed from the name when absent or `application/octet-stream`)"),
    responses(
        (status = 201, description = "Stored", body = openapi::FileAnswer),
        (status = 400, description = "`bad_doc_name`, `bad_upload`, `sha256_mismatch`, `incomplete_body`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = openapi::ErrorJson),
        (status = 408, description = "`upload_timeout`: no byte for 60 s", body = openapi::ErrorJson),
        (status = 409, description = "`path_taken`: a document has this name", body = openapi::ErrorJson),
        (status = 413, description = "`file_too_large`", body = openapi::ErrorJson),
        (status = 503, description = "`shutting_down`, `storage_unavailable`", body = openapi::ErrorJson),
        (status = 507, description = "`quota_exceeded`, `insufficient_storage`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn put_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/files/")?;
    check_new_path(&path)?;
    let grant = write_grant(&state, &headers, &uri, &path)?;
    let declared_sha = match headers.get(SHA256_HEADER) {
        Some(value) => Some(parse_sha256(value.to_str().unwrap_or_default())?),
        None => None,
    };
    let put = PutRequest {
        uploader: uploader_of(&grant, &headers),
        declared_len: content_length(&headers),
        declared_sha,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        writer: (headers.clone(), grant.clone()),
        path,
    };
    let entry = store_put(&state, put, body.into_data_stream()).await?;
    let json = FileJson::new(&entry, entry.current()).with_lock(&state.locks.view().await?);
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "file": json })),
    )
        .into_response())
}

/// What a PUT of a file declares beside its body (`PUT /api/files/{path}`, WebDAV's PUT).
pub(crate) struct PutRequest {
    /// Where the file goes: checked by [`check_new_path`], the write role granted.
    pub(crate) path: DocId,
    pub(crate) uploader: Uploader,
    /// `Content-Length`: the body must have exactly this many bytes.
    pub(crate) declared_len: Option<u64>,
    /// The SHA-256 the bytes must have.
    pub(crate) declared_sha: Option<String>,
    /// `Content-Type`, as sent.
    pub(crate) content_type: Option<String>,
    /// The request's headers and grant, whose lock tokens are checked against the locks on the
    /// path before the upload and again before its commit (a lock may be taken meanwhile).
    pub(crate) writer: (HeaderMap, Grant),
}

/// Stores `body` as the next version of `put.path`: the one upload path of a PUT, whichever
/// protocol it came by. Refuses a doc's path, a full disk, the size and quota limits; streams
/// the body to disk with its SHA-256 and the idle limit; checks length and hash; commits and
/// announces the new version (`Event::FileUploaded`). Nothing is visible before it returns.
pub(crate) async fn store_put<E>(
    state: &AppState,
    put: PutRequest,
    body: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<FileEntry, ApiError> {
    let PutRequest {
        path,
        uploader,
        declared_len,
        declared_sha,
        content_type,
        writer: (headers, grant),
    } = put;
    check_write(state, &headers, &grant, path.as_str(), false).await?;
    check_not_doc(state, &path).await?;
    let files = &state.files;
    files.check_writable().await?;
    let id = new_upload_id();
    // Until this request ends, the slot keeps the cleanup off its file and holds its quota.
    let (slot, quota) = files.admit_put(path.as_str(), &id, declared_len).await?;
    let name = last_segment(path.as_str()).to_owned();
    let content_type = content_type_for(content_type.as_deref(), &name);
    // While streaming: the smaller of the file limit and what the quota leaves.
    let max_file = files.config().max_file_bytes;
    let max = quota.map_or(max_file, |(used, limit)| {
        max_file.min(limit.saturating_sub(used))
    });

    let temp_path = files.inner.disk.upload_path(&id);
    let mut file = match UploadFile::create(&temp_path).await {
        Ok(file) => file,
        Err(error) => return Err(files.io_failure(error, "creating upload file").await.into()),
    };
    let guard = TempGuard::new(temp_path);
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let cancel = state.lifecycle.cancel.clone();
    let res = receive(
        body,
        &mut file,
        Some(&mut hasher),
        max,
        &mut received,
        declared_len.is_none().then_some(&*slot.bytes),
        &cancel,
    )
    .await;
    match res {
        Ok(()) => {}
        Err(ReceiveError::TooLarge) => {
            return Err(match quota {
                Some((used, limit)) if max < max_file => FileError::QuotaExceeded {
                    workspace: workspace_of(path.as_str()).to_owned(),
                    used,
                    size: received,
                    limit,
                },
                _ => FileError::TooLarge { max: max_file },
            }
            .into());
        }
        Err(ReceiveError::Cut) => {
            tracing::info!(path = %path, received, "upload cut off; discarded");
            return Err(FileError::Incomplete {
                received,
                expected: declared_len.unwrap_or(received),
            }
            .into());
        }
        Err(ReceiveError::Idle) => return Err(FileError::IdleTimeout.into()),
        Err(ReceiveError::ShuttingDown) => return Err(ApiError::ShuttingDown),
        Err(ReceiveError::Io(error)) => {
            return Err(files.io_failure(error, "writing upload").await.into());
        }
    }
    if let Some(expected) = declared_len
        && expected != received
    {
        return Err(FileError::Incomplete { received, expected }.into());
    }
    if let Err(error) = file.sync().await {
        return Err(files.io_failure(error, "syncing upload").await.into());
    }
    drop(file);
    let sha256 = hex::encode(hasher.finalize());
    if let Some(declared) = declared_sha
        && declared != sha256
    {
        return Err(FileError::Sha256Mismatch {
            declared,
            actual: sha256,
        }
        .into());
    }
    let version = FileVersion {
        version: 0,
        sha256,
        size: received,
        content_type,
        name,
        uploader,
        uploaded_ms: now_ms(),
    };
    // Again: a lock may have been taken while the body streamed.
    check_write(state, &headers, &grant, path.as_str(), false).await?;
    let staged = files.stage_put(guard, &id).await?;
    let entry = files
        .commit(staged, path.to_string(), version, None)
        .await?;
    drop(slot);
    publish_uploaded(state, &entry);
    Ok(entry)
}

/// Announces the current version of `entry`.
pub(super) fn publish_uploaded(state: &AppState, entry: &FileEntry) {
    let current = entry.current();
    tracing::info!(
        path = entry.path,
        version = current.version,
        size = current.size,
        "file stored"
    );
    state.events.publish(Event::FileUploaded {
        path: entry.path.clone(),
        version: current.version,
        size: current.size,
        sha256: current.sha256.clone(),
        content_type: current.content_type.clone(),
        actor: actor_of(&current.uploader),
        at_ms: current.uploaded_ms,
    });
}

/// `GET /api/files`: the current version of every file the token may read.
#[utoipa::path(
    get,
    path = "/api/files",
    operation_id = "list_files",
    tag = "files",
    responses(
        (status = 200, description = "Sorted by path", body = openapi::FileList),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn list_files(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = crate::api::extract::request_claims(&state, &headers, &uri)?;
    let entries = state
        .files
        .blocking(|inner| Ok(inner.store.list_files()?))
        .await?;
    let locks = state.locks.view().await?;
    let files: Vec<FileJson> = entries
        .iter()
        .filter(|entry| {
            claims
                .as_ref()
                .is_none_or(|claims| claims.role_for(&entry.path).is_some())
        })
        .map(|entry| FileJson::new(entry, entry.current()).with_lock(&locks))
        .collect();
    Ok(axum::Json(serde_json::json!({ "files": files })).into_response())
}

/// `GET /api/file-versions/{path}`: every version, newest first.
#[utoipa::path(
    get,
    path = "/api/file-versions/{path}",
    operation_id = "list_file_versions",
    tag = "files",
    params(openapi::FilePath),
    responses(
        (status = 200, description = "The versions, newest first", body = openapi::FileVersions),
        (status = 400, description = "`bad_doc_name`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = openapi::ErrorJson),
        (status = 404, description = "`file_not_found`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn list_versions(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/file-versions/")?;
    grant_for(&state, &headers, &uri, &path)?;
    let entry = load_entry(&state.files, &path).await?;
    let versions: Vec<FileJson> = entry
        .versions
        .iter()
        .rev()
        .map(|version| FileJson::new(&entry, version))
        .collect();
    Ok(axum::Json(serde_json::json!({ "versions": versions })).into_response())
}

/// The entry at `path`, or 404.
pub(super) async fn load_entry(files: &Files, path: &DocId) -> Result<FileEntry, ApiError> {
    let name = path.to_string();
    files
        .blocking(move |inner| Ok(inner.store.file(&name)?))
        .await?
        .ok_or_else(|| FileError::NotFound.into())
}

/// The body of `POST /api/file-moves`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveRequest {
    from: String,
    to: String,
}

impl JsonBody for MoveRequest {
    const MAX_BYTES: usize = MAX_MOVE_BODY_BYTES;
    fn rejection(_: serde_json::Error) -> ApiError {
        ApiError::BadBody
    }
}

/// `POST /api/file-moves`: renames a file with all its versions (write on both paths).
#[utoipa::path(
    post,
    path = "/api/file-moves",
    operation_id = "move_file",
    tag = "files",
    request_body = MoveRequest,
    responses(
        (status = 200, description = "Moved", body = openapi::FileAnswer),
        (status = 400, description = "`bad_body`, `bad_doc_name`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = openapi::ErrorJson),
        (status = 404, description = "`file_not_found`", body = openapi::ErrorJson),
        (status = 409, description = "`path_taken`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`: over 8 KiB", body = openapi::ErrorJson),
        (status = 507, description = "`quota_exceeded`, `insufficient_storage`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn move_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AppJson(request): AppJson<MoveRequest>,
) -> Result<Response, ApiError> {
    let from = DocId::new(&request.from).map_err(ApiError::BadDocName)?;
    let to = DocId::new(&request.to).map_err(ApiError::BadDocName)?;
    check_new_path(&to)?;
    let grant = write_grant(&state, &headers, &uri, &from)?;
    let to_grant = write_grant(&state, &headers, &uri, &to)?;
    check_write(&state, &headers, &grant, from.as_str(), false).await?;
    check_write(&state, &headers, &to_grant, to.as_str(), false).await?;
    check_not_doc(&state, &to).await?;
    let entry = state.files.move_file(from.as_str(), to.as_str()).await?;
    tracing::info!(from = %from, to = %to, "file moved");
    // A lock stays with its path, not with the file (RFC 4918 §7.7): the old path's go.
    if let Err(error) = state.locks.remove_below(from.as_str()).await {
        tracing::warn!(%error, path = %from, "removing the locks of a moved file failed");
    }
    // Its WebDAV dead properties go with it, as over WebDAV.
    let (old, new) = (from.to_string(), to.to_string());
    with_dav_rows(&state, move |dav| dav.move_dav_tree(&old, &new, false)).await;
    state.events.publish(Event::FileRenamed {
        from: from.to_string(),
        to: to.to_string(),
        actor: super::events::actor_of_request(&grant, &headers),
        at_ms: now_ms(),
    });
    let json = FileJson::new(&entry, entry.current()).with_lock(&state.locks.view().await?);
    Ok(axum::Json(serde_json::json!({ "file": json })).into_response())
}

/// `DELETE /api/files/{path}`: removes the file and all its versions; blobs nothing else
/// names are deleted from the disk or store.
#[utoipa::path(
    delete,
    path = "/api/files/{path}",
    operation_id = "delete_file",
    tag = "files",
    params(openapi::FilePath),
    responses(
        (status = 204, description = "Deleted with all its versions"),
        (status = 400, description = "`bad_doc_name`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = openapi::ErrorJson),
        (status = 404, description = "`file_not_found`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn delete_file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/files/")?;
    let grant = write_grant(&state, &headers, &uri, &path)?;
    check_write(&state, &headers, &grant, path.as_str(), false).await?;
    state.files.delete_file(path.as_str()).await?;
    tracing::info!(path = %path, "file deleted");
    if let Err(error) = state.locks.remove_below(path.as_str()).await {
        tracing::warn!(%error, path = %path, "removing the locks of a deleted file failed");
    }
    let gone = path.to_string();
    with_dav_rows(&state, move |dav| dav.remove_dav_tree(&gone)).await;
    state.events.publish(Event::FileDeleted {
        path: path.to_string(),
        actor: super::events::actor_of_request(&grant, &headers),
        at_ms: now_ms(),
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Runs `work` on the WebDAV table (dead properties, `webdav.md`), if this server has one, after
/// a file was deleted or moved: the file changed already, so a failure is logged, not answered.
async fn with_dav_rows(
    state: &AppState,
    work: impl FnOnce(&dyn tandem_store::meta::DavTable) -> Result<(), tandem_store::StoreError>
    + Send
    + 'static,
) {
    let Some(dav) = state.tables.dav.clone() else {
        return;
    };
    match tokio::task::spawn_blocking(move || work(dav.as_ref())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "updating the WebDAV properties of a changed file failed");
        }
        Err(_) => tracing::warn!("updating the WebDAV properties of a changed file failed"),
    }
}
