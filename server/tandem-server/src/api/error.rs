//! The one place where errors become HTTP answers: [`ApiError`], its status and JSON body
//! `{"error": code, "message": text}` (`protocol-spec/http.md`), and the middleware that logs it.
//!
//! Services return their own domain errors (`AccountError`, `FileError`, `StoreError`, the
//! hub's `JoinError`); the `From` impls and `status_and_code` here are the only code that maps
//! them to status codes. An error never carries internal detail into its body, and it is logged
//! once, by [`log_api_errors`] inside the request span, never in `into_response`.
//! A 5xx body also carries an `error_id`, a random tag logged with it, so the log line of a
//! failure a user reports can be found.

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_core::protocol::SnapshotError;
use tandem_core::{DocIdError, ProtocolError};
use tracing::Instrument;

use crate::accounts::AccountError;
use crate::auth::AuthError;
use crate::bus::LockJson;
use crate::doc_text::DocTextError;
use crate::error_id;
use crate::files::FileError;
use crate::locks::LockError;
use crate::webhook::WebhookError;
use tandem_hub::JoinError;

/// Every error an HTTP handler can return.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadDocName(DocIdError),
    #[error("no such document")]
    DocNotFound,
    #[error("no such endpoint")]
    NotFound,
    #[error("{0}")]
    BadSnapshot(SnapshotError),
    #[error("{0}")]
    BadUpdate(ProtocolError),
    #[error("{0}")]
    Auth(AuthError),
    #[error("request body too large, limit {max} bytes")]
    BodyTooLarge { max: u64 },
    #[error("request body could not be read")]
    BadBody,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("document temporarily unavailable")]
    Unavailable,
    #[error("the document's stored data is damaged")]
    DocCorrupt,
    #[error("internal error")]
    Internal,
    #[error("document too large, limit {max} bytes")]
    DocTooLarge { max: u64 },
    #[error("{0}")]
    Account(AccountError),
    #[error("bad request body: {0}")]
    BadJson(String),
    #[error("{0}")]
    File(FileError),
    #[error("no such version")]
    VersionNotFound,
    #[error("a version name is 1 to {max} characters, without control characters")]
    BadVersionName { max: usize },
    #[error("{0}")]
    BadQuery(String),
    #[error("{0}")]
    BadWebhook(String),
    #[error("no such webhook")]
    WebhookNotFound,
    #[error("stored data could not be read")]
    StorageFault,
    #[error("storage full, retry later")]
    InsufficientStorage,
    #[error("shared storage temporarily unavailable, retry later")]
    StorageUnavailable,
    /// A WebDAV request refused before it reached the file system (`api/dav/`): a bad path,
    /// an XML bomb, a move into itself.
    #[error("{message}")]
    WebDav {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    #[error("{0}")]
    NotPlainText(String),
    /// A WebDAV lock refuses the write (`protocol-spec/webdav.md`, "Locks").
    #[error("{} is locked by {}; the holder's lock token lets a write through", display_path(&.0.path), holder_of(.0))]
    Locked(Box<LockJson>),
    #[error("no such lock")]
    LockNotFound,
}

/// A lock's path in a message (`""` is the workspace root).
fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the workspace"
    } else {
        path
    }
}

/// Who holds a lock, for people: its account, else its owner text, else "a WebDAV client".
pub(crate) fn holder_of(lock: &LockJson) -> &str {
    lock.principal
        .as_deref()
        .or(lock.owner.as_deref())
        .unwrap_or("a WebDAV client")
}

impl From<LockError> for ApiError {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Conflict(lock) => ApiError::Locked(Box::new(LockJson::of(&lock))),
            LockError::NotFound => ApiError::LockNotFound,
            LockError::Store(error) => ApiError::from_store(&error, "lock store"),
            LockError::Internal => ApiError::Internal,
        }
    }
}

impl ApiError {
    /// A failed store operation: 507 if the store is read-only (a full disk), 503 if cluster
    /// mode's shared database is unreachable (nothing was stored; retry later), 500 otherwise.
    /// Logs the error (once, here) unless it is the routine refusal of a read-only store.
    pub(crate) fn from_store(error: &tandem_store::StoreError, what: &'static str) -> ApiError {
        if error.read_only_reason().is_some() {
            tracing::debug!(%error, what, "refused: the store is read-only");
            ApiError::InsufficientStorage
        } else if matches!(error, tandem_store::StoreError::Unavailable { .. }) {
            tracing::warn!(%error, what, "shared storage unavailable");
            ApiError::StorageUnavailable
        } else {
            tracing::error!(%error, what, "store operation failed");
            ApiError::Internal
        }
    }
}

