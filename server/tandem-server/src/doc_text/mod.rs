//! Documents as plain-text files: a live document's root text (`content`, the type the web client
//! edits) read whole and saved whole, for WebDAV today and `tandem sync` later.
//!
//! A read answers the text and an entity tag, a hash of the text (a strong validator: it changes
//! whenever the text does). A save names the text it started from by that tag (`If-Match`);
//! the service turns the save into the smallest change against that text and merges it into the
//! live document so that what others typed meanwhile survives (`tandem_core::text_file`). The
//! change goes through the document's owner like any update: durable before it is relayed,
//! attributed to the saver, in history and activity.
//!
//! The service remembers the texts it recently served or accepted, by document and tag
//! ([`BaseCache`]: bounded in bytes and entries, oldest first out). A save naming a tag that is
//! not remembered (evicted, or served before a restart) is diffed against the current text
//! instead, as is a save without `If-Match`; `protocol-spec/webdav.md` documents this.
//!
//! This is a service: it returns [`DocTextError`] and never names HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tandem_core::text_file::{self, TextFileError};
use tandem_core::{DocId, ProtocolError};
use tandem_hub::{Actor, Hub, JoinError};
use tracing::{debug, info};

/// The root shared type a document's file is: the one the web client binds its editor to.
pub(crate) const TEXT_ROOT: &str = "content";

/// Most bytes of text the base cache holds.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most texts the base cache holds.
const CACHE_ENTRIES: usize = 4096;
/// How long the two diffs of a save may take before the rest is replaced whole.
const DIFF_BUDGET: Duration = Duration::from_secs(2);

/// A document's text and its entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextState {
    pub(crate) text: String,
    /// Quoted, as HTTP sends it: `"t-<hex>"`.
    pub(crate) etag: String,
}

/// Why a document's text could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DocTextError {
    /// The document's owner could not be reached or refused (unloading, damaged, disk full).
    #[error(transparent)]
    Hub(#[from] JoinError),
    /// The document holds formatted text or other shared types where its text would be.
    #[error("{0}")]
    NotPlainText(String),
    /// The update was refused (e.g. the document would grow past its limit).
    #[error("the change was refused: {0}")]
    Refused(ProtocolError),
    /// The stored state did not load, or computing the change failed.
    #[error("the document's text could not be computed")]
    Internal,
}

impl From<TextFileError> for DocTextError {
    fn from(error: TextFileError) -> Self {
        match error {
            TextFileError::NotPlainText(_) => DocTextError::NotPlainText(error.to_string()),
            TextFileError::BadState | TextFileError::Failed => DocTextError::Internal,
        }
    }
}

/// The service (cheap to clone).
#[derive(Clone)]
pub(crate) struct DocText {
    hub: Hub,
    bases: Arc<Mutex<BaseCache>>,
}

impl DocText {
    pub(crate) fn new(hub: Hub) -> DocText {
        DocText {
            hub,
            bases: Arc::new(Mutex::new(BaseCache::new(CACHE_BYTES, CACHE_ENTRIES))),
        }
    }

    /// The document's text, or `None` if the document does not exist; remembered as a base
    /// for the reader's next save. For a client that will edit what it reads (a GET body).
    pub(crate) async fn read(&self, doc: &DocId) -> Result<Option<TextState>, DocTextError> {
        let state = self.peek(doc).await?;
        if let Some(state) = &state {
            self.remember(doc, state);
        }
        Ok(state)
    }

    /// [`DocText::read`] without remembering the text: for listings and metadata, which must
    /// not push out of the cache the bases editors' saves will name.
    pub(crate) async fn peek(&self, doc: &DocId) -> Result<Option<TextState>, DocTextError> {
        let Some(snapshot) = self.hub.snapshot(doc).await? else {
            return Ok(None);
        };
        let text = blocking(move || text_file::read_text(&snapshot.update, TEXT_ROOT)).await??;
        Ok(Some(TextState {
            etag: etag_of(&text),
            text,
        }))
    }

