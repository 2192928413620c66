//! What no WebDAV request may bring past the front door, checked before dav-server parses
//! anything: paths with `..`, `.` or encoded separators, `Destination`s outside `/dav/`, XML
//! with a DTD (entity expansion) or nested too deep, infinite `PROPFIND` depth, partial PUTs,
//! and a `COPY` or `MOVE` into its own tree (or onto one of its ancestors, which dav-server
//! would delete first). Pure functions of the request; each refusal is an [`ApiError`].

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;

use super::PREFIX;
use crate::api::error::ApiError;

/// Deepest element nesting accepted in a request body (real bodies nest four or five deep).
pub(crate) const MAX_XML_DEPTH: usize = 32;

fn bad(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::WebDav {
        status,
        code,
        message: message.into(),
    }
}

/// The workspace path of a request path under `/dav`, decoded, without leading or trailing
/// `/`; refused if any segment is `.` or `..`, or hides a separator (`%2F`, `%5C`) or NUL.
pub(crate) fn request_path(raw: &str) -> Result<String, ApiError> {
    let rest = raw
        .strip_prefix(PREFIX)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .ok_or_else(|| {
            bad(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "not a path under /dav/",
            )
        })?;
    let mut segments = Vec::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            continue;
        }
        let lower = segment.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "a path segment may not hide a separator or NUL (%2F, %5C, %00)",
            ));
        }
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| bad(StatusCode::BAD_REQUEST, "bad_path", "a path must be UTF-8"))?;
        if decoded == "." || decoded == ".." {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "a path may not contain . or .. segments",
            ));
        }
        if decoded.contains('\\') {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "a path segment may not contain a backslash",
            ));
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments.join("/"))
}

/// The workspace path a `Destination` header names, and the header to hand on in its place:
/// `/dav/` and that path, percent-encoded, so dav-server reads the very path checked here (a
/// URL parser would, for one, drop a tab and turn `.<TAB>.` into `..`).
pub(crate) fn destination(value: &HeaderValue) -> Result<(String, HeaderValue), ApiError> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let path = destination_path(value)?;
    let encoded: Vec<String> = path
        .split('/')
        .map(|segment| utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string())
        .collect();
    // A folder's trailing slash stays: dav-server compares it with the source's.
    let slash = value
        .to_str()
        .ok()
        .and_then(|text| text.split(['?', '#']).next())
        .is_some_and(|text| text.ends_with('/'))
        && !path.is_empty();
    let rewritten = format!(
        "{PREFIX}/{}{}",
        encoded.join("/"),
        if slash { "/" } else { "" }
    );
    let header = HeaderValue::from_str(&rewritten).map_err(|_| {
        bad(
            StatusCode::BAD_REQUEST,
            "bad_destination",
            "Destination cannot be encoded",
        )
    })?;
    Ok((path, header))
}

/// The workspace path a `Destination` header names: an absolute URL or an absolute path, under
/// `/dav/` on this server, checked like a request path; no control characters (a tab is legal
/// in a header but not in a URL).
pub(crate) fn destination_path(value: &HeaderValue) -> Result<String, ApiError> {
    let text = value.to_str().map_err(|_| {
        bad(
            StatusCode::BAD_REQUEST,
            "bad_destination",
            "Destination must be ASCII",
        )
    })?;
    if text.bytes().any(|byte| byte.is_ascii_control()) {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "bad_destination",
            "Destination may not contain control characters",
        ));
    }
    let path = if text.starts_with('/') {
        text.to_owned()
    } else {
        let url = url::Url::parse(text).map_err(|_| {
            bad(
                StatusCode::BAD_REQUEST,
                "bad_destination",
                "Destination is neither a URL nor an absolute path",
            )
        })?;
        // The raw path, before the URL parser resolves dot segments, so `..` is refused.
        let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
        let raw = after_scheme.find('/').map_or("/", |at| &after_scheme[at..]);
        let raw = raw.split(['?', '#']).next().unwrap_or(raw);
        if url.path().is_empty() {
            "/".to_owned()
        } else {
            raw.to_owned()
        }
    };
    request_path(&path).map_err(|error| match error {
        ApiError::WebDav { message, .. } => bad(
            StatusCode::BAD_REQUEST,
            "bad_destination",
            format!("Destination: {message}"),
        ),
        other => other,
    })
}