impl From<DocTextError> for ApiError {
    fn from(error: DocTextError) -> Self {
        match error {
            DocTextError::Hub(error) => error.into(),
            DocTextError::NotPlainText(message) => ApiError::NotPlainText(message),
            DocTextError::Refused(ProtocolError::DocTooLarge { max, .. }) => {
                ApiError::DocTooLarge { max }
            }
            DocTextError::Refused(other) => ApiError::BadUpdate(other),
            DocTextError::Internal => ApiError::Internal,
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(error: JoinError) -> Self {
        match error {
            JoinError::ShuttingDown => ApiError::ShuttingDown,
            JoinError::Retry | JoinError::Unavailable => ApiError::Unavailable,
            JoinError::StorageFull => ApiError::InsufficientStorage,
            JoinError::Corrupt => ApiError::DocCorrupt,
        }
    }
}

impl From<FileError> for ApiError {
    fn from(error: FileError) -> Self {
        match error {
            FileError::InsufficientStorage => ApiError::InsufficientStorage,
            FileError::Store(error) => ApiError::from_store(&error, "file store"),
            FileError::Internal => ApiError::Internal,
            error => ApiError::File(error),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::Bad(message) => ApiError::BadWebhook(message),
            WebhookError::NotFound => ApiError::WebhookNotFound,
            WebhookError::Store(error) => ApiError::from_store(&error, "webhook storage"),
            WebhookError::Internal => ApiError::Internal,
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::Store(error) => ApiError::from_store(&error, "account store"),
            AccountError::Internal => ApiError::Internal,
            error => ApiError::Account(error),
        }
    }
}

/// The status and the stable error code of an account refusal.
fn account_status_and_code(error: &AccountError) -> (StatusCode, &'static str) {
    match error {
        AccountError::BadCredentials { .. } => (StatusCode::UNAUTHORIZED, "bad_credentials"),
        AccountError::TooManyAttempts { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
        }
        AccountError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "login_busy"),
        AccountError::NotRefreshable => (StatusCode::BAD_REQUEST, "not_refreshable"),
        AccountError::UnknownAccount(_) => (StatusCode::UNAUTHORIZED, "unknown_account"),
        AccountError::SessionTooOld => (StatusCode::UNAUTHORIZED, "session_expired"),
        AccountError::UserNotFound(_) => (StatusCode::NOT_FOUND, "user_not_found"),
        AccountError::BadUser(_) => (StatusCode::BAD_REQUEST, "bad_user"),
        AccountError::TooManyAppPasswords(_) => (StatusCode::CONFLICT, "too_many_app_passwords"),
        AccountError::AppPasswordNotFound { .. } => {
            (StatusCode::NOT_FOUND, "app_password_not_found")
        }
        // Mapped to `Internal` or `InsufficientStorage` by `From`; never wrapped.
        AccountError::Store(_) | AccountError::Internal => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

/// The `Retry-After` of an account refusal's 429 or 503, in whole seconds (at least 1).
fn account_retry_after_secs(error: &AccountError) -> Option<u64> {
    match error {
        AccountError::TooManyAttempts { retry_after, .. } => {
            Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
        }
        AccountError::Busy => Some(1),
        _ => None,
    }
}

/// The status and the stable error code of a file refusal.
fn file_status_and_code(error: &FileError) -> (StatusCode, &'static str) {
    match error {
        FileError::NotFound => (StatusCode::NOT_FOUND, "file_not_found"),
        FileError::VersionNotFound => (StatusCode::NOT_FOUND, "version_not_found"),
        FileError::PathTaken { .. } => (StatusCode::CONFLICT, "path_taken"),
        FileError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
        FileError::QuotaExceeded { .. } => (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"),
        FileError::Sha256Mismatch { .. } => (StatusCode::BAD_REQUEST, "sha256_mismatch"),
        FileError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_upload"),
        FileError::Incomplete { .. } => (StatusCode::BAD_REQUEST, "incomplete_body"),
        FileError::IdleTimeout => (StatusCode::REQUEST_TIMEOUT, "upload_timeout"),
        FileError::UploadNotFound => (StatusCode::NOT_FOUND, "upload_not_found"),
        FileError::UploadExpired => (StatusCode::GONE, "upload_expired"),
        FileError::OffsetMismatch { .. } => (StatusCode::CONFLICT, "offset_mismatch"),
        FileError::UploadBusy => (StatusCode::LOCKED, "upload_busy"),
        FileError::TusVersion => (StatusCode::PRECONDITION_FAILED, "tus_version"),
        FileError::PatchContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_content_type"),
        FileError::RangeNotSatisfiable => {
            (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
        }
        // Mapped to their own `ApiError` by `From`; never wrapped.
        FileError::InsufficientStorage => {
            (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
        }
        FileError::Store(_) | FileError::Internal => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadDocName(_) => (StatusCode::BAD_REQUEST, "bad_doc_name"),
            ApiError::DocNotFound => (StatusCode::NOT_FOUND, "doc_not_found"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadSnapshot(_) => (StatusCode::BAD_REQUEST, "bad_snapshot"),
            ApiError::BadUpdate(_) => (StatusCode::BAD_REQUEST, "bad_update"),
            ApiError::Auth(error) if error.is_unauthenticated() => {
                (StatusCode::UNAUTHORIZED, error.code())
            }
            ApiError::Auth(error) => (StatusCode::FORBIDDEN, error.code()),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "doc_unavailable"),
            ApiError::DocCorrupt => (StatusCode::INTERNAL_SERVER_ERROR, "doc_corrupt"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::DocTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "doc_too_large"),
            ApiError::Account(error) => account_status_and_code(error),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            ApiError::File(error) => file_status_and_code(error),
            ApiError::VersionNotFound => (StatusCode::NOT_FOUND, "version_not_found"),
            ApiError::BadVersionName { .. } => (StatusCode::BAD_REQUEST, "bad_version_name"),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::BadWebhook(_) => (StatusCode::BAD_REQUEST, "bad_webhook"),
            ApiError::WebhookNotFound => (StatusCode::NOT_FOUND, "webhook_not_found"),
            ApiError::StorageFault => (StatusCode::INTERNAL_SERVER_ERROR, "storage_fault"),
            ApiError::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::StorageUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            ApiError::WebDav { status, code, .. } => (*status, code),
            ApiError::Locked(_) => (StatusCode::LOCKED, "locked"),
            ApiError::LockNotFound => (StatusCode::NOT_FOUND, "lock_not_found"),
            ApiError::NotUtf8 => (StatusCode::BAD_REQUEST, "not_utf8"),
            ApiError::NotPlainText(_) => (StatusCode::CONFLICT, "not_plain_text"),
        }
    }
}

/// The body of a request as a route reads it, or the refusal: a body over `max_bytes` (the
/// route's `DefaultBodyLimit`, by `Content-Length` or as it streams) is 413 `body_too_large`;
/// any other failure to read it is 400 `bad_body`.
pub(crate) fn body_within_limit(
    body: Result<Bytes, BytesRejection>,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                max: u64::try_from(max_bytes).unwrap_or(u64::MAX),
            }
        } else {
            ApiError::BadBody
        }
    })
}

/// Carried in the response extensions so `log_api_errors` can log the error in the request span.
#[derive(Clone)]
struct LoggedApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The tag of a 5xx, also sent in its body.
    error_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let retry_after = match &self {
            ApiError::Account(error) => account_retry_after_secs(error),
            _ => None,
        };
        let is_token_error = matches!(self, ApiError::Auth(_));
        let error_id = status.is_server_error().then(error_id::new);
        let mut json = serde_json::json!({ "error": code, "message": message });
        if let Some(error_id) = &error_id {
            json["error_id"] = serde_json::Value::from(error_id.as_str());
        }
        if let ApiError::Locked(lock) = &self {
            json["lock"] = serde_json::to_value(lock).unwrap_or_default();
        }
        let body = axum::Json(json);
        let mut response = (status, body).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED && is_token_error {
            // RFC 6750: tell the client which scheme to use.
            let challenge = if code == "missing_token" {
                r#"Bearer realm="tandem""#
            } else {
                r#"Bearer realm="tandem", error="invalid_token""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response.extensions_mut().insert(LoggedApiError {
            status,
            code,
            message,
            error_id,
        });
        response
    }
}

