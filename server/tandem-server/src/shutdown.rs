//! Shutdown plumbing: the signal future, and the order in which the server winds down.
//!
//! Every task the server spawns goes through one `TaskTracker` and observes one
//! `CancellationToken` (`Lifecycle`). The sequence, driven by `lib.rs::run`:
//!
//! 1. The shutdown future resolves (SIGTERM or ctrl-c in the binary; anything in tests).
//! 2. The token is cancelled. The accept loop (`listener.rs`) stops accepting, and each HTTP
//!    connection finishes its request in flight and closes (hyper's `graceful_shutdown`); the hub
//!    refuses new joins; every connection's writer sends close 1001 and its reader stops.
//! 3. Each doc actor sees the token, drains what its peers already sent, hands it to the writer,
//!    waits until the writer reports all of it durable, and exits.
//! 4. `tracker.wait()` runs under `shutdown_timeout`.
//! 5. The activity recorder, which runs under a lifecycle of its own so it outlives the doc
//!    actors, is cancelled only now: it records the actors' final edit reports, writes pending
//!    webhook deliveries to the outbox, commits and stops (`activity.rs`).
//! 6. The writer is told to close, commits what is queued and drops the database.
//!
//! WebSocket tasks are spawned by axum's `on_upgrade`, not by us, so they are wrapped with
//! `TaskTracker::track_future`: axum does not drain upgraded connections.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The cancellation token and task tracker shared by everything the server runs.
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    /// Cancelled once, when shutdown begins. Never un-cancelled.
    pub(crate) cancel: CancellationToken,
    /// Counts every live task; `run` waits on it before closing the store.
    pub(crate) tracker: TaskTracker,
}

impl Lifecycle {
    /// Spawns `future` on the tracker inside `span`. The only place the server spawns tasks.
    pub(crate) fn spawn<F>(&self, span: tracing::Span, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(future.instrument(span));
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("sigterm received, shutting down"),
    }
}
