//! The storage each service works on: the local redb store on one node, the shared database
//! in cluster mode. One value per process, made at start (`lib.rs::run`) and handed to the
//! services and the API; nothing else chooses a backend.

use std::sync::Arc;

use tandem_store::Store;
use tandem_store::meta::{
    ActivityTable, DavTable, FailureLog, FileTable, HistoryTable, LockTable, UserTable,
    WebhookTable,
};

/// The tables of every service.
#[derive(Clone)]
pub(crate) struct Tables {
    /// Accounts.
    pub(crate) users: Arc<dyn UserTable>,
    /// The activity feed (and the webhook deliveries queued with it).
    pub(crate) activity: Arc<dyn ActivityTable>,
    /// Webhook registrations, outbox and log.
    pub(crate) webhooks: Arc<dyn WebhookTable>,
    /// File metadata and uploads in progress.
    pub(crate) files: Arc<dyn FileTable>,
    /// Docs' versions and authors, and the list of stored docs.
    pub(crate) history: Arc<dyn HistoryTable>,
    /// WebDAV locks.
    pub(crate) locks: Arc<dyn LockTable>,
    /// Failed sign-ins counted by every node (cluster mode); one node counts in memory only.
    pub(crate) sign_in_failures: Option<Arc<dyn FailureLog>>,
    /// WebDAV's folders and dead properties; `None` in cluster mode, which refuses `MKCOL` of an
    /// empty folder and `PROPPATCH` (`protocol-spec/webdav.md`).
    pub(crate) dav: Option<Arc<dyn DavTable>>,
}

impl Tables {
    /// Everything in the local store (one node).
    pub(crate) fn local(store: &Arc<Store>) -> Tables {
        Tables {
            users: store.clone(),
            activity: store.clone(),
            webhooks: store.clone(),
            files: store.clone(),
            history: store.clone(),
            locks: store.clone(),
            sign_in_failures: None,
            dav: Some(store.clone()),
        }
    }

    /// Cluster mode: everything in the shared database.
    pub(crate) fn shared(pg: &Arc<tandem_cluster::PgMeta>) -> Tables {
        Tables {
            users: pg.clone(),
            activity: pg.clone(),
            webhooks: pg.clone(),
            files: pg.clone(),
            history: pg.clone(),
            locks: pg.clone(),
            sign_in_failures: Some(pg.clone()),
            dav: None,
        }
    }
}
