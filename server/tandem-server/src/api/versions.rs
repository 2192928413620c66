//! The history API: a doc's versions, one version's content, naming a version, restoring one,
//! and who sent the stored updates. Contract: `protocol-spec/history.md`.
//!
//! Naming and restoring go through the doc actor (`DocCommand::SaveVersion`, `::Restore`), so
//! they see the current in-memory state, run in order with edits, and answer only once durable.
//! Listing and reading come straight from the store: a version becomes visible when its commit
//! returns, which is before anyone is told about it, so a client always reads its own versions.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem_core::{DocId, ProtocolError, SharedDoc};
use tandem_hub::RestoreRefused;
use tandem_store::{Author, StoreError, VersionRecord};

use super::events::actor_of_request;
use crate::api::{ApiError, AppState, blocking};
use crate::auth::{AuthError, Grant};
use tandem_hub::Actor;

/// Longest version name, in characters.
pub(crate) const MAX_VERSION_NAME_CHARS: usize = 200;
/// Default and largest page of `GET /api/docs/{name}/history`.
const DEFAULT_HISTORY_LIMIT: usize = 100;
const MAX_HISTORY_LIMIT: usize = 1000;

/// One version, as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VersionJson {
    /// Per document, from 1, increasing; never reused.
    id: u64,
    /// `named`, `auto` or `restore`.
    kind: &'static str,
    /// The given name; `null` for `auto`.
    name: Option<String>,
    #[schema(value_type = crate::api::openapi::ActorJson)]
    author: Actor,
    created_ms: u64,
    /// The last update the version contains.
    seq: u64,
    size_bytes: u64,
    /// Who wrote the updates since the previous version, in order of first appearance.
    #[schema(value_type = Vec<crate::api::openapi::ActorJson>)]
    authors: Vec<Actor>,
}

fn actor(author: Author) -> Actor {
    Actor {
        sub: author.sub,
        name: author.name,
    }
}

impl From<VersionRecord> for VersionJson {
    fn from(record: VersionRecord) -> Self {
        VersionJson {
            id: record.id,
            kind: record.kind.as_str(),
            name: record.name,
            author: actor(record.author),
            created_ms: record.created_ms,
            seq: record.seq,
            size_bytes: record.size_bytes,
            authors: record.authors.into_iter().map(actor).collect(),
        }
    }
}

/// The actor HTTP updates, versions and restores are credited to (`actor_of_request`).
pub(crate) fn http_actor(grant: &Grant, headers: &HeaderMap) -> Actor {
    actor_of_request(grant, headers)
}

/// Runs a read of the doc's history on the blocking pool: damaged history is a 500
/// `doc_corrupt`, any other failure a 500 `internal`, both logged.
async fn read_history<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(work, |error| {
        // A record of a layout this build does not know stays `internal` (`history.md`).
        let unknown_layout = matches!(error, StoreError::CorruptRecord { .. });
        if error.is_damage() && !unknown_layout {
            tracing::error!(%error, "stored history of the doc is damaged");
            ApiError::DocCorrupt
        } else {
            tracing::error!(%error, "history read failed");
            ApiError::Internal
        }
    })
    .await
}

/// `GET /api/docs/{name}/versions`: newest first.
///
/// A document without versions (or never written) lists none.
#[utoipa::path(
    get,
    path = "/api/docs/{name}/versions",
    operation_id = "list_doc_versions",
    tag = "history",
    params(crate::api::openapi::DocName),
    responses(
        (status = 200, description = "The versions, newest first", body = crate::api::openapi::VersionList),
        (status = 400, description = "`bad_doc_name`", body = crate::api::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = crate::api::openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = crate::api::openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = crate::api::openapi::ErrorJson),
    ),
)]
pub(crate) async fn list(state: &AppState, doc: DocId) -> Result<Response, ApiError> {
    let store = state.tables.history.clone();
    let versions = read_history(move || store.list_versions(doc.as_str())).await?;
    let versions: Vec<VersionJson> = versions.into_iter().map(VersionJson::from).collect();
    Ok(axum::Json(serde_json::json!({ "versions": versions })).into_response())
}

