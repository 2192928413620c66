//! Resumable uploads over HTTP: tus 1.0.0 with the creation, termination and expiration extensions, so
//! an unmodified tus client (tus-js-client in the web client) can upload large files and resume
//! after a cut connection.
//!
//! `POST /api/uploads` records the upload (path, declared length and hash, uploader, expiry) in
//! redb and creates its empty file; each `PATCH` appends to the file. The offset is the file's
//! length, so there is nothing else to keep in step: whatever a PATCH received before it was cut
//! off is flushed and fsynced before it answers (or gives up), and `HEAD` reports it. The PATCH
//! that reaches the declared length completes the upload like a PUT (`Files::commit`). With an
//! S3 store a PATCH receives into a local file and stores it as one segment object when it ends
//! (cut off or not); the offset is the end of the contiguous segments (`files/backend.rs`).
//!
//! One PATCH writes an upload at a time. A client that resumes may reach us before we noticed
//! that its previous connection died, so a new PATCH cancels the one in progress, waits for it
//! to sync what it got, and then checks the offset. Across nodes (cluster mode: the record is in
//! Postgres, the file in the shared blob directory) the PATCH also holds the file's `flock` (with
//! an S3 store: a Postgres advisory lock named after the upload) until it has answered; a PATCH
//! on another node meanwhile is refused as busy (423), and the client retries after a HEAD.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tandem_core::DocId;
use tandem_store::{FileVersion, UploadRecord};

use super::AppState;
use super::error::ApiError;
use super::files::{check_new_path, check_not_doc, content_length, publish_uploaded, write_grant};
use super::locks::check_write;
use super::openapi::ErrorJson;
use crate::auth::Grant;
use crate::files::backend::{UploadWriter, WriterLock};
use crate::files::blobs::{is_upload_id, new_upload_id};
use crate::files::upload::{
    ReceiveError, content_type_for, forget_slot, parse_sha256, receive, take_slot,
};
use crate::files::{FileError, Files, last_segment};
use tandem_hub::clock::now_ms;

/// The one protocol version spoken.
const TUS_VERSION: &str = "1.0.0";
/// The extensions announced by `OPTIONS`.
const TUS_EXTENSIONS: &str = "creation,termination,expiration";
/// The media type of PATCH bodies.
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION_HEADER: HeaderName = HeaderName::from_static("tus-version");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
/// The version number a completing PATCH stored (ours, not tus's).
const FILE_VERSION_HEADER: HeaderName = HeaderName::from_static("tandem-file-version");

/// Adds `Tus-Resumable` to every answer, and `Tus-Version` to a 412.
fn tus_response(res: Result<Response, ApiError>) -> Response {
    let mut response = res.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    headers.insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response
            .headers_mut()
            .insert(TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
    }
    response
}

fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(TUS_RESUMABLE) {
        Some(value) if value == TUS_VERSION => Ok(()),
        _ => Err(FileError::TusVersion.into()),
    }
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

fn expires_header(expires_ms: u64) -> HeaderValue {
    let at = UNIX_EPOCH + Duration::from_millis(expires_ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("an HTTP date is a valid header")
}

fn bad(message: &str) -> ApiError {
    FileError::BadRequest(message.to_owned()).into()
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (the value may be absent).
fn parse_metadata(value: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, encoded) = match pair.split_once(' ') {
            Some((key, encoded)) => (key, encoded.trim()),
            None => (pair, ""),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad("Upload-Metadata values must be base64"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| bad("Upload-Metadata values must be UTF-8"))?;
        out.insert(key.to_owned(), text);
    }
    Ok(out)
}

/// `OPTIONS /api/uploads[/{id}]`: what this server supports.
#[utoipa::path(
    options,
    path = "/api/uploads",
    operation_id = "tus_options",
    tag = "files",
    security(()),
    responses(
        (status = 204, description = "tus 1.0.0 with `creation`, `termination`, `expiration`",
            headers(("Tus-Version" = String), ("Tus-Extension" = String), ("Tus-Max-Size" = u64))),
    ),
)]
pub(super) async fn options(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
    headers.insert(
        HeaderName::from_static("tus-extension"),
        HeaderValue::from_static(TUS_EXTENSIONS),
    );
    headers.insert(
        HeaderName::from_static("tus-max-size"),
        HeaderValue::from(state.files.config().max_file_bytes),
    );
    tus_response(Ok(response))
}

