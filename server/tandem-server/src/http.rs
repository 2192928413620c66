//! HTTP: the router, the WebSocket upgrade and the REST API. The web client's files are the
//! router's fallback (`web_client.rs`), so `/healthz`, `/api/...` and `/ws/...` always win.
//!
//! Handlers return `Result<_, ApiError>`; `ApiError` becomes a status and a JSON body
//! `{"error": code, "message": text}` (see `protocol-spec/http.md`). It never carries internal
//! detail, and it is logged once, by the `log_api_errors` middleware inside the request span.
//! A 5xx body also carries an `error_id`, a random tag logged with it, so the log line of a
//! failure a user reports can be found.
//! A body over its route's limit is always a 413 `body_too_large` ([`body_within_limit`]).
//! Document names are parsed into `DocId` here, at the edge, from the raw (still percent-encoded)
//! path, so that `%2F` can be told apart from `/`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Serialize;
use tandem_core::protocol::{SnapshotError, decode_snapshot, decode_update};
use tandem_core::{DocId, DocIdError, PresentUser, ProtocolError};
use tandem_hub::connection::{self, ConnectionConfig};
use tandem_hub::{Hub, JoinError, PeerAddr};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use crate::account::{self, AccountError, Accounts};
use crate::activity;
use crate::auth::{Auth, AuthError, Claims, Grant, WS_PROTOCOL, token_from};
use crate::error_id;
use crate::events::{self, Events};
use crate::files::{self, FileApiError, Files};
use crate::listener::RequestPermit;
use crate::proxy::ClientAddr;
use crate::versions::{self, VersionPath};
use crate::web_client;
use crate::webhook::{self, Webhooks};
use crate::ws_upgrade::Upgrade;

/// Read buffer of each WebSocket. tungstenite's default (128 KiB) is allocated and touched per
/// connection; larger frames still arrive (the buffer grows for them), idle peers stay cheap.
const WS_READ_BUFFER_BYTES: usize = 2 * 1024;
/// Bytes tungstenite buffers before writing to the socket; the writer flushes after each batch.
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Longest time an ordinary HTTP request may take (WebSocket sessions are not requests).
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `GET /api/docs` waits for one open doc to list its present users. A doc busy with a
/// burst of updates answers late and is listed with no users rather than delaying the listing.
const PRESENCE_TIMEOUT: Duration = Duration::from_millis(250);

/// The path suffix of `POST /api/docs/{name}/covers`.
const COVERS_SUFFIX: &str = "/covers";
/// The path suffix of `POST /api/docs/{name}/update`.
const UPDATE_SUFFIX: &str = "/update";

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The workspace event bus (`events.rs`): producers publish, `/api/events` streams.
    pub(crate) events: Events,
    /// Verifies tokens; every handler that touches a doc asks it for a grant first.
    pub(crate) auth: Auth,
    pub(crate) hub: Hub,
    pub(crate) connection: ConnectionConfig,
    /// Sign-in, refresh and the account API (`account.rs`).
    pub(crate) accounts: Accounts,
    /// Uploaded files (`files.rs`).
    pub(crate) files: Files,
    /// Webhook registrations and the delivery worker's wake-up (`webhook.rs`).
    pub(crate) webhooks: Webhooks,
}

/// Builds the router: the API first, then the web client from `web` for every other path.
pub(crate) fn router(state: AppState, web: web_client::Source) -> Router {
    // Request bodies (snapshots) are bounded like WebSocket frames.
    let max_body_bytes = max_body_bytes(&state);
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/docs", get(list_docs))
        .route("/api/events", get(events::stream))
        .route("/api/docs/{*name}", get(get_doc).post(post_doc))
        .route("/ws/{*name}", get(upgrade))
        .route("/ws", get(missing_doc_name))
        .route("/ws/", get(missing_doc_name))
        .route("/api/auth", get(account::auth_info))
        .route(
            "/api/login",
            post(account::login).layer(account_body_limit()),
        )
        .route(
            "/api/token/refresh",
            post(account::refresh).layer(account_body_limit()),
        )
        .route("/api/users", get(account::list_users))
        .route(
            "/api/users/{sub}",
            put(account::put_user)
                .delete(account::delete_user)
                .layer(account_body_limit()),
        )
        .merge(files::routes())
        .route("/api/activity", get(activity::feed))
        .route(
            "/api/webhooks",
            get(webhook::list)
                .post(webhook::add)
                .layer(DefaultBodyLimit::max(webhook::MAX_WEBHOOK_BODY_BYTES)),
        )
        .route("/api/webhooks/{id}", delete(webhook::remove))
        .route("/api/webhooks/{id}/deliveries", get(webhook::deliveries))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(log_api_errors))
        .with_state(state.clone());
    // Uploads and downloads stream for as long as they take: outside the request timeout and
    // the body limit (they enforce their own size limits and a per-chunk idle timeout).
    let streaming = files::streaming_routes()
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(log_api_errors))
        .with_state(state);
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
    DefaultBodyLimit::max(account::MAX_ACCOUNT_BODY_BYTES)
}