/// `GET /api/docs/{name}/versions/{id}`: the content as it was, JSON or v1 update bytes.
#[utoipa::path(
    get,
    path = "/api/docs/{name}/versions/{id}",
    operation_id = "get_doc_version",
    tag = "history",
    params(crate::api::openapi::DocName, ("id" = u64, Path, description = "The version id")),
    responses(
        (status = 200, description = "The version's state as one Yjs v1 update, or with `Accept: application/json` one key per root type",
            content(
                (crate::api::openapi::Binary = "application/octet-stream"),
                (crate::api::openapi::DocContent = "application/json"),
            )),
        (status = 404, description = "`version_not_found`", body = crate::api::openapi::ErrorJson),
        (status = 400, description = "`bad_doc_name`", body = crate::api::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = crate::api::openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = crate::api::openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = crate::api::openapi::ErrorJson),
    ),
)]
pub(crate) async fn get(
    state: &AppState,
    headers: &HeaderMap,
    doc: DocId,
    id: u64,
) -> Result<Response, ApiError> {
    let store = state.tables.history.clone();
    let version = read_history(move || store.version(doc.as_str(), id)).await?;
    let Some((_, bytes)) = version else {
        return Err(ApiError::VersionNotFound);
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if !wants_json {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            bytes,
        )
            .into_response());
    }
    let limits = state.limits.clone();
    let json = blocking(
        move || SharedDoc::load(limits, [bytes.as_slice()]).map(|doc| doc.to_json()),
        |error| {
            tracing::error!(%error, version = id, "a stored version does not load");
            ApiError::Internal
        },
    )
    .await?;
    Ok(axum::Json(json).into_response())
}

/// The body of `POST /api/docs/{name}/versions`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewVersion {
    /// 1 to 200 characters once trimmed, without a character refused in names.
    name: String,
}

/// `POST /api/docs/{name}/versions` `{"name": "..."}`: 201 with the version, once durable.
///
/// Write role.
#[utoipa::path(
    post,
    path = "/api/docs/{name}/versions",
    operation_id = "create_doc_version",
    tag = "history",
    params(crate::api::openapi::DocName),
    request_body = NewVersion,
    responses(
        (status = 201, description = "The version, once durable", body = crate::api::openapi::VersionAnswer),
        (status = 404, description = "`doc_not_found`", body = crate::api::openapi::ErrorJson),
        (status = 409, description = "`too_many_versions`", body = crate::api::openapi::ErrorJson),
        (status = 413, description = "`body_too_large`", body = crate::api::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = crate::api::openapi::ErrorJson),
        (status = 400, description = "`bad_doc_name`, `bad_body`, `bad_version_name`", body = crate::api::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = crate::api::openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = crate::api::openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = crate::api::openapi::ErrorJson),
    ),
)]
pub(crate) async fn create(
    state: &AppState,
    grant: &Grant,
    headers: &HeaderMap,
    doc: DocId,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    let NewVersion { name } = serde_json::from_slice(body).map_err(|_| ApiError::BadBody)?;
    // Checked before trimming, which would quietly drop a trailing NEL (U+0085).
    let forbidden = crate::name::has_forbidden(&name);
    let name = name.trim().to_owned();
    if forbidden || name.is_empty() || name.chars().count() > MAX_VERSION_NAME_CHARS {
        return Err(ApiError::BadVersionName {
            max: MAX_VERSION_NAME_CHARS,
        });
    }
    let actor = http_actor(grant, headers);
    let answer = state
        .hub
        .save_version(&doc, name, actor)
        .await?
        .ok_or(ApiError::DocNotFound)?;
    let record = match answer {
        Ok(record) => record,
        Err(RestoreRefused::TooManyVersions(max)) => return Ok(too_many_versions(max)),
        Err(refused) => {
            tracing::error!(?refused, "saving a version failed");
            return Err(ApiError::Internal);
        }
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "version": VersionJson::from(record) })),
    )
        .into_response())
}

/// 409 `too_many_versions`: the doc has `--max-named-versions` named versions already. The
/// same JSON error shape as `ApiError`.
fn too_many_versions(max: u64) -> Response {
    tracing::info!(max, "named version refused: the doc has too many");
    let message = format!("this doc already has {max} named versions, the most it may have");
    (
        StatusCode::CONFLICT,
        axum::Json(serde_json::json!({ "error": "too_many_versions", "message": message })),
    )
        .into_response()
}

