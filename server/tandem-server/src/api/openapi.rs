//! The HTTP API as an OpenAPI 3.1 document, served at `GET /api/openapi.json`
//! (`protocol-spec/http.md`).
//!
//! The document is assembled from the code: each handler carries its operation in a
//! `#[utoipa::path]` attribute next to it (path, parameters, body, answers), the request and
//! answer types that are the REST contract derive `ToSchema`, and [`ApiDoc`] below lists every
//! operation in one place. The wrappers of this file (`{"docs": [...]}` and the like) describe
//! bodies the handlers build with `json!`; they are never built.
//!
//! To add a route: register it in `api::app` (or `files::routes`/`streaming_routes`), put a
//! `#[utoipa::path]` on its handler and name the handler in `ApiDoc`'s `paths(...)`. The tests
//! below fail until all three agree.
//!
//! Document and file names contain `/`: axum routes them with a wildcard (`/api/docs/{*name}`),
//! which OpenAPI cannot express, so their paths show `{name}` or `{path}` with a description
//! saying so, and the document endpoints, which one axum route serves and tells apart by their
//! suffix (`docs::DocRoute`), appear as one path each (`/api/docs/{name}/versions`, ...).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::{
    accounts, activity, admin, backup, docs, download, events, files, locks, tus, versions,
    webhooks, ws,
};

/// The API's operations, schemas and security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem HTTP API",
        description = "The REST endpoints of a Tandem server and its WebSocket upgrades. \
            The prose contract is protocol-spec/http.md (with files.md, history.md, activity.md \
            and auth.md); this document is generated from the code. Every error has the JSON \
            body `Error`. With `--auth none` no token is needed anywhere.",
    ),
    paths(
        super::healthz,
        serve,
        docs::list_docs,
        docs::content,
        docs::covers,
        docs::update,
        docs::put_doc,
        versions::list,
        versions::get,
        versions::create,
        versions::restore,
        versions::history,
        events::stream,
        ws::upgrade,
        ws::upgrade_hocuspocus,
        accounts::auth_info,
        accounts::login,
        accounts::refresh,
        accounts::list_users,
        accounts::put_user,
        accounts::delete_user,
        accounts::list_app_passwords,
        accounts::add_app_password,
        accounts::delete_app_password,
        files::list_files,
        files::list_versions,
        files::move_file,
        files::put_file,
        files::delete_file,
        download::get_file,
        tus::options,
        tus::create,
        tus::head,
        tus::patch,
        tus::terminate,
        locks::list,
        locks::break_lock,
        activity::feed,
        webhooks::list,
        webhooks::add,
        webhooks::remove,
        webhooks::deliveries,
        backup::download,
        admin::metrics,
        admin::overview,
        admin::series,
    ),
    modifiers(&Security, &Aliases, &Summaries),
    tags(
        (name = "server", description = "Health and this description"),
        (name = "docs", description = "Documents (http.md)"),
        (name = "history", description = "Versions and authors of updates (history.md)"),
        (name = "realtime", description = "WebSocket upgrades and the event stream (wire.md, hocuspocus.md)"),
        (name = "accounts", description = "Sign-in, tokens and the account API (http.md, Accounts)"),
        (name = "files", description = "Files, downloads and tus uploads (files.md)"),
        (name = "activity", description = "The activity feed and webhooks (activity.md)"),
    ),
)]
pub(crate) struct ApiDoc;

/// The document, built once.
fn document() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing maps of strings cannot fail; an empty object is still valid JSON.
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| String::from("{}"))
    })
}

/// The OpenAPI 3.1 description of this API.
///
/// It describes the endpoints and reveals no data, so it needs no token.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "server",
    security(()),
    responses((status = 200, description = "This document", content_type = "application/json")),
)]
pub(super) async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

/// Adds the two places a token may travel (`auth.md`, "Where the token travels") and makes
/// either one the default requirement; public operations say `security(())`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <jwt>` (auth.md): from an identity provider, \
                         `tandem token mint` or `POST /api/login`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT in the `token` query parameter, for clients that cannot set \
                 headers (WebSocket in a browser, EventSource, a download link)",
            ))),
        );
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::new(
                "token_query",
                Vec::<String>::new(),
            ),
        ]);
    }
}