/// Liveness and the store's state. Always 200 while the process serves: a read-only store
/// (a full disk) still serves reads, so it is reported, not failed (`protocol-spec/http.md`).
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.hub.store().clone();
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
    axum::Json(serde_json::json!({ "status": "ok", "store": store }))
}

/// One row of `GET /api/docs`.
#[derive(Serialize)]
struct DocSummary {
    name: String,
    size_bytes: u64,
    peers: usize,
    updated_ms: Option<u64>,
    loaded: bool,
    users: Vec<UserSummary>,
}

/// One present user in a row of `GET /api/docs`.
#[derive(Serialize)]
struct UserSummary {
    name: String,
    color: Option<String>,
}

impl From<PresentUser> for UserSummary {
    fn from(user: PresentUser) -> Self {
        UserSummary {
            name: user.name.to_string(),
            color: user.color.map(|color| color.to_string()),
        }
    }
}

/// What an open doc contributes to its row.
struct LiveDoc {
    n_peers: usize,
    users: Vec<UserSummary>,
}

async fn list_docs(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // With authentication on, only the docs the token grants a role on are listed.
    let claims = request_claims(&state, &headers, &uri)?;
    let visible = |name: &str| {
        claims
            .as_ref()
            .is_none_or(|claims| claims.role_for(name).is_some())
    };
    let store = state.hub.store().clone();
    let stored = async {
        tokio::task::spawn_blocking(move || store.list_docs())
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|_| ApiError::Internal)
    };
    // Every open doc is asked at once; each answer is bounded by PRESENCE_TIMEOUT.
    let live =
        futures_util::future::join_all(state.hub.open_docs().into_iter().map(|(doc, handle)| {
            let hub = state.hub.clone();
            async move {
                let users = hub.present_users(&handle, PRESENCE_TIMEOUT).await;
                let live = LiveDoc {
                    n_peers: handle.n_peers.load(Ordering::Relaxed),
                    users: users.into_iter().map(UserSummary::from).collect(),
                };
                (doc.to_string(), live)
            }
        }));
    let (stored, live) = tokio::join!(stored, live);
    let stored = stored?;
    let mut live: HashMap<String, LiveDoc> = live.into_iter().collect();
    let mut docs: Vec<DocSummary> = stored
        .into_iter()
        .map(|meta| {
            let live = live.remove(&meta.name);
            let loaded = live.is_some();
            let (peers, users) = live.map_or((0, Vec::new()), |live| (live.n_peers, live.users));
            DocSummary {
                name: meta.name,
                size_bytes: meta.size_bytes,
                peers,
                updated_ms: Some(meta.updated_ms),
                loaded,
                users,
            }
        })
        .collect();
    // Open docs nobody has written to yet.
    docs.extend(live.into_iter().map(|(name, live)| DocSummary {
        name,
        size_bytes: 0,
        peers: live.n_peers,
        updated_ms: None,
        loaded: true,
        users: live.users,
    }));
    docs.retain(|doc| visible(&doc.name));
    docs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(serde_json::json!({ "docs": docs })).into_response())
}

async fn get_doc(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = uri
        .path()
        .strip_prefix("/api/docs/")
        .ok_or(ApiError::NotFound)?;
    // The history API (`versions.rs`): its path suffixes win over doc names.
    if let Some(version_path) = VersionPath::parse(path) {
        let raw_name = match version_path {
            VersionPath::List(name) | VersionPath::One(name, _) | VersionPath::History(name) => {
                name
            }
            VersionPath::Restore(..) => return Err(ApiError::NotFound),
        };
        let doc = DocId::from_url_path(raw_name).map_err(ApiError::BadDocName)?;
        grant(&state, &headers, &uri, &doc)?;
        return match version_path {
            VersionPath::List(_) => versions::list(&state, doc).await,
            VersionPath::One(_, id) => versions::get(&state, &headers, doc, id).await,
            _ => versions::history(&state, uri.query(), doc).await,
        };
    }
    let doc = doc_id_from(&uri, "/api/docs/")?;
    grant(&state, &headers, &uri, &doc)?;
    let snapshot = state.hub.snapshot(&doc).await.map_err(ApiError::from)?;
    let Some(snapshot) = snapshot else {
        return Err(ApiError::DocNotFound);
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        Ok(axum::Json(snapshot.json).into_response())
    } else {
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            snapshot.update,
        )
            .into_response())
    }
}

