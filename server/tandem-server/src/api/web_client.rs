//! The web client's files: `web-client/dist` built into the binary, or the directory named by
//! `--web-dir`, served under the same rules either way.
//!
//! `GET /`, `GET /d/{*name}` and `GET /admin` answer with `index.html`: the client routes on its
//! own, and doc names contain `/`. Any other path is a file of the client or a 404. Nothing
//! else falls back to `index.html`, so a missing script is a 404 rather than HTML parsed as
//! JavaScript. When no client is available (none was built into the binary and `--web-dir` is
//! not given, or the directory holds no `index.html`), those pages serve a placeholder page
//! that says how to build one. The API routes are matched before any of this (see `api::router`).
//!
//! Caching: Vite names every file under `assets/` after a hash of its content, so those are
//! `immutable` for a year. Everything else (`index.html`, `sw.js`, the icon, the manifest) is
//! `no-cache`: kept, but revalidated before each use through a strong `ETag` (the SHA-256 of the
//! bytes) and `If-None-Match`. Bodies are gzipped when the browser accepts it; a gzipped body
//! carries the `ETag` with `-gzip` appended inside the quotes, because a strong validator names
//! one exact sequence of bytes.
//!
//! Invariant: a lookup never leaves the client's directory. Paths are checked by `is_servable`
//! (plain ASCII segments, none empty or starting with `.`) before anything touches the disk.
//!
//! Release builds embed `web-client/dist` as it was when the server was compiled (`build.rs`
//! makes cargo recompile when it changes). Debug builds read the same directory from disk on
//! each request (rust-embed's default), so a rebuilt client shows without recompiling.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};
use tower_http::compression::CompressionLayer;
use tracing::warn;

/// `Cache-Control` of the content-hashed files under `assets/`.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of every other file: store it, but revalidate it before each use.
const CACHE_REVALIDATE: &str = "no-cache";
/// Longest request path looked up, in bytes; a longer one is a 404 without a lookup.
const MAX_PATH_BYTES: usize = 512;
/// Bytes of the SHA-256 that go into an `ETag` (128 bits, as hex).
const ETAG_HASH_BYTES: usize = 16;

/// `web-client/dist`, embedded in release builds and read from disk in debug builds. The
/// directory may not exist (the client is built separately); then nothing is embedded.
#[derive(RustEmbed)]
#[folder = "../../web-client/dist"]
#[allow_missing = true]
struct Embedded;

/// Where the client's files come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// `web-client/dist`, built into the binary.
    Embedded,
    /// A directory on disk (`--web-dir`).
    Dir(PathBuf),
}

/// One file, ready to serve.
struct Asset {
    bytes: Bytes,
    /// Strong entity tag, quotes included.
    etag: String,
}

impl Source {
    /// The directory if one is given, otherwise the embedded client.
    pub(crate) fn new(web_dir: Option<PathBuf>) -> Source {
        web_dir.map_or(Source::Embedded, Source::Dir)
    }

    /// Whether there is a client to serve (an `index.html`). Blocks briefly on the disk in debug
    /// builds or with `--web-dir`; meant for start-up.
    pub(crate) fn has_index(&self) -> bool {
        match self {
            Source::Embedded => Embedded::get("index.html").is_some(),
            Source::Dir(dir) => dir.join("index.html").is_file(),
        }
    }

    /// The file at `path` (relative, `/`-separated), read off the async runtime.
    async fn load(&self, path: &str) -> Option<Asset> {
        if !is_servable(path) {
            return None;
        }
        let source = self.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || source.load_blocking(&path))
            .await
            .ok()
            .flatten()
    }

    fn load_blocking(&self, path: &str) -> Option<Asset> {
        match self {
            Source::Embedded => {
                let file = Embedded::get(path)?;
                let bytes = match file.data {
                    Cow::Borrowed(bytes) => Bytes::from_static(bytes),
                    Cow::Owned(bytes) => Bytes::from(bytes),
                };
                Some(Asset {
                    bytes,
                    etag: etag_of(&file.metadata.sha256_hash()),
                })
            }
            Source::Dir(dir) => {
                let full_path = dir.join(path);
                if !std::fs::metadata(&full_path).is_ok_and(|meta| meta.is_file()) {
                    return None;
                }
                let bytes = match std::fs::read(&full_path) {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        warn!(path = %full_path.display(), %error, "cannot read web client file");
                        return None;
                    }
                };
                let hash: [u8; 32] = Sha256::digest(&bytes).into();
                Some(Asset {
                    bytes: Bytes::from(bytes),
                    etag: etag_of(&hash),
                })
            }
        }
    }
}

