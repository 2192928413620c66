//! The account endpoints (`protocol-spec/http.md`): `GET /api/auth`, `POST /api/login`,
//! `POST /api/token/refresh`, and the admin API `GET /api/users`, `PUT|DELETE /api/users/{sub}`,
//! `GET|POST /api/users/{sub}/app-passwords` and `DELETE /api/users/{sub}/app-passwords/{id}`.
//!
//! Each handler reads the request, calls the accounts service (`accounts/`) and shapes the
//! answer; the rules (limits, hashing, session age) live in the service. Nothing here logs a
//! password, a hash or a token.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem_store::UserRecord;

use super::error::{ApiError, body_within_limit};
use super::extract::{Admin, AppJson, AppPath, JsonBody, PathParam};
use super::{AppState, openapi};
use crate::accounts::{
    AccountError, AddAppPasswordRequest, PutUserRequest, UserView, validate_sub,
};
use crate::auth::{AuthError, AuthMode, token_from};
use crate::proxy::ClientAddr;

/// Largest JSON body of the account endpoints.
pub(crate) const MAX_ACCOUNT_BODY_BYTES: usize = 64 * 1024;

/// Body of `POST /api/login`.
#[derive(Deserialize, utoipa::ToSchema)]
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

impl JsonBody for AddAppPasswordRequest {
    const MAX_BYTES: usize = MAX_ACCOUNT_BODY_BYTES;
    fn rejection(error: serde_json::Error) -> ApiError {
        ApiError::BadJson(error.to_string())
    }
}

/// Body of a successful login or refresh.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TokenResponse {
    /// A JWT signed with the server's key, valid for `--login-token-ttl`.
    token: String,
    /// Its `exp`, in seconds since the Unix epoch.
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

/// Longest app password id looked up; ids the server makes are 12 hex digits, and a longer one
/// is not looked up at all.
const MAX_APP_PASSWORD_ID_BYTES: usize = 64;

/// The account and the app password id of `/api/users/{sub}/app-passwords/{id}`.
pub(super) struct AppPasswordPath {
    sub: String,
    id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for AppPasswordPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| AccountError::BadUser("the path is not UTF-8".into()))?;
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_owned())
                .ok_or(ApiError::NotFound)
        };
        let UserSub(sub) = UserSub::parse(Some(&param("sub")?))?;
        let id = param("id")?;
        if id.is_empty() || id.len() > MAX_APP_PASSWORD_ID_BYTES {
            return Err(AccountError::AppPasswordNotFound {
                sub,
                id: String::new(),
            }
            .into());
        }
        Ok(AppPasswordPath { sub, id })
    }
}

/// `GET /api/auth`: whether clients need to sign in.
#[utoipa::path(
    get,
    path = "/api/auth",
    operation_id = "auth_info",
    tag = "accounts",
    security(()),
    responses(
        (status = 200, description = "Whether to sign in", body = openapi::AuthInfo),
        (status = 503, description = "`storage_unavailable`", body = openapi::ErrorJson),
    ),
)]
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

/// `POST /api/login`: a token for an account of this server.
///
/// Failed sign-ins are limited per account and per address (`http.md`).
#[utoipa::path(
    post,
    path = "/api/login",
    operation_id = "login",
    tag = "accounts",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A fresh token", body = TokenResponse),
        (status = 400, description = "`bad_json`", body = openapi::ErrorJson),
        (status = 401, description = "`bad_credentials`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`: over 64 KiB", body = openapi::ErrorJson),
        (status = 429, description = "`too_many_attempts`, with `Retry-After`", body = openapi::ErrorJson),
        (status = 503, description = "`login_busy` (with `Retry-After: 1`), `storage_unavailable`", body = openapi::ErrorJson),
    ),
)]
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
///
/// Takes no body; the token must come from `POST /api/login` or an earlier refresh.
#[utoipa::path(
    post,
    path = "/api/token/refresh",
    operation_id = "refresh_token",
    tag = "accounts",
    responses(
        (status = 200, description = "A fresh token", body = TokenResponse),
        (status = 400, description = "`not_refreshable`", body = openapi::ErrorJson),
        (status = 401, description = "`missing_token`, `token_expired`, `invalid_token`, `session_expired`, `unknown_account`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`", body = openapi::ErrorJson),
    ),
)]
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

/// `GET /api/users`: every account, sorted by `sub`. Admin token.
#[utoipa::path(
    get,
    path = "/api/users",
    operation_id = "list_users",
    tag = "accounts",
    responses(
        (status = 200, description = "The accounts", body = openapi::UserList),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let users = state.accounts.list_users().await?;
    let users: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Ok(axum::Json(serde_json::json!({ "users": users })).into_response())
}

