//! The workspace as dav-server's file system ([`TandemFs`], a `GuardedFileSystem`): files from
//! the files service, live documents as text files, folders from the `/` in names plus the
//! folders made with `MKCOL` (`DavTable`), and dead properties in the same table. There is no
//! file tree of its own: every answer is read from, and every change made through, the services.
//!
//! Roles are checked here, per path, with the request's claims ([`DavUser`]): a path the token
//! cannot read does not exist, one it cannot write is `Forbidden`.
//!
//! A refusal with more to say than dav-server's `FsError` can carry (quota, a path a document
//! holds, a body that is not UTF-8) is also left in the request's [`DavUser::refusal`] slot, and
//! `mod.rs` answers with it.
//!
//! Documents go through [`DocFiles`], the one place their text is read and written.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::SeekFrom;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream,
    GuardedFileSystem, OpenOptions, ReadDirMeta,
};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tandem_core::DocId;
use tandem_hub::Actor;
use tandem_hub::clock::now_ms;
use tandem_store::{DeadProp, Uploader};
use tokio::sync::{mpsc, oneshot};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::files::{PutRequest, store_put};
use super::multistatus;
use crate::auth::{Claims, Role};
use crate::bus::Event;
use crate::files::FileError;

/// Chunks of a PUT body queued between dav-server and the upload task.
const PUT_QUEUE_CHUNKS: usize = 4;
/// Largest body a PUT to a document may have (its text is held whole to be diffed).
const MAX_DOC_PUT_BYTES: usize = 16 * 1024 * 1024;

/// Who is asking, for one request: the token's claims (`None` with authentication off), the
/// actor changes are attributed to, the listing read once per request, and the refusal slot.
#[derive(Clone)]
pub(crate) struct DavUser {
    pub(crate) claims: Option<Arc<Claims>>,
    pub(crate) actor: Actor,
    /// `If-Match` of the request: the text version a document PUT was based on.
    pub(crate) if_match: Option<String>,
    /// The workspace as this request sees it, read on first use, dropped after any change.
    listing: Arc<Mutex<Option<Arc<Listing>>>>,
    /// The first detailed refusal met while serving the request.
    pub(crate) refusal: Arc<Mutex<Option<ApiError>>>,
    /// Whether the request is a PROPFIND naming its properties: dav-server then asks for each
    /// dead property by name, and also appends whatever `get_props` lists, which must be
    /// nothing here or the named ones would come twice and unnamed ones too.
    pub(crate) named_props: bool,
    /// The request's headers (their lock tokens) and grant, for the lock checks of the upload
    /// path (`store_put`).
    pub(crate) writer: (axum::http::HeaderMap, crate::auth::Grant),
}

impl DavUser {
    pub(crate) fn new(
        claims: Option<Claims>,
        actor: Actor,
        if_match: Option<String>,
        writer: (axum::http::HeaderMap, crate::auth::Grant),
    ) -> DavUser {
        DavUser {
            claims: claims.map(Arc::new),
            actor,
            if_match,
            listing: Arc::new(Mutex::new(None)),
            refusal: Arc::new(Mutex::new(None)),
            named_props: false,
            writer,
        }
    }

    /// The role on a file or document at `path`.
    fn role(&self, path: &str) -> Option<Role> {
        match &self.claims {
            None => Some(Role::Admin),
            Some(claims) => claims.role_for(path),
        }
    }

    /// The role on folder `path`: that on a name inside it (`team/` for `team/*` patterns).
    pub(crate) fn folder_role(&self, path: &str) -> Option<Role> {
        if path.is_empty() {
            return Some(Role::Read);
        }
        self.role(&format!("{path}/"))
    }

    fn can_write(&self, path: &str) -> bool {
        self.role(path).is_some_and(|role| role >= Role::Write)
    }

    /// A copy (or, with `remove_source`, a move) of `source` onto `destination` is allowed by
    /// this user's roles.
    fn may_change(
        &self,
        destination: &str,
        source: &str,
        remove_source: bool,
    ) -> Result<(), ApiError> {
        if !self.can_write(destination) {
            return Err(read_only(destination));
        }
        if remove_source && !self.can_write(source) {
            return Err(read_only(source));
        }
        Ok(())
    }

    fn can_write_folder(&self, path: &str) -> bool {
        !path.is_empty()
            && self
                .folder_role(path)
                .is_some_and(|role| role >= Role::Write)
    }

    fn uploader(&self) -> Uploader {
        Uploader {
            sub: self.actor.sub.clone(),
            name: self.actor.name.clone(),
        }
    }

    /// Keeps `error` to answer with (the first one wins) and returns what dav-server sees.
    fn refuse(&self, error: ApiError) -> FsError {
        let fs_error = fs_error_of(&error);
        let mut slot = self
            .refusal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        fs_error
    }