/// `POST /api/docs/{name}/covers` (read) and `POST /api/docs/{name}/update` (write). Any other
/// POST path under `/api/docs/` is a 404.
async fn post_doc(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let path = uri
        .path()
        .strip_prefix("/api/docs/")
        .ok_or(ApiError::NotFound)?;
    // The history API (`versions.rs`): its path suffixes win over doc names.
    match VersionPath::parse(path) {
        Some(VersionPath::List(raw_name)) => {
            let doc = DocId::from_url_path(raw_name).map_err(ApiError::BadDocName)?;
            let grant = grant(&state, &headers, &uri, &doc)?;
            let body = body_within_limit(body, max_body_bytes(&state))?;
            return versions::create(&state, &grant, &headers, doc, &body).await;
        }
        Some(VersionPath::Restore(raw_name, id)) => {
            let doc = DocId::from_url_path(raw_name).map_err(ApiError::BadDocName)?;
            let grant = grant(&state, &headers, &uri, &doc)?;
            // A restore takes no body; one over the limit is still refused, never ignored.
            body_within_limit(body, max_body_bytes(&state))?;
            return versions::restore(&state, &grant, &headers, doc, id).await;
        }
        Some(VersionPath::One(..) | VersionPath::History(_)) => return Err(ApiError::NotFound),
        None => {}
    }
    let (raw_name, is_update) = if let Some(name) = path.strip_suffix(COVERS_SUFFIX) {
        (name, false)
    } else if let Some(name) = path.strip_suffix(UPDATE_SUFFIX) {
        (name, true)
    } else {
        return Err(ApiError::NotFound);
    };
    let doc = DocId::from_url_path(raw_name).map_err(ApiError::BadDocName)?;
    let grant = grant(&state, &headers, &uri, &doc)?;
    if is_update && !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    if is_update && state.files.is_file(doc.as_str()) {
        return Err(FileApiError::PathTaken {
            path: doc.to_string(),
        }
        .into());
    }
    let body = body_within_limit(body, max_body_bytes(&state))?;
    if is_update {
        // The body is one Yjs v1 update, decoded and checked as a WebSocket one would be.
        decode_update(body.clone()).map_err(ApiError::BadUpdate)?;
        let applied = state
            .hub
            .apply_update(&doc, body, versions::http_actor(&grant, &headers))
            .await?
            .map_err(|error| match error {
                // Refused before it was applied: nothing changed, nothing was stored.
                ProtocolError::DocTooLarge { max, .. } => ApiError::DocTooLarge { max },
                other => ApiError::BadUpdate(other),
            })?;
        return Ok(axum::Json(serde_json::json!({ "applied": applied })).into_response());
    }
    // Linear in the body, which is bounded by the frame limit.
    let snapshot = decode_snapshot(&body).map_err(ApiError::BadSnapshot)?;
    let covers = state.hub.covers(&doc, snapshot).await?;
    Ok(axum::Json(serde_json::json!({ "covers": covers })).into_response())
}