/// The routes of the web client, with gzip. Meant as the fallback of the API router.
pub(crate) fn router(source: Source) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/d/{*name}", get(index))
        .route("/admin", get(index))
        .fallback(file)
        .with_state(Arc::new(source))
        .layer(CompressionLayer::new())
        // Outside the compression, so it sees the final `Content-Encoding`.
        .layer(middleware::map_response(tag_encoded_etag))
}

async fn index(State(source): State<Arc<Source>>, headers: HeaderMap) -> Response {
    match source.load("index.html").await {
        Some(asset) => respond(&headers, &asset, "index.html"),
        None => placeholder(),
    }
}

async fn file(
    State(source): State<Arc<Source>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
        )
            .into_response();
    }
    let path = uri.path().strip_prefix('/').unwrap_or_default();
    match source.load(path).await {
        Some(asset) => respond(&headers, &asset, path),
        None => not_found(),
    }
}

/// The file as a 200, or a 304 if the request's `If-None-Match` names it.
fn respond(request: &HeaderMap, asset: &Asset, path: &str) -> Response {
    let cache_control = HeaderValue::from_static(if path.starts_with("assets/") {
        CACHE_IMMUTABLE
    } else {
        CACHE_REVALIDATE
    });
    // The body depends on Accept-Encoding (gzip), so every answer says so, 304s included.
    let vary = HeaderValue::from_static("accept-encoding");
    if let Some(etag) = matching_tag(request, &asset.etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache_control),
                (header::VARY, vary),
            ],
        )
            .into_response();
    }
    let etag = HeaderValue::from_str(&asset.etag).expect("an etag is quoted hex, a valid header");
    (
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache_control),
            (header::ETAG, etag),
            (header::VARY, vary),
            nosniff(),
            content_security_policy(),
        ],
        asset.bytes.clone(),
    )
        .into_response()
}

fn placeholder() -> Response {
    (
        [
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_REVALIDATE),
            ),
            nosniff(),
        ],
        Html(include_str!("placeholder.html")),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            nosniff(),
        ],
        "not found\n",
    )
        .into_response()
}

/// The client loads nothing from elsewhere: scripts only from this origin, connections only to
/// this origin's API and WebSocket. Inline styles are allowed because CodeMirror and
/// y-codemirror.next set them; images are limited to this origin and data URLs, so a hostile
/// presence colour cannot make a browser fetch from another host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     worker-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

fn content_security_policy() -> (HeaderName, HeaderValue) {
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    )
}

fn nosniff() -> (HeaderName, HeaderValue) {
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )
}

/// Whether `path` may name a file of the client: `/`-separated segments of ASCII letters,
/// digits, `.`, `-` and `_`, none empty and none starting with `.`. This rules out `..`, hidden
/// files, absolute paths, backslashes and percent-escapes, so a lookup stays inside the client.
fn is_servable(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// The `Content-Type` of a file, by extension. The types a browser is strict about are spelled
/// out (module scripts must be JavaScript, the manifest must be a manifest); mime_guess does
/// the rest.
fn content_type(path: &str) -> HeaderValue {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = name.rsplit_once('.').map_or("", |(_, extension)| extension);
    let known = match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "txt" => "text/plain; charset=utf-8",
        _ => {
            let guessed = mime_guess::from_ext(extension).first_or_octet_stream();
            return HeaderValue::from_str(guessed.as_ref())
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        }
    };
    HeaderValue::from_static(known)
}

/// A strong entity tag from a SHA-256: its first [`ETAG_HASH_BYTES`] bytes as hex, quoted.
fn etag_of(sha256: &[u8; 32]) -> String {
    format!("\"{}\"", hex::encode(&sha256[..ETAG_HASH_BYTES]))
}