    fn forget_listing(&self) {
        *self
            .listing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// What dav-server is told of an API error.
fn fs_error_of(error: &ApiError) -> FsError {
    use axum::response::IntoResponse;
    // The status is what the API would answer; only its class matters to dav-server.
    let status = match error {
        ApiError::File(FileError::NotFound) => StatusCode::NOT_FOUND,
        ApiError::File(FileError::PathTaken { .. }) => StatusCode::CONFLICT,
        ApiError::File(FileError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::File(FileError::QuotaExceeded { .. }) | ApiError::InsufficientStorage => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        ApiError::WebDav { status, .. } => *status,
        other => ApiError::WebDav {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: other.to_string(),
        }
        .into_response()
        .status(),
    };
    match status {
        StatusCode::NOT_FOUND => FsError::NotFound,
        StatusCode::FORBIDDEN | StatusCode::CONFLICT => FsError::Forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => FsError::TooLarge,
        StatusCode::INSUFFICIENT_STORAGE => FsError::InsufficientStorage,
        status if status.is_client_error() => FsError::Forbidden,
        _ => FsError::GeneralFailure,
    }
}

/// Most dead properties one path may hold (`webdav.md`, "Dead properties").
const MAX_DEAD_PROPS: usize = 64;
/// Most bytes of dead properties (names and stored values) one path may hold.
const MAX_DEAD_PROP_BYTES: usize = 64 * 1024;

/// A file's current version, as listed.
#[derive(Debug, Clone)]
struct FileMeta {
    size: u64,
    modified_ms: u64,
    sha256: String,
}

/// The workspace one request may see: files, docs and folders (made and implied), by path.
#[derive(Debug, Default)]
struct Listing {
    files: BTreeMap<String, FileMeta>,
    /// Docs and when they were last stored (`None`: open, never written).
    docs: BTreeMap<String, Option<u64>>,
    /// Folders and when they were made (implied ones: their newest entry).
    folders: BTreeMap<String, u64>,
    /// The paths that have dead properties: the others are answered without asking the store,
    /// which keeps a PROPFIND of a big folder from one blocking store read per entry.
    with_props: std::collections::BTreeSet<String>,
}

/// What a path is, borrowed from the listing (the root is a folder made at 0).
#[derive(Debug, Clone, Copy)]
enum NodeRef<'a> {
    Folder(u64),
    File(&'a FileMeta),
    Doc(Option<u64>),
}

/// What a path is.
#[derive(Debug, Clone)]
enum Node {
    Root,
    Folder { modified_ms: u64 },
    File(FileMeta),
    Doc { updated_ms: Option<u64> },
}

impl Listing {
    fn node(&self, path: &str) -> Option<Node> {
        if path.is_empty() {
            return Some(Node::Root);
        }
        // A folder wins over a file or document of the same name (see webdav.md).
        if let Some(made) = self.folders.get(path) {
            return Some(Node::Folder { modified_ms: *made });
        }
        if let Some(file) = self.files.get(path) {
            return Some(Node::File(file.clone()));
        }
        self.docs.get(path).map(|updated_ms| Node::Doc {
            updated_ms: *updated_ms,
        })
    }

    /// The names directly inside folder `path` with what each is.
    fn children(&self, path: &str) -> Vec<(String, Node)> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut names = BTreeSet::new();
        let direct = |key: &str| -> Option<String> {
            let rest = key.strip_prefix(&prefix)?;
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
        };
        for key in self
            .folders
            .keys()
            .chain(self.files.keys())
            .chain(self.docs.keys())
        {
            if let Some(name) = direct(key) {
                names.insert(name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let node = self.node(&format!("{prefix}{name}"))?;
                Some((name, node))
            })
            .collect()
    }

    /// What `path` is, borrowed from the listing.
    fn node_ref(&self, path: &str) -> Option<NodeRef<'_>> {
        if path.is_empty() {
            return Some(NodeRef::Folder(0));
        }
        if let Some(made) = self.folders.get(path) {
            return Some(NodeRef::Folder(*made));
        }
        if let Some(file) = self.files.get(path) {
            return Some(NodeRef::File(file));
        }
        self.docs
            .get(path)
            .map(|updated_ms| NodeRef::Doc(*updated_ms))
    }

    /// [`Listing::children`] borrowed: each entry directly inside folder `path` by its full path
    /// as the listing holds it, in name order, a folder winning over a file or document of the
    /// same name and a file over a document (as [`Listing::node`]). Only the keys below `path`
    /// are visited.
    fn children_refs(&self, path: &str) -> Vec<(&str, NodeRef<'_>)> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        fn below<'a, 'p, V>(
            map: &'a BTreeMap<String, V>,
            prefix: &'p str,
        ) -> impl Iterator<Item = (&'a str, &'a V)> + use<'a, 'p, V> {
            map.range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .filter(move |(key, _)| !key[prefix.len()..].contains('/'))
            .map(|(key, value)| (key.as_str(), value))
        }
        // (name, rank, path, node): the lowest rank of a name wins.
        let mut entries: Vec<(&str, u8, &str, NodeRef<'_>)> = Vec::new();
        for (key, made) in below(&self.folders, &prefix) {
            entries.push((&key[prefix.len()..], 0, key, NodeRef::Folder(*made)));
        }
        for (key, file) in below(&self.files, &prefix) {
            entries.push((&key[prefix.len()..], 1, key, NodeRef::File(file)));
        }
        for (key, updated_ms) in below(&self.docs, &prefix) {
            entries.push((&key[prefix.len()..], 2, key, NodeRef::Doc(*updated_ms)));
        }
        // Three runs, each sorted already: the stable sort merges them.
        entries.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        entries.dedup_by(|next, kept| next.0 == kept.0);
        entries
            .into_iter()
            .filter(|(name, ..)| !name.is_empty())
            .map(|(_, _, key, node)| (key, node))
            .collect()
    }

    /// Every file and doc in folder `path`'s tree.
    fn tree(&self, path: &str) -> (Vec<String>, Vec<String>) {
        let inside = |key: &&String| {
            key.len() > path.len() && key.starts_with(path) && key.as_bytes()[path.len()] == b'/'
        };
        (
            self.files.keys().filter(inside).cloned().collect(),
            self.docs.keys().filter(inside).cloned().collect(),
        )
    }
}

/// The workspace path of a request path (`ls.rs` holds the one mapping); not UTF-8 is absent.
fn workspace_path(path: &DavPath) -> FsResult<String> {
    super::ls::workspace_path(path).ok_or(FsError::NotFound)
}

/// The parent folder of a workspace path (`""` for the root's children).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Live documents as text: the one place the adapter reads and writes them, through the
/// document-as-text service (`doc_text/`): reads take the root text `content`, saves become
/// the smallest change from the text the client last read, merged through the doc's owner.
#[derive(Clone)]
pub(crate) struct DocFiles {
    state: AppState,
}

/// A document's text and the tag of that exact text (unquoted, as dav-server's metadata wants
/// it; it quotes it itself).
pub(crate) struct DocTextState {
    pub(crate) text: String,
    pub(crate) etag: String,
}

impl DocFiles {
    /// The document's text; `remember`: kept as the base of the reader's next save (a GET
    /// body), never for listings and metadata, which would push editors' bases out.
    async fn read(&self, doc: &DocId, remember: bool) -> Result<Option<DocTextState>, ApiError> {
        let state = if remember {
            self.state.doc_text.read(doc).await?
        } else {
            self.state.doc_text.peek(doc).await?
        };
        Ok(state.map(|state| DocTextState {
            etag: unquote(&state.etag),
            text: state.text,
        }))
    }

    async fn write(
        &self,
        doc: &DocId,
        if_match: Option<&str>,
        text: &str,
        actor: Actor,
    ) -> Result<DocTextState, ApiError> {
        let name = actor.name.clone();
        let state = self
            .state
            .doc_text
            .write(doc, if_match, text, actor)
            .await?;
        tracing::info!(doc = %doc, by = name, bytes = text.len(), "document saved over webdav");
        Ok(DocTextState {
            etag: unquote(&state.etag),
            text: state.text,
        })
    }
}

/// A file's entity tag over WebDAV: the first 128 bits of its SHA-256, in hex. Shorter than
/// the HTTP API's whole hash because clients copy tags into `If` headers of bounded length
/// (litmus cuts its header at 256 bytes); 128 bits still never repeat in practice.
fn file_etag(sha256: &str) -> String {
    file_etag_ref(sha256).to_owned()
}

/// [`file_etag`], borrowed from the hash.
fn file_etag_ref(sha256: &str) -> &str {
    sha256.get(..32).unwrap_or(sha256)
}

/// An entity tag without its quotes.
fn unquote(tag: &str) -> String {
    tag.trim_matches('"').to_owned()
}

/// The tag of the empty text, for a document that exists only as an open, empty doc.
fn empty_etag() -> String {
    unquote(&crate::doc_text::etag_of(""))
}

/// The workspace as a WebDAV file system. Cheap to clone (dav-server clones it per request).
#[derive(Clone)]
pub(crate) struct TandemFs {
    state: AppState,
    docs: DocFiles,
}

/// What a path is, as the front door needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Folder,
    File,
    Document,
}

impl TandemFs {
    /// [`TandemFs::listing`] for a check made outside dav-server: a failure comes back as the
    /// refusal it left in the request's slot (500 if it left none).
    async fn listing_or_refusal(&self, user: &DavUser) -> Result<Arc<Listing>, ApiError> {
        self.listing(user).await.map_err(|_| {
            user.refusal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .unwrap_or(ApiError::Internal)
        })
    }

    /// What `path` is for `user`, `None` if it does not exist for them.
    pub(crate) async fn kind(&self, path: &str, user: &DavUser) -> Result<Option<Kind>, ApiError> {
        let listing = self.listing_or_refusal(user).await?;
        Ok(listing.node(path).map(|node| match node {
            Node::Root | Node::Folder { .. } => Kind::Folder,
            Node::File(_) => Kind::File,
            Node::Doc { .. } => Kind::Document,
        }))
    }