/// The claims of the request's token (`None` with authentication off), or the refusal.
pub(crate) fn request_claims(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<Claims>, ApiError> {
    state
        .auth
        .claims(token_from(headers, uri).as_deref())
        .map_err(ApiError::Auth)
}

/// What the request's token may do on `doc` (at least read), or the refusal.
fn grant(state: &AppState, headers: &HeaderMap, uri: &Uri, doc: &DocId) -> Result<Grant, ApiError> {
    state
        .auth
        .grant(token_from(headers, uri).as_deref(), doc)
        .map_err(ApiError::Auth)
}

async fn upgrade(
    State(state): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    mut request: Request,
) -> Result<Response, ApiError> {
    // The name and the token are checked before the upgrade headers, so a bad name is always a
    // 400 and a missing or bad token a 401/403, with a JSON body, before any upgrade.
    let uri = request.uri().clone();
    let doc = doc_id_from(&uri, "/ws/")?;
    let grant = grant(&state, request.headers(), &uri, &doc)?;
    // A file's path cannot also be a doc (the workspace tree would be ambiguous).
    if state.files.is_file(doc.as_str()) {
        return Err(FileApiError::PathTaken {
            path: doc.to_string(),
        }
        .into());
    }
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    // A browser that sent its token as a subprotocol must get one of its offers back.
    let upgrade =
        match Upgrade::from_request(request.method(), request.headers(), on_upgrade, WS_PROTOCOL) {
            Ok(upgrade) => upgrade,
            Err(refusal) => return Ok(refusal.into_response()),
        };
    if state.hub.lifecycle().is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let max_frame =
        usize::try_from(state.hub.config().limits.max_frame_bytes).unwrap_or(usize::MAX);
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    // A client forwarded by a trusted proxy holds its per-address slot for the WebSocket's life.
    let permit = request.extensions_mut().remove::<RequestPermit>();
    let (response, socket) = upgrade.accept(config);
    let lifecycle = state.hub.lifecycle().clone();
    // Tracked, so shutdown waits for the connection to close. No span here: the connection
    // makes its own root span, so the request's does not live as long as the connection.
    lifecycle.spawn(tracing::Span::none(), async move {
        match socket.await {
            Ok(socket) => {
                let remote = PeerAddr {
                    ip: client.ip,
                    proxy: client.proxy(),
                };
                connection::run(
                    socket,
                    doc,
                    grant.peer_grant(),
                    state.hub,
                    state.connection,
                    remote,
                    permit,
                )
                .await;
            }
            Err(error) => tracing::debug!(%error, remote = %client.ip, "websocket upgrade failed"),
        }
    });
    Ok(response)
}

async fn missing_doc_name() -> ApiError {
    ApiError::BadDocName(DocIdError::Empty)
}

fn doc_id_from(uri: &Uri, prefix: &str) -> Result<DocId, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or(ApiError::BadDocName(DocIdError::Empty))?;
    DocId::from_url_path(raw).map_err(ApiError::BadDocName)
}

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
    #[error("{0}")]
    File(FileApiError),
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
}

impl ApiError {
    /// A failed store operation: 507 if the store is read-only (a full disk), 500 otherwise.
    /// Logs the error (once, here) unless it is the routine refusal of a read-only store.
    pub(crate) fn from_store(error: &tandem_store::StoreError, what: &'static str) -> ApiError {
        if error.read_only_reason().is_some() {
            tracing::debug!(%error, what, "refused: the store is read-only");
            ApiError::InsufficientStorage
        } else {
            tracing::error!(%error, what, "store operation failed");
            ApiError::Internal
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
            ApiError::Account(error) => error.status_and_code(),
            ApiError::File(error) => error.status_and_code(),
            ApiError::VersionNotFound => (StatusCode::NOT_FOUND, "version_not_found"),
            ApiError::BadVersionName { .. } => (StatusCode::BAD_REQUEST, "bad_version_name"),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::BadWebhook(_) => (StatusCode::BAD_REQUEST, "bad_webhook"),
            ApiError::WebhookNotFound => (StatusCode::NOT_FOUND, "webhook_not_found"),
            ApiError::StorageFault => (StatusCode::INTERNAL_SERVER_ERROR, "storage_fault"),
            ApiError::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
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

/// The limit of request bodies on the API routes without one of their own: that of WebSocket
/// frames, since the largest such body is a snapshot or an update.
fn max_body_bytes(state: &AppState) -> usize {
    usize::try_from(state.hub.config().limits.max_frame_bytes).unwrap_or(usize::MAX)
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
            ApiError::Account(error) => error.retry_after_secs(),
            _ => None,
        };
        let is_token_error = matches!(self, ApiError::Auth(_));
        let error_id = status.is_server_error().then(error_id::new);
        let mut json = serde_json::json!({ "error": code, "message": message });
        if let Some(error_id) = &error_id {
            json["error_id"] = serde_json::Value::from(error_id.as_str());
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

async fn log_api_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).in_current_span().await;
    if let Some(error) = response.extensions().get::<LoggedApiError>() {
        if error.status == StatusCode::INSUFFICIENT_STORAGE {
            // A full disk is logged once, when the store turns read-only; each refusal is routine.
            let error_id = error.error_id.as_deref().unwrap_or_default();
            tracing::debug!(status = error.status.as_u16(), code = error.code, message = %error.message, error_id, path, "request refused");
        } else if error.status.is_server_error() {
            let error_id = error.error_id.as_deref().unwrap_or_default();
            tracing::error!(status = error.status.as_u16(), code = error.code, message = %error.message, error_id, path, "request failed");
        } else {
            tracing::warn!(status = error.status.as_u16(), code = error.code, message = %error.message, path, "request refused");
        }
    }
    response
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