/// `POST /api/uploads`: creates an upload of `Upload-Length` bytes for the `path` in
/// `Upload-Metadata`.
///
/// tus 1.0.0 creation (`files.md`): permissions, path conflicts, the size limit and the quota
/// are checked here. A body is ignored.
#[utoipa::path(
    post,
    path = "/api/uploads",
    operation_id = "create_upload",
    tag = "files",
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = u64, Header, description = "The file's size"),
        ("Upload-Metadata" = String, Header, description = "`key base64(value)` pairs: `path` (required), `filetype`, `filename`, `sha256`"),
    ),
    responses(
        (status = 201, description = "Created",
            headers(("Location" = String, description = "`/api/uploads/{id}`"), ("Upload-Expires" = String), ("Tandem-File-Version" = u64, description = "Only for `Upload-Length: 0`, complete at once"))),
        (status = 400, description = "`bad_upload`, `bad_doc_name`", body = ErrorJson),
        (status = 401, description = "Missing or invalid token", body = ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = ErrorJson),
        (status = 409, description = "`path_taken`", body = ErrorJson),
        (status = 412, description = "`tus_version`", body = ErrorJson),
        (status = 413, description = "`file_too_large`", body = ErrorJson),
        (status = 507, description = "`quota_exceeded`", body = ErrorJson),
    ),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    tus_response(create_upload(&state, &uri, &headers).await)
}

async fn create_upload(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_version(headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(bad("Upload-Defer-Length is not supported"));
    }
    let length =
        header_u64(headers, &UPLOAD_LENGTH).ok_or_else(|| bad("Upload-Length is required"))?;
    let metadata = parse_metadata(
        headers
            .get("upload-metadata")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default(),
    )?;
    let raw_path = metadata
        .get("path")
        .ok_or_else(|| bad("Upload-Metadata needs a path"))?;
    let path = DocId::new(raw_path).map_err(ApiError::BadDocName)?;
    check_new_path(&path)?;
    let grant = write_grant(state, headers, uri, &path)?;
    check_write(state, headers, &grant, path.as_str(), false).await?;
    check_not_doc(state, &path).await?;
    let files = &state.files;
    files.check_size(Some(length))?;
    files.check_writable().await?;
    let sha256 = metadata
        .get("sha256")
        .map(|text| parse_sha256(text))
        .transpose()?;
    let filename = metadata.get("filename");
    if filename.is_some_and(|name| crate::name::has_forbidden(name)) {
        return Err(bad("Upload-Metadata filename contains a control character"));
    }
    let name = filename
        .filter(|name| !name.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| last_segment(path.as_str()).to_owned());
    let content_type = content_type_for(metadata.get("filetype").map(String::as_str), &name);
    let id = new_upload_id();
    files.create_upload_bytes(&id).await?;
    let created_ms = now_ms();
    let expiry_ms = u64::try_from(files.config().upload_expiry.as_millis()).unwrap_or(u64::MAX);
    let record = UploadRecord {
        id: id.clone(),
        path: path.to_string(),
        length,
        sha256,
        content_type,
        name,
        uploader: super::files::uploader_of(&grant, headers),
        created_ms,
        expires_ms: created_ms.saturating_add(expiry_ms),
    };
    let expires_ms = record.expires_ms;
    // The record reserves `length` bytes of the workspace's quota until the upload ends.
    let stored = {
        let (record, admitting) = (record.clone(), files.clone());
        files
            .blocking(move |_| {
                admitting.admit(&record.path, record.length, |inner| {
                    Ok(inner.store.put_upload(&record)?)
                })
            })
            .await
    };
    if let Err(error) = stored {
        let (removing, key) = (files.clone(), id.clone());
        let _ = files
            .blocking(move |_| Ok(removing.remove_upload_bytes(&key)))
            .await;
        return Err(error.into());
    }
    tracing::info!(id, path = %path, length, "upload created");
    let mut response = StatusCode::CREATED.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/api/uploads/{id}")).expect("hex is a valid header"),
    );
    response_headers.insert(UPLOAD_EXPIRES, expires_header(expires_ms));
    if length == 0 {
        // Nothing to PATCH: tus clients consider an empty upload done once it is created.
        let version = complete(state, &record, headers, &grant).await?;
        response
            .headers_mut()
            .insert(FILE_VERSION_HEADER, HeaderValue::from(version));
    }
    Ok(response)
}

