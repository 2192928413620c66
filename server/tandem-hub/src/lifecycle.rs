//! Shutdown plumbing: the signal future, and the order in which the server winds down.
//!
//! Every task the hub and the server spawn goes through one `TaskTracker` and observes one
//! `CancellationToken` (`Lifecycle`). This module owns only the plumbing; it must not learn what
//! the tasks are. The sequence, driven by the server's `run`:
//!
//! 1. The shutdown future resolves (SIGTERM or ctrl-c in the binary; anything in tests).
//! 2. The token is cancelled. The accept loop (`listener.rs`) stops accepting, and each HTTP
//!    connection finishes its request in flight and closes (hyper's `graceful_shutdown`); the hub
//!    refuses new joins; every connection's task sends close 1001 and ends.
//! 3. Each doc actor sees the token, drains what its peers already sent, hands it to the writer,
//!    waits until the writer reports all of it durable, and exits.
//! 4. `tracker.wait()` runs under `shutdown_timeout`.
//! 5. The activity recorder, which runs under a lifecycle of its own so it outlives the doc
//!    actors, is cancelled only now: it records the actors' final edit reports, writes pending
//!    webhook deliveries to the outbox, commits and stops (the server's `activity`).
//! 6. The writer is told to close, commits what is queued and drops the database.
//!
//! Upgraded WebSocket connections are spawned through it too: hyper does not drain them.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The cancellation token and task tracker shared by everything the server runs.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Cancelled once, when shutdown begins. Never un-cancelled.
    pub cancel: CancellationToken,
    /// Counts every live task; `run` waits on it before closing the store.
    pub tracker: TaskTracker,
}

impl Lifecycle {
    /// Spawns `future` on the tracker inside `span`. The only place tasks are spawned.
    pub fn spawn<F>(&self, span: tracing::Span, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(future.instrument(span));
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    // SIGTERM is listened for from this call on, not from the future's first poll: a supervisor
    // may send it as soon as the server says it listens, before the task awaiting this future
    // has run, and the default action would kill the process without a flush. Needs a runtime.
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
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
}
