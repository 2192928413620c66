//! The multistatus of the common PROPFIND, written here instead of by dav-server: depth 0 or 1,
//! for every property (an empty body or `<allprop/>`), every property's name (`<propname/>`), or
//! named properties (`<prop>`, with a `404 Not Found` propstat for the names a resource lacks,
//! as RFC 4918 section 9.1 asks and dav-server 0.11 leaves out: `propfind.rs`).
//!
//! The answer is dav-server's, property for property: the same hrefs, live properties and
//! values, dead properties, lock discovery and status lines (the test
//! `tests/it/dav_propfind.rs` compares the two on one workspace).
//! It is written straight into one buffer sized for the listing: dav-server builds an `xmltree`
//! element per property and runs it through xml-rs's event writer, which took most of a big
//! folder's PROPFIND (`benches/RESULTS.md`, issue 21).
//!
//! Pure: `fs.rs` reads the resources, their dead properties and their locks, and hands them over;
//! this file only reads the request body ([`wanted`]) and writes bytes ([`write`]). A body it
//! does not know (`<include>`, a second element beside the one it reads, anything dav-server
//! would refuse) is `None` from [`wanted`], and dav-server answers as before.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Cursor;

use percent_encoding::utf8_percent_encode;
use xmltree::{Element, EmitterConfig, XMLNode};

use crate::locks::Lock;

const NS_DAV: &str = "DAV:";
const NS_APACHE: &str = "http://apache.org/dav/props/";
const NS_MS: &str = "urn:schemas-microsoft-com:";
const NS_NEXTCLOUD: &str = "http://nextcloud.org/ns";
const NS_OWNCLOUD: &str = "http://owncloud.org/ns";

/// Bytes reserved per response before writing (an `allprop` response of a file is about 700).
const RESPONSE_BYTES: usize = 768;

/// What a PROPFIND asks for.
#[derive(Debug)]
pub(crate) enum Wanted {
    /// Every property: `<allprop/>`, or an empty body.
    All,
    /// The names of every property: `<propname/>`.
    Names,
    /// These properties, in the order asked.
    Named(Vec<Named>),
}

/// One property a `<prop>` names.
#[derive(Debug)]
pub(crate) struct Named {
    /// Empty for no namespace.
    namespace: String,
    name: String,
    prop: Prop,
}

/// Where a named property's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prop {
    Live(Live),
    /// The dead properties (PROPPATCH), DAV:displayname and DAV:getcontentlanguage among them.
    Dead,
}

/// The live properties, as dav-server 0.11 computes them from a resource's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    CreationDate,
    ContentLength,
    ContentType,
    Etag,
    LastModified,
    LockDiscovery,
    ResourceType,
    SupportedLock,
    CurrentUserPrincipal,
    Win32CreationTime,
    Win32FileAttributes,
    Win32LastModifiedTime,
    /// A name in a live namespace with no value here (quota, `executable`, access time, names
    /// dav-server does not know): always `404`.
    Missing,
}

/// dav-server's `<allprop/>` list, without DAV:displayname and DAV:getcontentlanguage, which it
/// only ever answers from the dead properties.
const ALL: [Live; 8] = [
    Live::CreationDate,
    Live::ContentLength,
    Live::ContentType,
    Live::Etag,
    Live::LastModified,
    Live::LockDiscovery,
    Live::ResourceType,
    Live::SupportedLock,
];

/// What dav-server adds to `<allprop/>` for a client whose `User-Agent` names Microsoft
/// (Win32LastAccessTime, also asked, has no value).
const MS_EXTRA: [Live; 3] = [
    Live::Win32CreationTime,
    Live::Win32FileAttributes,
    Live::Win32LastModifiedTime,
];

impl Wanted {
    /// Whether the answer can carry dead properties (so they must be read).
    pub(crate) fn needs_dead(&self) -> bool {
        match self {
            Wanted::All | Wanted::Names => true,
            Wanted::Named(names) => names.iter().any(|named| named.prop == Prop::Dead),
        }
    }