    pub(crate) fn new(state: AppState) -> TandemFs {
        TandemFs {
            docs: DocFiles {
                state: state.clone(),
            },
            state,
        }
    }

    /// The listing `user` may see, read once per request.
    async fn listing(&self, user: &DavUser) -> FsResult<Arc<Listing>> {
        if let Some(listing) = user
            .listing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
        {
            return Ok(listing);
        }
        let listing = Arc::new(self.read_listing(user).await?);
        *user
            .listing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(listing.clone());
        Ok(listing)
    }

    async fn read_listing(&self, user: &DavUser) -> FsResult<Listing> {
        let files = self.state.tables.files.clone();
        let history = self.state.tables.history.clone();
        let dav = self.state.tables.dav.clone();
        let read = tokio::task::spawn_blocking(move || {
            let files = files.list_files().map_err(FileError::from)?;
            let docs = history.list_docs().map_err(FileError::from)?;
            let (folders, with_props) = match dav {
                Some(dav) => (
                    dav.dav_folders().map_err(FileError::from)?,
                    dav.dav_prop_paths().map_err(FileError::from)?,
                ),
                None => (Vec::new(), Vec::new()),
            };
            Ok::<_, FileError>((files, docs, folders, with_props))
        })
        .await
        .map_err(|_| FsError::GeneralFailure)?;
        let (files, docs, folders, with_props) = read.map_err(|error| user.refuse(error.into()))?;
        let mut listing = Listing {
            with_props: with_props.into_iter().collect(),
            ..Listing::default()
        };
        for entry in files {
            if user.role(&entry.path).is_none() {
                continue;
            }
            let current = entry.current();
            listing.files.insert(
                entry.path.clone(),
                FileMeta {
                    size: current.size,
                    modified_ms: current.uploaded_ms,
                    sha256: current.sha256.clone(),
                },
            );
        }
        for meta in docs {
            if user.role(&meta.name).is_some() {
                listing.docs.insert(meta.name, Some(meta.updated_ms));
            }
        }
        for (doc, _) in self.state.hub.open_docs() {
            if user.role(doc.as_str()).is_some() {
                listing.docs.entry(doc.to_string()).or_insert(None);
            }
        }
        for folder in folders {
            if user.folder_role(&folder).is_some() {
                listing.folders.insert(folder, 0);
            }
        }
        // Every folder an entry's name implies, dated by its newest entry (a name is copied
        // once per folder, not once per entry: a big folder's files share their parent).
        let mut implied: BTreeMap<String, u64> = BTreeMap::new();
        let entries = listing
            .files
            .iter()
            .map(|(path, meta)| (path, meta.modified_ms))
            .chain(
                listing
                    .docs
                    .iter()
                    .map(|(path, updated)| (path, updated.unwrap_or(0))),
            )
            .chain(listing.folders.iter().map(|(path, made)| (path, *made)));
        for (path, modified) in entries {
            let mut parent = parent_of(path);
            while !parent.is_empty() {
                match implied.get_mut(parent) {
                    Some(newest) => *newest = (*newest).max(modified),
                    None => {
                        implied.insert(parent.to_owned(), modified);
                    }
                }
                parent = parent_of(parent);
            }
        }
        for (folder, newest) in implied {
            let made = listing.folders.entry(folder).or_insert(0);
            *made = (*made).max(newest);
        }
        Ok(listing)
    }

    /// Whether `path` had dead properties when this request's listing was read (a store error
    /// answers yes, so the caller asks the store and reports that error).
    async fn has_props(&self, path: &str, user: &DavUser) -> bool {
        self.listing(user)
            .await
            .map_or(true, |listing| listing.with_props.contains(path))
    }

    async fn node(&self, path: &str, user: &DavUser) -> FsResult<Node> {
        self.listing(user)
            .await?
            .node(path)
            .ok_or(FsError::NotFound)
    }

    /// The metadata of `path`, which is `node`.
    async fn meta_of(&self, path: &str, node: Node, user: &DavUser) -> FsResult<Meta> {
        Ok(match node {
            Node::Root => Meta::folder(0),
            Node::Folder { modified_ms } => Meta::folder(modified_ms),
            Node::File(file) => Meta {
                is_dir: false,
                len: file.size,
                modified_ms: file.modified_ms,
                etag: Some(file_etag(&file.sha256)),
            },
            Node::Doc { updated_ms } => {
                let doc = DocId::new(path).map_err(|_| FsError::NotFound)?;
                let text = self
                    .docs
                    .read(&doc, false)
                    .await
                    .map_err(|error| user.refuse(error))?;
                let (len, etag) = text.map_or((0, empty_etag()), |text| {
                    (text.text.len() as u64, text.etag)
                });
                Meta {
                    is_dir: false,
                    len,
                    modified_ms: updated_ms.unwrap_or_else(now_ms),
                    etag: Some(etag),
                }
            }
        })
    }

    /// The multistatus of a `PROPFIND` of `path` (`slash`: asked for with a trailing `/`), of
    /// depth 1 if `depth_one`, written by `multistatus.rs` from this request's listing, the
    /// documents' texts, one read of the dead properties of the resources that have any, and one
    /// read of the locks. `None` leaves the request to dav-server, which answers it as it always
    /// has: `path` does not exist for this user, or it or the listing could not be read. Returns
    /// the body and whether the target is a folder.
    pub(crate) async fn propfind(
        &self,
        path: &str,
        slash: bool,
        depth_one: bool,
        request: &multistatus::Request<'_>,
        user: &DavUser,
    ) -> Option<(Vec<u8>, bool)> {
        let listing = self.listing(user).await.ok()?;
        let target = listing.node_ref(path)?;
        let target_is_dir = matches!(target, NodeRef::Folder(_));
        let mut entries = vec![(path, target)];
        if depth_one && target_is_dir {
            entries.extend(listing.children_refs(path));
        }
        let mut resources = Vec::with_capacity(entries.len());
        for (idx, (entry_path, node)) in entries.into_iter().enumerate() {
            let (is_dir, len, modified_ms, etag) = match node {
                NodeRef::Folder(made) => (true, 0, made, multistatus::Etag::Folder(made)),
                NodeRef::File(file) => (
                    false,
                    file.size,
                    file.modified_ms,
                    multistatus::Etag::Tag(Cow::Borrowed(file_etag_ref(&file.sha256))),
                ),
                NodeRef::Doc(updated_ms) => {
                    match self
                        .meta_of(entry_path, Node::Doc { updated_ms }, user)
                        .await
                    {
                        Ok(meta) => (
                            false,
                            meta.len,
                            meta.modified_ms,
                            multistatus::Etag::Tag(Cow::Owned(meta.etag.unwrap_or_default())),
                        ),
                        // dav-server fails the request for the target, and leaves out an
                        // entry whose metadata it cannot read.
                        Err(_) if idx == 0 => return None,
                        Err(_) => continue,
                    }
                }
            };
            resources.push(multistatus::Resource {
                path: entry_path,
                is_dir,
                slash: is_dir || (idx == 0 && slash),
                len,
                modified_ms,
                etag,
                dead: Vec::new(),
                locks: Vec::new(),
            });
        }
        if request.wanted.needs_dead()
            && let Some(dav) = self.state.tables.dav.clone()
        {
            let with_props: Vec<(usize, String)> = resources
                .iter()
                .enumerate()
                .filter(|(_, resource)| listing.with_props.contains(resource.path))
                .map(|(idx, resource)| (idx, resource.path.to_owned()))
                .collect();
            if !with_props.is_empty() {
                let paths: Vec<String> = with_props.iter().map(|(_, path)| path.clone()).collect();
                let read = tokio::task::spawn_blocking(move || {
                    paths
                        .iter()
                        .map(|path| dav.dav_props(path))
                        .collect::<Vec<_>>()
                })
                .await;
                let Ok(read) = read else {
                    return None;
                };
                for ((idx, path), props) in with_props.iter().zip(read) {
                    match props {
                        Ok(props) => {
                            resources[*idx].dead = props
                                .iter()
                                .filter_map(decode_prop)
                                .map(|prop| {
                                    multistatus::DeadProp::new(
                                        prop.namespace.as_deref(),
                                        &prop.name,
                                        prop.xml.as_deref(),
                                    )
                                })
                                .collect();
                        }
                        // As dav-server, which answers without them.
                        Err(error) => {
                            tracing::warn!(%error, path, "reading dead properties failed");
                        }
                    }
                }
            }
        }
        if request.wanted.needs_locks() {
            let paths: Vec<&str> = resources.iter().map(|resource| resource.path).collect();
            match self.state.locks.discover_each(&paths).await {
                Ok(locks) => {
                    for (resource, locks) in resources.iter_mut().zip(locks) {
                        resource.locks = locks;
                    }
                }
                // As dav-server's lock discovery (`ls.rs`), which answers with none.
                Err(error) => tracing::error!(%error, path, "reading locks failed"),
            }
        }
        Some((multistatus::write(request, &resources), target_is_dir))
    }

