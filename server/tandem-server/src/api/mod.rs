//! The HTTP layer: [`AppState`], the router, the error mapping (`error.rs`), the shared
//! extractors (`extract.rs`) and one file per resource. The web client's files are the router's
//! fallback (`web_client.rs`), so `/healthz`, `/api/...` and `/ws/...` always win.
//!
//! Handlers return `Result<_, ApiError>`; `ApiError` becomes a status and a JSON body
//! `{"error": code, "message": text}` (see `protocol-spec/http.md`), logged once by the
//! `log_api_errors` middleware inside the request span.
//! A body over its route's limit is always a 413 `body_too_large`.
//!
//! Boundary: this layer sits above the services (`accounts`, `files`, `activity`, `webhook`)
//! and the hub. It may call them; they never name it, nor HTTP (the tidy test checks that).

pub(crate) mod accounts;
pub(crate) mod activity;
pub(crate) mod admin;
pub(crate) mod backup;
pub(crate) mod dav;
pub(crate) mod docs;
pub(crate) mod download;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod files;
pub(crate) mod locks;
pub(crate) mod openapi;
pub(crate) mod tus;
pub(crate) mod versions;
pub(crate) mod web_client;
pub(crate) mod webhooks;
pub(crate) mod ws;
pub(crate) mod ws_upgrade;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub(crate) use admin::metrics_router;
pub(crate) use error::ApiError;

use tandem_core::Limits;
use tandem_hub::{ConnectionConfig, Hub, Lifecycle};
use tandem_store::Store;

use crate::tables::Tables;

use crate::accounts::Accounts;
use crate::auth::Auth;
use crate::bus::Events;
use crate::doc_text::DocText;
use crate::files::Files;
use crate::locks::Locks;
use crate::metrics::Telemetry;
use crate::proxy::ClientAddr;
use crate::webhook::Webhooks;
use error::log_api_errors;

/// Longest time an ordinary HTTP request may take (WebSocket sessions are not requests).
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The workspace event bus (`bus.rs`): producers publish, `/api/events` streams.
    pub(crate) events: Events,
    /// Verifies tokens; every handler that touches a doc asks it for a grant first.
    pub(crate) auth: Auth,
    /// The real-time engine: joins, snapshots, applies and versions go through its doc actors.
    pub(crate) hub: Hub,
    /// The local store, for its health (a full disk).
    pub(crate) store: Arc<Store>,
    /// Cluster mode's engines, for their health; `None` on one node.
    pub(crate) cluster: Option<Arc<tandem_cluster::ClusterLog>>,
    /// What handlers read directly (lists, versions, activity), never for writes to a doc, which
    /// go through its actor: local on one node, shared in cluster mode.
    pub(crate) tables: Tables,
    /// The token and tracker that upgraded connections and long streams run under.
    pub(crate) lifecycle: Lifecycle,
    /// The bounds on frames, bodies and docs (the hub's).
    pub(crate) limits: Limits,
    pub(crate) connection: ConnectionConfig,
    /// Sign-in, refresh and the account API (`accounts/`).
    pub(crate) accounts: Accounts,
    /// Uploaded files (`files/`).
    pub(crate) files: Files,
    /// WebDAV locks, checked by every write (`locks/`).
    pub(crate) locks: Locks,
    /// Webhook registrations and the delivery worker's wake-up (`webhook/`).
    pub(crate) webhooks: Webhooks,
    /// Metrics and the admin view's data (`metrics/`).
    pub(crate) telemetry: Telemetry,
    /// Documents read and saved as plain text (`doc_text/`).
    pub(crate) doc_text: DocText,
}

/// Builds the router: the API first, then the web client from `web` for every other path.
pub(crate) fn router(state: AppState, web: web_client::Source) -> Router {
    // Request bodies (snapshots) are bounded like WebSocket frames.
    // The request metrics wrap every route (`Router::layer` runs after routing, so they read the
    // matched route pattern); they need the state, which `app` does not take.
    let record_http = middleware::from_fn_with_state(state.clone(), admin::record_http);
    app(max_body_bytes(&state), web)
        // WebDAV is a protocol of its own (`protocol-spec/webdav.md`), not REST endpoints: its
        // routes take every method and stay out of `app` and the OpenAPI document. Like
        // uploads, they are outside the API's body limit and request timeout.
        .merge(dav::routes(&state))
        .layer(record_http)
        .with_state(state)
}

