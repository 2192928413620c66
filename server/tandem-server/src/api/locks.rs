//! WebDAV locks over the rest of the HTTP API (`protocol-spec/webdav.md`, "Locks"): the check
//! every write handler makes ([`check_write`]), the lock tokens a request submits, and the admin
//! endpoints `GET /api/locks` and `DELETE /api/locks/{token}` (to see and break stale locks).
//! The rules live in the lock service (`locks/`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{Admin, AppPath, PathParam};
use crate::auth::Grant;
use crate::bus::LockJson;
use crate::locks::{Lock, Writer};

/// The lock tokens a request submits: each `Lock-Token` header (`<urn:uuid:...>`, brackets
/// optional) and every Coded-URL (`<...>`) of its `If` headers (RFC 4918 §10.4: the lists of a
/// tagged or untagged `If` header; entity tags in `[...]` are skipped, and `Not` is not read:
/// a token named anywhere counts as submitted).
pub(crate) fn submitted_tokens(headers: &HeaderMap) -> Vec<String> {
    let mut tokens = Vec::new();
    for value in headers.get_all("lock-token") {
        if let Ok(text) = value.to_str() {
            let token = text.trim().trim_start_matches('<').trim_end_matches('>');
            if !token.is_empty() {
                tokens.push(token.to_owned());
            }
        }
    }
    for value in headers.get_all("if") {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(start) = rest.find(['<', '[']) {
            let (close, after) = if rest.as_bytes()[start] == b'<' {
                ('>', &rest[start + 1..])
            } else {
                (']', &rest[start + 1..])
            };
            let Some(end) = after.find(close) else { break };
            if close == '>' && !after[..end].is_empty() {
                tokens.push(after[..end].to_owned());
            }
            rest = &after[end + 1..];
        }
    }
    tokens
}

/// Refuses a write to `path` (and to everything below it if `deep`) that a WebDAV lock
/// forbids: 423 `locked`, naming the holder. The holder writes by submitting its token (see
/// [`submitted_tokens`]) with the same account.
pub(crate) async fn check_write(
    state: &AppState,
    headers: &HeaderMap,
    grant: &Grant,
    path: &str,
    deep: bool,
) -> Result<(), ApiError> {
    let tokens = submitted_tokens(headers);
    let writer = Writer {
        tokens: &tokens,
        principal: grant.identity.as_ref().map(|identity| &*identity.sub),
    };
    Ok(state.locks.check(path, deep, writer).await?)
}

/// A lock as an administrator sees it: with its token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AdminLockJson {
    /// `urn:uuid:...`.
    token: String,
    #[serde(flatten)]
    lock: LockJson,
    /// When it was taken, ms since the Unix epoch.
    created_at: u64,
    /// The timeout it was granted or last refreshed with, seconds.
    timeout_s: u64,
}

impl AdminLockJson {
    fn of(lock: &Lock) -> AdminLockJson {
        AdminLockJson {
            token: lock.token.clone(),
            lock: LockJson::of(lock),
            created_at: lock.created_ms,
            timeout_s: lock.timeout_ms / 1000,
        }
    }
}

/// The token of `/api/locks/{token}`, percent-decoded.
pub(super) struct LockToken(String);

impl PathParam for LockToken {
    fn parse(decoded: Option<&str>) -> Result<Self, ApiError> {
        match decoded {
            Some(token) if !token.is_empty() && !token.contains('/') => {
                Ok(LockToken(token.to_owned()))
            }
            _ => Err(ApiError::LockNotFound),
        }
    }
}

/// `GET /api/locks`: every lock that has not expired, in path order. Admin token.
#[utoipa::path(
    get,
    path = "/api/locks",
    operation_id = "list_locks",
    tag = "files",
    responses(
        (status = 200, description = "The locks", body = super::openapi::LockList),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 503, description = "`storage_unavailable`: cluster mode, Postgres unreachable", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let locks = state.locks.list().await?;
    let locks: Vec<AdminLockJson> = locks.iter().map(AdminLockJson::of).collect();
    Ok(axum::Json(serde_json::json!({ "locks": locks })).into_response())
}

/// `DELETE /api/locks/{token}`: breaks a lock (its holder's next write with the token is
/// refused like anyone's). Admin token.
#[utoipa::path(
    delete,
    path = "/api/locks/{token}",
    operation_id = "break_lock",
    tag = "files",
    params(("token" = String, Path, description = "The lock token, `urn:uuid:...` (percent-encoded or not)")),
    responses(
        (status = 204, description = "Broken"),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 404, description = "`lock_not_found`: no such lock, or it expired", body = super::openapi::ErrorJson),
        (status = 503, description = "`storage_unavailable`: cluster mode, Postgres unreachable", body = super::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn break_lock(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(LockToken(token)): AppPath<LockToken>,
) -> Result<Response, ApiError> {
    state.locks.unlock(None, &token).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_come_from_lock_token_and_if_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("lock-token", HeaderValue::from_static("<urn:uuid:a>"));
        headers.append(
            "if",
            HeaderValue::from_static(
                r#"<http://x/dav/f> (<urn:uuid:b> ["etag<not>"]) (Not <urn:uuid:c>)"#,
            ),
        );
        assert_eq!(
            submitted_tokens(&headers),
            ["urn:uuid:a", "http://x/dav/f", "urn:uuid:b", "urn:uuid:c"]
        );
        let mut bare = HeaderMap::new();
        bare.insert("lock-token", HeaderValue::from_static("urn:uuid:d"));
        bare.insert("if", HeaderValue::from_static("(<unclosed"));
        assert_eq!(submitted_tokens(&bare), ["urn:uuid:d"]);
    }
}