/// Routes that one handler serves under two paths: the same operation, under its second path
/// with its own operation id.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        // `GET /ws/` is `GET /ws` (a provider's URL may end in a slash).
        if let Some(mut item) = paths.get("/ws").cloned() {
            if let Some(operation) = item.get.as_mut() {
                operation.operation_id = Some("upgrade_hocuspocus_slash".into());
            }
            paths.insert("/ws/".into(), item);
        }
        // `HEAD /api/files/{path}` is the download without its body.
        if let Some(operation) = paths
            .get_mut("/api/files/{path}")
            .and_then(|item| item.head.as_mut())
        {
            operation.operation_id = Some("head_file".into());
        }
        // `OPTIONS /api/uploads/{id}` answers as `OPTIONS /api/uploads`.
        let options = paths
            .get("/api/uploads")
            .and_then(|item| item.options.clone());
        if let (Some(mut operation), Some(item)) = (options, paths.get_mut("/api/uploads/{id}")) {
            operation.operation_id = Some("options_upload".into());
            let id = UploadId::into_params(|| Some(utoipa::openapi::path::ParameterIn::Path));
            operation
                .parameters
                .get_or_insert_with(Vec::new)
                .extend(id.into_iter().map(utoipa::openapi::RefOr::T));
            item.options = Some(operation);
        }
    }
}

/// A summary is the first paragraph of the handler's doc comment, which begins with the
/// method and path the operation already shows (`` `GET /api/files`: the current ... ``): that
/// prefix goes.
struct Summaries;

impl Modify for Summaries {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                if let Some(summary) = operation.summary.as_mut() {
                    *summary = without_route(summary).replace('\n', " ");
                }
            }
        }
    }
}

/// `summary` without a leading `` `METHOD /path`: ``, its first letter in upper case.
fn without_route(summary: &str) -> String {
    let rest = summary
        .strip_prefix('`')
        .and_then(|after| after.split_once("`: "))
        .map_or(summary, |(_, rest)| rest);
    let mut chars = rest.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// The JSON body of every error (`http.md`, Errors).
#[derive(ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)]
pub(crate) struct ErrorJson {
    /// A stable machine-readable code, e.g. `bad_doc_name`.
    error: String,
    /// For people; may change.
    message: String,
    /// 5xx only: 16 hex digits, also in the server's log line of this failure.
    error_id: Option<String>,
}

/// Who did something: the token's `sub` (`null` with authentication off) and a name to show.
#[derive(ToSchema)]
#[schema(as = Actor)]
#[allow(dead_code)]
pub(crate) struct ActorJson {
    sub: Option<String>,
    name: String,
}

/// A document name in a path: the rest of the path up to the endpoint's suffix, so it may
/// contain `/` (axum's `{*name}`). Percent-decoded and validated (`wire.md`); `%2F` is refused.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct DocName {
    /// The document's name, `/` included, e.g. `team/notes.md`.
    #[param(example = "team/notes.md")]
    name: String,
}

/// A file path in a path: the rest of the path, so it contains `/` (axum's `{*path}`);
/// percent-decoded and validated like document names (`files.md`).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct FilePath {
    /// The file's path, `/` included, e.g. `team/builds/app.zip`.
    #[param(example = "team/builds/app.zip")]
    path: String,
}

/// A tus upload id in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct UploadId {
    /// 32 hex digits, from the `Location` of `POST /api/uploads`.
    id: String,
}

/// `GET /api/admin/overview`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminOverview {
    /// Server time, milliseconds since the epoch.
    now: u64,
    /// When the process started, milliseconds since the epoch.
    started_at: u64,
    /// Live documents on this node, most peers first, at most 500.
    docs: Vec<AdminDoc>,
    /// Live documents on this node (`docs` may be cut short).
    docs_total: u64,
    /// Open WebSocket connections by protocol, keyed `y-websocket` and `hocuspocus`.
    connections: std::collections::BTreeMap<String, u64>,
    /// Per workspace (first path segment), largest first.
    storage: Vec<AdminStorage>,
    /// Recent failed webhook deliveries, newest first, at most 50.
    webhooks_failing: Vec<AdminWebhookFailure>,
    /// The newest warnings and errors this process logged, newest first, at most 100.
    errors: Vec<AdminError>,
}

/// One live document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminDoc {
    name: String,
    /// Connections of both protocols.
    peers: u64,
    /// Its stored size, approximately.
    bytes: u64,
}

/// One workspace's storage.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminStorage {
    workspace: String,
    /// Every version of its files, counted once per blob.
    bytes: u64,
    files: u64,
    /// 0 means unlimited.
    quota_bytes: u64,
}

/// One failed webhook delivery.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminWebhookFailure {
    webhook: String,
    url: String,
    event: String,
    /// Milliseconds since the epoch.
    at: u64,
    error: String,
    attempts: u64,
}

/// One logged warning or error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminError {
    /// Milliseconds since the epoch.
    at: u64,
    /// `warn` or `error`.
    level: String,
    target: String,
    message: String,
    /// The event's other fields, as text.
    #[schema(value_type = Object)]
    fields: serde_json::Value,
}

/// `GET /api/admin/series`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminSeries {
    /// Seconds between points (10).
    interval_seconds: u64,
    /// The last hour, oldest first, at most 360.
    points: Vec<AdminPoint>,
}

