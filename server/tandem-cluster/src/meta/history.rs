//! Docs' history in cluster mode: [`HistoryTable`] for [`PgMeta`], read from Postgres
//! (`tandem_versions`, `tandem_docs`) and from the docs' Redis streams, with the semantics of
//! the redb `Store` methods of the same names where cluster mode has the data:
//! - versions are rows of `tandem_versions`, written by the appender (`snapshot::store_version`);
//! - a doc exists if it has a snapshot row or a stream (a doc never compacted is only a stream),
//!   so `list_docs` merges both and `doc_meta` of a doc with neither is `None`;
//! - the authors of updates are those recorded in the stream entries (field `a`), so only the
//!   updates still in the stream have one: compaction trims older entries, and with them their
//!   authors. An update's `seq` is its stream entry id packed into one number
//!   ([`seq_of_entry`]), which orders the updates of a doc across every node.

use std::collections::BTreeMap;

use redis::Value;
use tandem_store::meta::HistoryTable;
use tandem_store::{
    Author, DocMeta, HistoryHead, StoreError, UpdateAuthor, VersionKind, VersionRecord,
};
use tokio_postgres::Row;

use super::files::uint;
use super::{PgMeta, unavailable};
use crate::keys;

/// Stream keys read per `SCAN` while listing docs.
const SCAN_COUNT: usize = 1000;
/// Bits of a packed update seq holding the entry's sequence number within its millisecond.
const SEQ_BITS: u32 = 16;

/// The columns of a version row, in the order [`version_of`] reads them.
const VERSION_COLUMNS: &str = "id, kind, name, author_sub, author_name, created_ms, seq, \
     size_bytes, author_subs, author_names";

/// A Redis failure, as the services' error (see `unavailable`).
pub(super) fn redis_unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        backend: "redis",
        detail: error.to_string(),
    }
}

/// A stream entry id as one number: the milliseconds shifted left by [`SEQ_BITS`], plus the
/// sequence number within them (capped). Increasing along the stream.
pub(crate) fn seq_of_entry(id: &str) -> Option<u64> {
    let (ms, seq) = keys::parse_stream_id(id)?;
    Some((ms << SEQ_BITS) | seq.min((1 << SEQ_BITS) - 1))
}

/// The stream entry id just below packed seq `seq` (for an exclusive upper bound).
fn entry_below(seq: u64) -> Option<String> {
    let ms = seq >> SEQ_BITS;
    let within = seq & ((1 << SEQ_BITS) - 1);
    match (ms, within) {
        (0, 0) => None,
        (_, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (_, _) => Some(format!("{ms}-{}", within - 1)),
    }
}

/// A version kind from its column.
pub(crate) fn kind_of(text: &str) -> Option<VersionKind> {
    match text {
        "named" => Some(VersionKind::Named),
        "auto" => Some(VersionKind::Auto),
        "restore" => Some(VersionKind::Restore),
        _ => None,
    }
}

/// A version row; `None` for a kind this build does not know (skipped, as redb skips a record
/// of an unknown layout).
fn version_of(row: &Row) -> Option<VersionRecord> {
    let kind = kind_of(row.get::<_, &str>(1))?;
    let subs: Vec<Option<String>> = row.get(8);
    let names: Vec<String> = row.get(9);
    Some(VersionRecord {
        id: uint(row.get(0)),
        kind,
        name: row.get(2),
        author: Author {
            sub: row.get(3),
            name: row.get(4),
        },
        created_ms: uint(row.get(5)),
        seq: uint(row.get(6)),
        size_bytes: uint(row.get(7)),
        authors: subs
            .into_iter()
            .zip(names)
            .map(|(sub, name)| Author { sub, name })
            .collect(),
    })
}

/// One stream entry: its id, the length of its update and its author, if recorded.
struct Entry {
    id: String,
    n_bytes: u64,
    author: Option<Author>,
}

fn entries_of(reply: redis::streams::StreamRangeReply) -> Vec<Entry> {
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let n_bytes = match entry.map.get("u") {
                Some(Value::BulkString(update)) => update.len() as u64,
                _ => 0,
            };
            let author = match entry.map.get("a") {
                Some(Value::BulkString(bytes)) => Author::decode(bytes),
                _ => None,
            };
            Entry {
                id: entry.id,
                n_bytes,
                author,
            }
        })
        .collect()
}

/// What Redis holds of a doc: its stream's length, newest entry and memory.
struct StreamMeta {
    n_entries: u64,
    last_id: Option<String>,
    n_bytes: u64,
}

