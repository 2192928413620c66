//! The bytes of files on an S3-compatible store (`--blob-store s3://bucket/prefix`, cluster
//! mode), through `object_store`'s `AmazonS3`. The layout under the prefix
//! (`protocol-spec/cluster.md`):
//! - `blobs/<sha256 hex>`: one object per distinct content, written once, never changed. It
//!   appears only by a server-side copy of a complete staging object, under the blob lock.
//! - `staging/<upload id>`: a complete upload on its way to becoming a blob (a PUT's body, or a
//!   tus upload's segments joined), written outside the blob lock.
//! - `uploads/<upload id>/<start offset, 20 digits>`: one object per PATCH of a tus upload,
//!   the bytes it received from that offset on. The upload's offset is the end of the run of
//!   contiguous segments from 0 ([`contiguous_end`]).
//!
//! A PUT (or a completed multipart upload) is durable once the store answers it; that answer is
//! the durability point. Every failure of the store is [`StoreError::Unavailable`] (503 to the
//! client); nothing is committed naming a blob whose copy did not succeed.
//!
//! Everything here is async; callers on the blocking pool (the blob lock is held there) go
//! through [`S3::block`].

use std::ops::Range;
use std::path::Path as LocalPath;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};
use tandem_store::StoreError;
use tokio::io::AsyncReadExt;

use super::FileError;

/// A bucket and key prefix of an S3-compatible store, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The prefix of every key, without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// Settings applied over the `AWS_*` environment, as (`object_store` `AmazonS3ConfigKey`
    /// name, value): `aws_endpoint`, `aws_region`, `aws_access_key_id`, ... Empty from the
    /// command line (the environment is the place for them); tests and embedders set them.
    pub options: Vec<(String, String)>,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]` (`--blob-store`).
    pub fn parse(url: &str) -> Result<S3Location, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("blob_store {url:?} must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !bucket_ok {
            return Err(format!(
                "blob_store {url:?}: the bucket must be lower-case letters, digits, '-' and '.'"
            ));
        }
        let prefix = prefix.trim_matches('/');
        let prefix_ok = prefix.is_empty()
            || prefix.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment.bytes().all(|b| b.is_ascii_graphic())
            });
        if !prefix_ok {
            return Err(format!(
                "blob_store {url:?}: the prefix must be non-empty printable segments, no '.' or '..'"
            ));
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            options: Vec::new(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Bytes gathered before they are sent as one part; an object no larger goes in one PUT.
/// (S3 parts other than the last must be at least 5 MiB.)
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one object in flight at once. With the part being filled, an object being sent
/// holds up to `(PARTS_IN_FLIGHT + 1) * PART_BYTES` in memory (24 MiB) until it is complete.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes read from a local file at a time while sending it.
const READ_BYTES: usize = 256 * 1024;
/// How long one request may take, start to end, except the streaming reads: a part or a small
/// object sent, a HEAD, a listing, a server-side copy (of up to [`MAX_COPY_BYTES`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a streaming read may wait for its answer or its next chunk before it fails (the
/// whole read is unbounded: it lasts as long as its reader takes).
const READ_IDLE_TIMEOUT: Duration = super::UPLOAD_IDLE_TIMEOUT;
/// The largest object one server-side copy (S3 `CopyObject`) makes: 5 GiB.
pub(crate) const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// How long a failing request is retried (by `object_store`, with backoff) before it fails.
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one request.
const MAX_RETRIES: usize = 3;
/// Digits of a segment's start offset in its key: every `u64` fits, and keys sort as numbers.
const OFFSET_DIGITS: usize = 20;

/// One tus segment: the bytes a PATCH stored from `start` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) start: u64,
    pub(crate) size: u64,
}

/// The store and the prefix of every key. Cheap to clone.
#[derive(Clone)]
pub(crate) struct S3 {
    /// Every request but the streaming reads, each bounded by [`REQUEST_TIMEOUT`].
    store: Arc<AmazonS3>,
    /// Streaming reads (downloads, joining tus segments): no limit on the whole request, which
    /// lasts as long as its reader takes; connecting is still bounded.
    streaming: Arc<AmazonS3>,
    /// `<prefix>/` or empty.
    prefix: String,
    /// The runtime the requests run on, for [`S3::block`].
    handle: tokio::runtime::Handle,
    /// For messages: `s3://bucket/prefix`.
    location: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

/// A failure of the store, as the services see it: unavailable, retry later.
pub(crate) fn unavailable(error: &object_store::Error) -> StoreError {
    StoreError::Unavailable {
        backend: "s3",
        detail: error.to_string(),
    }
}

fn is_not_found(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. })
}

