//! `GET` and `HEAD /api/files/{path}`: the file streamed from its blob, with single byte ranges,
//! `If-Range`, a strong `ETag` (the quoted SHA-256), `If-None-Match`/`If-Modified-Since`,
//! `Last-Modified` and a `Content-Disposition` with an ASCII and a UTF-8 file name.
//!
//! A blob never changes once written, so its hash is a strong validator for every version.
//!
//! `HEAD` and `GET` take the same path up to the body: both open the blob and check its length
//! before answering, so they agree in status and headers. A blob missing while a committed
//! version still names it is a storage fault (500 `storage_fault`, logged at error level), not a
//! 404: the file exists, its bytes were lost.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tandem_core::DocId;

use super::AppState;
use super::error::ApiError;
use super::files::{grant_for, load_entry, path_from};
use crate::files::{BlobReader, FileError, Files, last_segment};

/// Characters kept as they are in an RFC 5987 `filename*` value (its `attr-char`).
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What a `Range` header asks of a representation of some length.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// No range, one we ignore (several, or malformed): the whole file with 200.
    Full,
    /// Bytes `start..=end`, with 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `len` bytes (RFC 9110 section 14).
///
/// Hand-written rather than `headers::Range`: that one knows only a lower-case `bytes=` with no
/// space around the unit, and silently drops the specs it cannot parse, so `bytes=0-9,x` would
/// look like one range; here any list of several, and anything malformed, serves the whole file.
pub(crate) fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    if first.is_empty() {
        // A suffix: the last N bytes.
        let Some(n) = number(last) else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial {
            start: len - n.min(len),
            end: len - 1,
        };
    }
    let Some(start) = number(first) else {
        return RangeAnswer::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        start,
        end: end.map_or(len - 1, |end| end.min(len - 1)),
    }
}

/// `Content-Disposition` with an ASCII fallback `filename` and the exact UTF-8 `filename*`.
pub(crate) fn content_disposition(name: &str, inline: bool) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, ATTR_CHAR);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Whether an `If-None-Match` list matches `etag` (weak comparison).
///
/// Hand-written rather than `headers::IfNoneMatch`: in debug builds that one trips a
/// `debug_assert` (a panic) on a tag with a space in it, which any client can send.
fn none_match(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// Whether `If-Range` lets the range apply: the strong ETag, or exactly the last-modified time.
///
/// Hand-written rather than `headers::IfRange`: that one lets a range apply for any date at or
/// after `Last-Modified`, where RFC 9110 section 13.1.5 asks for an exact match, and it treats a
/// value it cannot parse as no `If-Range` at all, where we serve the whole file.
fn if_range_holds(value: &str, etag: &str, modified_secs: u64) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return value == etag;
    }
    httpdate::parse_http_date(value)
        .ok()
        .and_then(|date| date.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|date| date.as_secs() == modified_secs)
}

/// Opens the blob of `sha256` of `len` bytes, a version of the file at `path`. A missing blob
/// is a 404 only if no version of the file names it any more (deleted after the entry was read:
/// a delete commits before it removes the blob); otherwise it is a storage fault.
async fn open_blob(
    files: &Files,
    path: &DocId,
    sha256: &str,
    len: u64,
) -> Result<BlobReader, ApiError> {
    let open = async || match files.open_blob(sha256).await {
        Ok(opened) => Ok(opened),
        Err(FileError::Internal) => Err(ApiError::StorageFault),
        Err(error) => Err(ApiError::from(error)),
    };
    let (blob, stored_len) = match open().await? {
        Some(opened) => opened,
        None => {
            let entry = load_entry(files, path).await?;
            if !entry
                .versions
                .iter()
                .any(|version| version.sha256 == sha256)
            {
                return Err(FileError::NotFound.into());
            }
            // Still named: opened once more, in case the same bytes were uploaded again
            // between the delete that removed the blob and the read of the entry.
            match open().await? {
                Some(opened) => opened,
                None => {
                    tracing::error!(path = %path, sha256, "the blob of a stored file is missing");
                    return Err(ApiError::StorageFault);
                }
            }
        }
    };
    if stored_len != len {
        tracing::error!(path = %path, sha256, stored_len, len, "blob has the wrong length");
        return Err(ApiError::StorageFault);
    }
    Ok(blob)
}

/// The query of a download; other parameters (`token`) are not ours.
#[derive(Deserialize)]
struct DownloadQuery {
    /// The version to serve, the current one if absent. The only parameter that can be bad.
    version: Option<u64>,
    /// `1` or `true` serves the file `inline` rather than as an `attachment`; any other value
    /// is `false`.
    #[serde(default, deserialize_with = "flag")]
    inline: bool,
}

/// A query flag: set by `1` or `true`, clear by anything else.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let value = String::deserialize(deserializer)?;
    Ok(value == "1" || value == "true")
}