    fn dav_table(&self, user: &DavUser) -> FsResult<Arc<dyn tandem_store::meta::DavTable>> {
        self.state.tables.dav.clone().ok_or_else(|| {
            user.refuse(ApiError::WebDav {
                status: StatusCode::NOT_IMPLEMENTED,
                code: "dav_cluster_unsupported",
                message: "empty folders and dead properties are not stored in cluster mode".into(),
            })
        })
    }

    /// Runs `work` with the WebDAV table on the blocking pool.
    async fn with_dav<T: Send + 'static>(
        &self,
        user: &DavUser,
        work: impl FnOnce(&dyn tandem_store::meta::DavTable) -> Result<T, tandem_store::StoreError>
        + Send
        + 'static,
    ) -> FsResult<T> {
        let table = self.dav_table(user)?;
        let res = tokio::task::spawn_blocking(move || work(table.as_ref()))
            .await
            .map_err(|_| FsError::GeneralFailure)?;
        res.map_err(|error| user.refuse(ApiError::from_store(&error, "webdav table")))
    }

    /// Moves (or copies) the WebDAV rows of `from`'s tree to `to`, if the table exists.
    async fn carry_dav_rows(
        &self,
        from: &str,
        to: &str,
        copy: bool,
        user: &DavUser,
    ) -> FsResult<()> {
        if self.state.tables.dav.is_none() {
            return Ok(());
        }
        let (from, to) = (from.to_owned(), to.to_owned());
        self.with_dav(user, move |dav| dav.move_dav_tree(&from, &to, copy))
            .await
    }

    async fn drop_dav_rows(&self, path: &str, user: &DavUser) -> FsResult<()> {
        if self.state.tables.dav.is_none() {
            return Ok(());
        }
        let path = path.to_owned();
        self.with_dav(user, move |dav| dav.remove_dav_tree(&path))
            .await
    }

    fn publish(&self, event: Event) {
        self.state.events.publish(event);
    }