    /// Whether the answer carries `lockdiscovery` (so the locks must be read).
    pub(crate) fn needs_locks(&self) -> bool {
        match self {
            Wanted::All | Wanted::Names => true,
            Wanted::Named(names) => names
                .iter()
                .any(|named| named.prop == Prop::Live(Live::LockDiscovery)),
        }
    }
}

impl Named {
    fn new(namespace: &str, name: &str) -> Named {
        Named {
            prop: classify(namespace, name),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// Which property `{namespace}name` is, as dav-server's `build_prop` decides.
fn classify(namespace: &str, name: &str) -> Prop {
    let live = match namespace {
        NS_DAV => match name {
            "creationdate" => Live::CreationDate,
            "getcontentlength" => Live::ContentLength,
            "getcontenttype" => Live::ContentType,
            "getetag" => Live::Etag,
            "getlastmodified" => Live::LastModified,
            "lockdiscovery" => Live::LockDiscovery,
            "resourcetype" => Live::ResourceType,
            "supportedlock" => Live::SupportedLock,
            "current-user-principal" => Live::CurrentUserPrincipal,
            "displayname" | "getcontentlanguage" => return Prop::Dead,
            _ => Live::Missing,
        },
        NS_MS => match name {
            "Win32CreationTime" => Live::Win32CreationTime,
            "Win32FileAttributes" => Live::Win32FileAttributes,
            "Win32LastModifiedTime" => Live::Win32LastModifiedTime,
            _ => Live::Missing,
        },
        NS_APACHE => Live::Missing,
        _ => return Prop::Dead,
    };
    Prop::Live(live)
}

/// What the PROPFIND body asks for; `None` for a body this writer leaves to dav-server.
pub(crate) fn wanted(body: &[u8]) -> Option<Wanted> {
    if body.is_empty() {
        return Some(Wanted::All);
    }
    let root = Element::parse(Cursor::new(body)).ok()?;
    if root.name != "propfind" || root.namespace.as_deref() != Some(NS_DAV) {
        return None;
    }
    let mut elements = root.children.iter().filter_map(XMLNode::as_element);
    let only = elements.next()?;
    if elements.next().is_some() || only.namespace.as_deref() != Some(NS_DAV) {
        return None;
    }
    match only.name.as_str() {
        "allprop" => Some(Wanted::All),
        "propname" => Some(Wanted::Names),
        "prop" => {
            let names: Vec<Named> = only
                .children
                .iter()
                .filter_map(XMLNode::as_element)
                .map(|prop| Named::new(prop.namespace.as_deref().unwrap_or_default(), &prop.name))
                .collect();
            (!names.is_empty()).then_some(Wanted::Named(names))
        }
        _ => None,
    }
}

/// The request's side of the answer.
pub(crate) struct Request<'a> {
    pub(crate) wanted: &'a Wanted,
    /// The principal dav-server is given (the account, or `anonymous`): the value of
    /// DAV:current-user-principal.
    pub(crate) principal: &'a str,
    /// The `User-Agent` names Microsoft: `<allprop/>` then includes the Win32 properties.
    pub(crate) microsoft: bool,
}

/// A resource's entity tag, as dav-server's metadata gives it (unquoted).
#[derive(Debug)]
pub(crate) enum Etag<'a> {
    /// A folder's: `dir-` and its time in hexadecimal milliseconds.
    Folder(u64),
    /// A file's or a document's.
    Tag(Cow<'a, str>),
}

/// One resource of the answer: the target, or one entry of its folder.
#[derive(Debug)]
pub(crate) struct Resource<'a> {
    /// The workspace path (`""`: the root).
    pub(crate) path: &'a str,
    pub(crate) is_dir: bool,
    /// The href ends with `/`: a folder, or a target asked for with one.
    pub(crate) slash: bool,
    pub(crate) len: u64,
    /// Last modified, and created (the adapter has one time for both), in ms since the epoch.
    pub(crate) modified_ms: u64,
    pub(crate) etag: Etag<'a>,
    /// Its dead properties, in key order; empty for most.
    pub(crate) dead: Vec<DeadProp>,
    /// The unexpired locks covering it, the root's first.
    pub(crate) locks: Vec<Lock>,
}

/// A stored dead property, ready to write.
#[derive(Debug)]
pub(crate) struct DeadProp {
    /// Empty for no namespace.
    namespace: String,
    name: String,
    /// The element as XML without a declaration, written by xml-rs from the stored element
    /// (as dav-server does); `None` if none was stored or it does not parse.
    xml: Option<String>,
}

impl DeadProp {
    pub(crate) fn new(namespace: Option<&str>, name: &str, xml: Option<&[u8]>) -> DeadProp {
        DeadProp {
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.to_owned(),
            xml: xml.and_then(element_xml),
        }
    }
}

/// `stored` (one element, with or without an XML declaration) parsed and written again without
/// the declaration: exactly one well-formed element, carrying its own namespace declarations.
pub(crate) fn element_xml(stored: &[u8]) -> Option<String> {
    let element = Element::parse(Cursor::new(stored)).ok()?;
    let mut out = Vec::with_capacity(stored.len());
    let config = EmitterConfig::new().write_document_declaration(false);
    element.write_with_config(&mut out, config).ok()?;
    String::from_utf8(out).ok()
}

/// The multistatus answering `request` for `resources`, the target first.
pub(crate) fn write(request: &Request<'_>, resources: &[Resource<'_>]) -> Vec<u8> {
    let per_response = match request.wanted {
        Wanted::All | Wanted::Names => RESPONSE_BYTES,
        Wanted::Named(names) => 160 + 96 * names.len(),
    };
    let mut out = String::with_capacity(128 + per_response * resources.len());
    out.push_str(r#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:""#);
    let (mut apache, mut ms, mut nextcloud, mut owncloud) = (false, false, false, false);
    match request.wanted {
        Wanted::All => ms = request.microsoft,
        // dav-server's list of names includes A:executable and Z:Win32LastAccessTime.
        Wanted::Names => (apache, ms) = (true, true),
        Wanted::Named(names) => {
            for named in names {
                match named.namespace.as_str() {
                    NS_APACHE => apache = true,
                    NS_MS => ms = true,
                    NS_NEXTCLOUD => nextcloud = true,
                    NS_OWNCLOUD => owncloud = true,
                    _ => {}
                }
            }
        }
    }
    for (used, prefix, namespace) in [
        (apache, "A", NS_APACHE),
        (ms, "Z", NS_MS),
        (nextcloud, "nc", NS_NEXTCLOUD),
        (owncloud, "oc", NS_OWNCLOUD),
    ] {
        if used {
            let _ = write!(out, r#" xmlns:{prefix}="{namespace}""#);
        }
    }
    out.push('>');
    let mut scratch = Scratch::default();
    for resource in resources {
        write_response(&mut out, request, resource, &mut scratch);
    }
    out.push_str("</D:multistatus>");
    out.into_bytes()
}

const PROPSTAT_OPEN: &str = "<D:propstat><D:prop>";
const PROPSTAT_OK: &str = "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>";
const PROPSTAT_NOT_FOUND: &str =
    "</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>";

/// What the responses of one answer reuse.
#[derive(Default)]
struct Scratch<'a> {
    /// The named properties a response lacks, by index.
    missing: Vec<usize>,
    /// The last extension's content type.
    content_type: Option<(&'a str, &'static str)>,
}

/// One `<D:response>`.
fn write_response<'a>(
    out: &mut String,
    request: &Request<'_>,
    resource: &Resource<'a>,
    scratch: &mut Scratch<'a>,
) {
    out.push_str("<D:response><D:href>");
    push_href(out, resource.path, resource.slash);
    out.push_str("</D:href>");
    let date = Date::of_ms(resource.modified_ms);
    match request.wanted {
        Wanted::All | Wanted::Names => {
            let content = matches!(request.wanted, Wanted::All);
            out.push_str(PROPSTAT_OPEN);
            for live in ALL {
                write_live(out, live, resource, &date, request, content, scratch);
            }
            if content && request.microsoft {
                for live in MS_EXTRA {
                    write_live(out, live, resource, &date, request, content, scratch);
                }
            }
            // Every stored property, with its value even for `<propname/>`, as dav-server.
            for dead in &resource.dead {
                match &dead.xml {
                    Some(xml) => out.push_str(xml),
                    None => push_empty(out, &dead.namespace, &dead.name),
                }
            }
            out.push_str(PROPSTAT_OK);
        }
        Wanted::Named(names) => {
            scratch.missing.clear();
            let start = out.len();
            out.push_str(PROPSTAT_OPEN);
            let props_start = out.len();
            for (idx, named) in names.iter().enumerate() {
                let found = match named.prop {
                    Prop::Live(live) => {
                        write_live(out, live, resource, &date, request, true, scratch)
                    }
                    Prop::Dead => {
                        let stored = resource.dead.iter().find(|dead| {
                            dead.name == named.name && dead.namespace == named.namespace
                        });
                        match stored.and_then(|dead| dead.xml.as_deref()) {
                            Some(xml) => {
                                out.push_str(xml);
                                true
                            }
                            None => false,
                        }
                    }
                };
                if !found {
                    scratch.missing.push(idx);
                }
            }
            if out.len() == props_start {
                out.truncate(start);
            } else {
                out.push_str(PROPSTAT_OK);
            }
            if !scratch.missing.is_empty() {
                out.push_str(PROPSTAT_OPEN);
                for &idx in &scratch.missing {
                    let named = &names[idx];
                    push_empty(out, &named.namespace, &named.name);
                }
                out.push_str(PROPSTAT_NOT_FOUND);
            }
        }
    }
    out.push_str("</D:response>");
}