/// The entity tag in the request's `If-None-Match` that names this file: `etag` itself, or
/// `etag` with a content coding appended (the tag of its gzipped body). `If-None-Match`
/// compares weakly, so a `W/` prefix is ignored; `*` matches any file that exists.
///
/// Not `headers::IfNoneMatch`: it answers only whether some tag matches one given `ETag`, and
/// the 304 here must name the tag that matched, which may carry any content coding.
fn matching_tag(request: &HeaderMap, etag: &str) -> Option<HeaderValue> {
    let unclosed = etag.strip_suffix('"').unwrap_or(etag);
    for value in request.get_all(header::IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for tag in value.split(',').map(str::trim) {
            if tag == "*" {
                return HeaderValue::from_str(etag).ok();
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let names_this_file = tag == etag
                || tag
                    .strip_prefix(unclosed)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|rest| rest.strip_suffix('"'))
                    .is_some_and(|coding| {
                        !coding.is_empty() && coding.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
            if names_this_file {
                return HeaderValue::from_str(tag).ok();
            }
        }
    }
    None
}

/// Appends the content coding to a strong `ETag` of a body the compression layer encoded.
async fn tag_encoded_etag(mut response: Response) -> Response {
    let headers = response.headers();
    let tagged = match (
        headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
        headers.get(header::ETAG).and_then(|v| v.to_str().ok()),
    ) {
        (Some(coding), Some(etag)) if !etag.starts_with("W/") => etag
            .strip_suffix('"')
            .and_then(|unclosed| HeaderValue::from_str(&format!("{unclosed}-{coding}\"")).ok()),
        _ => None,
    };
    if let Some(tagged) = tagged {
        response.headers_mut().insert(header::ETAG, tagged);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_servable() {
        for path in [
            "index.html",
            "assets/index-DmFum4b8.js",
            "sw.js",
            "a_b/c-d.e",
        ] {
            assert!(is_servable(path), "{path}");
        }
        for path in [
            "",
            "/etc/passwd",
            "../secret",
            "assets/../../secret",
            "assets//x.js",
            ".env",
            "assets/.hidden",
            "a\\b",
            "a%2Fb",
            "d/team/notes.md ",
        ] {
            assert!(!is_servable(path), "{path}");
        }
        assert!(!is_servable(&"a".repeat(MAX_PATH_BYTES + 1)));
    }

    #[test]
    fn content_types_are_the_ones_browsers_insist_on() {
        let cases = [
            ("index.html", "text/html; charset=utf-8"),
            ("assets/app-abc123.js", "text/javascript; charset=utf-8"),
            ("assets/app-abc123.css", "text/css; charset=utf-8"),
            ("manifest.webmanifest", "application/manifest+json"),
            ("favicon.svg", "image/svg+xml"),
            ("icon.png", "image/png"),
            ("v1.2/LICENSE", "application/octet-stream"),
        ];
        for (path, expected) in cases {
            assert_eq!(content_type(path), expected, "{path}");
        }
    }

    #[test]
    fn if_none_match_names_the_file_or_its_gzipped_body() {
        let etag = etag_of(&[0xab; 32]);
        assert_eq!(etag, format!("\"{}\"", "ab".repeat(ETAG_HASH_BYTES)));
        let ask = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            matching_tag(&headers, &etag).map(|tag| tag.to_str().unwrap().to_owned())
        };
        let gzip_tag = format!("{}-gzip\"", etag.trim_end_matches('"'));
        assert_eq!(ask(&etag), Some(etag.clone()));
        assert_eq!(ask(&format!("W/{etag}")), Some(etag.clone()));
        assert_eq!(ask(&format!("\"other\", {gzip_tag}")), Some(gzip_tag));
        assert_eq!(ask("*"), Some(etag.clone()));
        assert_eq!(ask("\"other\""), None);
        assert_eq!(ask(&format!("{}-\"", etag.trim_end_matches('"'))), None);
        assert_eq!(ask(&format!("{}x\"", etag.trim_end_matches('"'))), None);
        assert_eq!(matching_tag(&HeaderMap::new(), &etag), None);
    }
}