impl S3 {
    /// Builds the clients from the `AWS_*` environment and `location`'s options, then checks
    /// that the bucket answers (one listing under the prefix).
    pub(crate) async fn connect(location: &S3Location) -> Result<S3, String> {
        // The client options go in first, and the settings after them: some settings
        // (`aws_allow_http`) live in the client options, which a later `with_client_options`
        // would replace. So this reads the `AWS_*` environment as `AmazonS3Builder::from_env`
        // does, after them, then `location`'s own settings.
        let environment: Vec<(String, String)> = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect();
        let build = |client: ClientOptions| -> Result<Arc<AmazonS3>, String> {
            let mut builder = AmazonS3Builder::new()
                .with_client_options(client.with_connect_timeout(CONNECT_TIMEOUT))
                .with_retry(RetryConfig {
                    max_retries: MAX_RETRIES,
                    retry_timeout: RETRY_TIMEOUT,
                    ..RetryConfig::default()
                });
            for (key, value) in &environment {
                // An `AWS_*` variable that is no S3 setting is ignored, as `from_env` does.
                if let Ok(key) = key.parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            for (key, value) in &location.options {
                let key: AmazonS3ConfigKey = key
                    .parse()
                    .map_err(|_| format!("unknown S3 setting {key:?}"))?;
                builder = builder.with_config(key, value);
            }
            builder
                .with_bucket_name(&location.bucket)
                .build()
                .map(Arc::new)
                .map_err(|error| format!("blob store {location}: {error}"))
        };
        let s3 = S3 {
            store: build(ClientOptions::new().with_timeout(REQUEST_TIMEOUT))?,
            streaming: build(ClientOptions::new().with_timeout_disabled())?,
            prefix: if location.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", location.prefix)
            },
            handle: tokio::runtime::Handle::current(),
            location: location.to_string(),
        };
        let probe = s3.key("blobs/");
        s3.store
            .list_with_delimiter(Some(&probe))
            .await
            .map_err(|error| format!("blob store {location} is not reachable: {error}"))?;
        Ok(s3)
    }

