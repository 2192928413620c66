//! dav-server's lock system over Tandem's lock service (`locks/`): LOCK, UNLOCK, refresh,
//! `lockdiscovery` and the checks of every WebDAV write go to the same locks that refuse writes
//! through the rest of the HTTP API, so one lock means the same everywhere
//! (`protocol-spec/webdav.md`, "Locks").
//!
//! [`workspace_path`] is the one mapping from a `DavPath` (percent-decoded by dav-server, under
//! the `/dav` prefix) to a workspace path. The rules (conflicts, timeouts, expiry) are the
//! service's; this file only converts.
//!
//! dav-server's trait cannot report a storage failure: a LOCK whose store write fails answers
//! 423 (logged at error level here), an UNLOCK 409, and a write whose lock check cannot read
//! the locks (cluster mode, Postgres down) 423, so nothing is ever reported as locked or
//! unlocked that was not stored, and no write passes a lock unchecked.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use xmltree::{Element, EmitterConfig};

use crate::locks::{Lock, LockError, LockRequest, Locks, Writer};

/// The longest `DAV:owner` kept, as XML text; a longer one is dropped (the lock is granted
/// without it). It is echoed in every `lockdiscovery` and stored with the lock.
pub(crate) const MAX_OWNER_BYTES: usize = 4 * 1024;

/// Characters escaped in a lock root's URL path: everything but unreserved ones and `/` (as
/// dav-server escapes every href; `multistatus.rs` writes them with it too).
pub(crate) const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The lock system dav-server calls. Cheap to clone (dav-server clones it per request).
#[derive(Clone)]
pub(crate) struct TandemLs {
    locks: Locks,
    /// Where the WebDAV tree is mounted (`/dav`), for the lock roots of `lockdiscovery`.
    prefix: String,
}

