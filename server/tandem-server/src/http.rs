//! HTTP: the router, the WebSocket upgrade, the REST API, and the web client's static files.
//!
//! Handlers return `Result<_, ApiError>`; `ApiError` becomes a status and a JSON body
//! `{"error": code, "message": text}` (see `protocol-spec/http.md`). It never carries internal
//! detail, and it is logged once, by the `log_api_errors` middleware inside the request span.
//! Document names are parsed into `DocId` here, at the edge, from the raw (still percent-encoded)
//! path, so that `%2F` can be told apart from `/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tandem_core::{DocId, DocIdError};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use crate::connection::{self, ConnectionConfig};
use crate::hub::{Hub, JoinError};

/// Read buffer of each WebSocket. tungstenite's default (128 KiB) is allocated and touched per
/// connection; larger frames still arrive (the buffer grows for them), idle peers stay cheap.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
/// Bytes tungstenite buffers before writing to the socket; the writer flushes after each batch.
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Longest time an ordinary HTTP request may take (WebSocket sessions are not requests).
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) hub: Hub,
    pub(crate) connection: ConnectionConfig,
}

/// Builds the router. `web_dir` is served at `/` when it holds an `index.html`.
pub(crate) fn router(state: AppState, web_dir: Option<PathBuf>) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/docs", get(list_docs))
        .route("/api/docs/{*name}", get(get_doc))
        .route("/ws/{*name}", get(upgrade))
        .route("/ws", get(missing_doc_name))
        .route("/ws/", get(missing_doc_name))
        .layer(middleware::from_fn(log_api_errors))
        .with_state(state);
    let app = match web_dir.filter(|dir| dir.join("index.html").is_file()) {
        Some(dir) => {
            let index = dir.join("index.html");
            api.fallback_service(ServeDir::new(dir).fallback(ServeFile::new(index)))
        }
        None => api.fallback(placeholder_page),
    };
    app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        HTTP_REQUEST_TIMEOUT,
    ))
    .layer(TraceLayer::new_for_http())
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// One row of `GET /api/docs`.
#[derive(Serialize)]
struct DocSummary {
    name: String,
    size_bytes: u64,
    peers: usize,
    updated_ms: Option<u64>,
    loaded: bool,
}

async fn list_docs(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.hub.store().clone();
    let stored = tokio::task::spawn_blocking(move || store.list_docs())
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)?;
    let mut live: std::collections::HashMap<String, usize> = state
        .hub
        .live_docs()
        .into_iter()
        .map(|(doc, n_peers)| (doc.to_string(), n_peers))
        .collect();
    let mut docs: Vec<DocSummary> = stored
        .into_iter()
        .map(|meta| {
            let peers = live.remove(&meta.name);
            DocSummary {
                name: meta.name,
                size_bytes: meta.size_bytes,
                peers: peers.unwrap_or(0),
                updated_ms: Some(meta.updated_ms),
                loaded: peers.is_some(),
            }
        })
        .collect();
    // Open docs nobody has written to yet.
    docs.extend(live.into_iter().map(|(name, peers)| DocSummary {
        name,
        size_bytes: 0,
        peers,
        updated_ms: None,
        loaded: true,
    }));
    docs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(serde_json::json!({ "docs": docs })).into_response())
}

async fn get_doc(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let doc = doc_id_from(&uri, "/api/docs/")?;
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

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // The name is checked before the upgrade headers, so a bad name is always a 400 JSON error.
    let doc = doc_id_from(&uri, "/ws/")?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    if state.hub.lifecycle().is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let max_frame =
        usize::try_from(state.hub.config().limits.max_frame_bytes).unwrap_or(usize::MAX);
    let lifecycle = state.hub.lifecycle().clone();
    Ok(ws
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            // axum spawns this future itself; tracking it lets shutdown wait for it.
            let connection = connection::run(socket, doc, state.hub, state.connection, remote);
            lifecycle.tracker.track_future(connection.in_current_span())
        }))
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

async fn placeholder_page() -> Html<&'static str> {
    Html(include_str!("placeholder.html"))
}

/// Every error an HTTP handler can return.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadDocName(DocIdError),
    #[error("no such document")]
    DocNotFound,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("document temporarily unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<JoinError> for ApiError {
    fn from(error: JoinError) -> Self {
        match error {
            JoinError::ShuttingDown => ApiError::ShuttingDown,
            JoinError::Retry | JoinError::Unavailable => ApiError::Unavailable,
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadDocName(_) => (StatusCode::BAD_REQUEST, "bad_doc_name"),
            ApiError::DocNotFound => (StatusCode::NOT_FOUND, "doc_not_found"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "doc_unavailable"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Carried in the response extensions so `log_api_errors` can log the error in the request span.
#[derive(Clone)]
struct LoggedApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let body = axum::Json(serde_json::json!({ "error": code, "message": message }));
        let mut response = (status, body).into_response();
        response.extensions_mut().insert(LoggedApiError {
            status,
            code,
            message,
        });
        response
    }
}

async fn log_api_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).in_current_span().await;
    if let Some(error) = response.extensions().get::<LoggedApiError>() {
        if error.status.is_server_error() {
            tracing::error!(status = error.status.as_u16(), code = error.code, message = %error.message, path, "request failed");
        } else {
            tracing::warn!(status = error.status.as_u16(), code = error.code, message = %error.message, path, "request refused");
        }
    }
    response
}