/// The upload `id`, if the token may write its path (and, with authentication, created it).
async fn load_upload(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    id: &str,
) -> Result<(UploadRecord, Grant), ApiError> {
    if !is_upload_id(id) {
        return Err(FileError::UploadNotFound.into());
    }
    let key = id.to_owned();
    let record = state
        .files
        .blocking(move |inner| Ok(inner.store.upload(&key)?))
        .await?
        .ok_or(FileError::UploadNotFound)?;
    let path = DocId::new(&record.path).map_err(|_| ApiError::Internal)?;
    let grant = write_grant(state, headers, uri, &path)?;
    let same_uploader = match (&record.uploader.sub, &grant.identity) {
        (Some(sub), Some(identity)) => *sub == *identity.sub,
        _ => true,
    };
    if !same_uploader {
        return Err(FileError::UploadNotFound.into());
    }
    if record.expires_ms <= now_ms() {
        return Err(FileError::UploadExpired.into());
    }
    Ok((record, grant))
}

/// Bytes received so far (`Files::upload_offset`). A record whose bytes are gone (a file left
/// by a crash of an older version, or removed by hand) can never complete: it is removed, so it
/// stops holding quota, and the upload is not found.
async fn offset_of(files: &Files, id: &str) -> Result<u64, ApiError> {
    match files.upload_offset(id).await? {
        Some(offset) => Ok(offset),
        None => {
            tracing::warn!(id, "upload record without bytes; removed");
            remove_upload(files, id).await;
            Err(FileError::UploadNotFound.into())
        }
    }
}

/// Takes upload `id`'s one-writer lock (see the module docs): busy if a PATCH on another node
/// holds it.
async fn lock_writer(files: &Files, id: &str) -> Result<UploadWriter, ApiError> {
    match files.lock_upload_writer(id).await? {
        WriterLock::Held(writer) => Ok(writer),
        WriterLock::Busy => Err(FileError::UploadBusy.into()),
        // The bytes are gone: `offset_of` removes the record and answers 404.
        WriterLock::Missing => offset_of(files, id)
            .await
            .and(Err(FileError::UploadNotFound.into())),
    }
}

/// `HEAD /api/uploads/{id}`: the offset to resume from.
#[utoipa::path(
    head,
    path = "/api/uploads/{id}",
    operation_id = "upload_offset",
    tag = "files",
    params(super::openapi::UploadId, ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 200, description = "The bytes received and durable",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Expires" = String))),
        (status = 401, description = "Missing or invalid token"),
        (status = 404, description = "`upload_not_found`"),
        (status = 410, description = "`upload_expired`"),
        (status = 412, description = "`tus_version`"),
    ),
)]
pub(super) async fn head(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    tus_response(
        async {
            check_version(&headers)?;
            let (record, _) = load_upload(&state, &uri, &headers, &id).await?;
            let offset = offset_of(&state.files, &id).await?;
            let mut response = StatusCode::OK.into_response();
            let out = response.headers_mut();
            out.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
            out.insert(UPLOAD_LENGTH, HeaderValue::from(record.length));
            out.insert(UPLOAD_EXPIRES, expires_header(record.expires_ms));
            out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        .await,
    )
}

/// `PATCH /api/uploads/{id}`: appends the body at `Upload-Offset`; the PATCH that reaches the
/// declared length stores the file.
#[utoipa::path(
    patch,
    path = "/api/uploads/{id}",
    operation_id = "patch_upload",
    tag = "files",
    params(
        super::openapi::UploadId,
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Must equal the upload's offset"),
    ),
    request_body(content = super::openapi::Binary, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Appended; the PATCH that completes the upload carries `Tandem-File-Version`",
            headers(("Upload-Offset" = u64), ("Upload-Expires" = String), ("Tandem-File-Version" = u64))),
        (status = 400, description = "`bad_upload`, `sha256_mismatch`", body = ErrorJson),
        (status = 401, description = "Missing or invalid token", body = ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = ErrorJson),
        (status = 404, description = "`upload_not_found`", body = ErrorJson),
        (status = 408, description = "`upload_timeout`", body = ErrorJson),
        (status = 409, description = "`offset_mismatch`, `path_taken`", body = ErrorJson),
        (status = 410, description = "`upload_expired`", body = ErrorJson),
        (status = 412, description = "`tus_version`", body = ErrorJson),
        (status = 413, description = "`file_too_large`", body = ErrorJson),
        (status = 415, description = "`bad_content_type`", body = ErrorJson),
        (status = 423, description = "`upload_busy`", body = ErrorJson),
        (status = 507, description = "`quota_exceeded`", body = ErrorJson),
    ),
)]
pub(super) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    tus_response(patch_upload(&state, &id, &uri, &headers, body).await)
}