/// Logs the [`ApiError`] a response carries, once, in the request span.
pub(super) async fn log_api_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).in_current_span().await;
    if let Some(error) = response.extensions().get::<LoggedApiError>() {
        if error.status == StatusCode::INSUFFICIENT_STORAGE {
            // A full disk is logged once, when the store turns read-only; each refusal is routine.
            let error_id = error.error_id.as_deref().unwrap_or_default();
            tracing::debug!(status = error.status.as_u16(), code = error.code, detail = %error.message, error_id, path, "request refused");
        } else if error.status.is_server_error() {
            let error_id = error.error_id.as_deref().unwrap_or_default();
            tracing::error!(status = error.status.as_u16(), code = error.code, detail = %error.message, error_id, path, "request failed");
        } else {
            tracing::warn!(status = error.status.as_u16(), code = error.code, detail = %error.message, path, "request refused");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: cluster mode's shared database being unreachable answered 500 `internal`,
    /// which tells a client the request itself failed for good. It is 503 now, in the JSON
    /// error shape: nothing was stored, retry later.
    #[tokio::test]
    async fn an_unavailable_shared_database_is_a_503_with_the_json_error_shape() {
        let error = tandem_store::StoreError::Unavailable {
            backend: "postgres",
            detail: "connection refused".into(),
        };
        let response = ApiError::from_store(&error, "account store").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "storage_unavailable");
        assert_eq!(
            json["message"],
            "shared storage temporarily unavailable, retry later"
        );
        assert!(json["error_id"].is_string(), "{json}");
        assert!(
            !body.windows(18).any(|w| w == b"connection refused"),
            "no internal detail in the body"
        );
    }
}
