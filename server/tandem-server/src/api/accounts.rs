//! The account endpoints (`protocol-spec/http.md`): `GET /api/auth`, `POST /api/login`,
//! `POST /api/token/refresh`, and the admin API `GET /api/users`, `PUT|DELETE /api/users/{sub}`.
//!
//! Each handler reads the request, calls the accounts service (`accounts/`) and shapes the
//! answer; the rules (limits, hashing, session age) live in the service. Nothing here logs a
//! password, a hash or a token.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem_store::UserRecord;

use super::AppState;
use super::error::{ApiError, body_within_limit};
use super::extract::{Admin, AppJson, AppPath, JsonBody, PathParam};
use crate::accounts::{AccountError, PutUserRequest, UserView, validate_sub};
use crate::auth::{AuthError, AuthMode, token_from};
use crate::proxy::ClientAddr;

/// Largest JSON body of the account endpoints.
pub(crate) const MAX_ACCOUNT_BODY_BYTES: usize = 64 * 1024;

/// Body of `POST /api/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
}

impl JsonBody for LoginRequest {
    const MAX_BYTES: usize = MAX_ACCOUNT_BODY_BYTES;
    fn rejection(error: serde_json::Error) -> ApiError {
        ApiError::BadJson(error.to_string())
    }
}

impl JsonBody for PutUserRequest {
    const MAX_BYTES: usize = MAX_ACCOUNT_BODY_BYTES;
    fn rejection(error: serde_json::Error) -> ApiError {
        ApiError::BadJson(error.to_string())
    }
}

/// Body of a successful login or refresh.
#[derive(Serialize)]
struct TokenResponse {
    token: String,
    expires_at: u64,
    sub: String,
    name: String,
}

/// The account id of `/api/users/{sub}`, percent-decoded and validated.
pub(super) struct UserSub(String);

impl PathParam for UserSub {
    fn parse(decoded: Option<&str>) -> Result<Self, ApiError> {
        let sub = decoded.ok_or_else(|| AccountError::BadUser("user name is not UTF-8".into()))?;
        validate_sub(sub).map_err(AccountError::BadUser)?;
        Ok(UserSub(sub.to_owned()))
    }
}

/// `GET /api/auth`: whether clients need to sign in.
pub(super) async fn auth_info(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mode = state.auth.mode();
    let login = match mode {
        AuthMode::Jwt => true,
        AuthMode::None => state.accounts.any_users().await?,
    };
    let mode = match mode {
        AuthMode::None => "none",
        AuthMode::Jwt => "jwt",
    };
    Ok(axum::Json(serde_json::json!({ "mode": mode, "login": login })).into_response())
}

/// `POST /api/login`.
pub(super) async fn login(
    State(state): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    AppJson(request): AppJson<LoginRequest>,
) -> Result<Response, ApiError> {
    // The client through trusted proxies, so a proxy's clients are limited one by one.
    let user = state
        .accounts
        .sign_in(&request.username, request.password, client.ip)
        .await?;
    let session = tandem_hub::clock::now_s();
    Ok(axum::Json(token_for(&state, &user, session)?).into_response())
}

/// `POST /api/token/refresh`: a fresh token for the account of a token this server signed.
pub(super) async fn refresh(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // It takes no body; one over the limit is refused like on every route, never ignored.
    body_within_limit(body, MAX_ACCOUNT_BODY_BYTES)?;
    let token = token_from(&headers, &uri).ok_or(ApiError::Auth(AuthError::MissingToken))?;
    let claims = match state.auth.verify_own(&token) {
        Ok(claims) => claims,
        // Valid, but from an identity provider: the provider refreshes it.
        Err(_) if state.auth.verify(&token).is_ok() => {
            return Err(AccountError::NotRefreshable.into());
        }
        Err(error) => return Err(ApiError::Auth(error)),
    };
    let (user, session) = state.accounts.renewable(claims).await?;
    Ok(axum::Json(token_for(&state, &user, session)?).into_response())
}

/// A token for `user` signed with the server's key, in the sign-in session begun at `session`.
fn token_for(state: &AppState, user: &UserRecord, session: u64) -> Result<TokenResponse, ApiError> {
    let claims = state.accounts.token_claims(user, session)?;
    Ok(TokenResponse {
        token: state.auth.mint(&claims),
        expires_at: claims.exp,
        name: claims.identity().name.to_string(),
        sub: claims.sub,
    })
}

/// `GET /api/users`.
pub(super) async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let users = state.accounts.list_users().await?;
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(axum::Json(serde_json::json!({ "users": users })).into_response())
}

/// `PUT /api/users/{sub}`: creates or changes an account. 201 when created, 200 when changed.
pub(super) async fn put_user(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(UserSub(sub)): AppPath<UserSub>,
    AppJson(request): AppJson<PutUserRequest>,
) -> Result<Response, ApiError> {
    let (record, created) = state.accounts.put_user(sub, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(UserView::from(record))).into_response())
}

/// `DELETE /api/users/{sub}`.
pub(super) async fn delete_user(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(UserSub(sub)): AppPath<UserSub>,
) -> Result<Response, ApiError> {
    state.accounts.remove_user(sub.clone()).await?;
    Ok(axum::Json(serde_json::json!({ "removed": sub })).into_response())
}