/// Writes live property `live` of `resource`; `false` (nothing written) if it has none.
/// `content`: with its value (`<propname/>` asks for names only).
fn write_live<'a>(
    out: &mut String,
    live: Live,
    resource: &Resource<'a>,
    date: &Date,
    request: &Request<'_>,
    content: bool,
    scratch: &mut Scratch<'a>,
) -> bool {
    let (tag, value): (&str, Value<'_>) = match live {
        Live::CreationDate => ("D:creationdate", Value::Rfc3339),
        Live::ContentLength if resource.is_dir => return false,
        Live::ContentLength => ("D:getcontentlength", Value::Number(resource.len)),
        Live::ContentType if resource.is_dir => {
            ("D:getcontenttype", Value::Text("httpd/unix-directory"))
        }
        Live::ContentType => (
            "D:getcontenttype",
            Value::Text(content_type(resource.path, &mut scratch.content_type)),
        ),
        Live::Etag => ("D:getetag", Value::Etag),
        Live::LastModified => ("D:getlastmodified", Value::HttpDate),
        Live::Win32CreationTime => ("Z:Win32CreationTime", Value::HttpDate),
        Live::Win32LastModifiedTime => ("Z:Win32LastModifiedTime", Value::HttpDate),
        Live::Win32FileAttributes => ("Z:Win32FileAttributes", Value::Attributes),
        Live::ResourceType => {
            out.push_str(if content && resource.is_dir {
                "<D:resourcetype><D:collection/></D:resourcetype>"
            } else {
                "<D:resourcetype/>"
            });
            return true;
        }
        // These two come whole, even for `<propname/>`, as dav-server writes them.
        Live::SupportedLock => {
            out.push_str(SUPPORTED_LOCK);
            return true;
        }
        Live::LockDiscovery => {
            write_lock_discovery(out, &resource.locks);
            return true;
        }
        Live::CurrentUserPrincipal => {
            out.push_str("<D:current-user-principal><D:href>");
            push_text(out, request.principal);
            out.push_str("</D:href></D:current-user-principal>");
            return true;
        }
        Live::Missing => return false,
    };
    out.push('<');
    out.push_str(tag);
    if !content {
        out.push_str("/>");
        return true;
    }
    out.push('>');
    match value {
        Value::Text(text) => push_text(out, text),
        Value::Number(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Rfc3339 => date.push_rfc3339(out),
        Value::HttpDate => date.push_http(out),
        Value::Etag => match &resource.etag {
            Etag::Folder(ms) => {
                let _ = write!(out, "dir-{ms:x}");
            }
            Etag::Tag(tag) => push_text(out, tag),
        },
        Value::Attributes => {
            let name = resource.path.rsplit('/').next().unwrap_or_default();
            let hidden = if name.starts_with('.') { 0x2 } else { 0 };
            let kind = if resource.is_dir { 0x10 } else { 0x20 };
            let _ = write!(out, "{:08x}", hidden | kind);
        }
    }
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
    true
}

/// A live property's value.
enum Value<'a> {
    Text(&'a str),
    Number(u64),
    Rfc3339,
    HttpDate,
    Etag,
    Attributes,
}

const SUPPORTED_LOCK: &str = "<D:supportedlock>\
    <D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>\
    <D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>\
    </D:supportedlock>";

/// DAV:lockdiscovery with an `activelock` per lock, as dav-server's `build_lock_prop`.
fn write_lock_discovery(out: &mut String, locks: &[Lock]) {
    if locks.is_empty() {
        out.push_str("<D:lockdiscovery/>");
        return;
    }
    out.push_str("<D:lockdiscovery>");
    for lock in locks {
        out.push_str("<D:activelock><D:lockscope>");
        out.push_str(if lock.shared {
            "<D:shared/>"
        } else {
            "<D:exclusive/>"
        });
        out.push_str("</D:lockscope><D:locktype><D:write/></D:locktype><D:depth>");
        out.push_str(if lock.deep { "Infinity" } else { "0" });
        let _ = write!(
            out,
            "</D:depth><D:timeout>Second-{}</D:timeout><D:locktoken><D:href>",
            lock.timeout_ms / 1000
        );
        push_text(out, &lock.token);
        out.push_str("</D:href></D:locktoken><D:lockroot><D:href>");
        push_href(out, &lock.path, false);
        out.push_str("</D:href></D:lockroot>");
        if let Some(owner) = lock
            .owner
            .as_deref()
            .and_then(|owner| element_xml(owner.as_bytes()))
        {
            out.push_str(&owner);
        }
        out.push_str("</D:activelock>");
    }
    out.push_str("</D:lockdiscovery>");
}

/// `<name xmlns="namespace"/>`: a property without its value.
fn push_empty(out: &mut String, namespace: &str, name: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str(" xmlns=\"");
    push_text(out, namespace);
    out.push_str("\"/>");
}

/// The href of workspace path `path`: the mount prefix and the path percent-encoded as
/// dav-server encodes it (everything but unreserved characters and `/`), with a trailing `/` if
/// `slash` (the root's is always there).
pub(crate) fn push_href(out: &mut String, path: &str, slash: bool) {
    out.push_str(super::PREFIX);
    out.push('/');
    for chunk in utf8_percent_encode(path, super::ls::PATH_SEGMENT) {
        out.push_str(chunk);
    }
    if slash && !path.is_empty() {
        out.push('/');
    }
}

/// `text` escaped for XML character data and attribute values; a control character XML 1.0
/// does not allow becomes U+FFFD, so the document stays well-formed whatever a value holds.
fn push_text(out: &mut String, text: &str) {
    let mut done = 0;
    for (idx, byte) in text.bytes().enumerate() {
        let replacement = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\t' | b'\n' | b'\r' => continue,
            byte if byte < 0x20 => "\u{fffd}",
            _ => continue,
        };
        out.push_str(&text[done..idx]);
        out.push_str(replacement);
        done = idx + 1;
    }
    out.push_str(&text[done..]);
}