    async fn remove_file_at(&self, path: &str, user: &DavUser) -> FsResult<()> {
        self.state
            .files
            .delete_file(path)
            .await
            .map_err(|error| user.refuse(error.into()))?;
        tracing::info!(path, "file deleted over webdav");
        self.publish(Event::FileDeleted {
            path: path.to_owned(),
            actor: user.actor.clone(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    async fn move_file_to(&self, from: &str, to: &str, user: &DavUser) -> FsResult<()> {
        check_new_name(to, user)?;
        self.state
            .files
            .move_file(from, to)
            .await
            .map_err(|error| user.refuse(error.into()))?;
        tracing::info!(from, to, "file moved over webdav");
        self.publish(Event::FileRenamed {
            from: from.to_owned(),
            to: to.to_owned(),
            actor: user.actor.clone(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    /// Opens a document for writing: its new text is collected, then handed to [`DocFiles`].
    fn doc_writer(&self, doc: DocId, user: &DavUser) -> Box<dyn DavFile> {
        Box::new(DocWriter {
            docs: self.docs.clone(),
            doc,
            user: user.clone(),
            body: Vec::new(),
            written: None,
        })
    }

    /// Opens a file for writing: the body goes to the upload path every PUT takes
    /// ([`store_put`]), run by a tracked task that reads it from a bounded queue.
    fn file_writer(&self, path: &DocId, size: Option<u64>, user: &DavUser) -> Box<dyn DavFile> {
        let (tx, rx) = mpsc::channel::<PutChunk>(PUT_QUEUE_CHUNKS);
        let (done_tx, done_rx) = oneshot::channel();
        let put = PutRequest {
            path: path.clone(),
            uploader: user.uploader(),
            declared_len: size,
            declared_sha: None,
            content_type: None,
            writer: user.writer.clone(),
        };
        let state = self.state.clone();
        let span = tracing::debug_span!("dav_put", path = %path);
        self.state.lifecycle.spawn(span, async move {
            // The body ends only with `End`: a queue closed without it (the request went away)
            // is a cut-off body, never a shorter file.
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Some(PutChunk::Data(bytes)) => Some((Ok(bytes), rx)),
                    Some(PutChunk::End) => None,
                    None => Some((Err(std::io::Error::other("request ended")), rx)),
                }
            });
            let res = store_put(&state, put, Box::pin(body)).await;
            let _ = done_tx.send(res);
        });
        Box::new(FileWriter {
            tx: Some(tx),
            done: Some(done_rx),
            user: user.clone(),
            meta: None,
        })
    }
}

impl TandemFs {
    /// A `COPY` or `MOVE` of the file at `source` onto the document at `doc`: the file's bytes
    /// become the document's text, merged like a PUT of them (no base: the current text), and
    /// a MOVE then deletes the file. Editors that save to a temporary file and rename it over
    /// the original so keep editing the live document instead of replacing it.
    pub(crate) async fn file_onto_doc(
        &self,
        source: &str,
        doc: &str,
        remove_source: bool,
        user: &DavUser,
    ) -> Result<String, ApiError> {
        user.may_change(doc, source, remove_source)?;
        let listing = self.listing(user).await.map_err(|_| ApiError::Internal)?;
        let Some(Node::File(file)) = listing.node(source) else {
            return Err(ApiError::File(FileError::NotFound));
        };
        if file.size > MAX_DOC_PUT_BYTES as u64 {
            return Err(ApiError::DocTooLarge {
                max: MAX_DOC_PUT_BYTES as u64,
            });
        }
        let (reader, len) = self
            .state
            .files
            .open_blob(&file.sha256)
            .await?
            .ok_or(ApiError::File(FileError::NotFound))?;
        let mut stream = reader.stream(0, len).await?;
        let mut bytes = Vec::with_capacity(len as usize);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|_| ApiError::StorageFault)?);
        }
        let text = String::from_utf8(bytes).map_err(|_| not_utf8(doc))?;
        let doc_id = DocId::new(doc).map_err(ApiError::BadDocName)?;
        let saved = self
            .docs
            .write(&doc_id, None, &text, user.actor.clone())
            .await?;
        if remove_source {
            self.remove_file_at(source, user)
                .await
                .map_err(|_| ApiError::Internal)?;
            if self.state.tables.dav.is_some() {
                let path = source.to_owned();
                let _ = self
                    .with_dav(user, move |dav| dav.remove_dav_tree(&path))
                    .await;
            }
        }
        user.forget_listing();
        Ok(saved.etag)
    }
}

impl TandemFs {
    /// Refuses the removal of folder `path` when any of it would stay: it holds a document (403
    /// `doc_not_removable`), or a file `user` may not change, or `user` may not change the
    /// folder (403 `read_only`). Asked before anything is removed (the locks are the caller's).
    pub(crate) async fn check_folder_removable(
        &self,
        path: &str,
        user: &DavUser,
    ) -> Result<(), ApiError> {
        let listing = self.listing_or_refusal(user).await?;
        let (files, docs) = listing.tree(path);
        if !docs.is_empty() {
            return Err(ApiError::WebDav {
                status: StatusCode::FORBIDDEN,
                code: "doc_not_removable",
                message: format!(
                    "{path:?} holds a live document; documents cannot be deleted over WebDAV, so nothing in it was deleted"
                ),
            });
        }
        if !user.can_write_folder(path) || files.iter().any(|file| !user.can_write(file)) {
            return Err(ApiError::WebDav {
                status: StatusCode::FORBIDDEN,
                code: "read_only",
                message: format!(
                    "your role does not allow changing everything in {path:?}, so nothing in it was deleted"
                ),
            });
        }
        Ok(())
    }

    /// A `COPY` or `MOVE` of the file at `source` onto the existing file at `destination`: the
    /// source's current bytes become the destination's next version, so the destination keeps
    /// its history (dav-server would delete it, versions and all, before copying); a MOVE then
    /// deletes the source. Dead properties follow as for any copy or move.
    pub(crate) async fn file_onto_file(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        user: &DavUser,
    ) -> Result<String, ApiError> {
        user.may_change(destination, source, remove_source)?;
        let entry = self
            .state
            .files
            .copy_file(source, destination, user.uploader())
            .await?;
        tracing::info!(source, destination, "file stored over another over webdav");
        super::super::files::publish_uploaded(&self.state, &entry);
        if remove_source {
            self.remove_file_at(source, user)
                .await
                .map_err(|_| ApiError::Internal)?;
        }
        self.carry_dav_rows(source, destination, !remove_source, user)
            .await
            .map_err(|_| ApiError::Internal)?;
        user.forget_listing();
        Ok(file_etag(&entry.current().sha256))
    }
}

fn not_utf8(doc: &str) -> ApiError {
    tracing::debug!(doc, "a document save that is not UTF-8 was refused");
    ApiError::NotUtf8
}

/// Refuses a name no new file or doc may take (`name.rs`, the `DocId` rules).
fn check_new_name(path: &str, user: &DavUser) -> FsResult<DocId> {
    let doc = DocId::new(path).map_err(|error| user.refuse(ApiError::BadDocName(error)))?;
    if crate::name::has_forbidden(path) {
        return Err(user.refuse(ApiError::BadDocName(
            tandem_core::DocIdError::ForbiddenCharacter,
        )));
    }
    Ok(doc)
}

fn forbidden(user: &DavUser, path: &str) -> FsError {
    user.refuse(read_only(path))
}

/// The refusal of a change `path`'s role does not allow.
fn read_only(path: &str) -> ApiError {
    ApiError::WebDav {
        status: StatusCode::FORBIDDEN,
        code: "read_only",
        message: format!("your role does not allow changing {path:?}"),
    }
}

fn documents_stay(user: &DavUser, path: &str) -> FsError {
    user.refuse(ApiError::WebDav {
        status: StatusCode::FORBIDDEN,
        code: "doc_not_removable",
        message: format!(
            "{path:?} is or holds a live document; documents cannot be deleted, moved or renamed over WebDAV"
        ),
    })
}

impl GuardedFileSystem<DavUser> for TandemFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
        user: &'a DavUser,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let path = workspace_path(path)?;
            let listing = self.listing(user).await?;
            let node = listing.node(&path);
            if !(options.write || options.append) {
                let node = node.ok_or(FsError::NotFound)?;
                return self.reader(&path, node, user).await;
            }
            if options.append {
                return Err(FsError::NotImplemented);
            }
            match node {
                Some(Node::Root | Node::Folder { .. }) => Err(FsError::Forbidden),
                Some(_) if options.create_new => Err(FsError::Exists),
                Some(Node::Doc { .. }) => {
                    if !user.can_write(&path) {
                        return Err(forbidden(user, &path));
                    }
                    let doc = DocId::new(&path).map_err(|_| FsError::NotFound)?;
                    user.forget_listing();
                    Ok(self.doc_writer(doc, user))
                }
                Some(Node::File(_)) | None => {
                    if node.is_none() && !options.create {
                        return Err(FsError::NotFound);
                    }
                    if node.is_none()
                        && !matches!(
                            listing.node(parent_of(&path)),
                            Some(Node::Root | Node::Folder { .. })
                        )
                    {
                        // 409: the parent collection does not exist.
                        return Err(FsError::NotFound);
                    }
                    if !user.can_write(&path) {
                        return Err(forbidden(user, &path));
                    }
                    let doc = check_new_name(&path, user)?;
                    user.forget_listing();
                    Ok(self.file_writer(&doc, options.size, user))
                }
            }
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
        user: &'a DavUser,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let path = workspace_path(path)?;
            let listing = self.listing(user).await?;
            match listing.node(&path) {
                Some(Node::Root | Node::Folder { .. }) => {}
                Some(_) => return Err(FsError::Forbidden),
                None => return Err(FsError::NotFound),
            }
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            let entries: Vec<FsResult<Box<dyn DavDirEntry>>> = listing
                .children(&path)
                .into_iter()
                .map(|(name, node)| {
                    Ok(Box::new(Entry {
                        fs: self.clone(),
                        user: user.clone(),
                        path: format!("{prefix}{name}"),
                        name,
                        node,
                    }) as Box<dyn DavDirEntry>)
                })
                .collect();
            Ok(Box::pin(futures_util::stream::iter(entries)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(
        &'a self,
        path: &'a DavPath,
        user: &'a DavUser,
    ) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let path = workspace_path(path)?;
            let node = self.node(&path, user).await?;
            Ok(Box::new(self.meta_of(&path, node, user).await?) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath, user: &'a DavUser) -> FsFuture<'a, ()> {
        async move {
            let path = workspace_path(path)?;
            let listing = self.listing(user).await?;
            if listing.node(&path).is_some() {
                return Err(FsError::Exists);
            }
            if !matches!(
                listing.node(parent_of(&path)),
                Some(Node::Root | Node::Folder { .. })
            ) {
                return Err(FsError::NotFound);
            }
            if !user.can_write_folder(&path) {
                return Err(forbidden(user, &path));
            }
            check_new_name(&path, user)?;
            let name = path.clone();
            self.with_dav(user, move |dav| dav.add_dav_folder(&name, now_ms()))
                .await?;
            user.forget_listing();
            tracing::info!(path, "folder made over webdav");
            Ok(())
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath, user: &'a DavUser) -> FsFuture<'a, ()> {
        async move {
            let path = workspace_path(path)?;
            let listing = self.listing(user).await?;
            match listing.node(&path) {
                Some(Node::Folder { .. }) => {}
                Some(Node::Root) => return Err(FsError::Forbidden),
                Some(_) => return Err(FsError::Forbidden),
                None => return Err(FsError::NotFound),
            }
            if !user.can_write_folder(&path) {
                return Err(forbidden(user, &path));
            }
            let (files, docs) = listing.tree(&path);
            if !docs.is_empty() {
                return Err(documents_stay(user, &path));
            }
            if files.iter().any(|file| !user.can_write(file)) {
                return Err(forbidden(user, &path));
            }
            for file in &files {
                self.remove_file_at(file, user).await?;
            }
            self.drop_dav_rows(&path, user).await?;
            user.forget_listing();
            tracing::info!(path, "folder removed over webdav");
            Ok(())
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath, user: &'a DavUser) -> FsFuture<'a, ()> {
        async move {
            let path = workspace_path(path)?;
            match self.node(&path, user).await? {
                Node::File(_) => {}
                Node::Doc { .. } => return Err(documents_stay(user, &path)),
                _ => return Err(FsError::Forbidden),
            }
            if !user.can_write(&path) {
                return Err(forbidden(user, &path));
            }
            self.remove_file_at(&path, user).await?;
            self.drop_dav_rows(&path, user).await?;
            user.forget_listing();
            Ok(())
        }
        .boxed()
    }

    fn rename<'a>(
        &'a self,
        from: &'a DavPath,
        to: &'a DavPath,
        user: &'a DavUser,
    ) -> FsFuture<'a, ()> {
        async move {
            let from = workspace_path(from)?;
            let to = workspace_path(to)?;
            let listing = self.listing(user).await?;
            match listing.node(&from).ok_or(FsError::NotFound)? {
                Node::Root => return Err(FsError::Forbidden),
                Node::Doc { .. } => return Err(documents_stay(user, &from)),
                Node::File(_) => {
                    if !user.can_write(&from) || !user.can_write(&to) {
                        return Err(forbidden(user, &from));
                    }
                    self.move_file_to(&from, &to, user).await?;
                }
                Node::Folder { .. } => {
                    if !user.can_write_folder(&from) || !user.can_write_folder(&to) {
                        return Err(forbidden(user, &from));
                    }
                    let (files, docs) = listing.tree(&from);
                    if !docs.is_empty() {
                        return Err(documents_stay(user, &from));
                    }
                    let moves: Vec<(String, String)> = files
                        .iter()
                        .map(|file| (file.clone(), format!("{to}{}", &file[from.len()..])))
                        .collect();
                    if moves
                        .iter()
                        .any(|(old, new)| !user.can_write(old) || !user.can_write(new))
                    {
                        return Err(forbidden(user, &from));
                    }
                    // The folder's own new name too: an empty folder has no file to check.
                    check_new_name(&to, user)?;
                    for (_, new) in &moves {
                        check_new_name(new, user)?;
                    }
                    // The folder itself stays a folder at its new place even if it held nothing.
                    if self.state.tables.dav.is_some() {
                        let made = to.clone();
                        self.with_dav(user, move |dav| dav.add_dav_folder(&made, now_ms()))
                            .await?;
                    }
                    for (old, new) in &moves {
                        self.move_file_to(old, new, user).await?;
                    }
                }
            }
            self.carry_dav_rows(&from, &to, false, user).await?;
            user.forget_listing();
            Ok(())
        }
        .boxed()
    }

    fn copy<'a>(
        &'a self,
        from: &'a DavPath,
        to: &'a DavPath,
        user: &'a DavUser,
    ) -> FsFuture<'a, ()> {
        async move {
            let from = workspace_path(from)?;
            let to = workspace_path(to)?;
            let node = self.node(&from, user).await?;
            if !user.can_write(&to) {
                return Err(forbidden(user, &to));
            }
            check_new_name(&to, user)?;
            match node {
                Node::File(_) => {
                    let entry = self
                        .state
                        .files
                        .copy_file(&from, &to, user.uploader())
                        .await
                        .map_err(|error| user.refuse(error.into()))?;
                    tracing::info!(from, to, "file copied over webdav");
                    super::super::files::publish_uploaded(&self.state, &entry);
                }
                Node::Doc { .. } => {
                    // A copy of a document is a file holding its text as of now.
                    let doc = DocId::new(&from).map_err(|_| FsError::NotFound)?;
                    let text = self
                        .docs
                        .read(&doc, false)
                        .await
                        .map_err(|error| user.refuse(error))?
                        .map(|text| text.text)
                        .unwrap_or_default();
                    let put = PutRequest {
                        path: DocId::new(&to).map_err(|_| FsError::Forbidden)?,
                        uploader: user.uploader(),
                        declared_len: Some(text.len() as u64),
                        declared_sha: None,
                        content_type: None,
                        writer: user.writer.clone(),
                    };
                    let body =
                        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(text))]);
                    store_put(&self.state, put, body)
                        .await
                        .map_err(|error| user.refuse(error))?;
                }
                Node::Root | Node::Folder { .. } => return Err(FsError::Forbidden),
            }
            self.carry_dav_rows(&from, &to, true, user).await?;
            user.forget_listing();
            Ok(())
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
        user: &'a DavUser,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        async move {
            let Ok(path) = workspace_path(path) else {
                return false;
            };
            if self.state.tables.dav.is_none() {
                return false;
            }
            if !self.has_props(&path, user).await {
                return false;
            }
            self.with_dav(user, move |dav| dav.dav_props(&path))
                .await
                .is_ok_and(|props| !props.is_empty())
        }
        .boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
        user: &'a DavUser,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            let path = workspace_path(path)?;
            let node = self.node(&path, user).await?;
            let writable = match node {
                Node::Root => false,
                Node::Folder { .. } => user.can_write_folder(&path),
                _ => user.can_write(&path),
            };
            if !writable {
                return Err(forbidden(user, &path));
            }
            let changes: Vec<(String, Option<Vec<u8>>)> = patch
                .iter()
                .map(|(is_set, prop)| (prop_key(prop), is_set.then(|| encode_prop(prop))))
                .collect();
            let name = path.clone();
            let applied = self
                .with_dav(user, move |dav| {
                    let mut after: BTreeMap<String, usize> = dav
                        .dav_props(&name)?
                        .into_iter()
                        .map(|prop| (prop.key, prop.value.len()))
                        .collect();
                    for (key, value) in &changes {
                        match value {
                            Some(value) => after.insert(key.clone(), value.len()),
                            None => after.remove(key),
                        };
                    }
                    let bytes: usize = after.iter().map(|(key, len)| key.len() + len).sum();
                    if after.len() > MAX_DEAD_PROPS || bytes > MAX_DEAD_PROP_BYTES {
                        return Ok(false);
                    }
                    dav.patch_dav_props(&name, &changes)?;
                    Ok(true)
                })
                .await?;
            if !applied {
                tracing::debug!(
                    path,
                    "a PROPPATCH past the dead property limits was refused"
                );
            }
            // A PROPPATCH is all or nothing (RFC 4918 section 9.2): past the limits, the sets
            // are 507 and the rest 424 Failed Dependency.
            Ok(patch
                .into_iter()
                .map(|(is_set, prop)| {
                    let mut prop = prop;
                    prop.xml = None;
                    let status = match (applied, is_set) {
                        (true, _) => StatusCode::OK,
                        (false, true) => StatusCode::INSUFFICIENT_STORAGE,
                        (false, false) => StatusCode::FAILED_DEPENDENCY,
                    };
                    (status, prop)
                })
                .collect())
        }
        .boxed()
    }