/// Every route, its layers and the web client's fallback, before the state is given: the one
/// place routes are registered, so the OpenAPI test (`openapi.rs`) sees exactly what is served.
/// A route added here needs its `#[utoipa::path]` on the handler and a line in
/// `openapi::ApiDoc`'s `paths(...)`, or that test fails.
fn app(max_body_bytes: usize, web: web_client::Source) -> Router<AppState> {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/docs", get(docs::list_docs))
        .route("/api/events", get(events::stream))
        .route(
            "/api/docs/{*name}",
            get(docs::get_doc).post(docs::post_doc).put(docs::put_doc),
        )
        .route("/ws/{*name}", get(ws::upgrade))
        .route("/ws", get(ws::upgrade_hocuspocus))
        .route("/ws/", get(ws::upgrade_hocuspocus))
        .route("/api/auth", get(accounts::auth_info))
        .route(
            "/api/login",
            post(accounts::login).layer(account_body_limit()),
        )
        .route(
            "/api/token/refresh",
            post(accounts::refresh).layer(account_body_limit()),
        )
        .route("/api/users", get(accounts::list_users))
        .route(
            "/api/users/{sub}",
            put(accounts::put_user)
                .delete(accounts::delete_user)
                .layer(account_body_limit()),
        )
        .route(
            "/api/users/{sub}/app-passwords",
            get(accounts::list_app_passwords)
                .post(accounts::add_app_password)
                .layer(account_body_limit()),
        )
        .route(
            "/api/users/{sub}/app-passwords/{id}",
            delete(accounts::delete_app_password).layer(account_body_limit()),
        )
        .merge(files::routes())
        .route("/api/locks", get(locks::list))
        .route("/api/locks/{token}", delete(locks::break_lock))
        .route("/api/activity", get(activity::feed))
        .route(
            "/api/webhooks",
            get(webhooks::list)
                .post(webhooks::add)
                .layer(DefaultBodyLimit::max(webhooks::MAX_WEBHOOK_BODY_BYTES)),
        )
        .route("/api/webhooks/{id}", delete(webhooks::remove))
        .route("/api/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/metrics", get(admin::metrics))
        .route("/api/admin/overview", get(admin::overview))
        .route("/api/admin/series", get(admin::series))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(log_api_errors));
    // Uploads and downloads stream for as long as they take: outside the request timeout and
    // the body limit (they enforce their own size limits and a per-chunk idle timeout).
    let streaming = files::streaming_routes()
        .merge(backup::routes())
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(log_api_errors));
    let timed =
        api.fallback_service(web_client::router(web))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                HTTP_REQUEST_TIMEOUT,
            ));
    streaming
        .merge(timed)
        .layer(middleware::map_response(json_for_bare_errors))
        // The span names the path only: a query may carry a token (`?token=`), which is never
        // logged. `remote` is the client, through trusted proxies (`proxy.rs`).
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let remote = request
                    .extensions()
                    .get::<ClientAddr>()
                    .map(|client| client.ip);
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    remote = remote.map(tracing::field::display),
                )
            }),
        )
}

/// axum's own answers that have no body, a `405` for a method the route does not take (with its
/// `Allow` header) and the request timeout's `408`, given the JSON error body every other error
/// has; status and headers stay as they are.
async fn json_for_bare_errors(response: Response) -> Response {
    use hyper::body::Body as _;
    let (code, message) = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this method is not allowed here; the Allow header lists those that are",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        _ => return response,
    };
    if response.body().size_hint().exact() != Some(0) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The account endpoints take small JSON bodies; the route's limit overrides the router's.
fn account_body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(accounts::MAX_ACCOUNT_BODY_BYTES)
}

/// Liveness and the store's state. 200 while the process serves: a read-only store (a full
/// disk) still serves reads, so it is reported, not failed (`protocol-spec/http.md`). In
/// cluster mode the engines are reported too, and a node that cannot reach Redis answers 503,
/// so a balancer's health check sends people to a node that can take their edits.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "server",
    summary = "Liveness and the state of the store (and of the cluster's engines)",
    security(()),
    responses(
        (status = 200, description = "The server serves; `store.writable` says whether it takes writes", body = openapi::Health),
        (status = 503, description = "Cluster mode: this node cannot reach Redis (`status: degraded`)", body = openapi::Health),
    ),
)]
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.clone();
    // A check of the free space at most every `PROBE_INTERVAL`: polling `/healthz` is enough
    // to bring a read-only store back once space returns.
    let health = tokio::task::spawn_blocking(move || {
        store.try_resume();
        store.health()
    })
    .await
    .ok();
    let store = match health {
        Some(health) => serde_json::json!({
            "writable": health.writable,
            "reason": health.reason.map(|reason| reason.as_str()),
        }),
        None => serde_json::json!({ "writable": false, "reason": "unknown" }),
    };
    let Some(cluster) = &state.cluster else {
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ok", "store": store })),
        );
    };
    let engines = cluster.health().await;
    let (status, word) = if engines.redis {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": word,
            "store": store,
            "cluster": { "node": cluster.node(), "redis": engines.redis, "postgres": engines.postgres },
        })),
    )
}

/// Runs `work` on the blocking pool (store reads, hashing: nothing blocking runs on the
/// runtime's threads). A task that panicked is a 500 `internal`; `on_error` maps the work's own
/// error, and logs it if it should be.
pub(crate) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    on_error: impl FnOnce(E) -> ApiError,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(on_error)
}

/// The limit of request bodies on the API routes without one of their own: that of WebSocket
/// frames, since the largest such body is a snapshot or an update.
pub(crate) fn max_body_bytes(state: &AppState) -> usize {
    usize::try_from(state.limits.max_frame_bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Bug: the request timeout answered `408` with an empty body, unlike every other error.
    /// Fix: `json_for_bare_errors` gives it the JSON shape. Driven through the real
    /// `TimeoutLayer`, with a timeout short enough for a test (the server's is 30 s).
    #[tokio::test]
    async fn the_request_timeout_answers_408_with_a_json_body() {
        let app: Router = Router::new()
            .route("/slow", get(std::future::pending::<()>))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(10),
            ))
            .layer(middleware::map_response(json_for_bare_errors));
        let request = Request::builder()
            .uri("/slow")
            .body(axum::body::Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"], "request_timeout", "{json}");
        assert!(json["message"].is_string());
    }
}
