//! PROPFIND answered by Tandem's own multistatus writer (`api/dav/multistatus.rs`) against the
//! same PROPFIND answered by dav-server, on one workspace: folders (made and implied), files,
//! a live document, dead properties (namespaced, with XML content, DAV:displayname, one without
//! a namespace), locks (an exclusive one with an owner, a deep shared one on a folder) and names
//! that need escaping. Each answer is parsed and compared per response: the href, and for each
//! propstat status the set of properties (namespace, name, value with its child elements).
//!
//! dav-server still answers every PROPFIND body the writer does not know; a body with one more
//! element it ignores (`<x:ignored/>` beside `<allprop/>` or `<prop>`) is such a body, and asks
//! for the very same properties, so it reaches dav-server's answer through the real server.

use std::collections::BTreeMap;

use tandem_tests::{HttpResponse, TestServer, wait_until};
use xmltree::{Element, XMLNode};
use yrs::{Doc, Text, Transact};

/// A body element the writer does not know, which dav-server ignores.
const IGNORED: &str = r#"<x:ignored xmlns:x="urn:tandem-test"/>"#;

const NAMED: &str = concat!(
    "<D:prop>",
    "<D:getetag/><D:getcontentlength/><D:getlastmodified/><D:creationdate/><D:getcontenttype/>",
    "<D:resourcetype/><D:displayname/><D:getcontentlanguage/><D:lockdiscovery/><D:supportedlock/>",
    "<D:current-user-principal/><D:quota-used-bytes/><D:nonesuch/>",
    "<Z:Author/><Z:nothing/><W:Win32FileAttributes/><W:Win32LastModifiedTime/>",
    "<W:Win32LastAccessTime/><A:executable/><plain xmlns=\"\"/><c:colour xmlns:c=\"urn:t\"/>",
    "</D:prop>"
);

async fn dav(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    server
        .request(method, &format!("/dav{path}"), headers, body)
        .await
}

/// A PROPFIND body around `inner` (`<allprop/>`, `<propname/>` or a `<prop>`).
fn propfind_body(inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:Z="http://ns.example.com/z/" xmlns:W="urn:schemas-microsoft-com:" xmlns:A="http://apache.org/dav/props/">{inner}</D:propfind>"#
    )
}

/// What a case asks, the body for the writer, the body for dav-server, extra headers.
type Case<'a> = (&'a str, String, String, &'a [(&'a str, &'a str)]);

/// Status line -> the properties of that propstat, each in canonical form, sorted.
type Propstats = BTreeMap<String, Vec<String>>;

/// The responses of a multistatus, in order: href and propstats.
fn responses(response: &HttpResponse) -> Vec<(String, Propstats)> {
    let root = Element::parse(response.body.as_slice())
        .unwrap_or_else(|error| panic!("not XML ({error}): {}", response.text()));
    assert_eq!(root.name, "multistatus");
    assert_eq!(root.namespace.as_deref(), Some("DAV:"));
    dav_children(&root, "response")
        .map(|item| {
            let href = dav_children(item, "href")
                .next()
                .and_then(|href| href.get_text())
                .map(|text| text.into_owned())
                .unwrap_or_default();
            let mut propstats = Propstats::new();
            for propstat in dav_children(item, "propstat") {
                let status = dav_children(propstat, "status")
                    .next()
                    .and_then(|status| status.get_text())
                    .map(|text| text.into_owned())
                    .unwrap_or_default();
                let props = propstats.entry(status).or_default();
                for prop in dav_children(propstat, "prop") {
                    props.extend(
                        prop.children
                            .iter()
                            .filter_map(XMLNode::as_element)
                            .map(canonical),
                    );
                }
                props.sort();
            }
            (href, propstats)
        })
        .collect()
}

fn dav_children<'a>(element: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> {
    element
        .children
        .iter()
        .filter_map(XMLNode::as_element)
        .filter(move |child| child.name == name && child.namespace.as_deref() == Some("DAV:"))
}

/// `{namespace}name[attributes](children and text)`: what an element says, whatever prefixes
/// and namespace declarations carry it; text is trimmed, whitespace between elements ignored.
fn canonical(element: &Element) -> String {
    let mut out = format!(
        "{{{}}}{}",
        element.namespace.as_deref().unwrap_or_default(),
        element.name
    );
    let mut attributes: Vec<(String, String)> = element
        .attributes
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect();
    attributes.sort();
    for (key, value) in attributes {
        out.push_str(&format!("[{key}={value:?}]"));
    }
    out.push('(');
    for node in &element.children {
        match node {
            XMLNode::Element(child) => out.push_str(&canonical(child)),
            XMLNode::Text(text) | XMLNode::CData(text) if !text.trim().is_empty() => {
                out.push_str(&format!("{:?}", text.trim()));
            }
            _ => {}
        }
    }
    out.push(')');
    out
}

