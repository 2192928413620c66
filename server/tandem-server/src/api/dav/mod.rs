//! The workspace over WebDAV (RFC 4918, class 1 and 2) at `/dav/`: the contract is
//! `protocol-spec/webdav.md`.
//!
//! The protocol (methods, XML, `If` headers, multistatus answers) is the `dav-server` crate's;
//! this module puts Tandem around it: who is asking ([`authenticate`]: HTTP Basic over the
//! accounts, or a Bearer token), what no request may bring in (`guard.rs`: bad paths, XML
//! bombs, bodies over [`MAX_XML_BODY_BYTES`], moves into themselves, infinite depth), and the
//! answer of a refusal the file system left in the request's slot. `fs.rs` is the file system:
//! the files service, the documents and the WebDAV table, never a tree of its own. The common
//! PROPFINDs (depth 0 or 1; all properties, their names or named ones) are answered by
//! `multistatus.rs` instead, after the same checks, with the answer dav-server would give.
//!
//! Invariant: every request is authenticated (or authentication is off) before dav-server sees
//! it, and every path it names has passed `guard.rs`.

mod fs;
mod guard;
pub(crate) mod ls;
mod multistatus;
mod propfind;

use std::net::{IpAddr, Ipv4Addr};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response as HttpResponse;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use dav_server::DavHandler;
use dav_server::ls::DavLockSystem;
use futures_util::FutureExt;
use http_body_util::BodyExt;

use super::AppState;
use super::error::ApiError;
use crate::accounts::AccountError;
use crate::auth::{AuthError, AuthMode, Claims, Role, token_from};
use crate::proxy::ClientAddr;

pub(crate) use fs::DavUser;

/// Where the workspace is mounted.
pub(crate) const PREFIX: &str = "/dav";
/// Largest body of a request other than PUT (PROPFIND, PROPPATCH, LOCK XML).
pub(crate) const MAX_XML_BODY_BYTES: usize = 64 * 1024;
/// The lock principal of every request with authentication off.
const ANONYMOUS: &str = "anonymous";
/// The Basic challenge's realm.
const REALM: &str = r#"Basic realm="Tandem", charset="UTF-8""#;

/// The WebDAV routes: every method on `/dav`, `/dav/` and below. Outside the API's body limit
/// and request timeout, like uploads (PUT streams; the others are capped here).
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let dav = Dav::new(state);
    Router::new()
        .route("/dav", any(serve).with_state(dav.clone()))
        .route("/dav/", any(serve).with_state(dav.clone()))
        .route("/dav/{*path}", any(serve).with_state(dav))
        // Each refusal is logged once, as everywhere in the API.
        .layer(axum::middleware::from_fn(super::error::log_api_errors))
}

/// The handler's state: the app's, and the dav-server handler configured once.
#[derive(Clone)]
struct Dav {
    state: AppState,
    fs: fs::TandemFs,
    handler: DavHandler<DavUser>,
}

impl Dav {
    fn new(state: &AppState) -> Dav {
        const DAV_READ_BYTES: usize = 64 * 1024;
        let fs = fs::TandemFs::new(state.clone());
        let locks = lock_system(state);
        let handler = DavHandler::builder()
            .strip_prefix(PREFIX)
            .filesystem(Box::new(fs.clone()))
            .locksystem(locks)
            // No partial updates (SabreDAV's PATCH): every change of a file is a whole version.
            .methods(methods_served())
            .autoindex(false)
            // The blob streams in chunks of this size (`files/backend.rs`): asked for in the
            // same size, each read passes a chunk on whole.
            .read_buf_size(DAV_READ_BYTES)
            .build_handler();
        Dav {
            state: state.clone(),
            fs,
            handler,
        }
    }
}

/// Every method dav-server knows but `PATCH`.
fn methods_served() -> dav_server::DavMethodSet {
    let mut methods = dav_server::DavMethodSet::all();
    methods.remove(dav_server::DavMethod::Patch);
    methods
}