    fn key(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    /// The object of blob `sha256`.
    pub(crate) fn blob_key(&self, sha256: &str) -> Path {
        self.key(&format!("blobs/{sha256}"))
    }

    /// The staging object of upload `id`.
    pub(crate) fn staging_key(&self, id: &str) -> Path {
        self.key(&format!("staging/{id}"))
    }

    /// The segment of tus upload `id` that starts at `start`.
    pub(crate) fn segment_key(&self, id: &str, start: u64) -> Path {
        self.key(&format!("uploads/{id}/{}", segment_name(start)))
    }

    /// Runs `work` on the runtime and waits for it: from a blocking thread (where the blob lock
    /// is held) or, through `block_in_place`, from a runtime worker.
    pub(crate) fn block<T>(&self, work: impl Future<Output = T>) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.handle.block_on(work))
        } else {
            self.handle.block_on(work)
        }
    }

    /// Sends the local file at `path` as object `key`: one PUT, or a multipart upload when it
    /// is larger than a part. Durable once this returns.
    pub(crate) async fn put_file(&self, key: &Path, path: &LocalPath) -> Result<(), FileError> {
        let read_failed = |error: std::io::Error| {
            tracing::error!(%error, path = %path.display(), "reading upload bytes failed");
            FileError::Internal
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_failed)?;
        let mut writer = ObjectWriter::new(self, key.clone());
        let mut buffer = vec![0u8; READ_BYTES];
        loop {
            let n = match file.read(&mut buffer).await {
                Ok(n) => n,
                Err(error) => {
                    writer.abort().await;
                    return Err(read_failed(error));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(error) = writer.write(&buffer[..n]).await {
                writer.abort().await;
                return Err(error.into());
            }
        }
        Ok(writer.finish().await?)
    }

    /// Joins the `segments` of upload `id` (in order, contiguous from 0) into its staging
    /// object, streaming; returns the SHA-256 (hex) and length of what was written.
    pub(crate) async fn join_segments(
        &self,
        id: &str,
        segments: &[Segment],
    ) -> Result<(String, u64), StoreError> {
        let mut writer = ObjectWriter::new(self, self.staging_key(id));
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        for segment in segments {
            let key = self.segment_key(id, segment.start);
            let res = async {
                let got = tokio::time::timeout(READ_IDLE_TIMEOUT, self.streaming.get(&key))
                    .await
                    .map_err(|_| unavailable(&stalled_read()))?;
                let mut stream = idle_limited(
                    got.map_err(|error| unavailable(&error))?.into_stream(),
                    stalled_read,
                );
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|error| unavailable(&error))?;
                    hasher.update(&chunk);
                    len += chunk.len() as u64;
                    writer.write(&chunk).await?;
                }
                Ok(())
            }
            .await;
            if let Err(error) = res {
                writer.abort().await;
                return Err(error);
            }
        }
        writer.finish().await?;
        Ok((hex::encode(hasher.finalize()), len))
    }

    /// The object's metadata, `None` if there is none.
    pub(crate) async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(unavailable(&error)),
        }
    }

    /// Server-side copy of `from` to `to` (which it replaces).
    pub(crate) async fn copy(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        self.store
            .copy(from, to)
            .await
            .map_err(|error| unavailable(&error))
    }

    /// Removes the object; a missing one is not an error.
    pub(crate) async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        match self.store.delete(key).await {
            Err(error) if !is_not_found(&error) => Err(unavailable(&error)),
            _ => Ok(()),
        }
    }

    /// Every object under `rest` (a directory of the layout, ending in `/`).
    async fn list(&self, rest: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = self.key(rest);
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|error| unavailable(&error))
    }

    /// The segments of tus upload `id`, by start offset (names that are not offsets ignored).
    pub(crate) async fn segments(&self, id: &str) -> Result<Vec<Segment>, StoreError> {
        let mut segments: Vec<Segment> = self
            .list(&format!("uploads/{id}/"))
            .await?
            .into_iter()
            .filter_map(|meta| {
                let start = parse_segment_name(meta.location.filename()?)?;
                Some(Segment {
                    start,
                    size: meta.size,
                })
            })
            .collect();
        segments.sort_by_key(|segment| segment.start);
        Ok(segments)
    }

    /// Removes every segment of tus upload `id` and its staging object.
    pub(crate) async fn remove_upload(&self, id: &str) -> Result<(), StoreError> {
        for segment in self.segments(id).await? {
            self.delete(&self.segment_key(id, segment.start)).await?;
        }
        self.delete(&self.staging_key(id)).await
    }

    /// Every blob object: its hash and when it was written.
    pub(crate) async fn blob_objects(&self) -> Result<Vec<(String, SystemTime)>, StoreError> {
        Ok(self
            .list("blobs/")
            .await?
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                super::blobs::is_sha256_hex(name)
                    .then(|| (name.to_owned(), meta.last_modified.into()))
            })
            .collect())
    }

    /// Every upload with bytes in the store (segments or a staging object): its id and when
    /// its newest object was written.
    pub(crate) async fn upload_objects(&self) -> Result<Vec<(String, SystemTime)>, StoreError> {
        let mut newest: std::collections::HashMap<String, SystemTime> =
            std::collections::HashMap::new();
        for dir in ["uploads/", "staging/"] {
            let base = self.key(dir);
            for meta in self.list(dir).await? {
                // `uploads/<id>/<offset>` or `staging/<id>`: the id is the first part below.
                let Some(id) = meta
                    .location
                    .prefix_match(&base)
                    .and_then(|mut parts| parts.next())
                else {
                    continue;
                };
                let id = id.as_ref().to_owned();
                if !super::blobs::is_upload_id(&id) {
                    continue;
                }
                let modified: SystemTime = meta.last_modified.into();
                let entry = newest.entry(id).or_insert(modified);
                *entry = (*entry).max(modified);
            }
        }
        Ok(newest.into_iter().collect())
    }

    /// The bytes `range` of object `key`, streamed.
    pub(crate) async fn read(
        &self,
        key: &Path,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StoreError> {
        if range.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let result = tokio::time::timeout(READ_IDLE_TIMEOUT, self.streaming.get_opts(key, options))
            .await
            .map_err(|_| unavailable(&stalled_read()))?
            .map_err(|error| unavailable(&error))?;
        Ok(idle_limited(
            result.into_stream().map_err(std::io::Error::other),
            stalled_io,
        ))
    }
}

/// `stream`, failing with `TimedOut` (and ending) when a chunk takes longer than
/// [`READ_IDLE_TIMEOUT`]: a stalled read never holds its reader (and any lock it holds) forever.
fn idle_limited<E: Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static,
    stalled: fn() -> E,
) -> BoxStream<'static, Result<Bytes, E>> {
    futures_util::stream::unfold(Some(stream.boxed()), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(READ_IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((Err(stalled()), None)),
        }
    })
    .boxed()
}

/// A read that waited longer than [`READ_IDLE_TIMEOUT`], as the store's error.
fn stalled_read() -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: Box::new(stalled_io()),
    }
}

fn stalled_io() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the store sent nothing for {} s",
            READ_IDLE_TIMEOUT.as_secs()
        ),
    )
}

/// Writes one object: buffered up to a part, then as a multipart upload if it grows beyond.
struct ObjectWriter<'a> {
    s3: &'a S3,
    key: Path,
    buffer: Vec<u8>,
    multipart: Option<WriteMultipart>,
}