/// dav-server's DAV:getcontenttype of a file: by the extension of its name (`mime_guess`),
/// else `application/octet-stream`; the last extension's type is kept, since a folder's files
/// mostly share theirs.
fn content_type<'a>(path: &'a str, last: &mut Option<(&'a str, &'static str)>) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some((_, ext)) = name.rsplit_once('.') else {
        return "application/octet-stream";
    };
    if let Some((last_ext, found)) = *last
        && last_ext == ext
    {
        return found;
    }
    let found = mime_guess::from_ext(ext)
        .first_raw()
        .unwrap_or("application/octet-stream");
    *last = Some((ext, found));
    found
}

/// A time in UTC, to the second, as the two formats need it.
struct Date {
    year: i64,
    month: u32,
    day: u32,
    /// 0 is Sunday.
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Date {
    fn of_ms(ms: u64) -> Date {
        let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX / 2);
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month,
            day,
            weekday: (days + 4).rem_euclid(7) as u32,
            hour: in_day / 3600,
            minute: in_day / 60 % 60,
            second: in_day % 60,
        }
    }

    /// RFC 3339 without fractions, as dav-server's DAV:creationdate: `1994-11-06T08:49:37Z`.
    fn push_rfc3339(&self, out: &mut String) {
        self.push_year(out);
        out.push('-');
        push_two_digits(out, self.month);
        out.push('-');
        push_two_digits(out, self.day);
        out.push('T');
        self.push_clock(out);
        out.push('Z');
    }

    /// The HTTP date (RFC 9110 IMF-fixdate), as dav-server's DAV:getlastmodified:
    /// `Sun, 06 Nov 1994 08:49:37 GMT`.
    fn push_http(&self, out: &mut String) {
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        out.push_str(DAYS[self.weekday as usize % 7]);
        out.push_str(", ");
        push_two_digits(out, self.day);
        out.push(' ');
        out.push_str(MONTHS[(self.month as usize + 11) % 12]);
        out.push(' ');
        self.push_year(out);
        out.push(' ');
        self.push_clock(out);
        out.push_str(" GMT");
    }

    fn push_year(&self, out: &mut String) {
        match u32::try_from(self.year) {
            Ok(year) if year <= 9999 => {
                push_two_digits(out, year / 100);
                push_two_digits(out, year % 100);
            }
            _ => {
                let _ = write!(out, "{:04}", self.year);
            }
        }
    }

    /// `hh:mm:ss`.
    fn push_clock(&self, out: &mut String) {
        push_two_digits(out, self.hour);
        out.push(':');
        push_two_digits(out, self.minute);
        out.push(':');
        push_two_digits(out, self.second);
    }
}

