//! The extractors every handler shares: the request's claims, an administrator, a doc and the
//! grant on it, a JSON body and a typed path parameter, each refusing in our JSON error shape
//! ([`ApiError`]) instead of axum's plain-text rejections.
//!
//! A handler's extractors run in the order of its arguments, so a handler lists them in the
//! order its checks must happen: the token first (401/403), then the path (400/404), the body
//! last (413, 400). Nothing here touches a service; it only reads the request and asks `Auth`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Query, RawPathParams, Request};
use axum::http::Uri;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tandem_core::{DocId, DocIdError};

use super::AppState;
use super::error::{ApiError, body_within_limit};
use crate::auth::{AuthError, Claims, Grant, token_from};

/// The claims of the request's token: `None` with authentication off. A missing or bad token
/// with authentication on is refused (401/403).
pub(crate) struct MaybeClaims(pub(crate) Option<Claims>);

impl FromRequestParts<AppState> for MaybeClaims {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        request_claims(state, &parts.headers, &parts.uri).map(MaybeClaims)
    }
}

/// An administrator, or anyone with authentication off; other tokens are refused (403
/// `not_admin`). Guards the account and webhook APIs.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match request_claims(state, &parts.headers, &parts.uri)? {
            Some(claims) if !claims.admin => Err(ApiError::Auth(AuthError::NotAdmin)),
            _ => Ok(Admin),
        }
    }
}

/// The doc named by the rest of the path after a route's `{*name}` prefix, parsed from the raw
/// (still percent-encoded) path so that `%2F` is told apart from `/`, and what the request's
/// token may do on it (at least read). A bad name is a 400, before the token is looked at.
pub(crate) struct DocGrant {
    pub(crate) doc: DocId,
    pub(crate) grant: Grant,
}

impl FromRequestParts<AppState> for DocGrant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let prefix = parts
            .extensions
            .get::<MatchedPath>()
            .and_then(|matched| matched.as_str().strip_suffix("{*name}"))
            .ok_or(ApiError::NotFound)?;
        let doc = doc_id_from(&parts.uri, prefix)?;
        let grant = request_grant(state, &parts.headers, &parts.uri, &doc)?;
        Ok(DocGrant { doc, grant })
    }
}

/// A request body that is JSON: its size limit and how a body that does not parse is refused,
/// so each resource keeps its own error code for bad input.
pub(crate) trait JsonBody: DeserializeOwned {
    /// The route's body limit, named in the 413 it answers over it.
    const MAX_BYTES: usize;
    /// The refusal of a body that is not this JSON.
    fn rejection(error: serde_json::Error) -> ApiError;
}

/// A JSON body, read within `T::MAX_BYTES` and parsed whatever its `Content-Type`: a body over
/// the limit is a 413 `body_too_large`, one that cannot be read a 400 `bad_body`, one that does
/// not parse `T::rejection`.
pub(crate) struct AppJson<T>(pub(crate) T);

impl<T: JsonBody> FromRequest<AppState> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, state).await;
        let body = body_within_limit(body, T::MAX_BYTES)?;
        serde_json::from_slice(&body)
            .map(AppJson)
            .map_err(T::rejection)
    }
}

/// A value parsed from a route's single path parameter.
pub(crate) trait PathParam: Sized {
    /// `decoded` is the percent-decoded parameter, `None` if it is not UTF-8.
    fn parse(decoded: Option<&str>) -> Result<Self, ApiError>;
}

/// The route's one path parameter, percent-decoded and parsed by `T`, which also chooses the
/// refusal of a bad one.
pub(crate) struct AppPath<T>(pub(crate) T);

impl<T: PathParam, S: Send + Sync> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let decoded = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => {
                let value = params.iter().next().map(|(_, value)| value.to_owned());
                Some(value.ok_or(ApiError::NotFound)?)
            }
            Err(_) => None,
        };
        T::parse(decoded.as_deref()).map(AppPath)
    }
}

/// A query string parsed into `T`; one that does not parse is a 400 `bad_query` naming why.
pub(crate) struct AppQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<T>::try_from_uri(&parts.uri)
            .map_err(|rejection| ApiError::BadQuery(rejection.body_text()))?;
        Ok(AppQuery(params))
    }
}

/// The claims of the request's token (`None` with authentication off), or the refusal.
pub(crate) fn request_claims(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &Uri,
) -> Result<Option<Claims>, ApiError> {
    state
        .auth
        .claims(token_from(headers, uri).as_deref())
        .map_err(ApiError::Auth)
}

/// What the request's token may do on `doc` (at least read), or the refusal.
pub(crate) fn request_grant(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &Uri,
    doc: &DocId,
) -> Result<Grant, ApiError> {
    state
        .auth
        .grant(token_from(headers, uri).as_deref(), doc)
        .map_err(ApiError::Auth)
}

/// The doc named by the raw path after `prefix`.
pub(crate) fn doc_id_from(uri: &Uri, prefix: &str) -> Result<DocId, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or(ApiError::BadDocName(DocIdError::Empty))?;
    DocId::from_url_path(raw).map_err(ApiError::BadDocName)
}
