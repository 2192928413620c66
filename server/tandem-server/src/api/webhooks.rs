//! The webhook admin API (`protocol-spec/activity.md`): `GET|POST /api/webhooks`,
//! `DELETE /api/webhooks/{id}` and `GET /api/webhooks/{id}/deliveries`, for administrators (or
//! everyone with authentication off). The rules live in the webhook service (`webhook/`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Admin, AppJson, AppPath, JsonBody, PathParam};
use crate::webhook::{AttemptView, NewWebhook, WebhookView};

/// Largest body of `POST /api/webhooks`.
pub(crate) const MAX_WEBHOOK_BODY_BYTES: usize = 16 * 1024;

impl JsonBody for NewWebhook {
    const MAX_BYTES: usize = MAX_WEBHOOK_BODY_BYTES;
    fn rejection(error: serde_json::Error) -> ApiError {
        ApiError::BadWebhook(format!("bad JSON: {error}"))
    }
}

/// The id of `/api/webhooks/{id}`, percent-decoded.
pub(super) struct WebhookId(String);

impl PathParam for WebhookId {
    fn parse(decoded: Option<&str>) -> Result<Self, ApiError> {
        let id = decoded.ok_or(ApiError::WebhookNotFound)?;
        if id.is_empty() || id.contains('/') {
            return Err(ApiError::NotFound);
        }
        Ok(WebhookId(id.to_owned()))
    }
}

/// `GET /api/webhooks`: every registration, never a secret. Admin token.
#[utoipa::path(
    get,
    path = "/api/webhooks",
    operation_id = "list_webhooks",
    tag = "activity",
    responses(
        (status = 200, description = "The webhooks", body = super::openapi::WebhookList),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let webhooks = state.webhooks.list().await?;
    let views: Vec<WebhookView> = webhooks.iter().map(WebhookView::from).collect();
    Ok(axum::Json(json!({ "webhooks": views })).into_response())
}

/// `POST /api/webhooks`: 201 with the webhook and its secret (shown this once).
#[utoipa::path(
    post,
    path = "/api/webhooks",
    operation_id = "add_webhook",
    tag = "activity",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Registered; the secret is shown this once", body = super::openapi::WebhookCreated),
        (status = 400, description = "`bad_webhook`", body = super::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 413, description = "`body_too_large`: over 16 KiB", body = super::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn add(
    State(state): State<AppState>,
    _admin: Admin,
    AppJson(request): AppJson<NewWebhook>,
) -> Result<Response, ApiError> {
    let record = state.webhooks.add(request).await?;
    let body = json!({ "webhook": WebhookView::from(&record), "secret": record.secret });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE /api/webhooks/{id}`: 204, or 404.
#[utoipa::path(
    delete,
    path = "/api/webhooks/{id}",
    operation_id = "remove_webhook",
    tag = "activity",
    params(("id" = String, Path, description = "`wh_` and 16 hex digits")),
    responses(
        (status = 204, description = "Removed, with its pending deliveries and log"),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 404, description = "`webhook_not_found`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn remove(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(WebhookId(id)): AppPath<WebhookId>,
) -> Result<Response, ApiError> {
    state.webhooks.remove(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/webhooks/{id}/deliveries`: the logged attempts, newest first, and what is pending.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}/deliveries",
    operation_id = "webhook_deliveries",
    tag = "activity",
    params(("id" = String, Path, description = "`wh_` and 16 hex digits")),
    responses(
        (status = 200, description = "The attempts and what is pending", body = super::openapi::Deliveries),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 404, description = "`webhook_not_found`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    _admin: Admin,
    AppPath(WebhookId(id)): AppPath<WebhookId>,
) -> Result<Response, ApiError> {
    let (log, pending) = state.webhooks.deliveries(id).await?;
    let log: Vec<AttemptView> = log.into_iter().map(AttemptView::from).collect();
    let pending: Vec<Value> = pending
        .iter()
        .map(|delivery| {
            json!({
                "delivery_id": delivery.delivery_id,
                "event": delivery.event,
                "created_ms": delivery.created_ms,
                "attempts": delivery.attempts,
                "next_attempt_ms": delivery.next_attempt_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "deliveries": log, "pending": pending })).into_response())
}
