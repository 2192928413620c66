//! The names of every Redis key and channel cluster mode uses (`protocol-spec/cluster.md`).
//!
//! Document names are used as they are: `DocId` has already refused control characters, and
//! Redis keys and channels are binary-safe.

use tandem_core::DocId;

/// Every key starts with this.
pub(crate) const PREFIX: &str = "tandem:";
/// The position before a stream's first entry.
pub(crate) const STREAM_START: &str = "0-0";

/// The stream holding a doc's updates after its snapshot.
pub(crate) fn doc_stream(doc: &DocId) -> String {
    doc_stream_of(doc.as_str())
}

/// [`doc_stream`] of a name read back from a table (already checked when it was stored).
pub(crate) fn doc_stream_of(doc: &str) -> String {
    format!("{PREFIX}doc:{doc}")
}

/// The doc a stream key names, if it names one.
pub(crate) fn doc_of_stream(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?.strip_prefix("doc:")
}

/// The pub/sub channel of a doc's presence.
pub(crate) fn presence_channel(doc: &DocId) -> String {
    format!("{PREFIX}presence:{doc}")
}

/// The doc a presence channel names.
pub(crate) fn doc_of_presence(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)?.strip_prefix("presence:")
}

/// The pub/sub channel of workspace events (the live tree, the feed's live updates).
pub(crate) const EVENTS_CHANNEL: &str = "tandem:events";

/// A node's heartbeat key; it expires when the node stops renewing it.
pub(crate) fn node_heartbeat(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

/// The stream a node's tail also reads, so that adding a doc wakes its blocked `XREAD`.
pub(crate) fn node_wake(node: &str) -> String {
    format!("{PREFIX}wake:{node}")
}

/// The compaction lease of a doc: held by one node at a time, with its fencing token.
pub(crate) fn compaction_lease(doc: &DocId) -> String {
    format!("{PREFIX}lease:{doc}")
}

/// The counter that hands out a doc's fencing tokens; it only grows.
pub(crate) fn compaction_fence(doc: &DocId) -> String {
    format!("{PREFIX}fence:{doc}")
}

/// A fresh node id: 16 hex digits, random at every start.
pub(crate) fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A stream entry id as (milliseconds, sequence), for comparing and storing.
pub(crate) fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_doc_and_back() {
        let doc = DocId::new("team/notes.md").unwrap();
        assert_eq!(doc_of_stream(&doc_stream(&doc)), Some("team/notes.md"));
        assert_eq!(
            doc_of_presence(&presence_channel(&doc)),
            Some("team/notes.md")
        );
        assert_eq!(doc_of_stream("tandem:wake:abc"), None);
    }

    #[test]
    fn stream_ids_parse_into_comparable_pairs() {
        assert_eq!(
            parse_stream_id("1700000000000-3"),
            Some((1_700_000_000_000, 3))
        );
        assert!(parse_stream_id("9-0") < parse_stream_id("10-0"));
        assert_eq!(parse_stream_id("junk"), None);
    }
}