impl fmt::Debug for TandemLs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TandemLs")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl TandemLs {
    /// The lock system for dav-server, mounted at `prefix` (`/dav`, no trailing slash).
    pub(crate) fn boxed(locks: &Locks, prefix: &str) -> Box<dyn DavLockSystem> {
        Box::new(TandemLs {
            locks: locks.clone(),
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    /// `lock` as dav-server shows it.
    fn dav_lock(&self, lock: &Lock) -> DavLock {
        DavLock {
            token: lock.token.clone(),
            path: Box::new(self.dav_path(&lock.path)),
            principal: lock.principal.clone(),
            owner: lock.owner.as_deref().and_then(parse_owner).map(Box::new),
            timeout_at: Some(UNIX_EPOCH + Duration::from_millis(lock.expires_ms)),
            timeout: Some(Duration::from_millis(lock.timeout_ms)),
            shared: lock.shared,
            deep: lock.deep,
        }
    }

    /// The `DavPath` (with the prefix) of a workspace path.
    fn dav_path(&self, path: &str) -> DavPath {
        let encoded = utf8_percent_encode(path, PATH_SEGMENT).to_string();
        let full = format!("{}/{encoded}", self.prefix);
        let parsed = DavPath::new(&full).and_then(|mut dav_path| {
            dav_path.set_prefix(&self.prefix)?;
            Ok(dav_path)
        });
        // Workspace paths are printable once percent-encoded and have no `..` (they come from
        // dav-server's own normalised paths or from `DocId`s), so they parse; the mount root
        // stands in for one that would not.
        parsed.unwrap_or_else(|_| DavPath::new("/").expect("\"/\" is a valid path"))
    }
}

/// The workspace path `path` names: its segments below the mount prefix, percent-decoded (by
/// dav-server), without leading or trailing slashes; `""` for the root. `None` if it is not
/// UTF-8: no workspace path can be locked there.
pub(crate) fn workspace_path(path: &DavPath) -> Option<String> {
    let bytes = path.as_bytes();
    let text = std::str::from_utf8(bytes).ok()?;
    Some(
        text.split('/')
            .filter(|segment| !segment.is_empty())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// The owner element as XML text, if it fits [`MAX_OWNER_BYTES`].
fn owner_xml(owner: &Element) -> Option<String> {
    // dav-server hands the element over with its prefix set to `D`, which the element's own
    // namespace map may not bind (`<owner xmlns="DAV:">` from litmus): written as it is, the
    // emitter refuses it and the owner would be lost. Its namespace says the same thing.
    let mut owner = owner.clone();
    if owner.namespaces.as_ref().is_none_or(|namespaces| {
        namespaces
            .get(owner.prefix.as_deref().unwrap_or(""))
            .is_none()
    }) {
        owner.prefix = None;
    }
    let mut out = Vec::new();
    let config = EmitterConfig::new().write_document_declaration(false);
    owner.write_with_config(&mut out, config).ok()?;
    if out.len() > MAX_OWNER_BYTES {
        tracing::warn!(
            len = out.len(),
            max = MAX_OWNER_BYTES,
            "lock owner too long; dropped"
        );
        return None;
    }
    String::from_utf8(out).ok()
}

/// The stored owner XML, back as an element.
fn parse_owner(xml: &str) -> Option<Element> {
    Element::parse(xml.as_bytes()).ok()
}

/// What a failed lock operation shows dav-server when the failure is not a conflict: a lock on
/// the path itself, which makes it answer 423.
fn refusal(ls: &TandemLs, path: &str) -> DavLock {
    DavLock {
        token: String::new(),
        path: Box::new(ls.dav_path(path)),
        principal: None,
        owner: None,
        timeout_at: None,
        timeout: None,
        shared: false,
        deep: false,
    }
}

impl DavLockSystem for TandemLs {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let target = workspace_path(path);
        let request = target.clone().map(|path| LockRequest {
            path,
            deep,
            shared,
            owner: owner.and_then(owner_xml),
            principal: principal.map(str::to_owned),
            timeout,
        });
        Box::pin(async move {
            let Some(request) = request else {
                return Err(refusal(self, ""));
            };
            let path = request.path.clone();
            match self.locks.lock(request).await {
                Ok(lock) => Ok(self.dav_lock(&lock)),
                Err(LockError::Conflict(lock)) => Err(self.dav_lock(&lock)),
                Err(error) => {
                    tracing::error!(%error, path, "taking a lock failed");
                    Err(refusal(self, &path))
                }
            }
        })
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let target = workspace_path(path);
        let token = token.to_owned();
        Box::pin(async move {
            let path = target.ok_or(())?;
            match self.locks.unlock(Some(&path), &token).await {
                Ok(_) => Ok(()),
                Err(LockError::NotFound) => Err(()),
                Err(error) => {
                    tracing::error!(%error, path, "removing a lock failed");
                    Err(())
                }
            }
        })
    }

    fn refresh(
        &'_ self,
        path: &DavPath,
        token: &str,
        timeout: Option<Duration>,
    ) -> LsFuture<'_, Result<DavLock, ()>> {
        let target = workspace_path(path);
        let token = token.to_owned();
        Box::pin(async move {
            let path = target.ok_or(())?;
            match self.locks.refresh(&path, &token, timeout).await {
                Ok(lock) => Ok(self.dav_lock(&lock)),
                Err(LockError::NotFound) => Err(()),
                Err(error) => {
                    tracing::error!(%error, path, "refreshing a lock failed");
                    Err(())
                }
            }
        })
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let target = workspace_path(path);
        let principal = principal.map(str::to_owned);
        let tokens = submitted_tokens.to_vec();
        Box::pin(async move {
            let Some(target) = target else {
                return Ok(());
            };
            let writer = Writer {
                tokens: &tokens,
                principal: principal.as_deref(),
            };
            match self
                .locks
                .check_as(&target, deep, writer, ignore_principal)
                .await
            {
                Ok(()) => Ok(()),
                Err(LockError::Conflict(lock)) => Err(self.dav_lock(&lock)),
                Err(error) => {
                    tracing::error!(%error, path = target, "checking locks failed");
                    Err(refusal(self, &target))
                }
            }
        })
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let target = workspace_path(path);
        Box::pin(async move {
            let Some(target) = target else {
                return Vec::new();
            };
            match self.locks.discover(&target).await {
                Ok(locks) => locks.iter().map(|lock| self.dav_lock(lock)).collect(),
                Err(error) => {
                    tracing::error!(%error, path = target, "reading locks failed");
                    Vec::new()
                }
            }
        })
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let target = workspace_path(path);
        Box::pin(async move {
            let path = target.ok_or(())?;
            self.locks.remove_below(&path).await.map_err(|error| {
                tracing::error!(%error, path, "removing the locks below a path failed");
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Event, Events};

    /// Bug: litmus's owner (`<owner>` in the default namespace) came back from dav-server with
    /// the prefix `D` its map does not bind; writing it failed and the owner was dropped, so
    /// `lockdiscovery` showed none (litmus `locks: discover`). Fix: `owner_xml` writes such an
    /// element unprefixed, in its namespace.
    #[test]
    fn an_owner_in_the_default_namespace_is_kept() {
        let lockinfo = Element::parse(
            &br#"<lockinfo xmlns="DAV:"><owner>litmus test suite</owner></lockinfo>"#[..],
        )
        .expect("parse");
        let mut owner = lockinfo.get_child("owner").expect("owner").clone();
        owner.prefix = Some("D".to_owned());
        let xml = owner_xml(&owner).expect("kept");
        let back = parse_owner(&xml).expect("parses back");
        assert_eq!(back.name, "owner");
        assert_eq!(back.namespace.as_deref(), Some("DAV:"));
        assert_eq!(back.get_text().as_deref(), Some("litmus test suite"));
    }

    /// A lock system over a real store file, mounted at `/dav`, and the store's directory.
    async fn lock_system() -> (Box<dyn DavLockSystem>, Locks, tempfile::TempDir, Events) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = tandem_store::Store::open(&dir.path().join("t.redb")).expect("store");
        let (events, _records) = Events::new();
        let locks = Locks::open(std::sync::Arc::new(store), events.clone()).await;
        let ls = TandemLs::boxed(&locks, "/dav");
        (ls, locks, dir, events)
    }

    fn dav(path: &str) -> DavPath {
        let mut dav_path = DavPath::new(path).expect("path");
        dav_path.set_prefix("/dav").expect("prefix");
        dav_path
    }

    fn owner() -> Element {
        Element::parse(
            r#"<D:owner xmlns:D="DAV:"><D:href>mailto:ann@example.com</D:href></D:owner>"#
                .as_bytes(),
        )
        .expect("xml")
    }

    #[test]
    fn dav_paths_map_to_workspace_paths() {
        assert_eq!(workspace_path(&dav("/dav/")).as_deref(), Some(""));
        assert_eq!(workspace_path(&dav("/dav")).as_deref(), Some(""));
        assert_eq!(
            workspace_path(&dav("/dav/team/My%20Notes.md")).as_deref(),
            Some("team/My Notes.md")
        );
        assert_eq!(
            workspace_path(&dav("/dav/team/folder/")).as_deref(),
            Some("team/folder")
        );
        assert_eq!(
            workspace_path(&dav("/dav/%C3%A9t%C3%A9")).as_deref(),
            Some("été")
        );
        assert_eq!(workspace_path(&dav("/dav/bad%FF")), None);
    }

    #[tokio::test]
    async fn lock_check_refresh_and_unlock_with_the_token() {
        let (ls, _locks, _dir, events) = lock_system().await;
        let mut live = events.subscribe();
        let path = dav("/dav/team/notes.md");
        let lock = ls
            .lock(
                &path,
                Some("ann"),
                Some(&owner()),
                Some(Duration::from_secs(60)),
                false,
                false,
            )
            .await
            .expect("granted");
        assert!(lock.token.starts_with("urn:uuid:"));
        assert_eq!(lock.timeout, Some(Duration::from_secs(60)));
        assert_eq!(lock.path.as_url_string(), "/team/notes.md");
        assert_eq!(
            lock.path.with_prefix().as_url_string(),
            "/dav/team/notes.md"
        );
        let shown_owner = lock.owner.as_ref().expect("owner kept");
        assert_eq!(shown_owner.name, "owner");
        match live.try_recv().expect("an event").as_ref() {
            Event::FileLocked { path, lock } => {
                assert_eq!(path, "team/notes.md");
                assert_eq!(lock.owner.as_deref(), Some("mailto:ann@example.com"));
                assert_eq!(lock.principal.as_deref(), Some("ann"));
            }
            other => panic!("unexpected event {other:?}"),
        }

        // Others are refused; the holder with its token passes; the token of another account
        // does not count unless the principal is ignored.
        let refused = ls.check(&path, Some("bob"), false, false, &[]).await;
        assert_eq!(refused.map_err(|lock| lock.token), Err(lock.token.clone()));
        let tokens = [lock.token.clone()];
        assert!(
            ls.check(&path, Some("ann"), false, false, &tokens)
                .await
                .is_ok()
        );
        assert!(
            ls.check(&path, Some("bob"), false, false, &tokens)
                .await
                .is_err()
        );
        assert!(
            ls.check(&path, Some("bob"), true, false, &tokens)
                .await
                .is_ok()
        );
        // Other paths are free; so is the parent folder, unless the check is deep.
        assert!(
            ls.check(&dav("/dav/team/other.md"), None, false, false, &[])
                .await
                .is_ok()
        );
        assert!(
            ls.check(&dav("/dav/team/"), None, false, false, &[])
                .await
                .is_ok()
        );
        assert!(
            ls.check(&dav("/dav/team/"), None, false, true, &[])
                .await
                .is_err()
        );

        let refreshed = ls
            .refresh(&path, &lock.token, Some(Duration::from_secs(120)))
            .await
            .expect("refreshed");
        assert_eq!(refreshed.timeout, Some(Duration::from_secs(120)));
        assert!(ls.refresh(&path, "urn:uuid:nope", None).await.is_err());

        assert!(
            ls.unlock(&dav("/dav/team/other.md"), &lock.token)
                .await
                .is_err()
        );
        ls.unlock(&path, &lock.token).await.expect("unlocked");
        assert!(ls.unlock(&path, &lock.token).await.is_err(), "only once");
        assert!(
            ls.check(&path, Some("bob"), false, false, &[])
                .await
                .is_ok()
        );
        assert!(ls.discover(&path).await.is_empty());
    }

    #[tokio::test]
    async fn shared_locks_coexist_and_exclusive_ones_conflict() {
        let (ls, _locks, _dir, _events) = lock_system().await;
        let path = dav("/dav/f.txt");
        let first = ls
            .lock(&path, Some("ann"), None, None, true, false)
            .await
            .expect("shared");
        let second = ls
            .lock(&path, Some("bob"), None, None, true, false)
            .await
            .expect("a second shared lock");
        let conflict = ls
            .lock(&path, Some("cid"), None, None, false, false)
            .await
            .expect_err("exclusive refused");
        assert_eq!(conflict.token, first.token);
        assert_eq!(ls.discover(&path).await.len(), 2);
        // A shared lock's holder writes; someone holding none is refused.
        assert!(
            ls.check(
                &path,
                Some("bob"),
                false,
                false,
                std::slice::from_ref(&second.token)
            )
            .await
            .is_ok()
        );
        assert!(
            ls.check(&path, Some("cid"), false, false, &[])
                .await
                .is_err()
        );
        // The default timeout applies without one asked for.
        assert_eq!(
            first.timeout,
            Some(crate::locks::DEFAULT_TIMEOUT),
            "default timeout"
        );
    }

    #[tokio::test]
    async fn a_deep_folder_lock_covers_what_is_below_and_delete_removes_below() {
        let (ls, _locks, _dir, _events) = lock_system().await;
        let folder = dav("/dav/team/");
        let file = dav("/dav/team/sub/a.md");
        let inner = ls
            .lock(&file, Some("bob"), None, None, false, false)
            .await
            .expect("file lock");
        // A deep lock on the folder would cover bob's exclusive lock.
        let conflict = ls
            .lock(&folder, Some("ann"), None, None, false, true)
            .await
            .expect_err("conflict below");
        assert_eq!(conflict.token, inner.token);
        ls.delete(&dav("/dav/team/sub/"))
            .await
            .expect("deleted below");
        let deep = ls
            .lock(
                &folder,
                Some("ann"),
                None,
                Some(Duration::from_secs(600)),
                false,
                true,
            )
            .await
            .expect("deep lock");
        let found = ls.discover(&file).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].token, deep.token);
        assert_eq!(found[0].path.with_prefix().as_url_string(), "/dav/team");
        assert!(
            ls.check(&file, Some("bob"), false, false, &[])
                .await
                .is_err()
        );
        assert!(
            ls.check(&dav("/dav/teamwork.md"), None, false, false, &[])
                .await
                .is_ok()
        );
        assert!(
            ls.lock(&file, Some("bob"), None, None, true, false)
                .await
                .is_err(),
            "not even shared under an exclusive deep lock"
        );
        // A root lock is a lock on every path.
        ls.delete(&dav("/dav/")).await.expect("deleted all");
        assert!(ls.discover(&file).await.is_empty());
    }

    #[tokio::test]
    async fn an_expired_lock_refuses_nothing_and_is_swept() {
        let (ls, locks, dir, events) = lock_system().await;
        let path = dav("/dav/x.bin");
        let lock = ls
            .lock(
                &path,
                Some("ann"),
                None,
                Some(Duration::from_secs(1)),
                false,
                false,
            )
            .await
            .expect("granted");
        assert_eq!(lock.timeout, Some(crate::locks::MIN_TIMEOUT));
        assert!(ls.check(&path, None, false, false, &[]).await.is_err());
        // Wait for the expiry itself, bounded: the lock lapses 1 s after it was taken.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ls.check(&path, None, false, false, &[]).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ls.discover(&path).await.is_empty());
        assert!(ls.refresh(&path, &lock.token, None).await.is_err());
        let mut live = events.subscribe();
        locks.sweep().await;
        match live.try_recv().expect("an event").as_ref() {
            Event::FileUnlocked {
                reason,
                still_locked,
                ..
            } => {
                assert_eq!(*reason, "expired");
                assert!(!still_locked);
            }
            other => panic!("unexpected event {other:?}"),
        }
        drop((ls, locks));
        let store = tandem_store::Store::open(&dir.path().join("t.redb")).expect("reopen");
        assert!(
            store.list_locks().expect("list").is_empty(),
            "swept from the store"
        );
    }
}
