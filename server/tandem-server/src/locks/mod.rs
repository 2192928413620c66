//! Locks: the WebDAV write locks on workspace paths (files, live documents, folders), and what
//! every other way of writing makes of them. The contract is `protocol-spec/webdav.md`
//! ("Locks"); the WebDAV adapter is `api/dav/ls.rs`, and the HTTP API's checks call
//! [`Locks::check`].
//!
//! Every lock is a row of the store's `locks` table (`tandem_store::LockRecord`) and an entry of
//! the in-memory [`index::Index`], which answers every check without touching the disk. A new
//! lock enters the index (so no conflicting one can be granted meanwhile) and is then written
//! durably; a failed write takes it out again and refuses the request. An unlock or a break is
//! written first and leaves the index after, so a lock never comes back after a restart once its
//! holder was told it is gone.
//!
//! Invariants:
//! - The index mutex is a std mutex held for in-memory work only, never across an `.await` or a
//!   store call.
//! - An expired lock refuses nothing and conflicts with nothing from the instant it expires;
//!   its row is removed by the sweep ([`Locks::run_sweep`], every [`SWEEP_INTERVAL`]) and, on
//!   one node, lazily (by the next lock request on a path it covered) and at start.
//! - Each change is announced on the bus (`file_locked`, `file_unlocked`), to live streams only:
//!   a lock is not activity and starts no webhook.
//!
//! Cluster mode: the locks are rows of the shared database (`tandem_locks` in Postgres), and
//! there is no index: every check reads the table, and a lock is taken in one serializable
//! transaction that reads every lock, applies the same conflict rule and inserts, so two nodes
//! never grant overlapping locks. Every node sweeps; a lock event reaches the other nodes'
//! streams through the bus's relay.
//!
//! This is a service: it never names HTTP or the API layer.

pub(crate) mod index;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use tandem_hub::clock::now_ms;
use tandem_store::StoreError;
use tandem_store::meta::LockTable;
use tokio_util::sync::CancellationToken;

pub(crate) use tandem_store::LockRecord as Lock;

use crate::bus::{Event, Events, LockJson};
use index::{Index, Submitter, Wanted};

/// The timeout of a lock whose request names none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The longest timeout granted; longer requests, `Infinite` among them, get this.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest timeout granted, so a lock outlives the answer that grants it.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often expired locks are removed from the store and announced.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why a lock operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Another lock keeps this one from being granted (or a write from happening).
    #[error("{} is locked", .0.path)]
    Conflict(Box<Lock>),
    /// No lock with that token covers that path.
    #[error("no such lock")]
    NotFound,
    /// The store failed; nothing changed.
    #[error("{0}")]
    Store(#[source] StoreError),
    /// A blocking task crashed.
    #[error("internal error")]
    Internal,
}

/// A lock request.
#[derive(Debug, Clone)]
pub(crate) struct LockRequest {
    /// Workspace path, no leading slash (`""`: the root).
    pub(crate) path: String,
    pub(crate) deep: bool,
    pub(crate) shared: bool,
    /// The `DAV:owner` XML as text.
    pub(crate) owner: Option<String>,
    /// The account taking it.
    pub(crate) principal: Option<String>,
    /// The timeout asked for; `None`: [`DEFAULT_TIMEOUT`].
    pub(crate) timeout: Option<Duration>,
}

/// Who writes, for [`Locks::check`]: the tokens the request submits and its account.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer<'a> {
    pub(crate) tokens: &'a [String],
    pub(crate) principal: Option<&'a str>,
}

/// The lock service. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Locks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where locks are durable: the local store, or the shared database in cluster mode.
    table: Arc<dyn LockTable>,
    /// On one node, every lock, in front of the table (see the module's invariants); `None` in
    /// cluster mode, where the table is asked each time, since other nodes change it.
    index: Option<Mutex<Index>>,
    events: Events,
}

/// The timeout granted for a request of `asked`.
pub(crate) fn granted_timeout(asked: Option<Duration>) -> Duration {
    asked
        .unwrap_or(DEFAULT_TIMEOUT)
        .clamp(MIN_TIMEOUT, MAX_TIMEOUT)
}