    fn get_props<'a>(
        &'a self,
        path: &'a DavPath,
        do_content: bool,
        user: &'a DavUser,
    ) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let path = workspace_path(path)?;
            self.node(&path, user).await?;
            if self.state.tables.dav.is_none()
                || user.named_props
                || !self.has_props(&path, user).await
            {
                return Ok(Vec::new());
            }
            let props = self.with_dav(user, move |dav| dav.dav_props(&path)).await?;
            Ok(props
                .iter()
                .filter_map(decode_prop)
                .map(|mut prop| {
                    if !do_content {
                        prop.xml = None;
                    }
                    prop
                })
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(
        &'a self,
        path: &'a DavPath,
        prop: DavProp,
        user: &'a DavUser,
    ) -> FsFuture<'a, Vec<u8>> {
        async move {
            let path = workspace_path(path)?;
            self.node(&path, user).await?;
            if self.state.tables.dav.is_none() {
                return Err(FsError::NotFound);
            }
            let key = prop_key(&prop);
            let props = self.with_dav(user, move |dav| dav.dav_props(&path)).await?;
            props
                .iter()
                .find(|stored| stored.key == key)
                .and_then(decode_prop)
                .and_then(|prop| prop.xml)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn get_quota<'a>(&'a self, _user: &'a DavUser) -> FsFuture<'a, (u64, Option<u64>)> {
        // The quota is per workspace (first path segment), not one figure for the mount.
        async move { Err(FsError::NotImplemented) }.boxed()
    }
}

impl TandemFs {
    async fn reader(&self, path: &str, node: Node, user: &DavUser) -> FsResult<Box<dyn DavFile>> {
        match node {
            Node::File(file) => {
                let meta = Meta {
                    is_dir: false,
                    len: file.size,
                    modified_ms: file.modified_ms,
                    etag: Some(file_etag(&file.sha256)),
                };
                Ok(Box::new(FileReader {
                    files: self.state.files.clone(),
                    sha256: file.sha256,
                    meta,
                    pos: 0,
                    stream: Mutex::new(None),
                    pending: Bytes::new(),
                }))
            }
            Node::Doc { updated_ms } => {
                // One read gives both the body and its tag: a tag from another read could name
                // a text the client never got, and its next save would merge from the wrong base.
                let doc = DocId::new(path).map_err(|_| FsError::NotFound)?;
                let (text, etag) = self
                    .docs
                    .read(&doc, true)
                    .await
                    .map_err(|error| user.refuse(error))?
                    .map_or_else(
                        || (String::new(), empty_etag()),
                        |text| (text.text, text.etag),
                    );
                Ok(Box::new(TextReader {
                    meta: Meta {
                        is_dir: false,
                        len: text.len() as u64,
                        modified_ms: updated_ms.unwrap_or_else(now_ms),
                        etag: Some(etag),
                    },
                    text: Bytes::from(text),
                    pos: 0,
                }))
            }
            Node::Root | Node::Folder { .. } => Err(FsError::Forbidden),
        }
    }
}

/// The key a dead property is stored under: `{namespace}name`.
fn prop_key(prop: &DavProp) -> String {
    format!(
        "{{{}}}{}",
        prop.namespace.as_deref().unwrap_or_default(),
        prop.name
    )
}

/// Version 1 of a stored property: `u8 1`, the prefix and the XML, each a `u8` flag (0 absent,
/// 1 present) then a `u32` little-endian length and the bytes (`protocol-spec/storage.md`).
fn encode_prop(prop: &DavProp) -> Vec<u8> {
    let mut out = vec![1u8];
    for part in [
        prop.prefix.as_ref().map(|p| p.as_bytes()),
        prop.xml.as_deref(),
    ] {
        match part {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    out
}

fn decode_prop(stored: &DeadProp) -> Option<DavProp> {
    let rest = stored.key.strip_prefix('{')?;
    let (namespace, name) = rest.split_once('}')?;
    let mut bytes = stored.value.as_slice();
    if bytes.first() != Some(&1) {
        return None;
    }
    bytes = &bytes[1..];
    let mut parts = Vec::new();
    for _ in 0..2 {
        let (&flag, rest) = bytes.split_first()?;
        bytes = rest;
        if flag == 0 {
            parts.push(None);
            continue;
        }
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let value = bytes.get(4..4 + len)?.to_vec();
        bytes = &bytes[4 + len..];
        parts.push(Some(value));
    }
    let xml = parts.pop()?;
    let prefix = parts.pop()?.and_then(|p| String::from_utf8(p).ok());
    Some(DavProp {
        name: name.to_owned(),
        prefix,
        namespace: Some(namespace.to_owned()).filter(|ns| !ns.is_empty()),
        xml,
    })
}

/// Metadata of a path.
#[derive(Debug, Clone)]
struct Meta {
    is_dir: bool,
    len: u64,
    modified_ms: u64,
    /// A file's SHA-256, a document's text tag; `None` for folders.
    etag: Option<String>,
}

impl Meta {
    fn folder(modified_ms: u64) -> Meta {
        Meta {
            is_dir: true,
            len: 0,
            modified_ms,
            etag: None,
        }
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }

    fn modified(&self) -> FsResult<SystemTime> {
        Ok(time_of(self.modified_ms))
    }

    fn is_dir(&self) -> bool {
        self.is_dir
    }

    fn etag(&self) -> Option<String> {
        if self.is_dir {
            return Some(format!("dir-{:x}", self.modified_ms));
        }
        self.etag.clone()
    }

    fn created(&self) -> FsResult<SystemTime> {
        Ok(time_of(self.modified_ms))
    }
}

/// One name in a folder listing; its metadata is read when asked for (a doc's text length).
struct Entry {
    fs: TandemFs,
    user: DavUser,
    path: String,
    name: String,
    node: Node,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }

    fn metadata(&'_ self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            Ok(Box::new(
                self.fs
                    .meta_of(&self.path, self.node.clone(), &self.user)
                    .await?,
            ) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn is_dir(&'_ self) -> FsFuture<'_, bool> {
        let is_dir = matches!(self.node, Node::Root | Node::Folder { .. });
        async move { Ok(is_dir) }.boxed()
    }
}

/// A stored file opened for reading: its blob streamed from the current position.
struct FileReader {
    files: crate::files::Files,
    sha256: String,
    meta: Meta,
    pos: u64,
    /// Behind a mutex only to be `Sync` as dav-server asks; reached through `get_mut`.
    stream: Mutex<Option<BoxStream<'static, std::io::Result<Bytes>>>>,
    /// What the stream gave beyond the last `read_bytes`'s count, starting at `pos`: served
    /// first, so the blob is read once, in its own chunks, whatever size dav-server asks for.
    pending: Bytes,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("sha256", &self.sha256)
            .field("pos", &self.pos)
            .finish()
    }
}

impl DavFile for FileReader {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.meta.clone();
        async move { Ok(Box::new(meta) as Box<dyn DavMetaData>) }.boxed()
    }

    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            if self.pos >= self.meta.len || count == 0 {
                return Ok(Bytes::new());
            }
            if !self.pending.is_empty() {
                let take = count.min(self.pending.len());
                let chunk = self.pending.split_to(take);
                self.pos += chunk.len() as u64;
                return Ok(chunk);
            }
            let slot = self
                .stream
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                let (reader, len) = self
                    .files
                    .open_blob(&self.sha256)
                    .await
                    .map_err(|_| FsError::GeneralFailure)?
                    .ok_or(FsError::NotFound)?;
                if len != self.meta.len {
                    tracing::error!(sha256 = self.sha256, len, "blob has the wrong length");
                    return Err(FsError::GeneralFailure);
                }
                let stream = reader
                    .stream(self.pos, self.meta.len - self.pos)
                    .await
                    .map_err(|_| FsError::GeneralFailure)?;
                *slot = Some(stream);
            }
            let Some(stream) = slot.as_mut() else {
                return Err(FsError::GeneralFailure);
            };
            match stream.next().await {
                Some(Ok(mut chunk)) => {
                    if chunk.len() > count {
                        // The rest is served by the next calls.
                        self.pending = chunk.split_off(count);
                    }
                    self.pos += chunk.len() as u64;
                    Ok(chunk)
                }
                Some(Err(error)) => {
                    tracing::error!(%error, sha256 = self.sha256, "reading blob failed");
                    Err(FsError::GeneralFailure)
                }
                None => Ok(Bytes::new()),
            }
        }
        .boxed()
    }

    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let target = match pos {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::End(n) => self.meta.len.checked_add_signed(n),
                SeekFrom::Current(n) => self.pos.checked_add_signed(n),
            }
            .ok_or(FsError::GeneralFailure)?;
            if target != self.pos {
                *self
                    .stream
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                self.pending = Bytes::new();
                self.pos = target;
            }
            Ok(self.pos)
        }
        .boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move { Ok(()) }.boxed()
    }
}

