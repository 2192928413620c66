//! The storage contracts the server's services work on, one trait per service, so that the same
//! service runs on this crate's redb [`Store`] (one node) or on a shared database (cluster mode:
//! `tandem-cluster`'s Postgres implementation).
//!
//! Each method means exactly what the `Store` method of the same name documents; the `Store`
//! implementations below only delegate. Every implementation keeps the same promises: a write
//! that returns `Ok` is durable, a write that fails stored nothing, and concurrent callers (on
//! one node or many) see the effects of each write entirely or not at all.

use crate::{
    ActivityEntry, ActivityQuery, ActivityWrite, BlobRow, DeadProp, Deleted, DeliveryAttempt,
    DocMeta, FileEntry, FileError, FileVersion, FinishedAttempt, HistoryHead, LockRecord,
    OutboxDelivery, Store, StoreError, UpdateAuthor, UploadRecord, UserRecord, VersionRecord,
    WebhookRecord,
};

/// Accounts (`accounts` service).
pub trait UserTable: Send + Sync + 'static {
    /// See [`Store::put_user`].
    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// See [`Store::modify_user`].
    fn modify_user(
        &self,
        sub: &str,
        change: &mut dyn FnMut(Option<&UserRecord>) -> Option<UserRecord>,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// See [`Store::remove_user`].
    fn remove_user(&self, sub: &str) -> Result<bool, StoreError>;
    /// See [`Store::get_user`].
    fn get_user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError>;
    /// See [`Store::list_users`].
    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// See [`Store::count_users`].
    fn count_users(&self) -> Result<u64, StoreError>;
}

/// Failed sign-ins counted by every node together (`accounts` service, cluster mode). One node
/// counts them in memory (`tandem-server/src/accounts/limiter.rs`) and needs no table; behind
/// a balancer each node adds this shared count, so N nodes do not give an attacker N times the
/// attempts. Times are milliseconds since the Unix epoch; a key names an account or an address.
pub trait FailureLog: Send + Sync + 'static {
    /// For each of `keys`, in order: how many failures it has after `now_ms - window_ms`, and
    /// when the oldest of them happened.
    fn failures(
        &self,
        keys: &[&str],
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<(u64, Option<u64>)>, StoreError>;
    /// Records one failure at `now_ms` under each of `keys`, and forgets every failure older
    /// than the window.
    fn record_failure(&self, keys: &[&str], now_ms: u64, window_ms: u64) -> Result<(), StoreError>;
    /// Forgets the failures of `key` (a successful sign-in clears its account's count).
    fn clear_failures(&self, key: &str) -> Result<(), StoreError>;
}

/// The activity feed and the webhook deliveries queued with it (`activity` service).
pub trait ActivityTable: Send + Sync + 'static {
    /// See [`Store::next_activity_id`].
    fn next_activity_id(&self) -> Result<u64, StoreError>;
    /// See [`Store::reserve_activity_ids`].
    fn reserve_activity_ids(&self) -> Result<std::ops::Range<u64>, StoreError>;
    /// See [`Store::write_activity`].
    fn write_activity(&self, write: &ActivityWrite) -> Result<Vec<u64>, StoreError>;
    /// See [`Store::latest_activity`].
    fn latest_activity(
        &self,
        path: &str,
        kind: &str,
        actor: &str,
    ) -> Result<Option<ActivityEntry>, StoreError>;
    /// See [`Store::list_activity`].
    fn list_activity(
        &self,
        query: &ActivityQuery,
        visible: &mut dyn FnMut(&ActivityEntry) -> bool,
    ) -> Result<(Vec<ActivityEntry>, Option<u64>), StoreError>;
    /// See [`Store::prune_activity`].
    fn prune_activity(&self, cutoff_ms: u64, max_span_ms: u64) -> Result<usize, StoreError>;
}