/// One sample.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AdminPoint {
    /// Milliseconds since the epoch.
    at: u64,
    /// Updates received in the interval over its length.
    updates_per_second: f64,
    /// Mean commit time over the interval; `null` when nothing was committed.
    commit_latency_ms: Option<f64>,
    /// Distinct identities with an open WebSocket.
    connected_users: u64,
    /// Open WebSocket connections.
    connections: u64,
}

/// `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Health {
    /// `ok`, or `degraded` (503) in cluster mode while Redis cannot be reached.
    status: String,
    store: StoreHealth,
    /// Cluster mode only.
    cluster: Option<ClusterHealth>,
}

/// The local store's state.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StoreHealth {
    /// `false` while the store refuses writes (a full disk).
    writable: bool,
    /// `disk full` or `i/o error` while not writable, else `null`.
    reason: Option<String>,
}

/// Which shared engines this node reaches.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ClusterHealth {
    node: String,
    redis: bool,
    postgres: bool,
}

/// `GET /api/docs`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DocList {
    docs: Vec<docs::DocSummary>,
}

/// `POST /api/docs/{name}/covers`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Covers {
    /// The server has stored everything the snapshot describes.
    covers: bool,
}

/// `POST /api/docs/{name}/update`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Applied {
    /// Whether the update changed the document (`false` when it held everything already).
    applied: bool,
}

/// `PUT /api/docs/{name}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SavedText {
    /// The entity tag of the saved text, also in the `ETag` header: name it in `If-Match` on
    /// the next save.
    etag: String,
}

/// A document's content as JSON: one key per root type (`http.md`).
pub(crate) struct DocContent;

impl utoipa::PartialSchema for DocContent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "One key per root type: a Y.Text is a string, a Y.Map an object, a Y.Array an array",
            ))
            .into()
    }
}

impl ToSchema for DocContent {}

/// Bytes: a Yjs update or snapshot, or a file.
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// `GET /api/docs/{name}/versions`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct VersionList {
    versions: Vec<versions::VersionJson>,
}

/// `POST .../versions` and `.../versions/{id}/restore`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct VersionAnswer {
    version: versions::VersionJson,
}

/// `GET /api/docs/{name}/history`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct HistoryPage {
    entries: Vec<versions::EntryJson>,
}

/// `GET /api/auth`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuthInfo {
    /// `none` or `jwt`.
    mode: String,
    /// Whether a client should show a sign-in page.
    login: bool,
}

/// `GET /api/users`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UserList {
    users: Vec<crate::accounts::UserView>,
}

/// `GET /api/users/{sub}/app-passwords`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AppPasswordList {
    app_passwords: Vec<crate::accounts::AppPasswordView>,
}

/// `DELETE /api/users/{sub}`, `DELETE /api/users/{sub}/app-passwords/{id}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Removed {
    /// The account (or app password id) removed.
    removed: String,
}

/// `GET /api/files`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FileList {
    files: Vec<files::FileJson>,
}

/// `GET /api/locks`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LockList {
    locks: Vec<locks::AdminLockJson>,
}

/// `GET /api/file-versions/{path}`: newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FileVersions {
    versions: Vec<files::FileJson>,
}

/// `PUT /api/files/{path}` and `POST /api/file-moves`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FileAnswer {
    file: files::FileJson,
}

/// One entry of the activity feed (`activity.md`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ActivityEntry {
    /// Increasing with creation, never reused.
    id: u64,
    /// `doc.edited`, `file.uploaded`, `file.renamed`, `file.deleted`, `version.created` or
    /// `version.restored`.
    kind: String,
    /// The doc or file the entry is about.
    path: String,
    actor: ActorJson,
    started_ms: u64,
    ended_ms: u64,
    /// `doc.edited` only.
    n_updates: Option<u64>,
    /// Kind-specific (`activity.md`).
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

/// `GET /api/activity`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ActivityPage {
    entries: Vec<ActivityEntry>,
    /// The cursor of the next page (`?before=`), `null` at the end.
    next: Option<String>,
}

/// `GET /api/webhooks`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct WebhookList {
    webhooks: Vec<crate::webhook::WebhookView>,
}

/// `POST /api/webhooks`: the webhook and its secret, shown this once.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct WebhookCreated {
    webhook: crate::webhook::WebhookView,
    secret: String,
}

/// A delivery not yet made.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PendingDelivery {
    delivery_id: String,
    event: String,
    created_ms: u64,
    attempts: u32,
    next_attempt_ms: u64,
}

/// `GET /api/webhooks/{id}/deliveries`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Deliveries {
    /// The last 200 attempts, newest first.
    deliveries: Vec<crate::webhook::AttemptView>,
    pending: Vec<PendingDelivery>,
}

#[cfg(test)]
mod tests;