/// Inserts `text` into the root text `content` of `doc` through a real peer and waits until
/// WebDAV serves it.
async fn write_doc(server: &TestServer, doc: &str, text: &str) {
    let mut peer = server.connect(doc).await;
    let local = Doc::new();
    let update = {
        let content = local.get_or_insert_text("content");
        let mut txn = local.transact_mut();
        content.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    };
    peer.send_update(&update).await;
    let path = format!("/{doc}");
    wait_until("the document's text is served", async || {
        String::from_utf8(dav(server, "GET", &path, &[], b"").await.body)
            .is_ok_and(|served| served.contains(text))
    })
    .await;
    peer.close().await;
}

async fn expect(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    statuses: &[u16],
) {
    let response = dav(server, method, path, headers, body.as_bytes()).await;
    assert!(
        statuses.contains(&response.status),
        "{method} {path}: {} {}",
        response.status,
        response.text()
    );
}

/// The escaped name of a file whose name needs escaping in a URL and in XML.
const ODD: &str = "/team/a%26b%20%3Cc%3E%20%22q%22%20%C3%A9t%C3%A9.bin";

#[tokio::test]
async fn propfind_answers_as_dav_server_does() {
    let server = TestServer::start().await;
    expect(&server, "MKCOL", "/team", &[], "", &[201]).await;
    expect(&server, "MKCOL", "/team/empty", &[], "", &[201]).await;
    expect(&server, "PUT", "/team/plain.txt", &[], "plain text", &[201]).await;
    expect(&server, "PUT", ODD, &[], "odd", &[201]).await;
    expect(&server, "PUT", "/team/.hidden", &[], "", &[201]).await;
    expect(&server, "PUT", "/team/locked.md", &[], "# locked", &[201]).await;
    // A folder only a file's name implies.
    let put = server
        .request("PUT", "/api/files/team/sub/deep.json", &[], b"{}")
        .await;
    assert_eq!(put.status, 201, "{}", put.text());
    write_doc(&server, "team/notes.md", "# Notes & <more>\n").await;
    let patch = concat!(
        r#"<D:propertyupdate xmlns:D="DAV:" xmlns:Z="http://ns.example.com/z/"><D:set><D:prop>"#,
        r#"<Z:Author>Jim &amp; <Z:b kind="x&quot;y">bold</Z:b> été</Z:Author>"#,
        r#"<plain xmlns="">no namespace</plain>"#,
        "</D:prop></D:set></D:propertyupdate>"
    );
    expect(&server, "PROPPATCH", "/team/plain.txt", &[], patch, &[207]).await;
    // dav-server takes DAV:displayname as a dead property once the path has one.
    let display = r#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>Plain &amp; simple</D:displayname></D:prop></D:set></D:propertyupdate>"#;
    expect(
        &server,
        "PROPPATCH",
        "/team/plain.txt",
        &[],
        display,
        &[207],
    )
    .await;
    let folder_patch = r#"<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><c:colour xmlns:c="urn:t">blue</c:colour></D:prop></D:set></D:propertyupdate>"#;
    expect(&server, "PROPPATCH", "/team/", &[], folder_patch, &[207]).await;
    let owner_lock = concat!(
        r#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>"#,
        "<D:locktype><D:write/></D:locktype><D:owner><D:href>mailto:ann@example.com</D:href></D:owner></D:lockinfo>"
    );
    expect(
        &server,
        "LOCK",
        "/team/locked.md",
        &[("Timeout", "Second-600")],
        owner_lock,
        &[200],
    )
    .await;
    let shared_lock = r#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"#;
    expect(
        &server,
        "LOCK",
        "/team/sub/",
        &[("Depth", "infinity")],
        shared_lock,
        &[200],
    )
    .await;

    let all = propfind_body("<D:allprop/>");
    let names = propfind_body("<D:propname/>");
    let named = propfind_body(NAMED);
    let ms = [("User-Agent", "Microsoft-WebDAV-MiniRedir/10.0.19045")];
    let bodies: [Case; 5] = [
        (
            "empty body",
            String::new(),
            propfind_body(&format!("<D:allprop/>{IGNORED}")),
            &[],
        ),
        (
            "allprop",
            all.clone(),
            propfind_body(&format!("<D:allprop/>{IGNORED}")),
            &[],
        ),
        (
            "allprop from Windows",
            all,
            propfind_body(&format!("<D:allprop/>{IGNORED}")),
            &ms,
        ),
        (
            "propname",
            names,
            propfind_body(&format!("<D:propname/>{IGNORED}")),
            &[],
        ),
        (
            "named",
            named,
            propfind_body(&format!("{NAMED}{IGNORED}")),
            &[],
        ),
    ];
    let paths = [
        "",
        "/",
        "/team",
        "/team/",
        "/team/sub/",
        "/team/plain.txt",
        "/team/locked.md",
        "/team/notes.md",
        ODD,
    ];
    let mut compared = 0;
    for path in paths {
        for depth in ["0", "1"] {
            for (what, ours, theirs, extra) in &bodies {
                let mut headers = vec![("Depth", depth)];
                headers.extend_from_slice(extra);
                let fast = dav(&server, "PROPFIND", path, &headers, ours.as_bytes()).await;
                let slow = dav(&server, "PROPFIND", path, &headers, theirs.as_bytes()).await;
                let case = format!("PROPFIND {path:?} depth {depth}, {what}");
                assert_eq!(fast.status, 207, "{case}: {}", fast.text());
                assert_eq!(slow.status, 207, "{case}: {}", slow.text());
                // Two writers were compared, not one twice.
                assert_ne!(fast.body, slow.body, "{case}");
                for header in [
                    "content-type",
                    "content-location",
                    "cache-control",
                    "pragma",
                ] {
                    assert_eq!(fast.header(header), slow.header(header), "{case}: {header}");
                }
                let (ours, theirs) = (responses(&fast), responses(&slow));
                assert_eq!(
                    ours,
                    theirs,
                    "{case}\nours:   {}\ntheirs: {}",
                    fast.text(),
                    slow.text()
                );
                compared += ours.len();
            }
        }
    }
    assert!(compared > 100, "{compared}");

    // And what they both say is what the workspace holds.
    let listing = dav(&server, "PROPFIND", "/team/", &[("Depth", "1")], b"").await;
    let found = responses(&listing);
    let hrefs: Vec<&str> = found.iter().map(|(href, _)| href.as_str()).collect();
    assert_eq!(
        hrefs,
        [
            "/dav/team/",
            "/dav/team/.hidden",
            "/dav/team/a%26b%20%3Cc%3E%20%22q%22%20%C3%A9t%C3%A9.bin",
            "/dav/team/empty/",
            "/dav/team/locked.md",
            "/dav/team/notes.md",
            "/dav/team/plain.txt",
            "/dav/team/sub/",
        ]
    );
    let props_of = |href: &str| -> Vec<String> {
        found
            .iter()
            .find(|(found, _)| found == href)
            .and_then(|(_, propstats)| propstats.get("HTTP/1.1 200 OK"))
            .cloned()
            .unwrap_or_default()
    };
    let has = |href: &str, want: &str| {
        let props = props_of(href);
        assert!(
            props.iter().any(|prop| prop == want),
            "{href} lacks {want}: {props:#?}"
        );
    };
    has("/dav/team/", r#"{urn:t}colour("blue")"#);
    has("/dav/team/", "{DAV:}resourcetype({DAV:}collection())");
    has(
        "/dav/team/plain.txt",
        r#"{DAV:}displayname("Plain & simple")"#,
    );
    has(
        "/dav/team/plain.txt",
        r#"{http://ns.example.com/z/}Author("Jim &"{http://ns.example.com/z/}b[kind="x\"y"]("bold")"été")"#,
    );
    has("/dav/team/plain.txt", r#"{}plain("no namespace")"#);
    has("/dav/team/plain.txt", r#"{DAV:}getcontentlength("10")"#);
    has(
        "/dav/team/notes.md",
        r#"{DAV:}getcontenttype("text/markdown")"#,
    );
    has(
        "/dav/team/notes.md",
        &format!(
            r#"{{DAV:}}getcontentlength("{}")"#,
            "# Notes & <more>\n".len()
        ),
    );
    let locked = props_of("/dav/team/locked.md");
    let discovery = locked
        .iter()
        .find(|prop| prop.starts_with("{DAV:}lockdiscovery"))
        .expect("lockdiscovery");
    assert!(
        discovery.contains(r#"{DAV:}owner({DAV:}href("mailto:ann@example.com"))"#),
        "{discovery}"
    );
    assert!(
        discovery.contains(r#"{DAV:}timeout("Second-600")"#),
        "{discovery}"
    );
    assert!(
        discovery.contains(r#"{DAV:}lockroot({DAV:}href("/dav/team/locked.md"))"#),
        "{discovery}"
    );
    let sub = props_of("/dav/team/sub/");
    assert!(
        sub.iter()
            .any(|prop| prop.contains("{DAV:}shared()")
                && prop.contains(r#"{DAV:}depth("Infinity")"#)),
        "{sub:#?}"
    );
    // A folder asked for without its slash says where it is.
    let unslashed = dav(&server, "PROPFIND", "/team", &[("Depth", "0")], b"").await;
    assert_eq!(unslashed.header("content-location"), Some("/dav/team/"));
}
