//! The documents API: `GET /api/docs` (every stored or open doc, with its present users), and
//! `GET|POST /api/docs/{name}` with its suffixes: the content (`GET`), `.../covers` (read) and
//! `.../update` (write); the history suffixes go to `versions.rs`. `DocRoute::parse` is the one
//! place that tells these routes apart.
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
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tandem_core::protocol::{decode_snapshot, decode_update};
use tandem_core::{DocId, PresentUser, ProtocolError};

use super::error::{ApiError, body_within_limit};
use super::extract::{MaybeClaims, request_grant};
use super::versions;
use super::{AppState, blocking, max_body_bytes, openapi};
use crate::auth::{AuthError, Grant};
use crate::files::FileError;

/// How long `GET /api/docs` waits for one open doc to list its present users. A doc busy with a
/// burst of updates answers late and is listed with no users rather than delaying the listing.
const PRESENCE_TIMEOUT: Duration = Duration::from_millis(250);

/// What a request under `/api/docs/` asks for: the doc's raw (still percent-encoded) name and
/// which of its endpoints.
#[derive(Debug, PartialEq, Eq)]
enum DocRoute<'a> {
    /// `GET .../{name}`: the content.
    Content(&'a str),
    /// `POST .../{name}/covers` (read).
    Covers(&'a str),
    /// `POST .../{name}/update` (write).
    Update(&'a str),
    /// `GET .../{name}/versions` (list) and `POST` (name a version).
    Versions(&'a str),
    /// `GET .../{name}/versions/{id}`.
    Version(&'a str, u64),
    /// `POST .../{name}/versions/{id}/restore`.
    Restore(&'a str, u64),
    /// `GET .../{name}/history`.
    History(&'a str),
}

impl<'a> DocRoute<'a> {
    /// Matches the raw path after `/api/docs/` of a `POST` or a read (`GET`, `HEAD`); `None` is
    /// a 404, answered before the name is looked at.
    ///
    /// The history suffixes (`versions.rs`) win over doc names, so a `GET` cannot read the
    /// content of a doc whose own name ends like one (`%2F` is refused in names, so there is no
    /// escape); its versions stay reachable (`.../x/versions/versions`). A `POST` to a doc
    /// itself, or to a read-only history path, is a 404.
    fn parse(method: &Method, path: &'a str) -> Option<DocRoute<'a>> {
        let is_post = *method == Method::POST;
        let history = if let Some(name) = path.strip_suffix("/versions") {
            Some(DocRoute::Versions(name))
        } else if let Some(name) = path.strip_suffix("/history") {
            Some(DocRoute::History(name))
        } else if let Some(rest) = path.strip_suffix("/restore") {
            split_version_id(rest).map(|(name, id)| DocRoute::Restore(name, id))
        } else {
            split_version_id(path).map(|(name, id)| DocRoute::Version(name, id))
        };
        match (history, is_post) {
            (Some(DocRoute::Restore(..)), false)
            | (Some(DocRoute::Version(..) | DocRoute::History(_)), true) => None,
            (Some(route), _) => Some(route),
            (None, false) => Some(DocRoute::Content(path)),
            (None, true) => {
                if let Some(name) = path.strip_suffix("/covers") {
                    Some(DocRoute::Covers(name))
                } else {
                    path.strip_suffix("/update").map(DocRoute::Update)
                }
            }
        }
    }

    /// The raw name of the doc the route is on.
    fn raw_name(&self) -> &'a str {
        match *self {
            DocRoute::Content(name)
            | DocRoute::Covers(name)
            | DocRoute::Update(name)
            | DocRoute::Versions(name)
            | DocRoute::Version(name, _)
            | DocRoute::Restore(name, _)
            | DocRoute::History(name) => name,
        }
    }
}

/// `<name>/versions/<id>` into the name and the id (digits only).
fn split_version_id(path: &str) -> Option<(&str, u64)> {
    let (head, id) = path.rsplit_once('/')?;
    let name = head.strip_suffix("/versions")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, id.parse().ok()?))
}

/// One row of `GET /api/docs`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct DocSummary {
    name: String,
    /// Bytes stored for the document (snapshot plus log).
    size_bytes: u64,
    /// Live WebSocket connections to it right now.
    peers: usize,
    /// The last committed change, ms since the Unix epoch; `null` if never written.
    updated_ms: Option<u64>,
    /// Whether the document is in memory.
    loaded: bool,
    /// Who is present, from the awareness states (`[]` when not loaded).
    users: Vec<UserSummary>,
    /// The WebDAV lock covering the document, if any (`webdav.md`, "Locks"); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    lock: Option<crate::bus::LockJson>,
}

/// One present user in a row of `GET /api/docs`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct UserSummary {
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
#[utoipa::path(
    get,
    path = "/api/docs",
    operation_id = "list_docs",
    tag = "docs",
    summary = "Every stored document, plus open ones not yet written, sorted by name",
    description = "With authentication on, only the documents the token has a role on.",
    responses(
        (status = 200, description = "The documents the token may read", body = openapi::DocList),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
    ),
)]
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
    let store = state.tables.history.clone();
    let stored = blocking(move || store.list_docs(), |_| ApiError::Internal);
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
                lock: None,
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
        lock: None,
    }));
    docs.retain(|doc| visible(&doc.name));
    let locks = state.locks.view().await?;
    let now = tandem_hub::clock::now_ms();
    for doc in &mut docs {
        doc.lock = locks.shown(&doc.name, now).map(crate::bus::LockJson::of);
    }
    docs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(serde_json::json!({ "docs": docs })).into_response())
}