/// `number` (below 100) as two digits.
fn push_two_digits(out: &mut String, number: u32) {
    out.push(char::from(b'0' + (number / 10 % 10) as u8));
    out.push(char::from(b'0' + (number % 10) as u8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_are_written_as_http_dates_and_rfc_3339() {
        for secs in [
            0u64,
            784_111_777,
            951_782_400, // 2000-02-29
            1_709_164_799,
            1_796_688_000,
            4_102_444_799,   // 2099-12-31T23:59:59
            253_402_300_799, // 9999-12-31T23:59:59
        ] {
            let date = Date::of_ms(secs * 1000 + 999);
            let mut http = String::new();
            date.push_http(&mut http);
            let expected = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(http, expected, "{secs}");
            let mut rfc = String::new();
            date.push_rfc3339(&mut rfc);
            // RFC 3339 is the HTTP date's fields in another order.
            let parsed = httpdate::parse_http_date(&expected).expect("parses");
            assert_eq!(parsed, UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(rfc.len(), 20, "{rfc}");
            assert_eq!(&rfc[..4], &expected[12..16], "{rfc} {expected}");
            assert_eq!(&rfc[11..19], &expected[17..25], "{rfc} {expected}");
        }
        let mut rfc = String::new();
        Date::of_ms(784_111_777_000).push_rfc3339(&mut rfc);
        assert_eq!(rfc, "1994-11-06T08:49:37Z");
    }

    #[test]
    fn text_and_attributes_are_escaped() {
        let mut out = String::new();
        push_text(&mut out, "a&b<c>\"d\" é\u{1}\tz");
        assert_eq!(out, "a&amp;b&lt;c&gt;&quot;d&quot; é\u{fffd}\tz");
        let mut href = String::new();
        push_href(&mut href, "team/a&b \"q\" é.txt", false);
        assert_eq!(href, "/dav/team/a%26b%20%22q%22%20%C3%A9.txt");
        let mut root = String::new();
        push_href(&mut root, "", true);
        assert_eq!(root, "/dav/");
    }

    #[test]
    fn bodies_other_than_the_common_ones_are_left_to_dav_server() {
        assert!(matches!(wanted(b""), Some(Wanted::All)));
        assert!(matches!(
            wanted(br#"<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"#),
            Some(Wanted::All)
        ));
        assert!(matches!(
            wanted(br#"<propfind xmlns="DAV:"><propname/></propfind>"#),
            Some(Wanted::Names)
        ));
        let Some(Wanted::Named(names)) = wanted(
            br#"<propfind xmlns="DAV:"><prop><getetag/><displayname/><x:a xmlns:x="urn:x"/><b xmlns=""/><quota-used-bytes/></prop></propfind>"#,
        ) else {
            panic!("named");
        };
        let props: Vec<Prop> = names.iter().map(|named| named.prop).collect();
        assert_eq!(
            props,
            [
                Prop::Live(Live::Etag),
                Prop::Dead,
                Prop::Dead,
                Prop::Dead,
                Prop::Live(Live::Missing)
            ]
        );
        for body in [
            &br#"<propfind xmlns="DAV:"><allprop/><include><x/></include></propfind>"#[..],
            br#"<propfind xmlns="DAV:"><prop/></propfind>"#,
            br#"<propfind xmlns="DAV:"></propfind>"#,
            br#"<other xmlns="DAV:"><allprop/></other>"#,
            br#"<propfind xmlns="urn:x"><allprop/></propfind>"#,
            br#"<propfind xmlns="DAV:"><x:allprop xmlns:x="urn:x"/></propfind>"#,
            b" ",
            b"<propfind",
        ] {
            assert!(wanted(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_stored_element_is_written_whole_without_its_declaration() {
        let xml = element_xml(
            br#"<?xml version="1.0" encoding="UTF-8"?><Z:Author xmlns:Z="urn:z" a="1&amp;">Jim &amp; <Z:x>y</Z:x></Z:Author>"#,
        )
        .expect("parses");
        assert_eq!(
            xml,
            r#"<Z:Author xmlns:Z="urn:z" a="1&amp;">Jim &amp; <Z:x>y</Z:x></Z:Author>"#
        );
        // Only the first element of stored bytes is ever written.
        assert_eq!(element_xml(b"<a/><b/>").as_deref(), Some("<a />"));
        assert!(element_xml(b"<a>").is_none());
    }

    #[test]
    fn a_named_propfind_gets_200_and_404_propstats() {
        let Some(wanted) = wanted(
            br#"<propfind xmlns="DAV:"><prop><getetag/><getcontentlength/><x:a xmlns:x="urn:x&amp;y"/></prop></propfind>"#,
        ) else {
            panic!("named");
        };
        let request = Request {
            wanted: &wanted,
            principal: "ann",
            microsoft: false,
        };
        let folder = Resource {
            path: "team",
            is_dir: true,
            slash: true,
            len: 0,
            modified_ms: 784_111_777_000,
            etag: Etag::Folder(255),
            dead: Vec::new(),
            locks: Vec::new(),
        };
        let file = Resource {
            path: "team/a b.txt",
            is_dir: false,
            slash: false,
            len: 12,
            modified_ms: 0,
            etag: Etag::Tag(Cow::Borrowed("abc")),
            dead: vec![DeadProp::new(
                Some("urn:x&y"),
                "a",
                Some(br#"<a xmlns="urn:x&amp;y">v</a>"#),
            )],
            locks: Vec::new(),
        };
        let out = String::from_utf8(write(&request, &[folder, file])).expect("utf-8");
        assert_eq!(
            out,
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:">"#,
                "<D:response><D:href>/dav/team/</D:href>",
                "<D:propstat><D:prop><D:getetag>dir-ff</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>",
                r#"<D:propstat><D:prop><getcontentlength xmlns="DAV:"/><a xmlns="urn:x&amp;y"/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"#,
                "</D:response>",
                "<D:response><D:href>/dav/team/a%20b.txt</D:href>",
                r#"<D:propstat><D:prop><D:getetag>abc</D:getetag><D:getcontentlength>12</D:getcontentlength><a xmlns="urn:x&amp;y">v</a></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"#,
                "</D:response></D:multistatus>"
            )
        );
        Element::parse(out.as_bytes()).expect("well-formed");
    }
}