/// Webhook registrations, the delivery outbox and the delivery log (`webhook` service).
pub trait WebhookTable: Send + Sync + 'static {
    /// See [`Store::put_webhook`].
    fn put_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError>;
    /// See [`Store::remove_webhook`].
    fn remove_webhook(&self, id: &str) -> Result<bool, StoreError>;
    /// See [`Store::list_webhooks`].
    fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError>;
    /// See [`Store::list_outbox`].
    fn list_outbox(&self, limit: usize) -> Result<Vec<OutboxDelivery>, StoreError>;
    /// See [`Store::count_outbox`].
    fn count_outbox(&self) -> Result<u64, StoreError>;
    /// See [`Store::due_deliveries`]. With several nodes, each delivery returned is claimed by
    /// the caller until it finishes it (or its claim lapses), so exactly one node makes it.
    fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxDelivery>, Option<u64>), StoreError>;
    /// See [`Store::finish_attempt`].
    fn finish_attempt(
        &self,
        delivery: &OutboxDelivery,
        attempt: &DeliveryAttempt,
        next_attempt_ms: Option<u64>,
        keep: usize,
    ) -> Result<(), StoreError>;
    /// See [`Store::finish_attempts`].
    fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        keep: usize,
    ) -> Result<usize, StoreError>;
    /// See [`Store::list_deliveries`].
    fn list_deliveries(&self, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError>;
}

/// WebDAV write locks (`locks` service). On one node the service keeps every lock in memory in
/// front of the table and decides conflicts there ([`LockTable::put_lock`]); in cluster mode it
/// asks the table each time, and takes a lock with [`LockTable::create_lock`], whose read and
/// write are one transaction across nodes.
pub trait LockTable: Send + Sync + 'static {
    /// See [`Store::put_lock`].
    fn put_lock(&self, lock: &LockRecord) -> Result<(), StoreError>;
    /// See [`Store::create_lock`].
    fn create_lock(
        &self,
        lock: &LockRecord,
        conflict: &(dyn Fn(&[LockRecord]) -> Option<LockRecord> + Send + Sync),
    ) -> Result<Option<LockRecord>, StoreError>;
    /// See [`Store::update_lock`].
    fn update_lock(&self, lock: &LockRecord) -> Result<bool, StoreError>;
    /// See [`Store::remove_locks`].
    fn remove_locks(&self, tokens: &[String]) -> Result<usize, StoreError>;
    /// See [`Store::list_locks`].
    fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError>;
}

/// Files' versions, blob refcounts, workspace usage and uploads in progress (`files` service).
pub trait FileTable: Send + Sync + 'static {
    /// See [`Store::put_file_version`].
    fn put_file_version(
        &self,
        path: &str,
        version: FileVersion,
        quota: Option<u64>,
        upload_id: Option<&str>,
        max_versions: Option<usize>,
    ) -> Result<(FileEntry, Vec<String>), FileError>;
    /// See [`Store::file`].
    fn file(&self, path: &str) -> Result<Option<FileEntry>, FileError>;
    /// See [`Store::list_files`].
    fn list_files(&self) -> Result<Vec<FileEntry>, FileError>;
    /// See [`Store::file_paths`].
    fn file_paths(&self) -> Result<Vec<String>, FileError>;
    /// See [`Store::move_file`].
    fn move_file(&self, from: &str, to: &str, quota: Option<u64>) -> Result<FileEntry, FileError>;
    /// See [`Store::delete_file`].
    fn delete_file(&self, path: &str) -> Result<Deleted, FileError>;
    /// See [`Store::blob`].
    fn blob(&self, sha256: &str) -> Result<Option<BlobRow>, FileError>;
    /// See [`Store::workspace_usage`].
    fn workspace_usage(&self, workspace: &str) -> Result<u64, FileError>;
    /// See [`Store::put_upload`].
    fn put_upload(&self, record: &UploadRecord) -> Result<(), FileError>;
    /// See [`Store::upload`].
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, FileError>;
    /// See [`Store::list_uploads`].
    fn list_uploads(&self) -> Result<Vec<UploadRecord>, FileError>;
    /// See [`Store::remove_upload`].
    fn remove_upload(&self, id: &str) -> Result<bool, FileError>;
}

