//! The documents API: `GET /api/docs` (every stored or open doc, with its present users), and
//! `GET|POST /api/docs/{name}` with its suffixes: the content (`GET`), `.../covers` (read) and
//! `.../update` (write); the history suffixes go to `versions.rs`.
//!
//! Document names are parsed into `DocId` here, at the edge, from the raw (still
//! percent-encoded) path, so that `%2F` can be told apart from `/`. It reads and writes docs only
//! through the hub, which orders every change with the WebSocket peers' and stores it first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tandem_core::protocol::{decode_snapshot, decode_update};
use tandem_core::{DocId, PresentUser, ProtocolError};

use super::error::{ApiError, body_within_limit};
use super::extract::{MaybeClaims, doc_id_from, request_grant};
use super::versions::{self, VersionPath};
use super::{AppState, max_body_bytes};
use crate::auth::AuthError;
use crate::files::FileError;

/// How long `GET /api/docs` waits for one open doc to list its present users. A doc busy with a
/// burst of updates answers late and is listed with no users rather than delaying the listing.
const PRESENCE_TIMEOUT: Duration = Duration::from_millis(250);

/// The path suffix of `POST /api/docs/{name}/covers`.
const COVERS_SUFFIX: &str = "/covers";
/// The path suffix of `POST /api/docs/{name}/update`.
const UPDATE_SUFFIX: &str = "/update";

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

/// `GET /api/docs`.
pub(super) async fn list_docs(
    State(state): State<AppState>,
    // With authentication on, only the docs the token grants a role on are listed.
    MaybeClaims(claims): MaybeClaims,
) -> Result<Response, ApiError> {
    let visible = |name: &str| {
        claims
            .as_ref()
            .is_none_or(|claims| claims.role_for(name).is_some())
    };
    let store = state.store.clone();
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

/// `GET /api/docs/{name}` and the history reads under it.
pub(super) async fn get_doc(
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
        request_grant(&state, &headers, &uri, &doc)?;
        return match version_path {
            VersionPath::List(_) => versions::list(&state, doc).await,
            VersionPath::One(_, id) => versions::get(&state, &headers, doc, id).await,
            _ => versions::history(&state, uri.query(), doc).await,
        };
    }
    let doc = doc_id_from(&uri, "/api/docs/")?;
    request_grant(&state, &headers, &uri, &doc)?;
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
pub(super) async fn post_doc(
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
            let grant = request_grant(&state, &headers, &uri, &doc)?;
            let body = body_within_limit(body, max_body_bytes(&state))?;
            return versions::create(&state, &grant, &headers, doc, &body).await;
        }
        Some(VersionPath::Restore(raw_name, id)) => {
            let doc = DocId::from_url_path(raw_name).map_err(ApiError::BadDocName)?;
            let grant = request_grant(&state, &headers, &uri, &doc)?;
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
    let grant = request_grant(&state, &headers, &uri, &doc)?;
    if is_update && !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    if is_update && state.files.is_file(doc.as_str()) {
        return Err(FileError::PathTaken {
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