/// `GET`/`HEAD /api/files/{path}[?version=N][&inline=1]`.
///
/// The file's bytes, streamed, with conditional requests and one `Range` (`files.md`). `HEAD`
/// answers with the same status and headers and no body.
#[utoipa::path(
    method(get, head),
    path = "/api/files/{path}",
    operation_id = "get_file",
    summary = "The bytes of a file, or of one of its versions",
    tag = "files",
    params(
        super::openapi::FilePath,
        ("version" = Option<u64>, Query, description = "Serve this version instead of the current one"),
        ("inline" = Option<String>, Query, description = "`1` or `true`: `Content-Disposition: inline`"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = super::openapi::Binary,
            headers(("ETag" = String, description = "The SHA-256, quoted"), ("Content-Disposition" = String))),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = super::openapi::Binary,
            headers(("Content-Range" = String))),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
        (status = 400, description = "`bad_doc_name`, `bad_upload` (a bad `version`)", body = super::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 403, description = "`forbidden`", body = super::openapi::ErrorJson),
        (status = 404, description = "`file_not_found`, `version_not_found`", body = super::openapi::ErrorJson),
        (status = 416, description = "`range_not_satisfiable`", body = super::openapi::ErrorJson),
        (status = 500, description = "`storage_fault`: the bytes were lost", body = super::openapi::ErrorJson),
    ),
)]
pub(crate) async fn get_file(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = path_from(&uri, "/api/files/")?;
    grant_for(&state, &headers, &uri, &path)?;
    // After the grant, so a bad token is refused before a bad query value.
    let Query(DownloadQuery { version, inline }) = Query::try_from_uri(&uri)
        .map_err(|_| FileError::BadRequest("version must be a positive integer".into()))?;
    let entry = load_entry(&state.files, &path).await?;
    let version = match version {
        None => entry.current(),
        Some(number) => entry
            .versions
            .iter()
            .find(|version| version.version == number)
            .ok_or(FileError::VersionNotFound)?,
    };
    let len = version.size;
    // Before any answer, so HEAD, GET and conditional requests all see a lost blob.
    let blob = open_blob(&state.files, &path, &version.sha256, len).await?;
    let etag = format!("\"{}\"", version.sha256);
    let modified = UNIX_EPOCH + Duration::from_millis(version.uploaded_ms);
    let modified_secs = version.uploaded_ms / 1000;
    let mut common = HeaderMap::new();
    let value = |text: &str| HeaderValue::from_str(text).map_err(|_| ApiError::Internal);
    common.insert(header::ETAG, value(&etag)?);
    common.insert(
        header::LAST_MODIFIED,
        value(&httpdate::fmt_http_date(modified))?,
    );
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );

    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(value) => value.to_str().is_ok_and(|value| none_match(value, &etag)),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| httpdate::parse_http_date(value).ok())
            .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|since| modified_secs <= since.as_secs()),
    };
    if not_modified {
        // The length a 200 would send (RFC 9110 section 8.6), else axum fills in a wrong `0`
        // for HEAD. hyper leaves it out of a GET's 304, which has no body to measure.
        common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }

    let range_applies = headers.get(header::IF_RANGE).is_none_or(|value| {
        value
            .to_str()
            .is_ok_and(|value| if_range_holds(value, &etag, modified_secs))
    });
    let range = match headers.get(header::RANGE) {
        Some(value) if range_applies => value
            .to_str()
            .map_or(RangeAnswer::Full, |value| parse_range(value, len)),
        _ => RangeAnswer::Full,
    };
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range == RangeAnswer::Unsatisfiable {
        let mut response = ApiError::from(FileError::RangeNotSatisfiable).into_response();
        response.headers_mut().extend(common);
        response
            .headers_mut()
            .insert(header::CONTENT_RANGE, value(&format!("bytes */{len}"))?);
        return Ok(response);
    }
    let (status, start, n_bytes) = match range {
        RangeAnswer::Partial { start, end } => {
            common.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{len}"))?,
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        _ => (StatusCode::OK, 0, len),
    };
    let content_type = HeaderValue::from_str(&version.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    common.insert(header::CONTENT_TYPE, content_type);
    common.insert(
        header::CONTENT_DISPOSITION,
        value(&content_disposition(last_segment(path.as_str()), inline))?,
    );
    common.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Served from our origin, a stored HTML or SVG file must not run scripts there. PDF viewers
    // refuse sandboxed documents, and a PDF's scripts do not run on the origin anyway.
    if version.content_type != "application/pdf" {
        common.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
    }
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(n_bytes));
    if method == Method::HEAD {
        return Ok((status, common).into_response());
    }
    // On disk, once open, a delete no longer affects this download. On S3 a delete between the
    // check above and this read fails the read (the blob had just stopped being named).
    let stream = blob.stream(start, n_bytes).await?;
    Ok((status, common, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-500", 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-", 100), Full);
    }

    #[test]
    fn dispositions_carry_an_ascii_fallback_and_the_utf8_name() {
        assert_eq!(
            content_disposition("Grüße \"neu\".txt", false),
            "attachment; filename=\"Gr__e _neu_.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22neu%22.txt"
        );
        assert!(content_disposition("a.png", true).starts_with("inline; "));
    }

    #[test]
    fn validators_compare_as_the_rfc_says() {
        assert!(none_match("W/\"ab\", \"cd\"", "\"ab\""));
        assert!(none_match("*", "\"ab\""));
        assert!(!none_match("\"cd\"", "\"ab\""));
        assert!(if_range_holds("\"ab\"", "\"ab\"", 0));
        assert!(!if_range_holds("W/\"ab\"", "\"ab\"", 0));
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(5_000));
        assert!(if_range_holds(&date, "\"ab\"", 5));
        assert!(!if_range_holds(&date, "\"ab\"", 6));
    }
}
