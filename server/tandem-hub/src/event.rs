//! What the hub tells the world: [`DocEvent`]s, emitted through a [`DocEventSink`] the embedder
//! provides.
//!
//! The sink is called synchronously, from the doc actor's task, at the point where the event
//! happens. That keeps the order the embedder sees equal to the order inside the actor: a doc's
//! final `Changed` report is published before the actor's task ends, so whoever waits for the
//! hub's tasks to finish and then drains its own queue sees it. A sink must therefore not block:
//! it queues or broadcasts and returns.
//!
//! The hub knows nothing of how events are shown or stored (HTTP streams, activity, webhooks);
//! the server's bus turns them into its own workspace events.

use serde::Serialize;
use tandem_core::Identity;
use tandem_store::VersionKind;

/// Who did something: the token's `sub` and name, or with authentication off the name the peer
/// chose for its presence (or `peer N`). Serialised inside the server's event JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// The verified account id; `None` when authentication is off.
    pub sub: Option<String>,
    /// What to show.
    pub name: String,
}

impl Actor {
    /// The actor behind a verified identity, or `fallback` (authentication off).
    pub fn from_identity(identity: Option<&Identity>, fallback: impl Into<String>) -> Actor {
        match identity {
            Some(identity) => Actor {
                sub: Some(identity.sub.to_string()),
                name: identity.name.to_string(),
            },
            None => Actor {
                sub: None,
                name: fallback.into(),
            },
        }
    }

    /// Who automatic versions are credited to: the server itself.
    pub fn server() -> Actor {
        Actor {
            sub: None,
            name: "Tandem".into(),
        }
    }

    /// The id activity filters match: the `sub`, or the name when authentication is off.
    pub fn id(&self) -> &str {
        self.sub.as_deref().unwrap_or(&self.name)
    }
}

/// Something that happened to an open doc.
#[derive(Debug, Clone)]
pub enum DocEvent {
    /// Durable updates of one author since the last report: at most one report per author and
    /// doc per `HubConfig::doc_changed_interval`, and one more when the doc unloads or the
    /// server shuts down.
    Changed {
        /// The doc's name.
        doc: String,
        /// Who wrote the updates.
        actor: Actor,
        /// The first and last log seq of the reported updates.
        first_seq: u64,
        last_seq: u64,
        /// How many updates the run holds.
        n_updates: u64,
        /// When the report was made (wall clock, ms).
        at_ms: u64,
    },
    /// The number of connected peers changed. Live only: nothing records it.
    Presence {
        /// The doc's name.
        doc: String,
        /// Peers connected now.
        peers: usize,
    },
    /// A version was saved, once it is durable.
    VersionCreated {
        /// The doc's name.
        doc: String,
        /// The new version's id.
        version: u64,
        /// Its name, for named and restore versions.
        name: Option<String>,
        /// Named, automatic, or saved before a restore.
        kind: VersionKind,
        /// Who saved it.
        actor: Actor,
        /// When it became durable (wall clock, ms).
        at_ms: u64,
    },
    /// The doc was taken back to an earlier version (by a new update on top), once durable.
    VersionRestored {
        /// The doc's name.
        doc: String,
        /// The version restored.
        version: u64,
        /// Who restored it.
        actor: Actor,
        /// When (wall clock, ms).
        at_ms: u64,
    },
}

/// Where the hub's events go. Called synchronously from doc actors; must not block or await.
pub trait DocEventSink: Send + Sync {
    /// Takes one event, in the order the actor produced it.
    fn publish(&self, event: DocEvent);
}
