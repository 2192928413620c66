//! What operators read: `GET /metrics` (Prometheus text, `protocol-spec/metrics.md`), the admin
//! view's JSON (`GET /api/admin/overview`, `GET /api/admin/series`, `protocol-spec/http.md`),
//! the HTTP request metrics middleware ([`record_http`]), and the router of `--metrics-addr`.
//!
//! The data comes from the `metrics` service (`Telemetry`), the hub's registry and the file
//! tables; this file only shapes it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::extract::Admin;
use super::{AppState, blocking};
use crate::api::ApiError;

/// Live docs listed by the overview at most (the busiest first).
const MAX_OVERVIEW_DOCS: usize = 500;
/// The content type of the Prometheus text exposition `prometheus-client` writes (OpenMetrics
/// text, which Prometheus scrapes natively).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` on the main port: administrators only. 404 when metrics are off.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "server",
    summary = "Prometheus metrics (metrics.md)",
    responses(
        (status = 200, description = "Every metric in the OpenMetrics text format (metrics.md)", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
        (status = 404, description = "`not_found`: metrics are off (`--metrics off`)", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn metrics(State(state): State<AppState>, request: Request) -> Response {
    if !state.telemetry.enabled() {
        return ApiError::NotFound.into_response();
    }
    let (mut parts, _) = request.into_parts();
    if let Err(error) =
        <Admin as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state)
            .await
    {
        return error.into_response();
    }
    metrics_text(&state)
}

/// `GET /metrics` on `--metrics-addr`: no authentication (a private network's scraper).
async fn metrics_open(State(state): State<AppState>) -> Response {
    if !state.telemetry.enabled() {
        return ApiError::NotFound.into_response();
    }
    metrics_text(&state)
}

fn metrics_text(state: &AppState) -> Response {
    match state.telemetry.encode() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        None => ApiError::NotFound.into_response(),
    }
}

/// How long a request on `--metrics-addr` may take (a scrape takes milliseconds).
const METRICS_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Requests served at once on `--metrics-addr`; more are refused with `503`. A scraper or two
/// need one each.
pub(crate) const METRICS_MAX_IN_FLIGHT: usize = 8;

/// The router of `--metrics-addr`: `/metrics` only; everything else is a JSON 404. Its requests
/// time out and only [`METRICS_MAX_IN_FLIGHT`] run at once: the listener has no authentication
/// and none of the main listener's caps.
pub(crate) fn metrics_router(state: AppState) -> Router {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_IN_FLIGHT));
    Router::new()
        .route("/metrics", get(metrics_open))
        .fallback(|| async { ApiError::NotFound })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            METRICS_REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let permit = in_flight.clone().try_acquire_owned();
                async move {
                    match permit {
                        Ok(_permit) => next.run(request).await,
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({
                                "error": "too_many_connections",
                                "message": "too many metrics requests at once; retry later",
                            })),
                        )
                            .into_response(),
                    }
                }
            },
        ))
        .with_state(state)
}

/// `GET /api/admin/overview`.
#[utoipa::path(
    get,
    path = "/api/admin/overview",
    operation_id = "admin_overview",
    tag = "server",
    summary = "The admin view: live documents, connections, storage, failing webhooks, errors",
    responses(
        (status = 200, description = "This node's state now (http.md, Admin)", body = super::openapi::AdminOverview),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn overview(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<axum::Json<Value>, ApiError> {
    let telemetry = &state.telemetry;
    let mut docs: Vec<(String, usize, u64)> = state
        .hub
        .open_docs()
        .into_iter()
        .map(|(doc, handle)| {
            (
                doc.to_string(),
                handle.n_peers.load(Ordering::Relaxed),
                handle.stored_bytes.load(Ordering::Relaxed),
            )
        })
        .collect();
    let docs_total = docs.len();
    docs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    docs.truncate(MAX_OVERVIEW_DOCS);
    let docs: Vec<Value> = docs
        .into_iter()
        .map(|(name, peers, bytes)| json!({ "name": name, "peers": peers, "bytes": bytes }))
        .collect();
    let (y_websocket, hocuspocus) = telemetry.connections_by_protocol();
    let storage = storage(&state).await?;
    let webhooks_failing: Vec<Value> = telemetry
        .failed_deliveries()
        .into_iter()
        .map(|failure| {
            json!({
                "webhook": failure.webhook,
                "url": failure.url,
                "event": failure.event,
                "at": failure.at_ms,
                "error": failure.error,
                "attempts": failure.attempts,
            })
        })
        .collect();
    let errors: Vec<Value> = telemetry
        .errors()
        .into_iter()
        .map(|event| {
            let fields: serde_json::Map<String, Value> = event
                .fields
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::String(value)))
                .collect();
            json!({
                "at": event.at_ms,
                "level": event.level,
                "target": event.target,
                "message": event.message,
                "fields": fields,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "now": tandem_hub::clock::now_ms(),
        "started_at": telemetry.started_at_ms(),
        "docs": docs,
        "docs_total": docs_total,
        "connections": { "y-websocket": y_websocket, "hocuspocus": hocuspocus },
        "storage": storage,
        "webhooks_failing": webhooks_failing,
        "errors": errors,
    })))
}