/// `PUT /api/users/{sub}`: creates or changes an account. 201 when created, 200 when changed.
///
/// A field left out keeps its value; a new account needs `password`. Admin token.
#[utoipa::path(
    put,
    path = "/api/users/{sub}",
    operation_id = "put_user",
    tag = "accounts",
    params(("sub" = String, Path, description = "The account id: 1 to 128 ASCII letters, digits, `.`, `_`, `@`, `-`")),
    request_body = crate::accounts::PutUserRequest,
    responses(
        (status = 200, description = "Changed", body = crate::accounts::UserView),
        (status = 201, description = "Created", body = crate::accounts::UserView),
        (status = 400, description = "`bad_user`, `bad_json`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`", body = openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = openapi::ErrorJson),
    ),
)]
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

/// `DELETE /api/users/{sub}`. Admin token.
#[utoipa::path(
    delete,
    path = "/api/users/{sub}",
    operation_id = "delete_user",
    summary = "Removes an account",
    tag = "accounts",
    params(("sub" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "Removed", body = openapi::Removed),
        (status = 400, description = "`bad_user`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
        (status = 404, description = "`user_not_found`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(UserSub(sub)): AppPath<UserSub>,
) -> Result<Response, ApiError> {
    state.accounts.remove_user(sub.clone()).await?;
    Ok(axum::Json(serde_json::json!({ "removed": sub })).into_response())
}

/// `GET /api/users/{sub}/app-passwords`: the account's app passwords, oldest first, never their
/// secrets. Admin token.
#[utoipa::path(
    get,
    path = "/api/users/{sub}/app-passwords",
    operation_id = "list_app_passwords",
    summary = "Lists an account's app passwords",
    tag = "accounts",
    params(("sub" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The app passwords", body = openapi::AppPasswordList),
        (status = 400, description = "`bad_user`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
        (status = 404, description = "`user_not_found`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn list_app_passwords(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(UserSub(sub)): AppPath<UserSub>,
) -> Result<Response, ApiError> {
    let app_passwords = state.accounts.list_app_passwords(sub).await?;
    Ok(axum::Json(serde_json::json!({ "app_passwords": app_passwords })).into_response())
}

/// `POST /api/users/{sub}/app-passwords`: makes an app password for HTTP Basic. The answer
/// holds its secret, which is never shown again. Admin token.
#[utoipa::path(
    post,
    path = "/api/users/{sub}/app-passwords",
    operation_id = "add_app_password",
    summary = "Makes an app password",
    tag = "accounts",
    params(("sub" = String, Path, description = "The account id")),
    request_body = crate::accounts::AddAppPasswordRequest,
    responses(
        (status = 201, description = "Made; `secret` is shown only here", body = crate::accounts::NewAppPassword),
        (status = 400, description = "`bad_user` (the label), `bad_json`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
        (status = 404, description = "`user_not_found`", body = openapi::ErrorJson),
        (status = 409, description = "`too_many_app_passwords`: the account has 32", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`", body = openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn add_app_password(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(UserSub(sub)): AppPath<UserSub>,
    AppJson(request): AppJson<AddAppPasswordRequest>,
) -> Result<Response, ApiError> {
    let added = state.accounts.add_app_password(sub, request.label).await?;
    Ok((StatusCode::CREATED, axum::Json(added)).into_response())
}

/// `DELETE /api/users/{sub}/app-passwords/{id}`: revokes an app password; clients using it are
/// refused from their next request. Admin token.
#[utoipa::path(
    delete,
    path = "/api/users/{sub}/app-passwords/{id}",
    operation_id = "delete_app_password",
    summary = "Revokes an app password",
    tag = "accounts",
    params(
        ("sub" = String, Path, description = "The account id"),
        ("id" = String, Path, description = "The app password's id"),
    ),
    responses(
        (status = 200, description = "Revoked", body = openapi::Removed),
        (status = 400, description = "`bad_user`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = openapi::ErrorJson),
        (status = 404, description = "`user_not_found`, `app_password_not_found`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn delete_app_password(
    State(state): State<AppState>,
    _admin: Admin,
    AppPasswordPath { sub, id }: AppPasswordPath,
) -> Result<Response, ApiError> {
    state.accounts.remove_app_password(sub, id.clone()).await?;
    Ok(axum::Json(serde_json::json!({ "removed": id })).into_response())
}