/// `POST /api/docs/{name}/versions/{id}/restore`: 200 with the `restore` version saved just
/// before, once the restore is durable and sent to every connected peer.
///
/// Takes no body. Write role (`history.md`).
#[utoipa::path(
    post,
    path = "/api/docs/{name}/versions/{id}/restore",
    operation_id = "restore_doc_version",
    tag = "history",
    params(crate::api::openapi::DocName, ("id" = u64, Path, description = "The version id")),
    responses(
        (status = 200, description = "The `restore` version saved just before", body = crate::api::openapi::VersionAnswer),
        (status = 404, description = "`version_not_found`, `doc_not_found`", body = crate::api::openapi::ErrorJson),
        (status = 413, description = "`body_too_large`, `doc_too_large`", body = crate::api::openapi::ErrorJson),
        (status = 507, description = "`insufficient_storage`", body = crate::api::openapi::ErrorJson),
        (status = 400, description = "`bad_doc_name`", body = crate::api::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorJson),
        (status = 403, description = "`forbidden`, `read_only`", body = crate::api::openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = crate::api::openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = crate::api::openapi::ErrorJson),
    ),
)]
pub(crate) async fn restore(
    state: &AppState,
    grant: &Grant,
    headers: &HeaderMap,
    doc: DocId,
    id: u64,
) -> Result<Response, ApiError> {
    if !grant.can_write() {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    let store = state.tables.history.clone();
    let name = doc.clone();
    let version = read_history(move || store.version(name.as_str(), id)).await?;
    let Some((_, old_state)) = version else {
        return Err(ApiError::VersionNotFound);
    };
    let actor = http_actor(grant, headers);
    let answer = state
        .hub
        .restore(&doc, id, Bytes::from(old_state), actor)
        .await?
        .ok_or(ApiError::DocNotFound)?;
    let record = answer.map_err(|refused| match refused {
        RestoreRefused::Update(ProtocolError::DocTooLarge { max, .. }) => {
            ApiError::DocTooLarge { max }
        }
        RestoreRefused::Update(error) => {
            tracing::error!(%error, version = id, "restore refused by the doc");
            ApiError::Internal
        }
        RestoreRefused::State(error) => {
            tracing::error!(%error, version = id, "restore failed");
            ApiError::Internal
        }
        RestoreRefused::TooManyVersions(_) => ApiError::Internal,
    })?;
    Ok(axum::Json(serde_json::json!({ "version": VersionJson::from(record) })).into_response())
}

/// One stored update's author in `GET /api/docs/{name}/history`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EntryJson {
    seq: u64,
    #[schema(value_type = crate::api::openapi::ActorJson)]
    author: Actor,
    at_ms: u64,
    /// The update's length while its log entry is stored, `0` once merged into a snapshot.
    n_bytes: u64,
}

/// `GET /api/docs/{name}/history?limit=&before_seq=`: the authors of the stored updates,
/// newest first.
#[utoipa::path(
    get,
    path = "/api/docs/{name}/history",
    operation_id = "doc_history",
    tag = "history",
    params(crate::api::openapi::DocName,
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("before_seq" = Option<u64>, Query, description = "Only updates with a lower seq (paging)")),
    responses(
        (status = 200, description = "Authors of stored updates, newest first", body = crate::api::openapi::HistoryPage),
        (status = 400, description = "`bad_doc_name`, `bad_query`", body = crate::api::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = crate::api::openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = crate::api::openapi::ErrorJson),
        (status = 500, description = "`doc_corrupt`, `internal`", body = crate::api::openapi::ErrorJson),
        (status = 503, description = "`doc_unavailable`, `shutting_down`", body = crate::api::openapi::ErrorJson),
    ),
)]
pub(crate) async fn history(
    state: &AppState,
    query: Option<&str>,
    doc: DocId,
) -> Result<Response, ApiError> {
    let mut limit = DEFAULT_HISTORY_LIMIT;
    let mut before_seq = u64::MAX;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::BadQuery("limit: not a number".into()))?
                    .clamp(1, MAX_HISTORY_LIMIT);
            }
            "before_seq" => {
                before_seq = value
                    .parse()
                    .map_err(|_| ApiError::BadQuery("before_seq: not a number".into()))?;
            }
            // `token` and anything else are not ours.
            _ => {}
        }
    }
    let store = state.tables.history.clone();
    let entries =
        read_history(move || store.update_authors(doc.as_str(), before_seq, limit)).await?;
    let entries: Vec<EntryJson> = entries
        .into_iter()
        .map(|entry| EntryJson {
            seq: entry.seq,
            author: actor(entry.author),
            at_ms: entry.at_ms,
            n_bytes: entry.n_bytes,
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "entries": entries })).into_response())
}