/// Refuses what dav-server would take differently from what Tandem promises: `Depth: infinity`
/// on `PROPFIND` (403 with `DAV:propfind-finite-depth`, whatever the client), and a PUT with
/// `Content-Range` (RFC 9110 section 14.5: a partial PUT is refused with 400).
pub(crate) fn check_method(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let depth = headers
        .get("depth")
        .and_then(|value| value.to_str().ok())
        .map(str::trim);
    if method.as_str() == "PROPFIND" && depth.is_some_and(|d| d.eq_ignore_ascii_case("infinity")) {
        return Err(bad(
            StatusCode::FORBIDDEN,
            "propfind-finite-depth",
            "PROPFIND with Depth: infinity is not supported; use Depth 0 or 1",
        ));
    }
    if *method == Method::PUT && headers.contains_key("content-range") {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "partial_put",
            "a PUT with Content-Range is not supported; send the whole file",
        ));
    }
    Ok(())
}

/// Refuses an `If` header whose `<...>` or `[...]` is not closed: dav-server 0.11's parser of
/// the header reads past the end of such a value and panics (`davheaders::scan_until`), and
/// some clients cut long headers short (litmus truncates at 256 bytes).
pub(crate) fn check_if_header(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all("if") {
        let bytes = value.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let close = match bytes[i] {
                b'<' => b'>',
                b'[' => b']',
                _ => {
                    i += 1;
                    continue;
                }
            };
            // As dav-server scans: quotes hide the closing character, whitespace ends the token.
            let mut j = i + 1;
            let mut quote = false;
            loop {
                let Some(&c) = bytes.get(j) else {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        "bad_if_header",
                        "the If header has an unclosed <...> or [...]",
                    ));
                };
                if !quote && c == close {
                    break;
                }
                if c == b' ' || c == b'\t' {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        "bad_if_header",
                        "the If header has whitespace inside <...> or [...]",
                    ));
                }
                if c == b'"' {
                    quote = !quote;
                }
                j += 1;
            }
            i = j + 1;
        }
    }
    Ok(())
}

/// Refuses a `COPY` or `MOVE` from `source` to `destination` when they are the same (a
/// replacement of a file by itself would delete it: 403), or one is inside the other: into its
/// own tree it would never end (or lose the source), onto an ancestor dav-server would first
/// delete the destination, and the source with it. Both are decoded workspace paths, so
/// `a%2Etxt` is `a.txt`.
pub(crate) fn check_copy_move(source: &str, destination: &str) -> Result<(), ApiError> {
    if source == destination {
        return Err(bad(
            StatusCode::FORBIDDEN,
            "onto_itself",
            "the source and the destination are the same",
        ));
    }
    let inside = |inner: &str, outer: &str| {
        outer.is_empty()
            || (inner.len() > outer.len()
                && inner.starts_with(outer)
                && inner.as_bytes()[outer.len()] == b'/')
    };
    if source != destination && inside(destination, source) {
        return Err(bad(
            StatusCode::FORBIDDEN,
            "into_itself",
            "cannot copy or move a folder into itself",
        ));
    }
    if source != destination && inside(source, destination) {
        return Err(bad(
            StatusCode::CONFLICT,
            "onto_ancestor",
            "cannot copy or move onto a folder that holds the source",
        ));
    }
    Ok(())
}