impl PgMeta {
    /// The stream metadata of each of `docs` (one pipeline); a doc without a stream has none.
    async fn stream_meta(
        &self,
        docs: &[String],
    ) -> Result<BTreeMap<String, StreamMeta>, StoreError> {
        let mut out = BTreeMap::new();
        if docs.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for doc in docs {
            let key = keys::doc_stream_of(doc);
            pipe.cmd("XLEN").arg(&key);
            pipe.cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            pipe.cmd("MEMORY").arg("USAGE").arg(&key);
        }
        let mut redis = self.redis.clone();
        let replies: Vec<Value> = pipe
            .query_async(&mut redis)
            .await
            .map_err(redis_unavailable)?;
        let mut replies = replies.into_iter();
        for doc in docs {
            let (Some(len), Some(last), Some(memory)) =
                (replies.next(), replies.next(), replies.next())
            else {
                break;
            };
            let n_entries: u64 = redis::from_redis_value(len).unwrap_or(0);
            if n_entries == 0 {
                continue;
            }
            let last: Option<redis::streams::StreamRangeReply> = redis::from_redis_value(last).ok();
            let last_id = last.and_then(|reply| reply.ids.into_iter().next().map(|e| e.id));
            let n_bytes: u64 = redis::from_redis_value(memory).unwrap_or(0);
            out.insert(
                doc.clone(),
                StreamMeta {
                    n_entries,
                    last_id,
                    n_bytes,
                },
            );
        }
        Ok(out)
    }

    /// Every doc that has a stream.
    async fn stream_docs(&self) -> Result<Vec<String>, StoreError> {
        let mut redis = self.redis.clone();
        let mut cursor: u64 = 0;
        let mut docs = Vec::new();
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(keys::doc_stream_of("*"))
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut redis)
                .await
                .map_err(redis_unavailable)?;
            for key in keys {
                if let Some(doc) = std::str::from_utf8(&key).ok().and_then(keys::doc_of_stream) {
                    docs.push(doc.to_owned());
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        docs.sort();
        docs.dedup();
        Ok(docs)
    }

    /// The docs with a snapshot row (`name` -> (snapshot bytes, updated_ms)), all or one.
    async fn snapshot_meta(
        &self,
        one: Option<&str>,
    ) -> Result<BTreeMap<String, (u64, u64)>, StoreError> {
        let client = self.client().await?;
        let rows =
            match one {
                Some(doc) => client
                    .query(
                        "SELECT name, octet_length(snapshot)::bigint, updated_ms FROM tandem_docs \
                         WHERE name = $1",
                        &[&doc],
                    )
                    .await,
                None => client
                    .query(
                        "SELECT name, octet_length(snapshot)::bigint, updated_ms FROM tandem_docs",
                        &[],
                    )
                    .await,
            }
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    (uint(row.get(1)), uint(row.get(2))),
                )
            })
            .collect())
    }

    /// Merges snapshot rows and streams into the docs' metadata, sorted by name.
    fn merge_docs(
        snapshots: BTreeMap<String, (u64, u64)>,
        streams: BTreeMap<String, StreamMeta>,
    ) -> Vec<DocMeta> {
        let mut docs: BTreeMap<String, DocMeta> = BTreeMap::new();
        for (name, (size_bytes, updated_ms)) in snapshots {
            docs.insert(
                name.clone(),
                DocMeta {
                    name,
                    size_bytes,
                    updated_ms,
                    n_log_entries: 0,
                    last_seq: 0,
                },
            );
        }
        for (name, stream) in streams {
            let meta = docs.entry(name.clone()).or_insert(DocMeta {
                name,
                size_bytes: 0,
                updated_ms: 0,
                n_log_entries: 0,
                last_seq: 0,
            });
            meta.size_bytes += stream.n_bytes;
            meta.n_log_entries = stream.n_entries;
            if let Some(last) = stream.last_id.as_deref() {
                meta.last_seq = seq_of_entry(last).unwrap_or(0);
                let last_ms = keys::parse_stream_id(last).map_or(0, |(ms, _)| ms);
                meta.updated_ms = meta.updated_ms.max(last_ms);
            }
        }
        docs.into_values().collect()
    }

    async fn versions(&self, doc: &str, limit: Option<i64>) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM tandem_versions WHERE doc = $1 \
                     ORDER BY id DESC LIMIT $2"
                ),
                &[&doc, &limit],
            )
            .await
            .map_err(unavailable)
    }
}