/// Exclusive locks every node of a cluster shares, named by a string (`files`: the blob lock,
/// and the one writer of a tus upload when the bytes are on an S3-compatible store). Only
/// cluster mode has one: one node serialises with its own mutexes and file locks.
///
/// A lock is held until its [`SharedLockGuard`] is dropped, and also released when the holder
/// dies (its session with the shared database ends), so a crashed node never blocks the others.
pub trait SharedLocks: Send + Sync + 'static {
    /// Waits until the lock `name` is free and takes it. Blocking.
    fn lock(&self, name: &str) -> Result<SharedLockGuard, StoreError>;
    /// Takes the lock `name` if it is free now; `Ok(None)` if someone holds it. Blocking.
    fn try_lock(&self, name: &str) -> Result<Option<SharedLockGuard>, StoreError>;
    /// [`SharedLocks::try_lock`] for a lock held only for a moment (a few queries, no body to
    /// wait for), which may then borrow a connection from a pool. Blocking.
    fn try_lock_brief(&self, name: &str) -> Result<Option<SharedLockGuard>, StoreError> {
        self.try_lock(name)
    }
}

/// A held [`SharedLocks`] lock, released when dropped (the release may block briefly).
pub struct SharedLockGuard {
    held: Box<dyn HeldLock>,
}

/// What holds a [`SharedLocks`] lock: it releases the lock in its `Drop`.
pub trait HeldLock: Send + 'static {
    /// Whether the lock is still held now: `false` once the holder's session with the shared
    /// database has ended (another node may have taken the lock since) or cannot be reached.
    /// Blocking.
    fn still_held(&self) -> bool;
}

impl SharedLockGuard {
    /// Wraps what holds the lock.
    pub fn new(held: impl HeldLock) -> SharedLockGuard {
        SharedLockGuard {
            held: Box::new(held),
        }
    }

    /// See [`HeldLock::still_held`]. Check it right before an irreversible step that relies on
    /// the lock (removing a blob). Blocking.
    pub fn still_held(&self) -> bool {
        self.held.still_held()
    }
}

/// Docs' stored versions and authors, and the list of stored docs (`api` docs and versions).
pub trait HistoryTable: Send + Sync + 'static {
    /// See [`Store::list_versions`].
    fn list_versions(&self, doc: &str) -> Result<Vec<VersionRecord>, StoreError>;
    /// See [`Store::version`].
    fn version(&self, doc: &str, id: u64) -> Result<Option<(VersionRecord, Vec<u8>)>, StoreError>;
    /// See [`Store::history_head`].
    fn history_head(&self, doc: &str) -> Result<HistoryHead, StoreError>;
    /// See [`Store::update_authors`].
    fn update_authors(
        &self,
        doc: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<UpdateAuthor>, StoreError>;
    /// See [`Store::list_docs`].
    fn list_docs(&self) -> Result<Vec<DocMeta>, StoreError>;
    /// See [`Store::doc_meta`].
    fn doc_meta(&self, doc: &str) -> Result<Option<DocMeta>, StoreError>;
}

/// WebDAV's folders and dead properties (`api/dav/`). Cluster mode has no implementation yet:
/// there the server refuses `MKCOL` of an empty folder and `PROPPATCH` (`protocol-spec/webdav.md`).
pub trait DavTable: Send + Sync + 'static {
    /// See [`Store::dav_folders`].
    fn dav_folders(&self) -> Result<Vec<String>, StoreError>;
    /// See [`Store::add_dav_folder`].
    fn add_dav_folder(&self, path: &str, now_ms: u64) -> Result<bool, StoreError>;
    /// See [`Store::dav_props`].
    fn dav_props(&self, path: &str) -> Result<Vec<DeadProp>, StoreError>;
    /// See [`Store::dav_prop_paths`].
    fn dav_prop_paths(&self) -> Result<Vec<String>, StoreError>;
    /// See [`Store::patch_dav_props`].
    fn patch_dav_props(
        &self,
        path: &str,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError>;
    /// See [`Store::move_dav_tree`].
    fn move_dav_tree(&self, from: &str, to: &str, copy: bool) -> Result<(), StoreError>;
    /// See [`Store::remove_dav_tree`].
    fn remove_dav_tree(&self, path: &str) -> Result<(), StoreError>;
}