async fn patch_upload(
    state: &AppState,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(headers)?;
    let is_offset_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM));
    if !is_offset_stream {
        return Err(FileError::PatchContentType.into());
    }
    let claimed =
        header_u64(headers, &UPLOAD_OFFSET).ok_or_else(|| bad("Upload-Offset is required"))?;
    let (record, grant) = load_upload(state, uri, headers, id).await?;
    check_write(state, headers, &grant, &record.path, false).await?;
    let files = &state.files;
    let lifecycle_cancel = &state.lifecycle.cancel;
    let (slot_guard, token) = take_slot(files, id, lifecycle_cancel).await?;
    // The writer across nodes; held until this PATCH has answered (and completed the upload).
    let _writer = lock_writer(files, id).await?;
    let offset = offset_of(files, id).await?;
    if offset != claimed {
        return Err(FileError::OffsetMismatch {
            actual: offset,
            claimed,
        }
        .into());
    }
    let declared_len = content_length(headers);
    // A body past the declared length is over its limit: 413, as tusd answers.
    let past_length = || FileError::TooLarge { max: record.length };
    if declared_len.is_some_and(|len| offset.saturating_add(len) > record.length) {
        return Err(past_length().into());
    }
    files.check_writable().await?;
    // On S3 the body goes to a local file first, then to the store as one segment.
    let (mut file, temp) = files.open_patch(id).await?;
    let mut received = 0u64;
    let res = receive(
        body.into_data_stream(),
        &mut file,
        None,
        record.length - offset,
        &mut received,
        None,
        &token,
    )
    .await;
    // Whatever arrived is kept and durable before we answer or give up, so HEAD reports it
    // (on S3: once its segment is stored; if that fails, the offset stays where it was).
    let synced = file.sync().await;
    drop(file);
    let stored = match &synced {
        Ok(()) => files.store_patch(id, offset, temp.as_ref(), received).await,
        Err(_) => Ok(()),
    };
    drop(temp);
    let received = if stored.is_ok() { received } else { 0 };
    let new_offset = offset + received;
    match res {
        Ok(()) => {}
        Err(ReceiveError::Cut) => {
            tracing::info!(
                id,
                offset = new_offset,
                "upload patch cut off; bytes kept for resuming"
            );
            return Err(FileError::Incomplete {
                received,
                expected: declared_len.unwrap_or(received),
            }
            .into());
        }
        Err(ReceiveError::Idle) => return Err(FileError::IdleTimeout.into()),
        Err(ReceiveError::ShuttingDown) if lifecycle_cancel.is_cancelled() => {
            return Err(ApiError::ShuttingDown);
        }
        Err(ReceiveError::ShuttingDown) => return Err(FileError::UploadBusy.into()),
        Err(ReceiveError::TooLarge) => return Err(past_length().into()),
        Err(ReceiveError::Io(error)) => {
            return Err(files.io_failure(error, "writing upload").await.into());
        }
    }
    if let Err(error) = synced {
        return Err(files.io_failure(error, "syncing upload").await.into());
    }
    stored?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(new_offset));
    if new_offset < record.length {
        response
            .headers_mut()
            .insert(UPLOAD_EXPIRES, expires_header(record.expires_ms));
        return Ok(response);
    }
    let version = complete(state, &record, headers, &grant).await;
    drop(slot_guard);
    forget_slot(files, id);
    response
        .headers_mut()
        .insert(FILE_VERSION_HEADER, HeaderValue::from(version?));
    Ok(response)
}

