//! The answer to a PROPFIND that names its properties, completed: RFC 4918 section 9.1 asks
//! for every named property in each response, those the resource lacks in a propstat with
//! `404 Not Found`. dav-server 0.11 leaves those out (its `write_props` keeps only the 200s), so
//! the multistatus it writes is read back here and the missing ones are added, response by
//! response. Only the named PROPFINDs `multistatus.rs` leaves to dav-server (a body holding
//! more than the `<prop>`) pass through here; their bodies are small (capped at
//! [`super::MAX_XML_BODY_BYTES`] and checked by `guard.rs`) and the multistatus is our own.

use std::collections::BTreeSet;
use std::io::Cursor;

use xmltree::{Element, XMLNode};

/// A property's name: namespace (empty for none) and local name.
type PropName = (String, String);

/// The properties a PROPFIND body names, in order; `None` if it names none.
pub(crate) fn requested(body: &[u8]) -> Option<Vec<PropName>> {
    let root = Element::parse(Cursor::new(body)).ok()?;
    let prop = root.children.iter().find_map(|node| {
        node.as_element()
            .filter(|child| child.name == "prop" && child.namespace.as_deref() == Some("DAV:"))
    })?;
    let names: Vec<PropName> = prop
        .children
        .iter()
        .filter_map(XMLNode::as_element)
        .map(|child| {
            (
                child.namespace.clone().unwrap_or_default(),
                child.name.clone(),
            )
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// `multistatus` with a 404 propstat, in each response, for every name of `wanted` the
/// response does not carry; `None` if it cannot be read (then it is sent as it was).
pub(crate) fn complete(multistatus: &[u8], wanted: &[PropName]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(multistatus).ok()?;
    let root = Element::parse(Cursor::new(multistatus)).ok()?;
    let responses: Vec<&Element> = root
        .children
        .iter()
        .filter_map(XMLNode::as_element)
        .filter(|child| child.name == "response")
        .collect();
    const END: &str = "</D:response>";
    if text.matches(END).count() != responses.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 256 * responses.len());
    let mut rest = text;
    for response in responses {
        let present: BTreeSet<PropName> = response
            .children
            .iter()
            .filter_map(XMLNode::as_element)
            .filter(|child| child.name == "propstat")
            .filter_map(|propstat| propstat.get_child("prop"))
            .flat_map(|prop| prop.children.iter().filter_map(XMLNode::as_element))
            .map(|prop| {
                (
                    prop.namespace.clone().unwrap_or_default(),
                    prop.name.clone(),
                )
            })
            .collect();
        let missing: Vec<&PropName> = wanted
            .iter()
            .filter(|name| !present.contains(*name))
            .collect();
        let at = rest.find(END)?;
        out.push_str(&rest[..at]);
        if !missing.is_empty() {
            out.push_str("<D:propstat><D:prop>");
            for (namespace, name) in missing {
                out.push_str(&format!("<{name} xmlns=\"{}\"/>", escape(namespace)));
            }
            out.push_str("</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>");
        }
        out.push_str(END);
        rest = &rest[at + END.len()..];
    }
    out.push_str(rest);
    Some(out.into_bytes())
}

/// `text` as an XML attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_properties_get_a_404_propstat_in_each_response() {
        let body = br#"<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getetag/><a xmlns="urn:x"/><b xmlns="urn:x&amp;y"/></prop></propfind>"#;
        let wanted = requested(body).expect("named");
        assert_eq!(wanted.len(), 3);
        let multistatus = br#"<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/dav/f</D:href><D:propstat><D:prop><D:getetag>"1"</D:getetag><a xmlns="urn:x">v</a></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response><D:response><D:href>/dav/g</D:href></D:response></D:multistatus>"#;
        let done = complete(multistatus, &wanted).expect("completed");
        let done = String::from_utf8(done).expect("utf-8");
        let reparsed = Element::parse(Cursor::new(done.as_bytes())).expect("well-formed");
        assert_eq!(reparsed.children.len(), 2, "{done}");
        assert!(done.contains(r#"<a xmlns="urn:x">v</a>"#), "{done}");
        assert_eq!(done.matches("404 Not Found").count(), 2, "{done}");
        assert!(done.contains(r#"<b xmlns="urn:x&amp;y"/>"#), "{done}");
        assert!(requested(br#"<propfind xmlns="DAV:"><allprop/></propfind>"#).is_none());
    }
}