/// A document's text opened for reading.
#[derive(Debug)]
struct TextReader {
    meta: Meta,
    text: Bytes,
    pos: usize,
}

impl DavFile for TextReader {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.meta.clone();
        async move { Ok(Box::new(meta) as Box<dyn DavMetaData>) }.boxed()
    }

    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        let start = self.pos.min(self.text.len());
        let end = start.saturating_add(count).min(self.text.len());
        self.pos = end;
        let chunk = self.text.slice(start..end);
        async move { Ok(chunk) }.boxed()
    }

    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let len = self.text.len() as u64;
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(n) => len.checked_add_signed(n),
            SeekFrom::Current(n) => (self.pos as u64).checked_add_signed(n),
        };
        if let Some(target) = target {
            self.pos = usize::try_from(target).unwrap_or(usize::MAX);
        }
        async move { target.ok_or(FsError::GeneralFailure) }.boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move { Ok(()) }.boxed()
    }
}

/// A piece of a PUT body on its way to the upload task.
enum PutChunk {
    Data(Bytes),
    /// The body is complete; without it the upload is cut off.
    End,
}

/// A file being written by a PUT: the body goes to the upload task chunk by chunk.
struct FileWriter {
    tx: Option<mpsc::Sender<PutChunk>>,
    done: Option<oneshot::Receiver<Result<tandem_store::FileEntry, ApiError>>>,
    user: DavUser,
    meta: Option<Meta>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWriter")
    }
}