/// Refuses a request body that is not plain XML of bounded depth: any `<!DOCTYPE` or
/// `<!ENTITY` (entity expansion bombs, external entities) and nesting beyond
/// [`MAX_XML_DEPTH`] (the parser below recurses). Well-formedness is left to the parser.
pub(crate) fn check_xml(body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let lower: Vec<u8> = body.iter().map(u8::to_ascii_lowercase).collect();
    if contains(&lower, b"<!doctype") || contains(&lower, b"<!entity") {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "xml_dtd",
            "XML bodies may not contain a DOCTYPE or entity declarations",
        ));
    }
    if nesting_depth(body) > MAX_XML_DEPTH {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "xml_too_deep",
            format!("XML nested deeper than {MAX_XML_DEPTH} elements"),
        ));
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The deepest element nesting of `body`, counting start tags against end tags and skipping
/// comments, processing instructions, CDATA and quoted attribute values. An over-estimate on
/// malformed input, which is refused by the parser anyway.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < body.len() {
        if body[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &body[i..];
        let skip_to = |end: &[u8]| -> usize {
            rest.windows(end.len())
                .position(|window| window == end)
                .map_or(body.len(), |at| i + at + end.len())
        };
        if rest.starts_with(b"<!--") {
            i = skip_to(b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(b">");
        } else {
            // A start tag: find its end outside quotes; `/>` closes it at once.
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            while j < body.len() {
                match (quote, body[j]) {
                    (Some(q), c) if c == q => quote = None,
                    (None, b'"' | b'\'') => quote = Some(body[j]),
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            let self_closing = j > 0 && j < body.len() && body[j - 1] == b'/';
            if !self_closing {
                depth += 1;
                deepest = deepest.max(depth);
            }
            i = j + 1;
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_dot_segments_and_hidden_separators_refused() {
        assert_eq!(request_path("/dav").expect("root"), "");
        assert_eq!(request_path("/dav/").expect("root"), "");
        assert_eq!(
            request_path("/dav/team/notes%20a.md").expect("ok"),
            "team/notes a.md"
        );
        for bad_path in [
            "/dav/../api",
            "/dav/a/%2e%2e/b",
            "/dav/a%2Fb",
            "/dav/a%5cb",
            "/dav/a/./b",
            "/dav/a%00",
            "/davx",
        ] {
            assert!(request_path(bad_path).is_err(), "{bad_path}");
        }
    }

    #[test]
    fn destinations_must_stay_under_dav() {
        let value = |text: &str| HeaderValue::from_str(text).expect("header");
        assert_eq!(
            destination_path(&value("http://h:1/dav/a/b")).expect("url"),
            "a/b"
        );
        assert_eq!(destination_path(&value("/dav/c")).expect("path"), "c");
        assert!(destination_path(&value("http://h/dav/a/../../api")).is_err());
        assert!(destination_path(&value("http://h/api/files/x")).is_err());
        // A URL parser drops the tab and reads `..`.
        assert!(destination_path(&value("http://h/dav/a/.\t./x")).is_err());
        let (path, header) = destination(&value("http://h/dav/a%20b/c%2Etxt")).expect("url");
        assert_eq!(
            (path.as_str(), header.to_str().ok()),
            ("a b/c.txt", Some("/dav/a%20b/c%2Etxt"))
        );
        let (_, folder) = destination(&value("/dav/new/")).expect("folder");
        assert_eq!(folder.to_str().ok(), Some("/dav/new/"));
    }

    #[test]
    fn if_headers_that_would_crash_the_parser_are_refused() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert("if", HeaderValue::from_str(value).expect("header"));
            map
        };
        assert!(check_if_header(&headers(r#"(<urn:uuid:1> ["abc"]) (Not <DAV:no-lock>)"#)).is_ok());
        assert!(check_if_header(&headers(r#"<http://h/dav/a> (<urn:uuid:1>)"#)).is_ok());
        for bad_value in [
            r#"(<urn:uuid:1> ["abc"#,
            "(<urn:uuid:1",
            "([\"a])",
            "(<a b>)",
        ] {
            assert!(check_if_header(&headers(bad_value)).is_err(), "{bad_value}");
        }
    }

    #[test]
    fn copies_and_moves_into_themselves_or_onto_an_ancestor_are_refused() {
        assert!(check_copy_move("a", "a/b").is_err());
        assert!(check_copy_move("a.txt", "a.txt").is_err());
        assert!(check_copy_move("", "").is_err());
        assert!(check_copy_move("a/b", "a").is_err());
        assert!(check_copy_move("a/b", "").is_err());
        assert!(check_copy_move("a", "ab").is_ok());
        assert!(check_copy_move("a", "b/a").is_ok());
    }

    #[test]
    fn dtds_and_deep_nesting_are_refused_before_parsing() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><D:propfind xmlns:D="DAV:">&lol2;</D:propfind>"#;
        assert!(check_xml(bomb).is_err());
        let deep = "<a>".repeat(MAX_XML_DEPTH + 1);
        assert!(check_xml(deep.as_bytes()).is_err());
        let fine = br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><x:a xmlns:x="u" v="/>">t</x:a></D:prop></D:propfind>"#;
        assert!(check_xml(fine).is_ok());
        assert_eq!(nesting_depth(fine), 3);
    }
}