impl<'a> ObjectWriter<'a> {
    fn new(s3: &'a S3, key: Path) -> ObjectWriter<'a> {
        ObjectWriter {
            s3,
            key,
            buffer: Vec::new(),
            multipart: None,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(multipart) = &mut self.multipart {
            multipart
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|error| unavailable(&error))?;
            multipart.write(bytes);
            return Ok(());
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() > PART_BYTES {
            let upload = self
                .s3
                .store
                .put_multipart(&self.key)
                .await
                .map_err(|error| unavailable(&error))?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            multipart.write(&std::mem::take(&mut self.buffer));
            self.multipart = Some(multipart);
        }
        Ok(())
    }

    /// Completes the object: durable once this returns.
    async fn finish(self) -> Result<(), StoreError> {
        match self.multipart {
            Some(multipart) => multipart.finish().await.map(drop),
            None => self
                .s3
                .store
                .put(&self.key, PutPayload::from(self.buffer))
                .await
                .map(drop),
        }
        .map_err(|error| unavailable(&error))
    }

    /// Abandons a multipart upload (its parts are dropped by the store).
    async fn abort(self) {
        if let Some(multipart) = self.multipart
            && let Err(error) = multipart.abort().await
        {
            tracing::warn!(%error, "aborting a multipart upload failed");
        }
    }
}

/// The name of the segment starting at `start`: 20 digits, zero-padded.
pub(crate) fn segment_name(start: u64) -> String {
    format!("{start:0width$}", width = OFFSET_DIGITS)
}

/// The start offset a segment's name encodes, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() != OFFSET_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The segments that make the upload's bytes: from offset 0, each starting where the last one
/// ended. Returns them and where they end (the upload's offset). A segment after a gap, or one
/// overlapping the run (never written while one PATCH writes at a time), is not part of it.
pub(crate) fn contiguous_run(segments: &[Segment]) -> (Vec<Segment>, u64) {
    let mut run = Vec::new();
    let mut end = 0u64;
    for segment in segments {
        if segment.start == end && segment.size > 0 {
            end += segment.size;
            run.push(segment.clone());
        } else if segment.start > end {
            break;
        }
    }
    (run, end)
}

/// [`contiguous_run`]'s end: the upload's offset.
pub(crate) fn contiguous_end(segments: &[Segment]) -> u64 {
    contiguous_run(segments).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, size: u64) -> Segment {
        Segment { start, size }
    }

    #[tokio::test]
    async fn keys_follow_the_layout_under_the_prefix() {
        let store = Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name("bucket")
                .with_region("us-east-1")
                .build()
                .expect("a client needs no network"),
        );
        let s3 = |prefix: &str| S3 {
            store: store.clone(),
            streaming: store.clone(),
            prefix: prefix.to_owned(),
            handle: tokio::runtime::Handle::current(),
            location: "s3://bucket".to_owned(),
        };
        let sha = "ab".repeat(32);
        let id = "0123456789abcdef0123456789abcdef";
        let prefixed = s3("team/eu/");
        assert_eq!(
            prefixed.blob_key(&sha).as_ref(),
            format!("team/eu/blobs/{sha}")
        );
        assert_eq!(
            prefixed.staging_key(id).as_ref(),
            format!("team/eu/staging/{id}")
        );
        assert_eq!(
            prefixed.segment_key(id, 5_000_000).as_ref(),
            format!("team/eu/uploads/{id}/00000000000005000000")
        );
        assert_eq!(s3("").blob_key(&sha).as_ref(), format!("blobs/{sha}"));
    }

    #[test]
    fn segment_names_are_20_digits_and_sort_as_their_offsets() {
        assert_eq!(segment_name(0), "00000000000000000000");
        assert_eq!(segment_name(u64::MAX), "18446744073709551615");
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(
            parse_segment_name(&segment_name(1_048_576)),
            Some(1_048_576)
        );
        for bad in ["", "123", "0000000000000000000x", "99999999999999999999"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_offset_is_the_end_of_the_contiguous_segments_from_zero() {
        assert_eq!(contiguous_end(&[]), 0);
        assert_eq!(contiguous_end(&[seg(0, 10), seg(10, 5), seg(15, 1)]), 16);
        // A gap ends the run; nothing after it counts.
        assert_eq!(contiguous_end(&[seg(0, 10), seg(12, 5)]), 10);
        assert_eq!(contiguous_end(&[seg(3, 10)]), 0);
        // An overlapping or empty segment is skipped, not joined.
        let (run, end) = contiguous_run(&[seg(0, 10), seg(5, 10), seg(10, 0), seg(10, 4)]);
        assert_eq!(end, 14);
        assert_eq!(run, [seg(0, 10), seg(10, 4)]);
    }
}