impl FileWriter {
    /// The upload task's answer (it ended early, or after `End`).
    async fn outcome(&mut self) -> FsResult<()> {
        self.tx = None;
        let Some(done) = self.done.take() else {
            return Err(FsError::GeneralFailure);
        };
        match done.await {
            Ok(Ok(entry)) => {
                let current = entry.current();
                self.meta = Some(Meta {
                    is_dir: false,
                    len: current.size,
                    modified_ms: current.uploaded_ms,
                    etag: Some(file_etag(&current.sha256)),
                });
                Ok(())
            }
            Ok(Err(error)) => Err(self.user.refuse(error)),
            Err(_) => Err(FsError::GeneralFailure),
        }
    }

    async fn send(&mut self, bytes: Bytes) -> FsResult<()> {
        let Some(tx) = &self.tx else {
            return Err(FsError::GeneralFailure);
        };
        if tx.send(PutChunk::Data(bytes)).await.is_err() {
            // The task stopped reading: it refused the upload; its answer says why.
            self.outcome().await?;
            return Err(FsError::GeneralFailure);
        }
        Ok(())
    }
}

impl DavFile for FileWriter {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.meta.clone();
        async move {
            meta.map(|meta| Box::new(meta) as Box<dyn DavMetaData>)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            let bytes = buf.copy_to_bytes(buf.remaining());
            self.send(bytes).await
        }
        .boxed()
    }

    fn write_bytes(&'_ mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move { self.send(buf).await }.boxed()
    }

    fn read_bytes(&'_ mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn seek(&'_ mut self, _pos: SeekFrom) -> FsFuture<'_, u64> {
        // Partial PUTs are refused before they get here (`mod.rs`).
        async move { Err(FsError::NotImplemented) }.boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move {
            if self.meta.is_some() {
                return Ok(());
            }
            if let Some(tx) = &self.tx {
                // A send error means the task ended already; its outcome tells.
                let _ = tx.send(PutChunk::End).await;
            }
            self.outcome().await
        }
        .boxed()
    }
}

/// A document being written by a PUT: its new text is gathered, then applied as a change.
struct DocWriter {
    docs: DocFiles,
    doc: DocId,
    user: DavUser,
    body: Vec<u8>,
    written: Option<Meta>,
}

impl std::fmt::Debug for DocWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocWriter").field("doc", &self.doc).finish()
    }
}

impl DocWriter {
    fn take(&mut self, bytes: &[u8]) -> FsResult<()> {
        if self.body.len() + bytes.len() > MAX_DOC_PUT_BYTES {
            return Err(self.user.refuse(ApiError::DocTooLarge {
                max: MAX_DOC_PUT_BYTES as u64,
            }));
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }
}

impl DavFile for DocWriter {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = self.written.clone();
        async move {
            meta.map(|meta| Box::new(meta) as Box<dyn DavMetaData>)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let res = self.take(&bytes);
        async move { res }.boxed()
    }

    fn write_bytes(&'_ mut self, buf: Bytes) -> FsFuture<'_, ()> {
        let res = self.take(&buf);
        async move { res }.boxed()
    }

    fn read_bytes(&'_ mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async move { Err(FsError::Forbidden) }.boxed()
    }

    fn seek(&'_ mut self, _pos: SeekFrom) -> FsFuture<'_, u64> {
        async move { Err(FsError::NotImplemented) }.boxed()
    }

    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move {
            if self.written.is_some() {
                return Ok(());
            }
            let body = std::mem::take(&mut self.body);
            let text = String::from_utf8(body)
                .map_err(|_| self.user.refuse(not_utf8(self.doc.as_str())))?;
            let state = self
                .docs
                .write(
                    &self.doc,
                    self.user.if_match.as_deref(),
                    &text,
                    self.user.actor.clone(),
                )
                .await
                .map_err(|error| self.user.refuse(error))?;
            self.written = Some(Meta {
                is_dir: false,
                len: state.text.len() as u64,
                modified_ms: now_ms(),
                etag: Some(state.etag),
            });
            Ok(())
        }
        .boxed()
    }
}