/// Stores a fully received upload as the next version of its path; returns the version. On a
/// refusal (wrong hash, no quota, path taken) the upload is gone: its bytes cannot become the
/// file. On an internal error it stays, bytes and all, so a PATCH at the final offset (with an
/// empty body) retries the completion; so it does when a WebDAV lock taken meanwhile refuses
/// it (423), to be completed once the lock is gone or with the holder's token.
async fn complete(
    state: &AppState,
    record: &UploadRecord,
    headers: &HeaderMap,
    grant: &Grant,
) -> Result<u64, ApiError> {
    check_write(state, headers, grant, &record.path, false).await?;
    let files = &state.files;
    let (sha256, len, staged) = files.stage_upload(&record.id).await?;
    let checked = async {
        if len != record.length {
            tracing::error!(
                id = record.id,
                len,
                length = record.length,
                "upload has the wrong length"
            );
            return Err(ApiError::Internal);
        }
        if let Some(declared) = &record.sha256
            && *declared != sha256
        {
            return Err(FileError::Sha256Mismatch {
                declared: declared.clone(),
                actual: sha256.clone(),
            }
            .into());
        }
        let path = DocId::new(&record.path).map_err(|_| ApiError::Internal)?;
        check_not_doc(state, &path).await?;
        let version = FileVersion {
            version: 0,
            sha256: sha256.clone(),
            size: len,
            content_type: record.content_type.clone(),
            name: record.name.clone(),
            uploader: record.uploader.clone(),
            uploaded_ms: now_ms(),
        };
        Ok(version)
    }
    .await;
    let res = match checked {
        Ok(version) => files
            .commit(
                staged,
                record.path.clone(),
                version,
                Some(record.id.clone()),
            )
            .await
            .map_err(ApiError::from),
        Err(error) => {
            // Not to become a version: the staging object goes now, not at its expiry (on
            // disk the upload's own file is the staged bytes, and stays for a retry).
            let discarding = files.clone();
            let _ = files
                .blocking(move |_| {
                    discarding.discard_staged(&staged, true);
                    Ok(())
                })
                .await;
            Err(error)
        }
    };
    match res {
        Ok(entry) => {
            publish_uploaded(state, &entry);
            Ok(entry.current().version)
        }
        Err(error) => {
            let refused = matches!(
                &error,
                ApiError::File(
                    FileError::Sha256Mismatch { .. }
                        | FileError::QuotaExceeded { .. }
                        | FileError::PathTaken { .. }
                )
            );
            if refused {
                remove_upload(files, &record.id).await;
            } else {
                tracing::warn!(id = record.id, "completing upload failed; kept for a retry");
            }
            Err(error)
        }
    }
}

/// Removes upload `id`'s record and bytes (errors are logged; the cleanup retries).
async fn remove_upload(files: &Files, id: &str) {
    let (key, removing) = (id.to_owned(), files.clone());
    let _ = files
        .blocking(move |_| {
            remove_upload_blocking(&removing, &key);
            Ok(())
        })
        .await;
}

/// [`remove_upload`] on the blocking pool.
fn remove_upload_blocking(files: &Files, id: &str) {
    let res = files
        .inner
        .store
        .remove_upload(id)
        .map_err(|error| error.to_string())
        .and_then(|_| files.remove_upload_bytes(id));
    if let Err(error) = res {
        tracing::warn!(%error, id, "removing upload failed; the cleanup will retry");
    }
}

/// `DELETE /api/uploads/{id}`: abandons the upload and frees its bytes.
#[utoipa::path(
    delete,
    path = "/api/uploads/{id}",
    operation_id = "terminate_upload",
    tag = "files",
    params(super::openapi::UploadId, ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 204, description = "Terminated"),
        (status = 401, description = "Missing or invalid token", body = ErrorJson),
        (status = 404, description = "`upload_not_found`", body = ErrorJson),
        (status = 412, description = "`tus_version`", body = ErrorJson),
        (status = 423, description = "`upload_busy`", body = ErrorJson),
    ),
)]
pub(super) async fn terminate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    tus_response(
        async {
            check_version(&headers)?;
            load_upload(&state, &uri, &headers, &id).await?;
            let (guard, _) = take_slot(&state.files, &id, &state.lifecycle.cancel).await?;
            // A PATCH on another node may be writing it: removed only under the one-writer
            // lock, held until the record and the bytes are gone.
            let (key, files) = (id.clone(), state.files.clone());
            state
                .files
                .blocking(move |_| {
                    let Some(_idle) = files.hold_idle_upload(&key) else {
                        return Err(FileError::UploadBusy);
                    };
                    remove_upload_blocking(&files, &key);
                    Ok(())
                })
                .await?;
            drop(guard);
            forget_slot(&state.files, &id);
            tracing::info!(id, "upload terminated");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_decode_and_bad_values_are_refused() {
        let parsed =
            parse_metadata("path dGVhbS9hIGIuYmlu, filetype aW1hZ2UvcG5n,is_confidential").unwrap();
        assert_eq!(parsed["path"], "team/a b.bin");
        assert_eq!(parsed["filetype"], "image/png");
        assert_eq!(parsed["is_confidential"], "");
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("path !!!").is_err());
        assert!(parse_metadata("path /w==").is_err(), "not UTF-8");
    }
}