/// The lock system: LOCK, UNLOCK, lock discovery and the `If` header's lock tokens, over
/// Tandem's lock service (`ls.rs`), so a WebDAV lock also holds against the HTTP API and tus.
fn lock_system(state: &AppState) -> Box<dyn DavLockSystem> {
    ls::TandemLs::boxed(&state.locks, PREFIX)
}

/// Checks HTTP Basic credentials against the accounts: the one place a WebDAV password is
/// verified. The account's password or one of its app passwords, rate-limited per account and
/// address like `POST /api/login`, and remembered briefly so a client's many requests do not
/// each pay a hash (`Accounts::verify_basic`).
async fn verify_basic(
    state: &AppState,
    name: &str,
    password: String,
    address: IpAddr,
) -> Result<Claims, ApiError> {
    let user = state
        .accounts
        .verify_basic(name, password, address)
        .await
        .map_err(ApiError::Account)?;
    state
        .accounts
        .token_claims(&user, tandem_hub::clock::now_s())
        .map_err(ApiError::Account)
}

/// Who is asking: `Ok(None)` with authentication off; the claims of a Bearer token, or of an
/// account whose Basic credentials match; else the refusal (401 with both challenges).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    address: IpAddr,
) -> Result<Option<Claims>, ApiError> {
    if state.auth.mode() == AuthMode::None {
        return Ok(None);
    }
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some((scheme, encoded)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(ApiError::Auth(AuthError::Invalid(
                "malformed Basic credentials",
            )))?;
        let (name, password) =
            decoded
                .split_once(':')
                .ok_or(ApiError::Auth(AuthError::Invalid(
                    "malformed Basic credentials",
                )))?;
        return verify_basic(state, name, password.to_owned(), address)
            .await
            .map(Some);
    }
    state
        .auth
        .claims(token_from(headers, uri).as_deref())
        .map_err(ApiError::Auth)
}

/// Every request under `/dav`.
async fn serve(State(dav): State<Dav>, request: Request) -> Response {
    match serve_checked(&dav, request).await {
        Ok(response) => response,
        Err(error) => refusal(error),
    }
}