    /// Saves `text` as the document's text (creating the document if it does not exist), as
    /// the smallest change from the text tagged `if_match` (the current text when it is `None`
    /// or not remembered), attributed to `actor`. Answers the saved text's tag: the text the
    /// saver now holds, which is what its next save will name.
    pub(crate) async fn write(
        &self,
        doc: &DocId,
        if_match: Option<&str>,
        text: &str,
        actor: Actor,
    ) -> Result<TextState, DocTextError> {
        let saved = TextState {
            text: text.to_owned(),
            etag: etag_of(text),
        };
        let current = self
            .hub
            .snapshot(doc)
            .await?
            .map(|snapshot| snapshot.update)
            .unwrap_or_default();
        let base = if_match.and_then(|tag| self.base(doc, tag));
        if if_match.is_some() && base.is_none() {
            info!(%doc, "a save names a text this server no longer holds; diffed against the current text");
        }
        let client_id = rand::random::<u64>() & ((1 << 53) - 1);
        let saved_text = saved.text.clone();
        let write = blocking(move || {
            let base = match base {
                Some(base) => base.to_string(),
                None => text_file::read_text(&current, TEXT_ROOT)?,
            };
            let deadline = Instant::now() + DIFF_BUDGET;
            text_file::write_update(
                &current,
                TEXT_ROOT,
                &base,
                &saved_text,
                client_id,
                Some(deadline),
            )
        })
        .await??;
        if let Some(update) = write.update {
            match self
                .hub
                .apply_update(doc, Bytes::from(update), actor)
                .await?
            {
                Ok(_) => {}
                Err(refused) => return Err(DocTextError::Refused(refused)),
            }
        } else {
            debug!(%doc, "a save that changes nothing");
        }
        self.remember(doc, &saved);
        Ok(saved)
    }

    fn remember(&self, doc: &DocId, state: &TextState) {
        if let Ok(mut bases) = self.bases.lock() {
            bases.insert(doc.as_str(), &state.etag, &state.text);
        }
    }

    fn base(&self, doc: &DocId, etag: &str) -> Option<Arc<str>> {
        self.bases.lock().ok()?.get(doc.as_str(), etag)
    }
}

/// The entity tag of a text: quoted, a prefix so it is never taken for a file's tag, then the
/// first 128 bits of its SHA-256.
pub(crate) fn etag_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"t-{hex}\"")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DocTextError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| DocTextError::Internal)
}

/// Texts recently served or saved, by (document, tag); oldest out first when full.
struct BaseCache {
    max_bytes: usize,
    max_entries: usize,
    bytes: usize,
    texts: HashMap<(String, String), Arc<str>>,
    order: VecDeque<(String, String)>,
}

impl BaseCache {
    fn new(max_bytes: usize, max_entries: usize) -> BaseCache {
        BaseCache {
            max_bytes,
            max_entries,
            bytes: 0,
            texts: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, doc: &str, etag: &str, text: &str) {
        if text.len() > self.max_bytes {
            return;
        }
        let key = (doc.to_owned(), etag.to_owned());
        if self.texts.contains_key(&key) {
            return;
        }
        while self.bytes + text.len() > self.max_bytes || self.texts.len() >= self.max_entries {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(text) = self.texts.remove(&oldest) {
                self.bytes -= text.len();
            }
        }
        self.bytes += text.len();
        self.order.push_back(key.clone());
        self.texts.insert(key, Arc::from(text));
    }

    fn get(&self, doc: &str, etag: &str) -> Option<Arc<str>> {
        self.texts.get(&(doc.to_owned(), etag.to_owned())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_in_bytes_and_entries_oldest_out_first() {
        let mut cache = BaseCache::new(10, 3);
        cache.insert("d", "a", "1234");
        cache.insert("d", "b", "1234");
        assert_eq!(cache.get("d", "a").as_deref(), Some("1234"));
        // 12 bytes would not fit: the oldest goes.
        cache.insert("d", "c", "1234");
        assert!(cache.get("d", "a").is_none());
        assert!(cache.get("d", "b").is_some() && cache.get("d", "c").is_some());
        cache.insert("e", "x", "");
        cache.insert("e", "y", "");
        assert!(cache.get("d", "b").is_none(), "at most three entries");
        assert_eq!(cache.texts.len(), 3);
        assert!(cache.bytes <= 10);
        // A text larger than the whole cache is not kept, and evicts nothing.
        cache.insert("f", "z", "01234567890");
        assert!(cache.get("f", "z").is_none());
        assert!(cache.get("d", "c").is_some());
        // Tags are per document.
        assert!(cache.get("e", "c").is_none());
    }

    #[test]
    fn tags_change_with_the_text_and_are_quoted() {
        let a = etag_of("hello");
        assert!(a.starts_with("\"t-") && a.ends_with('"') && a.len() == 36);
        assert_eq!(a, etag_of("hello"));
        assert_ne!(a, etag_of("hello!"));
    }
}