impl DavTable for Store {
    fn dav_folders(&self) -> Result<Vec<String>, StoreError> {
        Store::dav_folders(self)
    }
    fn add_dav_folder(&self, path: &str, now_ms: u64) -> Result<bool, StoreError> {
        Store::add_dav_folder(self, path, now_ms)
    }
    fn dav_props(&self, path: &str) -> Result<Vec<DeadProp>, StoreError> {
        Store::dav_props(self, path)
    }
    fn dav_prop_paths(&self) -> Result<Vec<String>, StoreError> {
        Store::dav_prop_paths(self)
    }
    fn patch_dav_props(
        &self,
        path: &str,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        Store::patch_dav_props(self, path, changes)
    }
    fn move_dav_tree(&self, from: &str, to: &str, copy: bool) -> Result<(), StoreError> {
        Store::move_dav_tree(self, from, to, copy)
    }
    fn remove_dav_tree(&self, path: &str) -> Result<(), StoreError> {
        Store::remove_dav_tree(self, path)
    }
}

impl UserTable for Store {
    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        Store::put_user(self, user)
    }
    fn modify_user(
        &self,
        sub: &str,
        change: &mut dyn FnMut(Option<&UserRecord>) -> Option<UserRecord>,
    ) -> Result<Option<UserRecord>, StoreError> {
        Store::modify_user(self, sub, change)
    }
    fn remove_user(&self, sub: &str) -> Result<bool, StoreError> {
        Store::remove_user(self, sub)
    }
    fn get_user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        Store::get_user(self, sub)
    }
    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        Store::list_users(self)
    }
    fn count_users(&self) -> Result<u64, StoreError> {
        Store::count_users(self)
    }
}

impl ActivityTable for Store {
    fn next_activity_id(&self) -> Result<u64, StoreError> {
        Store::next_activity_id(self)
    }
    fn reserve_activity_ids(&self) -> Result<std::ops::Range<u64>, StoreError> {
        Store::reserve_activity_ids(self)
    }
    fn write_activity(&self, write: &ActivityWrite) -> Result<Vec<u64>, StoreError> {
        Store::write_activity(self, write)
    }
    fn latest_activity(
        &self,
        path: &str,
        kind: &str,
        actor: &str,
    ) -> Result<Option<ActivityEntry>, StoreError> {
        Store::latest_activity(self, path, kind, actor)
    }
    fn list_activity(
        &self,
        query: &ActivityQuery,
        visible: &mut dyn FnMut(&ActivityEntry) -> bool,
    ) -> Result<(Vec<ActivityEntry>, Option<u64>), StoreError> {
        Store::list_activity(self, query, visible)
    }
    fn prune_activity(&self, cutoff_ms: u64, max_span_ms: u64) -> Result<usize, StoreError> {
        Store::prune_activity(self, cutoff_ms, max_span_ms)
    }
}

impl WebhookTable for Store {
    fn put_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        Store::put_webhook(self, webhook)
    }
    fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        Store::remove_webhook(self, id)
    }
    fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        Store::list_webhooks(self)
    }
    fn list_outbox(&self, limit: usize) -> Result<Vec<OutboxDelivery>, StoreError> {
        Store::list_outbox(self, limit)
    }
    fn count_outbox(&self) -> Result<u64, StoreError> {
        Store::count_outbox(self)
    }
    fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxDelivery>, Option<u64>), StoreError> {
        Store::due_deliveries(self, now_ms, limit)
    }
    fn finish_attempt(
        &self,
        delivery: &OutboxDelivery,
        attempt: &DeliveryAttempt,
        next_attempt_ms: Option<u64>,
        keep: usize,
    ) -> Result<(), StoreError> {
        Store::finish_attempt(self, delivery, attempt, next_attempt_ms, keep)
    }
    fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        keep: usize,
    ) -> Result<usize, StoreError> {
        Store::finish_attempts(self, finished, keep)
    }
    fn list_deliveries(&self, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError> {
        Store::list_deliveries(self, id)
    }
}