async fn serve_checked(dav: &Dav, request: Request) -> Result<Response, ApiError> {
    let state = &dav.state;
    let (mut parts, body) = request.into_parts();
    let address = parts
        .extensions
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |client| client.ip);
    let path = guard::request_path(parts.uri.path())?;
    let destination = match parts.headers.get("destination") {
        Some(value) => {
            let (destination, rewritten) = guard::destination(value)?;
            // dav-server reads the path the guard checked, never its own parse of the header.
            parts.headers.insert("destination", rewritten);
            Some(destination)
        }
        None => None,
    };
    let claims = authenticate(state, &parts.headers, &parts.uri, address).await?;
    // With authentication off, the name in `X-Tandem-User`, as for the rest of the API.
    let grant = crate::auth::Grant {
        role: Role::Admin,
        identity: claims.as_ref().map(Claims::identity),
        expires_at: None,
    };
    let actor = super::events::actor_of_request(&grant, &parts.headers);
    let if_match = parts
        .headers
        .get(header::IF_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // The lock checks of the upload path know the writer as dav-server's lock system does: by
    // the principal handed to it below (`anonymous` with authentication off).
    let lock_grant = crate::auth::Grant {
        identity: Some(
            grant
                .identity
                .clone()
                .unwrap_or_else(|| tandem_core::Identity {
                    sub: std::sync::Arc::from(ANONYMOUS),
                    name: std::sync::Arc::from(ANONYMOUS),
                }),
        ),
        ..grant
    };
    let mut user = DavUser::new(claims, actor, if_match, (parts.headers.clone(), lock_grant));

    let method = parts.method.clone();
    guard::check_method(&method, &parts.headers)?;
    guard::check_if_header(&parts.headers)?;
    if method.as_str() == "PROPFIND" && !parts.headers.contains_key("depth") {
        // RFC 4918 reads a missing Depth as infinity, which is refused; clients that leave it
        // out want a listing, so it is taken as 1 (dav-server alone would leave out the
        // resource itself).
        parts.headers.insert("depth", HeaderValue::from_static("1"));
    }
    if matches!(method.as_str(), "LOCK" | "UNLOCK") && !may_lock(&user, &path) {
        return Err(ApiError::Auth(AuthError::ReadOnly));
    }
    if method.as_str() == "UNLOCK" {
        check_unlock(state, &path, &parts.headers, &user).await?;
    }
    if method == Method::DELETE {
        check_delete(dav, &path, &user).await?;
    }
    if let Some(destination) = &destination
        && matches!(method.as_str(), "COPY" | "MOVE")
    {
        guard::check_copy_move(&path, destination)?;
        check_replacement(dav, &method, &path, destination, &user).await?;
        let onto = match (
            dav.fs.kind(&path, &user).await?,
            dav.fs.kind(destination, &user).await?,
        ) {
            (Some(fs::Kind::File), Some(kind @ (fs::Kind::Document | fs::Kind::File))) => {
                Some(kind)
            }
            _ => None,
        };
        if let Some(kind) = onto {
            // The locks of both ends, with the `If` header's tokens, as dav-server would check
            // them; but the replacement is Tandem's own, so a lock holder's save by a temporary
            // file keeps the destination's versions (or edits its document) and its lock.
            let remove_source = method.as_str() == "MOVE";
            let (headers, lock_grant) = &user.writer;
            super::locks::check_write(state, headers, lock_grant, destination, false).await?;
            if remove_source {
                super::locks::check_write(state, headers, lock_grant, &path, false).await?;
            }
            if parts
                .headers
                .get("overwrite")
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"F"))
            {
                return Ok(StatusCode::PRECONDITION_FAILED.into_response());
            }
            let etag = if kind == fs::Kind::Document {
                dav.fs
                    .file_onto_doc(&path, destination, remove_source, &user)
                    .await?
            } else {
                dav.fs
                    .file_onto_file(&path, destination, remove_source, &user)
                    .await?
            };
            // A lock belongs to its path (RFC 4918 §7.7): the moved-away source's go.
            if remove_source && let Err(error) = state.locks.remove_below(&path).await {
                tracing::warn!(%error, path, "removing the locks of a moved file failed");
            }
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                response.headers_mut().insert(header::ETAG, value);
            }
            return Ok(response);
        }
    }
    // A PUT to a document merges from the text its `If-Match` names (`user.if_match`), so an
    // older tag is no reason to refuse it: dav-server does not see the header.
    if method == Method::PUT && dav.fs.kind(&path, &user).await? == Some(fs::Kind::Document) {
        parts.headers.remove(header::IF_MATCH);
    }

    // Every body but a PUT's is read here, capped and checked, before any XML parser sees it.
    let mut named = None;
    let body = if method == Method::PUT {
        body
    } else {
        let bytes = read_capped(body).await?;
        guard::check_xml(&bytes)?;
        if method.as_str() == "PROPFIND" {
            if let Some(response) = answer_propfind(dav, &parts, &path, &bytes, &user).await {
                return Ok(response);
            }
            named = propfind::requested(&bytes);
            user.named_props = named.is_some();
        }
        Body::from(bytes)
    };
    // The path without a token in the query: dav-server never sees `?token=`.
    parts.uri = strip_query(&parts.uri);
    let request = Request::from_parts(parts, body);
    let principal = user
        .claims
        .as_ref()
        .map_or_else(|| ANONYMOUS.to_owned(), |claims| claims.sub.clone());
    let refusal = user.refusal.clone();
    // A panic inside dav-server (a parser meeting input it does not expect) fails this request
    // with a 500, logged once, instead of dropping the connection.
    let handled =
        std::panic::AssertUnwindSafe(dav.handler.handle_guarded(request, principal, user))
            .catch_unwind()
            .await;
    let Ok(response) = handled else {
        tracing::error!(method = %method, "the WebDAV handler panicked");
        return Err(ApiError::Internal);
    };
    let held = refusal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    let status = response.status();
    let mut response = response;
    if method == Method::OPTIONS {
        // dav-server names classes and extensions it has but this server does not serve
        // (SabreDAV's partial PATCH); the classes served are 1 and 2.
        response
            .headers_mut()
            .insert("dav", HeaderValue::from_static("1, 2"));
    }
    if let Some(error) = held
        && (status.is_client_error() || status.is_server_error())
    {
        return Err(error);
    }
    match named {
        Some(wanted) if status == StatusCode::MULTI_STATUS => {
            complete_propfind(response, &wanted).await
        }
        _ => Ok(response.map(Body::new)),
    }
}