impl HistoryTable for PgMeta {
    fn list_versions(&self, doc: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.block(async {
            let rows = self.versions(doc, None).await?;
            Ok(rows.iter().filter_map(version_of).collect())
        })
    }

    fn version(&self, doc: &str, id: u64) -> Result<Option<(VersionRecord, Vec<u8>)>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {VERSION_COLUMNS}, state FROM tandem_versions \
                         WHERE doc = $1 AND id = $2"
                    ),
                    &[&doc, &super::files::int(id)],
                )
                .await
                .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let record = version_of(&row).ok_or_else(|| StoreError::CorruptRecord {
                what: format!("version {id} of doc {doc:?}"),
                detail: "unknown kind".into(),
            })?;
            Ok(Some((record, row.get(10))))
        })
    }

    /// The newest version, the highest id ever handed out, and the distinct authors of the
    /// stream entries written after the newest version was taken.
    fn history_head(&self, doc: &str) -> Result<HistoryHead, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT greatest((SELECT max(id) FROM tandem_versions WHERE doc = $1), \
                     (SELECT last_id FROM tandem_version_ids WHERE doc = $1), 0)",
                    &[&doc],
                )
                .await
                .map_err(unavailable)?;
            let mut head = HistoryHead {
                last_version_id: uint(row.get(0)),
                ..HistoryHead::default()
            };
            drop(client);
            head.last_version = self.versions(doc, None).await?.iter().find_map(version_of);
            let after = head.last_version.as_ref().map_or(0, |v| v.created_ms);
            let mut redis = self.redis.clone();
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(keys::doc_stream_of(doc))
                .arg(format!("{}", after.saturating_add(1)))
                .arg("+")
                .query_async(&mut redis)
                .await
                .map_err(redis_unavailable)?;
            for entry in entries_of(reply) {
                if let Some(author) = entry.author
                    && !head.authors_since.contains(&author)
                {
                    head.authors_since.push(author);
                }
            }
            Ok(head)
        })
    }

    fn update_authors(
        &self,
        doc: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<UpdateAuthor>, StoreError> {
        self.block(async {
            let Some(end) = entry_below(before_seq) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            let mut end = end;
            let mut redis = self.redis.clone();
            // Entries without a recorded author are skipped, so read until `limit` are found
            // or the stream is exhausted.
            while out.len() < limit {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(keys::doc_stream_of(doc))
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut redis)
                    .await
                    .map_err(redis_unavailable)?;
                let entries = entries_of(reply);
                let n_read = entries.len();
                for entry in entries {
                    let Some(seq) = seq_of_entry(&entry.id) else {
                        continue;
                    };
                    if let Some(next_end) = entry_below(seq) {
                        end = next_end;
                    }
                    if let Some(author) = entry.author
                        && out.len() < limit
                    {
                        out.push(UpdateAuthor {
                            seq,
                            at_ms: seq >> SEQ_BITS,
                            author,
                            n_bytes: entry.n_bytes,
                        });
                    }
                }
                if n_read < limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn list_docs(&self) -> Result<Vec<DocMeta>, StoreError> {
        self.block(async {
            let snapshots = self.snapshot_meta(None).await?;
            let streams = self.stream_docs().await?;
            let streams = self.stream_meta(&streams).await?;
            Ok(PgMeta::merge_docs(snapshots, streams))
        })
    }

    fn doc_meta(&self, doc: &str) -> Result<Option<DocMeta>, StoreError> {
        self.block(async {
            let snapshots = self.snapshot_meta(Some(doc)).await?;
            let streams = self.stream_meta(&[doc.to_owned()]).await?;
            Ok(PgMeta::merge_docs(snapshots, streams).into_iter().next())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_seqs_follow_stream_order_and_bound_the_next_page() {
        let a = seq_of_entry("1700000000000-0").unwrap();
        let b = seq_of_entry("1700000000000-7").unwrap();
        let c = seq_of_entry("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(c >> SEQ_BITS, 1_700_000_000_001);
        assert_eq!(entry_below(b).as_deref(), Some("1700000000000-6"));
        assert_eq!(entry_below(c), Some(format!("1700000000000-{}", u64::MAX)));
        assert_eq!(entry_below(0), None);
        assert_eq!(
            entry_below(u64::MAX).as_deref().map(keys::parse_stream_id),
            Some(Some((u64::MAX >> SEQ_BITS, (1 << SEQ_BITS) - 2)))
        );
    }
}