/// `GET /api/docs/{name}` and the history reads under it.
pub(super) async fn get_doc(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (route, doc) = doc_route(&method, &uri)?;
    request_grant(&state, &headers, &uri, &doc)?;
    match route {
        DocRoute::Content(_) => content(&state, &headers, &doc).await,
        DocRoute::Versions(_) => versions::list(&state, doc).await,
        DocRoute::Version(_, id) => versions::get(&state, &headers, doc, id).await,
        DocRoute::History(_) => versions::history(&state, uri.query(), doc).await,
        // `DocRoute::parse` gives these to `POST` only.
        DocRoute::Covers(_) | DocRoute::Update(_) | DocRoute::Restore(..) => {
            Err(ApiError::NotFound)
        }
    }
}

/// `POST /api/docs/{name}/covers` (read), `.../update` (write), and the history writes:
/// `.../versions` (name a version) and `.../versions/{id}/restore`. Any other POST path under
/// `/api/docs/` is a 404.
pub(super) async fn post_doc(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (route, doc) = doc_route(&method, &uri)?;
    let grant = request_grant(&state, &headers, &uri, &doc)?;
    // A WebDAV lock on the doc refuses the HTTP writes to its content (`webdav.md`, "Locks");
    // a read-only token is refused by the handler first, with 403.
    if matches!(route, DocRoute::Update(_) | DocRoute::Restore(..)) && grant.can_write() {
        super::locks::check_write(&state, &headers, &grant, doc.as_str(), false).await?;
    }
    match route {
        DocRoute::Versions(_) => {
            let body = body_within_limit(body, max_body_bytes(&state))?;
            versions::create(&state, &grant, &headers, doc, &body).await
        }
        DocRoute::Restore(_, id) => {
            // A restore takes no body; one over the limit is still refused, never ignored.
            body_within_limit(body, max_body_bytes(&state))?;
            versions::restore(&state, &grant, &headers, doc, id).await
        }
        DocRoute::Covers(_) => covers(&state, doc, body).await,
        DocRoute::Update(_) => update(&state, &grant, &headers, doc, body).await,
        // `DocRoute::parse` gives these to reads only.
        DocRoute::Content(_) | DocRoute::Version(..) | DocRoute::History(_) => {
            Err(ApiError::NotFound)
        }
    }
}

/// The route of a request under `/api/docs/` and its doc: an unknown route is a 404, a bad
/// name a 400, both before the token is looked at.
fn doc_route<'a>(method: &Method, uri: &'a Uri) -> Result<(DocRoute<'a>, DocId), ApiError> {
    let path = uri
        .path()
        .strip_prefix("/api/docs/")
        .ok_or(ApiError::NotFound)?;
    let route = DocRoute::parse(method, path).ok_or(ApiError::NotFound)?;
    let doc = DocId::from_url_path(route.raw_name()).map_err(ApiError::BadDocName)?;
    Ok((route, doc))
}