/// The answer to a PROPFIND of depth 0 or 1 with a body `multistatus.rs` knows, written there
/// from the listing instead of by dav-server (same properties, same statuses, the `404`s of a
/// named PROPFIND included); `None` leaves the request to dav-server: another depth, another
/// body, a path that does not exist for this user, a listing that cannot be read.
async fn answer_propfind(
    dav: &Dav,
    parts: &axum::http::request::Parts,
    path: &str,
    body: &[u8],
    user: &DavUser,
) -> Option<Response> {
    let mut depths = parts.headers.get_all("depth").iter();
    let depth_one = match (depths.next().map(HeaderValue::as_bytes), depths.next()) {
        (Some(b"0"), None) => false,
        (Some(b"1"), None) => true,
        _ => return None,
    };
    let wanted = multistatus::wanted(body)?;
    let principal = user
        .claims
        .as_ref()
        .map_or(ANONYMOUS, |claims| claims.sub.as_str());
    let microsoft = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|agent| agent.contains("Microsoft"));
    let request = multistatus::Request {
        wanted: &wanted,
        principal,
        microsoft,
    };
    // The root (`/dav`) is a collection with or without its slash, as dav-server reads it.
    let slash = path.is_empty() || parts.uri.path().ends_with('/');
    let (body, is_dir) = dav
        .fs
        .propfind(path, slash, depth_one, &request, user)
        .await?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::MULTI_STATUS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if is_dir && !slash {
        // A folder asked for without its slash: where it is (dav-server's `fixpath`).
        let mut location = String::new();
        multistatus::push_href(&mut location, path, true);
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::CONTENT_LOCATION, value);
        }
    }
    Some(response)
}

/// A named PROPFIND's multistatus with the 404s dav-server leaves out (`propfind.rs`).
async fn complete_propfind(
    response: HttpResponse<dav_server::body::Body>,
    wanted: &[(String, String)],
) -> Result<Response, ApiError> {
    let (mut parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|_| ApiError::Internal)?
        .to_bytes();
    let body = propfind::complete(&bytes, wanted).map_or_else(|| Body::from(bytes), Body::from);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, body))
}

/// Refuses a `COPY` of a folder onto an existing file, and a `COPY` or `MOVE` of a folder onto
/// a document, with 409 before anything is touched: dav-server would delete the destination
/// first, and a file so replaced would lose every version (a document cannot be deleted at
/// all). The other replacements RFC 4918 asks for with `Overwrite: T` (a file onto a folder, a
/// folder moved onto a file) go ahead, as the litmus suite checks; `Overwrite: F` refuses any.
async fn check_replacement(
    dav: &Dav,
    method: &Method,
    source: &str,
    destination: &str,
    user: &DavUser,
) -> Result<(), ApiError> {
    use fs::Kind;
    let source_kind = dav.fs.kind(source, user).await?;
    let destination_kind = dav.fs.kind(destination, user).await?;
    let message = match (source_kind, destination_kind) {
        (Some(Kind::Folder), Some(Kind::Document)) => {
            "cannot replace a live document with a folder"
        }
        (Some(Kind::Folder), Some(Kind::File)) if method.as_str() == "COPY" => {
            "cannot copy a folder onto a file: the file and its versions would be lost"
        }
        _ => return Ok(()),
    };
    Err(ApiError::WebDav {
        status: StatusCode::CONFLICT,
        code: "kind_mismatch",
        message: message.into(),
    })
}