/// Bytes and files per workspace (the first path segment), largest first, with the quota.
async fn storage(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let files = state.tables.files.clone();
    let quota_bytes = state.files.quota().unwrap_or(0);
    let usage = blocking(
        move || {
            let mut n_files: BTreeMap<String, u64> = BTreeMap::new();
            for path in files.file_paths()? {
                *n_files
                    .entry(tandem_store::workspace_of(&path).to_owned())
                    .or_insert(0) += 1;
            }
            let mut usage = Vec::with_capacity(n_files.len());
            for (workspace, n) in n_files {
                let bytes = files.workspace_usage(&workspace)?;
                usage.push((workspace, bytes, n));
            }
            Ok(usage)
        },
        |error: tandem_store::FileError| ApiError::File(error.into()),
    )
    .await?;
    let mut usage = usage;
    usage.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(usage
        .into_iter()
        .map(|(workspace, bytes, n_files)| {
            json!({
                "workspace": workspace,
                "bytes": bytes,
                "files": n_files,
                "quota_bytes": quota_bytes,
            })
        })
        .collect())
}

/// `GET /api/admin/series`.
#[utoipa::path(
    get,
    path = "/api/admin/series",
    operation_id = "admin_series",
    tag = "server",
    summary = "The admin view's charts: the last hour, one point per interval",
    responses(
        (status = 200, description = "Oldest point first (http.md, Admin)", body = super::openapi::AdminSeries),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn series(_admin: Admin, State(state): State<AppState>) -> axum::Json<Value> {
    let points: Vec<Value> = state
        .telemetry
        .points()
        .into_iter()
        .map(|point| {
            json!({
                "at": point.at_ms,
                "updates_per_second": point.updates_per_second,
                "commit_latency_ms": point.commit_latency_ms,
                "connected_users": point.connected_users,
                "connections": point.connections,
            })
        })
        .collect();
    axum::Json(json!({
        "interval_seconds": state.telemetry.series_interval().as_secs(),
        "points": points,
    }))
}

/// Counts every HTTP request by method, route pattern and status, with its latency, and the
/// file bytes of uploads and downloads. The route is axum's matched pattern, never the path, so
/// the labels stay few (written `/api/files/*path`, see [`route_label`]); what matched no route
/// counts as `unmatched` (the web client's files among them).
pub(super) async fn record_http(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.telemetry.enabled() {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| route_label(path.as_str()));
    let request_bytes = content_length(request.headers());
    let response = next.run(request).await;
    let status = response.status();
    state
        .telemetry
        .http_request(method, &route, status.as_u16(), started.elapsed());
    if status.is_success() {
        match (method, route.as_str()) {
            ("PUT", "/api/files/*path") | ("PATCH", "/api/uploads/:id") => {
                state.telemetry.uploaded(request_bytes.unwrap_or(0));
            }
            ("GET", "/api/files/*path") if status != StatusCode::NO_CONTENT => {
                state
                    .telemetry
                    .downloaded(content_length(response.headers()).unwrap_or(0));
            }
            _ => {}
        }
    }
    response
}

/// A route pattern as a label value without braces, which some text-format parsers take for
/// the end of the label set: `{*path}` becomes `*path`, `{id}` becomes `:id`.
fn route_label(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(wildcard) if wildcard.starts_with('*') => wildcard.to_owned(),
                Some(param) => format!(":{param}"),
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The method as a bounded label: the standard ones, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