/// `GET /api/docs/{name}`: the content, as JSON if asked for, else as v1 update bytes.
///
/// Only committed content is served. A name ending like a history path (`/versions`,
/// `/history`, ...) is that history endpoint instead.
#[utoipa::path(
    get,
    path = "/api/docs/{name}",
    operation_id = "get_doc",
    tag = "docs",
    params(openapi::DocName),
    responses(
        (status = 200, description = "The document: one Yjs v1 update, with `Accept: application/json` one key per root type, with `Accept: text/plain` (or `text/markdown`) the root text `content` and its `ETag`",
            content(
                (openapi::Binary = "application/octet-stream"),
                (openapi::DocContent = "application/json"),
                (String = "text/plain"),
            )),
        (status = 304, description = "`If-None-Match` names the current text (text only)"),
        (status = 400, description = "`bad_doc_name`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`: no role on this document", body = openapi::ErrorJson),
        (status = 404, description = "`doc_not_found`", body = openapi::ErrorJson),
        (status = 409, description = "`not_plain_text`: text asked for, and the root holds formatting or other types", body = openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = openapi::ErrorJson),
    ),
)]
async fn content(state: &AppState, headers: &HeaderMap, doc: &DocId) -> Result<Response, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") || accept.contains("text/markdown") {
        return text(state, headers, doc).await;
    }
    let snapshot = state.hub.snapshot(doc).await.map_err(ApiError::from)?;
    let Some(snapshot) = snapshot else {
        return Err(ApiError::DocNotFound);
    };
    if accept.contains("application/json") {
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

/// `GET /api/docs/{name}` with `Accept: text/plain` (or `text/markdown`): the root text
/// (`doc_text`), with its entity tag; `If-None-Match` naming that tag is a 304.
async fn text(state: &AppState, headers: &HeaderMap, doc: &DocId) -> Result<Response, ApiError> {
    let Some(text) = state.doc_text.read(doc).await? else {
        return Err(ApiError::DocNotFound);
    };
    let etag = HeaderValue::from_str(&text.etag).map_err(|_| ApiError::Internal)?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == text.etag || tag.trim() == "*")
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::ETAG, etag),
        ],
        text.text,
    )
        .into_response())
}

/// `PUT /api/docs/{name}`: saves a UTF-8 body as the document's root text, creating the
/// document if needed. The change is the smallest one from the text `If-Match` names (the
/// current text without it, or when the server no longer holds that text), merged with what
/// others typed meanwhile (`doc_text`); it is durable before the answer.
#[utoipa::path(
    put,
    path = "/api/docs/{name}",
    operation_id = "put_doc_text",
    tag = "docs",
    params(openapi::DocName),
    request_body(content = String, content_type = "text/plain", description = "The whole text, UTF-8"),
    responses(
        (status = 200, description = "Saved; `ETag` names the saved text", body = openapi::SavedText),
        (status = 400, description = "`bad_doc_name`, `not_utf8`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = openapi::ErrorJson),
        (status = 409, description = "`path_taken` (a file has this path), `not_plain_text`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`, `doc_too_large`", body = openapi::ErrorJson),
        (status = 423, description = "`locked`: a WebDAV lock covers the document (`webdav.md`)", body = openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = openapi::ErrorJson),
    ),
)]
pub(super) async fn put_doc(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (route, doc) = doc_route(&method, &uri)?;
    let DocRoute::Content(_) = route else {
        return Err(ApiError::NotFound);
    };
    let grant = request_grant(&state, &headers, &uri, &doc)?;
    // A whole-text save is the write a WebDAV lock on the doc exists to hold off.
    may_write_content(&state, &grant, &doc).await?;
    super::locks::check_write(&state, &headers, &grant, doc.as_str(), false).await?;
    let body = body_within_limit(body, max_body_bytes(&state))?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::NotUtf8)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::trim);
    let saved = state
        .doc_text
        .write(&doc, if_match, text, versions::http_actor(&grant, &headers))
        .await?;
    let etag = HeaderValue::from_str(&saved.etag).map_err(|_| ApiError::Internal)?;
    Ok((
        [(header::ETAG, etag)],
        axum::Json(serde_json::json!({ "etag": saved.etag })),
    )
        .into_response())
}