/// Refuses an `UNLOCK` of another account's lock with 403 before dav-server, whose lock
/// system is not told who asks: a token is no secret (`lockdiscovery` shows it), so only the
/// lock's holder, or an administrator, may remove it. A token no lock on the path has is left
/// to dav-server (409).
async fn check_unlock(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    user: &DavUser,
) -> Result<(), ApiError> {
    let Some(token) = headers
        .get("lock-token")
        .and_then(|value| value.to_str().ok())
        .map(|text| text.trim().trim_start_matches('<').trim_end_matches('>'))
    else {
        return Ok(());
    };
    let locks = state.locks.discover(path).await?;
    let Some(lock) = locks.iter().find(|lock| lock.token == token) else {
        return Ok(());
    };
    let requester = user
        .claims
        .as_ref()
        .map_or(ANONYMOUS, |claims| claims.sub.as_str());
    let admin = user.claims.as_ref().is_none_or(|claims| claims.admin);
    match lock.principal.as_deref() {
        Some(holder) if holder != requester && !admin => Err(ApiError::WebDav {
            status: StatusCode::FORBIDDEN,
            code: "not_lock_holder",
            message: format!(
                "the lock on {:?} was taken by another account; only its holder or an administrator can remove it",
                lock.path
            ),
        }),
        _ => Ok(()),
    }
}

/// Refuses a `DELETE` that would stop half-way, before anything is removed: dav-server
/// removes a folder's files one by one before the folder, so a refusal met on the way (a
/// document, a file the account may not change, another's lock) would leave the rest deleted.
/// The root is never deleted.
async fn check_delete(dav: &Dav, path: &str, user: &DavUser) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(ApiError::WebDav {
            status: StatusCode::FORBIDDEN,
            code: "root_not_removable",
            message: "the workspace root cannot be deleted".into(),
        });
    }
    if dav.fs.kind(path, user).await? != Some(fs::Kind::Folder) {
        return Ok(());
    }
    dav.fs.check_folder_removable(path, user).await?;
    let (headers, lock_grant) = &user.writer;
    super::locks::check_write(&dav.state, headers, lock_grant, path, true).await
}

/// Whether `user` may lock `path`: the write role on it as a file or as a folder.
fn may_lock(user: &DavUser, path: &str) -> bool {
    let Some(claims) = &user.claims else {
        return true;
    };
    let as_file = claims.role_for(path);
    let as_folder = user.folder_role(path);
    as_file
        .max(as_folder)
        .is_some_and(|role| role >= Role::Write)
}

/// A request body up to [`MAX_XML_BODY_BYTES`], or 413.
async fn read_capped(body: Body) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_XML_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge {
                max: MAX_XML_BODY_BYTES as u64,
            })
        }
        Err(_) => Err(ApiError::BadBody),
    }
}

fn strip_query(uri: &axum::http::Uri) -> axum::http::Uri {
    uri.path().parse().unwrap_or_else(|_| uri.clone())
}

/// The answer to a refused request: the API's JSON error, and a Basic challenge beside the
/// Bearer one on a 401 so desktop clients ask for a password.
fn refusal(error: ApiError) -> Response {
    if let ApiError::WebDav {
        status,
        code: code @ "propfind-finite-depth",
        ..
    } = &error
    {
        // A precondition of RFC 4918 (section 9.1): its XML element is the answer.
        tracing::debug!(code, "webdav request refused");
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:error xmlns:D=\"DAV:\"><D:{code}/></D:error>"
        );
        return (
            *status,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            body,
        )
            .into_response();
    }
    let unauthenticated = match &error {
        ApiError::Auth(error) => error.is_unauthenticated(),
        ApiError::Account(AccountError::BadCredentials { .. }) => true,
        _ => false,
    };
    let mut response = error.into_response();
    if unauthenticated {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .append(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    }
    response
}