/// A fresh random lock token, `urn:uuid:` and a version 4 UUID.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Locks {
    /// The service of one node over the local `table`, with every stored lock restored and
    /// the expired ones removed. A store that cannot be read starts with no locks (logged).
    pub(crate) async fn open(table: Arc<dyn LockTable>, events: Events) -> Locks {
        let reading = table.clone();
        let stored = tokio::task::spawn_blocking(move || reading.list_locks()).await;
        let stored = match stored {
            Ok(Ok(stored)) => stored,
            Ok(Err(error)) => {
                tracing::error!(%error, "reading stored locks failed; starting with none");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let now = now_ms();
        let mut index = Index::default();
        let mut expired = Vec::new();
        for lock in stored {
            if lock.expires_ms > now {
                index.insert(lock);
            } else {
                expired.push(lock.token);
            }
        }
        let n_restored = index.all(now).len();
        if !expired.is_empty() {
            let removing = table.clone();
            let n_expired = expired.len();
            match tokio::task::spawn_blocking(move || removing.remove_locks(&expired)).await {
                Ok(Ok(_)) => tracing::info!(n_expired, "expired locks removed at start"),
                Ok(Err(error)) => tracing::warn!(%error, "removing expired locks failed"),
                Err(_) => {}
            }
        }
        if n_restored > 0 {
            tracing::info!(n_restored, "locks restored");
        }
        Locks {
            inner: Arc::new(Inner {
                table,
                index: Some(Mutex::new(index)),
                events,
            }),
        }
    }

    /// Cluster mode: the service over the shared `table`, which every node reads and writes.
    pub(crate) fn shared(table: Arc<dyn LockTable>, events: Events) -> Locks {
        Locks {
            inner: Arc::new(Inner {
                table,
                index: None,
                events,
            }),
        }
    }

    /// One node's index, locked for in-memory work only.
    fn local(&self) -> Option<std::sync::MutexGuard<'_, Index>> {
        // A panic while holding it leaves a consistent map (every change is one call).
        self.inner.index.as_ref().map(|index| {
            index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }

    async fn store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn LockTable) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, LockError> {
        let table = self.inner.table.clone();
        tokio::task::spawn_blocking(move || work(table.as_ref()))
            .await
            .map_err(|_| LockError::Internal)?
            .map_err(LockError::Store)
    }

    /// Every lock as it is now, expired ones included: one node's index (a copy), or the
    /// shared table's rows.
    pub(crate) async fn view(&self) -> Result<Index, LockError> {
        if let Some(index) = self.local() {
            return Ok(index.clone());
        }
        let rows = self.store(|table| table.list_locks()).await?;
        Ok(Index::from_locks(rows))
    }

    /// Runs `read` on every lock as it is now, without copying one node's index.
    async fn read<T>(&self, read: impl FnOnce(&Index) -> T) -> Result<T, LockError> {
        if let Some(index) = self.local() {
            return Ok(read(&index));
        }
        Ok(read(&self.view().await?))
    }

    /// Takes a lock, or returns the lock that conflicts with it.
    pub(crate) async fn lock(&self, request: LockRequest) -> Result<Lock, LockError> {
        let now = now_ms();
        let timeout = granted_timeout(request.timeout);
        let lock = Lock {
            token: new_token(),
            path: request.path.clone(),
            deep: request.deep,
            shared: request.shared,
            owner: request.owner,
            principal: request.principal,
            created_ms: now,
            timeout_ms: millis(timeout),
            expires_ms: now.saturating_add(millis(timeout)),
        };
        let wanted = Wanted {
            path: request.path,
            deep: request.deep,
            shared: request.shared,
        };
        if self.inner.index.is_none() {
            // Cluster mode: the check and the insert are one transaction of the shared table.
            let stored = lock.clone();
            let conflict = self
                .store(move |table| {
                    table.create_lock(&stored, &|rows: &[Lock]| {
                        Index::from_locks(rows.to_vec()).conflict(&wanted, now)
                    })
                })
                .await?;
            if let Some(conflict) = conflict {
                return Err(LockError::Conflict(Box::new(conflict)));
            }
            self.announce_locked(&lock);
            return Ok(lock);
        }
        // One node: check and reserve together, under the index's mutex.
        let lapsed = {
            let Some(mut index) = self.local() else {
                return Err(LockError::Internal);
            };
            if let Some(conflict) = index.conflict(&wanted, now) {
                return Err(LockError::Conflict(Box::new(conflict)));
            }
            // Lazy expiry: the expired locks this one would have met go with its write.
            let lapsed: Vec<Lock> = index
                .at_or_below(&wanted.path)
                .into_iter()
                .chain(
                    index
                        .covering(&wanted.path, 0)
                        .into_iter()
                        .filter(|old| old.path != wanted.path),
                )
                .filter(|old| old.expires_ms <= now)
                .collect();
            for old in &lapsed {
                index.remove(&old.token);
            }
            index.insert(lock.clone());
            lapsed
        };
        let stored = lock.clone();
        let lapsed_tokens: Vec<String> = lapsed.iter().map(|old| old.token.clone()).collect();
        let res = self
            .store(move |table| {
                table.remove_locks(&lapsed_tokens)?;
                table.put_lock(&stored)
            })
            .await;
        if let Err(error) = res {
            if let Some(mut index) = self.local() {
                index.remove(&lock.token);
            }
            return Err(error);
        }
        for old in &lapsed {
            self.announce_unlocked(old, "expired", false);
        }
        self.announce_locked(&lock);
        Ok(lock)
    }

    /// Gives the lock `token` a new timeout; it must cover `path`.
    pub(crate) async fn refresh(
        &self,
        path: &str,
        token: &str,
        timeout: Option<Duration>,
    ) -> Result<Lock, LockError> {
        let now = now_ms();
        let granted = millis(granted_timeout(timeout));
        let refreshable = |lock: &Lock| lock.expires_ms > now && index::covers(lock, path);
        let Some(before) = self
            .read(|index| index.get(token).filter(|lock| refreshable(lock)).cloned())
            .await?
        else {
            return Err(LockError::NotFound);
        };
        let after = Lock {
            timeout_ms: granted,
            expires_ms: now.saturating_add(granted),
            ..before.clone()
        };
        if let Some(mut index) = self.local() {
            match index.get_mut(token) {
                Some(lock) => *lock = after.clone(),
                None => return Err(LockError::NotFound),
            }
        }
        let stored = after.clone();
        let updated = self.store(move |table| table.update_lock(&stored)).await;
        match updated {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if let Some(mut index) = self.local()
                    && let Some(lock) = index.get_mut(token)
                {
                    *lock = before;
                }
                return Err(updated.err().unwrap_or(LockError::NotFound));
            }
        }
        self.announce_locked(&after);
        Ok(after)
    }

    /// Removes the lock `token`, which must cover `path` (`None`: any path, an admin's break).
    pub(crate) async fn unlock(&self, path: Option<&str>, token: &str) -> Result<Lock, LockError> {
        let now = now_ms();
        let Some(lock) = self
            .read(|index| {
                index
                    .get(token)
                    .filter(|lock| {
                        lock.expires_ms > now && path.is_none_or(|path| index::covers(lock, path))
                    })
                    .cloned()
            })
            .await?
        else {
            return Err(LockError::NotFound);
        };
        let tokens = vec![lock.token.clone()];
        let removed = self.store(move |table| table.remove_locks(&tokens)).await?;
        if let Some(mut index) = self.local() {
            index.remove(token);
        } else if removed == 0 {
            // Another node removed it meanwhile.
            return Err(LockError::NotFound);
        }
        let reason = if path.is_some() { "unlocked" } else { "broken" };
        tracing::info!(path = lock.path, reason, "unlocked");
        let still_locked = self.still_locked(&lock.path).await;
        self.announce_unlocked(&lock, reason, still_locked);
        Ok(lock)
    }

    /// Removes every lock at `path` or below it: the resource is gone (a DELETE, or the source
    /// of a MOVE).
    pub(crate) async fn remove_below(&self, path: &str) -> Result<(), LockError> {
        let doomed = self.read(|index| index.at_or_below(path)).await?;
        if doomed.is_empty() {
            return Ok(());
        }
        let tokens: Vec<String> = doomed.iter().map(|lock| lock.token.clone()).collect();
        self.store(move |table| table.remove_locks(&tokens)).await?;
        if let Some(mut index) = self.local() {
            for lock in &doomed {
                index.remove(&lock.token);
            }
        }
        for lock in &doomed {
            let still_locked = self.still_locked(&lock.path).await;
            self.announce_unlocked(lock, "removed", still_locked);
        }
        Ok(())
    }

    /// Every unexpired lock covering `path` (the deep locks above it included).
    pub(crate) async fn discover(&self, path: &str) -> Result<Vec<Lock>, LockError> {
        let now = now_ms();
        self.read(|index| index.covering(path, now)).await
    }

    /// [`Locks::discover`] for each of `paths`, in order, from one read of the locks (one
    /// lock of the index, or one query of the shared table): a folder's listing asks once.
    pub(crate) async fn discover_each(&self, paths: &[&str]) -> Result<Vec<Vec<Lock>>, LockError> {
        let now = now_ms();
        self.read(|index| {
            if index.is_empty() {
                return vec![Vec::new(); paths.len()];
            }
            paths.iter().map(|path| index.covering(path, now)).collect()
        })
        .await
    }

    /// Every unexpired lock, in path order.
    pub(crate) async fn list(&self) -> Result<Vec<Lock>, LockError> {
        let now = now_ms();
        self.read(|index| index.all(now)).await
    }

    /// Whether `writer` may write `path` (and everything below it if `deep`): `Conflict` with
    /// the lock that refuses it otherwise. The token must be the writer's own: a lock taken by
    /// an account counts only for that account.
    pub(crate) async fn check(
        &self,
        path: &str,
        deep: bool,
        writer: Writer<'_>,
    ) -> Result<(), LockError> {
        self.check_as(path, deep, writer, false).await
    }

    /// [`Locks::check`], with dav-server's `ignore_principal`.
    pub(crate) async fn check_as(
        &self,
        path: &str,
        deep: bool,
        writer: Writer<'_>,
        ignore_principal: bool,
    ) -> Result<(), LockError> {
        let submitter = Submitter {
            tokens: writer.tokens,
            principal: writer.principal,
            ignore_principal,
        };
        let now = now_ms();
        self.read(|index| index.check(path, deep, submitter, now))
            .await?
            .map_err(LockError::Conflict)
    }

    /// Removes expired locks from the store (and the index) and announces them.
    pub(crate) async fn sweep(&self) {
        let now = now_ms();
        let expired: Vec<Lock> = match self.read(|index| index.expired(now)).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "reading locks for the sweep failed");
                return;
            }
        };
        if expired.is_empty() {
            return;
        }
        let tokens: Vec<String> = expired.iter().map(|lock| lock.token.clone()).collect();
        if let Err(error) = self.store(move |table| table.remove_locks(&tokens)).await {
            tracing::warn!(%error, "removing expired locks failed; retried at the next sweep");
            return;
        }
        if let Some(mut index) = self.local() {
            for lock in &expired {
                index.remove(&lock.token);
            }
        }
        tracing::debug!(n_expired = expired.len(), "expired locks removed");
        for lock in &expired {
            let still_locked = self.still_locked(&lock.path).await;
            self.announce_unlocked(lock, "expired", still_locked);
        }
    }

    /// The sweep, every [`SWEEP_INTERVAL`] until `cancel`; spawned on the tracker.
    pub(crate) async fn run_sweep(self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => self.sweep().await,
            }
        }
    }

    /// Whether another lock still covers `path` (for `file_unlocked`); `false` if unknown.
    async fn still_locked(&self, path: &str) -> bool {
        self.discover(path)
            .await
            .is_ok_and(|locks| !locks.is_empty())
    }

    fn announce_locked(&self, lock: &Lock) {
        tracing::info!(
            path = lock.path,
            deep = lock.deep,
            shared = lock.shared,
            timeout_ms = lock.timeout_ms,
            "locked"
        );
        self.inner.events.publish_live(Event::FileLocked {
            path: lock.path.clone(),
            lock: LockJson::of(lock),
        });
    }

    fn announce_unlocked(&self, lock: &Lock, reason: &'static str, still_locked: bool) {
        self.inner.events.publish_live(Event::FileUnlocked {
            path: lock.path.clone(),
            lock: LockJson::of(lock),
            reason,
            still_locked,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_urn_uuids_and_differ() {
        let a = new_token();
        assert!(a.starts_with("urn:uuid:"), "{a}");
        assert_eq!(a.len(), "urn:uuid:".len() + 36);
        assert_eq!(&a[9 + 14..9 + 15], "4");
        assert_ne!(a, new_token());
    }

    #[test]
    fn timeouts_are_defaulted_and_clamped() {
        assert_eq!(granted_timeout(None), DEFAULT_TIMEOUT);
        assert_eq!(
            granted_timeout(Some(Duration::from_secs(u64::MAX))),
            MAX_TIMEOUT
        );
        assert_eq!(granted_timeout(Some(Duration::ZERO)), MIN_TIMEOUT);
        assert_eq!(
            granted_timeout(Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
    }
}