/// `POST /api/docs/{name}/covers`: whether the server stored everything a replica holds.
///
/// The body is the replica's Yjs snapshot in v1 encoding (`Y.encodeSnapshot`). Answered once
/// everything the document accepted before the request is durable; a document that does not
/// exist is answered as an empty one and is not created.
#[utoipa::path(
    post,
    path = "/api/docs/{name}/covers",
    operation_id = "doc_covers",
    tag = "docs",
    params(openapi::DocName),
    request_body(content = openapi::Binary, content_type = "application/octet-stream", description = "A Yjs v1 snapshot"),
    responses(
        (status = 200, description = "Whether everything the snapshot describes is stored", body = openapi::Covers),
        (status = 400, description = "`bad_doc_name`, `bad_snapshot`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`: over `--max-frame-bytes`", body = openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = openapi::ErrorJson),
    ),
)]
async fn covers(
    state: &AppState,
    doc: DocId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_within_limit(body, max_body_bytes(state))?;
    // Linear in the body, which is bounded by the frame limit.
    let snapshot = decode_snapshot(&body).map_err(ApiError::BadSnapshot)?;
    let covers = state.hub.covers(&doc, snapshot).await?;
    Ok(axum::Json(serde_json::json!({ "covers": covers })).into_response())
}

/// `POST /api/docs/{name}/update`: the body is one Yjs v1 update, decoded and checked as a
/// WebSocket one would be, then applied through the doc's actor.
///
/// Answered once the update is durable and sent to the document's peers. Creates the
/// document if needed. Write role.
#[utoipa::path(
    post,
    path = "/api/docs/{name}/update",
    operation_id = "update_doc",
    tag = "docs",
    params(openapi::DocName),
    request_body(content = openapi::Binary, content_type = "application/octet-stream", description = "One Yjs v1 update"),
    responses(
        (status = 200, description = "Stored and sent to the peers", body = openapi::Applied),
        (status = 400, description = "`bad_doc_name`, `bad_update`", body = openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = openapi::ErrorJson),
        (status = 409, description = "`path_taken`: the name is a file's", body = openapi::ErrorJson),
        (status = 413, description = "`body_too_large`, `doc_too_large`", body = openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`: the store is read-only", body = openapi::ErrorJson),
    ),
)]
async fn update(
    state: &AppState,
    grant: &Grant,
    headers: &HeaderMap,
    doc: DocId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    may_write_content(state, grant, &doc).await?;
    let body = body_within_limit(body, max_body_bytes(state))?;
    decode_update(body.clone()).map_err(ApiError::BadUpdate)?;
    let applied = state
        .hub
        .apply_update(&doc, body, versions::http_actor(grant, headers))
        .await?
        .map_err(|error| match error {
            // Refused before it was applied: nothing changed, nothing was stored.
            ProtocolError::DocTooLarge { max, .. } => ApiError::DocTooLarge { max },
            other => ApiError::BadUpdate(other),
        })?;
    Ok(axum::Json(serde_json::json!({ "applied": applied })).into_response())
}

/// What every write to a doc's content checks first: the token may write it (403 otherwise),
/// and no file has its path (409 `path_taken`).
async fn may_write_content(state: &AppState, grant: &Grant, doc: &DocId) -> Result<(), ApiError> {
    if !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    if state.files.is_file(doc.as_str()).await? {
        return Err(FileError::PathTaken {
            path: doc.to_string(),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_suffix_and_method() {
        let get = |path| DocRoute::parse(&Method::GET, path);
        let post = |path| DocRoute::parse(&Method::POST, path);
        assert_eq!(get("a/b"), Some(DocRoute::Content("a/b")));
        assert_eq!(get("a/b/versions"), Some(DocRoute::Versions("a/b")));
        assert_eq!(post("a/b/versions"), Some(DocRoute::Versions("a/b")));
        assert_eq!(get("a/versions/12"), Some(DocRoute::Version("a", 12)));
        assert_eq!(post("a/versions/12"), None);
        assert_eq!(
            post("a/versions/12/restore"),
            Some(DocRoute::Restore("a", 12))
        );
        assert_eq!(get("a/versions/12/restore"), None);
        assert_eq!(get("a/history"), Some(DocRoute::History("a")));
        assert_eq!(post("a/history"), None);
        assert_eq!(post("a/covers"), Some(DocRoute::Covers("a")));
        assert_eq!(post("a/update"), Some(DocRoute::Update("a")));
        assert_eq!(get("a/covers"), Some(DocRoute::Content("a/covers")));
        assert_eq!(post("a"), None);
        // Not a version id: the whole path is a doc name.
        assert_eq!(get("a/versions/x"), Some(DocRoute::Content("a/versions/x")));
        assert_eq!(get("a/versions/"), Some(DocRoute::Content("a/versions/")));
        assert_eq!(get("a/x/restore"), Some(DocRoute::Content("a/x/restore")));
        assert_eq!(post("a/x/restore"), None);
        assert_eq!(
            post("a/versions/3/covers"),
            Some(DocRoute::Covers("a/versions/3"))
        );
    }
}