impl FileTable for Store {
    fn put_file_version(
        &self,
        path: &str,
        version: FileVersion,
        quota: Option<u64>,
        upload_id: Option<&str>,
        max_versions: Option<usize>,
    ) -> Result<(FileEntry, Vec<String>), FileError> {
        Store::put_file_version(self, path, version, quota, upload_id, max_versions)
    }
    fn file(&self, path: &str) -> Result<Option<FileEntry>, FileError> {
        Store::file(self, path)
    }
    fn list_files(&self) -> Result<Vec<FileEntry>, FileError> {
        Store::list_files(self)
    }
    fn file_paths(&self) -> Result<Vec<String>, FileError> {
        Store::file_paths(self)
    }
    fn move_file(&self, from: &str, to: &str, quota: Option<u64>) -> Result<FileEntry, FileError> {
        Store::move_file(self, from, to, quota)
    }
    fn delete_file(&self, path: &str) -> Result<Deleted, FileError> {
        Store::delete_file(self, path)
    }
    fn blob(&self, sha256: &str) -> Result<Option<BlobRow>, FileError> {
        Store::blob(self, sha256)
    }
    fn workspace_usage(&self, workspace: &str) -> Result<u64, FileError> {
        Store::workspace_usage(self, workspace)
    }
    fn put_upload(&self, record: &UploadRecord) -> Result<(), FileError> {
        Store::put_upload(self, record)
    }
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, FileError> {
        Store::upload(self, id)
    }
    fn list_uploads(&self) -> Result<Vec<UploadRecord>, FileError> {
        Store::list_uploads(self)
    }
    fn remove_upload(&self, id: &str) -> Result<bool, FileError> {
        Store::remove_upload(self, id)
    }
}

impl HistoryTable for Store {
    fn list_versions(&self, doc: &str) -> Result<Vec<VersionRecord>, StoreError> {
        Store::list_versions(self, doc)
    }
    fn version(&self, doc: &str, id: u64) -> Result<Option<(VersionRecord, Vec<u8>)>, StoreError> {
        Store::version(self, doc, id)
    }
    fn history_head(&self, doc: &str) -> Result<HistoryHead, StoreError> {
        Store::history_head(self, doc)
    }
    fn update_authors(
        &self,
        doc: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<UpdateAuthor>, StoreError> {
        Store::update_authors(self, doc, before_seq, limit)
    }
    fn list_docs(&self) -> Result<Vec<DocMeta>, StoreError> {
        Store::list_docs(self)
    }
    fn doc_meta(&self, doc: &str) -> Result<Option<DocMeta>, StoreError> {
        Store::doc_meta(self, doc)
    }
}

impl LockTable for Store {
    fn put_lock(&self, lock: &LockRecord) -> Result<(), StoreError> {
        Store::put_lock(self, lock)
    }
    fn create_lock(
        &self,
        lock: &LockRecord,
        conflict: &(dyn Fn(&[LockRecord]) -> Option<LockRecord> + Send + Sync),
    ) -> Result<Option<LockRecord>, StoreError> {
        Store::create_lock(self, lock, conflict)
    }
    fn update_lock(&self, lock: &LockRecord) -> Result<bool, StoreError> {
        Store::update_lock(self, lock)
    }
    fn remove_locks(&self, tokens: &[String]) -> Result<usize, StoreError> {
        Store::remove_locks(self, tokens)
    }
    fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        Store::list_locks(self)
    }
}
