//! The workspace bus: what happened to docs and files, for the live tree, the activity feed and
//! webhooks.
//!
//! Producers (the hub's doc actors through [`DocEventSink`], versions included, and the file
//! handlers) call [`Events::publish`]. Each event goes two ways:
//! - to the activity recorder over an unbounded queue, losslessly: it stores the activity entry
//!   and queues webhook deliveries (`activity/`, `webhook/`);
//! - to every `GET /api/events` stream over a broadcast channel. A stream that falls behind gets
//!   a `resync` event and reloads what it shows; nothing else waits for it.
//!
//! In cluster mode each event is also relayed to the other nodes' live streams (never to their
//! recorders: the node where something happened records it, once), and the events other nodes
//! relay arrive as [`Event::Relayed`], for live streams only.
//!
//! Events are coarse by construction: a doc actor reports edits at most once per
//! `HubConfig::doc_changed_interval` per author, never per keystroke, so the queue stays small.
//! The hub's events are published synchronously from the doc actor, so the recorder sees a doc's
//! final report before the actor's task ends.
//!
//! Invariant: the JSON of an [`Event`] is the contract of `GET /api/events` and of webhooks
//! (`protocol-spec/http.md`); a `DocEvent` converts into exactly the shape it had before the hub
//! defined it. This module must not know of HTTP: the stream handler is `api/events.rs`.

use std::sync::Arc;

use serde::Serialize;
use tandem_hub::{Actor, DocEvent, DocEventSink};
use tokio::sync::{broadcast, mpsc};

use crate::auth::Claims;

/// Events a slow `/api/events` stream may fall behind by before it is told to resync.
const LIVE_CAPACITY: usize = 1024;

/// Something that happened in the workspace. Serialised with a `type` tag; the shapes are part
/// of `protocol-spec/http.md` (`GET /api/events`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// Durable updates of one author on one doc since the last report (at most one report per
    /// author and doc per `HubConfig::doc_changed_interval`, and one when the doc unloads).
    DocChanged {
        doc: String,
        actor: Actor,
        first_seq: u64,
        last_seq: u64,
        n_updates: u64,
        at_ms: u64,
    },
    /// The number of connected peers of a doc changed.
    DocPresence { doc: String, peers: usize },
    /// A file (or a new version of it) was stored.
    FileUploaded {
        path: String,
        version: u64,
        size: u64,
        sha256: String,
        content_type: String,
        actor: Actor,
        at_ms: u64,
    },
    /// A file moved, with all its versions.
    FileRenamed {
        from: String,
        to: String,
        actor: Actor,
        at_ms: u64,
    },
    /// A file and its versions were deleted.
    FileDeleted {
        path: String,
        actor: Actor,
        at_ms: u64,
    },
    /// A WebDAV lock was taken or refreshed on `path` (a file, a doc or a folder; `""` is the
    /// workspace root). Live streams only (`locks/`).
    FileLocked { path: String, lock: LockJson },
    /// A WebDAV lock on `path` is gone (`reason`: `unlocked`, `expired`, `broken` by an admin,
    /// `removed` with its resource); `still_locked` when other locks still cover the path.
    FileUnlocked {
        path: String,
        lock: LockJson,
        reason: &'static str,
        still_locked: bool,
    },
    /// A version of a doc was saved (`kind`: `named`, `auto` or `restore`), once it is durable.
    VersionCreated {
        doc: String,
        version: u64,
        name: Option<String>,
        kind: String,
        actor: Actor,
        at_ms: u64,
    },
    /// A doc was taken back to an earlier version (by a new update on top).
    VersionRestored {
        doc: String,
        version: u64,
        actor: Actor,
        at_ms: u64,
    },
    /// An activity entry was stored or extended; published by the activity recorder only.
    Activity {
        /// The paths the entry is about, for filtering; not serialised twice.
        #[serde(skip)]
        paths: Vec<String>,
        entry: serde_json::Value,
    },
    /// An event another node published (cluster mode), as its JSON: live streams only.
    #[serde(skip)]
    Relayed {
        /// The paths it reveals, for filtering.
        paths: Vec<String>,
        /// Its JSON, as that node serialised it.
        json: Arc<str>,
    },
}

/// A lock as the API shows it (`protocol-spec/webdav.md`, "Locks"): in file listings, in
/// `423 locked` answers and in lock events. Never the token, which only its holder and admins
/// see.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct LockJson {
    /// The locked path; an ancestor folder of the file for a deep lock.
    pub(crate) path: String,
    /// Depth infinity: it covers everything below `path`.
    pub(crate) deep: bool,
    /// Shared; otherwise exclusive.
    pub(crate) shared: bool,
    /// The text of the owner the WebDAV client sent (`DAV:owner`, tags removed), if any.
    pub(crate) owner: Option<String>,
    /// The account that holds it (`null` without authentication).
    pub(crate) principal: Option<String>,
    /// When it lapses unless refreshed, ms since the Unix epoch.
    pub(crate) expires_at: u64,
}

impl LockJson {
    /// The JSON of `lock`.
    pub(crate) fn of(lock: &tandem_store::LockRecord) -> LockJson {
        LockJson {
            path: lock.path.clone(),
            deep: lock.deep,
            shared: lock.shared,
            owner: lock
                .owner
                .as_deref()
                .map(owner_text)
                .filter(|text| !text.is_empty()),
            principal: lock.principal.clone(),
            expires_at: lock.expires_ms,
        }
    }
}

/// The text of the `DAV:owner` XML, without its tags, for people to read ("Locked by ...").
fn owner_text(owner: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for character in owner.chars() {
        match character {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => text.push(character),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How a relayed event travels between nodes.
#[derive(Serialize, serde::Deserialize)]
struct Envelope {
    paths: Vec<String>,
    event: Box<serde_json::value::RawValue>,
}

impl Event {
    /// The doc names and file paths this event reveals.
    pub(crate) fn paths(&self) -> Vec<&str> {
        match self {
            Event::DocChanged { doc, .. }
            | Event::DocPresence { doc, .. }
            | Event::VersionCreated { doc, .. }
            | Event::VersionRestored { doc, .. } => vec![doc],
            Event::FileUploaded { path, .. }
            | Event::FileDeleted { path, .. }
            | Event::FileLocked { path, .. }
            | Event::FileUnlocked { path, .. } => vec![path],
            Event::FileRenamed { from, to, .. } => vec![from, to],
            Event::Activity { paths, .. } | Event::Relayed { paths, .. } => {
                paths.iter().map(String::as_str).collect()
            }
        }
    }

    /// Its JSON, as `GET /api/events` and webhooks carry it.
    pub(crate) fn to_json(&self) -> Option<String> {
        match self {
            Event::Relayed { json, .. } => Some(json.to_string()),
            event => serde_json::to_string(event).ok(),
        }
    }

    /// The envelope another node reads back with [`Event::from_relay`]; `None` for what is not
    /// relayed (peer counts are per node; relayed events are not relayed again).
    fn to_relay(&self) -> Option<bytes::Bytes> {
        if matches!(self, Event::DocPresence { .. } | Event::Relayed { .. }) {
            return None;
        }
        let json = self.to_json()?;
        let envelope = Envelope {
            paths: self.paths().into_iter().map(str::to_owned).collect(),
            event: serde_json::value::RawValue::from_string(json).ok()?,
        };
        serde_json::to_vec(&envelope).ok().map(bytes::Bytes::from)
    }

    /// An event another node relayed; `None` if it does not parse.
    pub(crate) fn from_relay(payload: &[u8]) -> Option<Event> {
        let envelope: Envelope = serde_json::from_slice(payload).ok()?;
        Some(Event::Relayed {
            paths: envelope.paths,
            json: Arc::from(envelope.event.get()),
        })
    }

    /// Whether a holder of `claims` may see it (`None`: authentication is off). Every path must
    /// be readable, so a rename never reveals a name the reader could not list.
    pub(crate) fn visible_to(&self, claims: Option<&Claims>) -> bool {
        claims.is_none_or(|claims| {
            self.paths()
                .iter()
                .all(|path| claims.role_for(path).is_some())
        })
    }
}

impl From<DocEvent> for Event {
    fn from(event: DocEvent) -> Event {
        match event {
            DocEvent::Changed {
                doc,
                actor,
                first_seq,
                last_seq,
                n_updates,
                at_ms,
            } => Event::DocChanged {
                doc,
                actor,
                first_seq,
                last_seq,
                n_updates,
                at_ms,
            },
            DocEvent::Presence { doc, peers } => Event::DocPresence { doc, peers },
            DocEvent::VersionCreated {
                doc,
                version,
                name,
                kind,
                actor,
                at_ms,
            } => Event::VersionCreated {
                doc,
                version,
                name,
                kind: kind.as_str().into(),
                actor,
                at_ms,
            },
            DocEvent::VersionRestored {
                doc,
                version,
                actor,
                at_ms,
            } => Event::VersionRestored {
                doc,
                version,
                actor,
                at_ms,
            },
        }
    }
}

/// The bus. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    live: broadcast::Sender<Arc<Event>>,
    record: mpsc::UnboundedSender<Event>,
    /// Cluster mode: hands each local event's envelope to the other nodes.
    relay: Option<Relay>,
}

/// What relays an event's envelope to the other nodes (cluster mode).
pub(crate) type Relay = Arc<dyn Fn(bytes::Bytes) + Send + Sync>;

impl Events {
    /// The bus and the receiving end of the recorder's queue.
    pub(crate) fn new() -> (Events, mpsc::UnboundedReceiver<Event>) {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let (record, records) = mpsc::unbounded_channel();
        (
            Events {
                live,
                record,
                relay: None,
            },
            records,
        )
    }

    /// The bus, relaying every local event through `relay` too (cluster mode). Set before the
    /// bus is cloned.
    pub(crate) fn with_relay(mut self, relay: Relay) -> Events {
        self.relay = Some(relay);
        self
    }

    /// Records `event` (activity, webhooks) and shows it to live streams.
    pub(crate) fn publish(&self, event: Event) {
        // The recorder stops only at shutdown; events after that are not recorded.
        let _ = self.record.send(event.clone());
        self.publish_live(event);
    }

    /// Shows `event` to live streams only (the recorder's own `Activity` events).
    pub(crate) fn publish_live(&self, event: Event) {
        if let Some(relay) = &self.relay
            && let Some(envelope) = event.to_relay()
        {
            relay(envelope);
        }
        // No stream open is not an error.
        let _ = self.live.send(Arc::new(event));
    }

    /// Shows an event another node relayed to live streams only (it is neither recorded nor
    /// relayed again).
    pub(crate) fn publish_relayed(&self, event: Event) {
        let _ = self.live.send(Arc::new(event));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }
}

impl DocEventSink for Events {
    /// Presence is live only, as it always was: a peer count is not activity.
    fn publish(&self, event: DocEvent) {
        match event {
            DocEvent::Presence { .. } => self.publish_live(event.into()),
            _ => Events::publish(self, event.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::auth::Role;

    #[test]
    fn owner_text_drops_the_markup() {
        assert_eq!(
            owner_text(
                "<D:owner xmlns:D=\"DAV:\">\n  <D:href>mailto:ann&amp;co</D:href>\n</D:owner>"
            ),
            "mailto:ann&co"
        );
        assert_eq!(owner_text("Ann"), "Ann");
    }

    #[test]
    fn a_rename_is_visible_only_to_who_may_read_both_paths() {
        let actor = Actor {
            sub: None,
            name: "a".into(),
        };
        let event = Event::FileRenamed {
            from: "team/a.bin".into(),
            to: "private/a.bin".into(),
            actor,
            at_ms: 1,
        };
        let claims = |docs: &[(&str, Role)]| Claims {
            sub: "x".into(),
            name: None,
            docs: docs
                .iter()
                .map(|(p, r)| ((*p).to_owned(), *r))
                .collect::<BTreeMap<_, _>>(),
            admin: false,
            exp: u64::MAX,
            nbf: None,
            iat: None,
            iss: None,
            session: None,
        };
        assert!(event.visible_to(None));
        assert!(!event.visible_to(Some(&claims(&[("team/*", Role::Read)]))));
        assert!(event.visible_to(Some(&claims(&[
            ("team/*", Role::Read),
            ("private/*", Role::Write)
        ]))));
    }

    /// The hub's events keep the JSON `/api/events` and webhooks had before the hub defined them.
    #[test]
    fn doc_events_serialise_as_before() {
        let actor = Actor {
            sub: Some("ann".into()),
            name: "Ann".into(),
        };
        let json = |event: DocEvent| serde_json::to_string(&Event::from(event)).unwrap();
        assert_eq!(
            json(DocEvent::Changed {
                doc: "d".into(),
                actor: actor.clone(),
                first_seq: 1,
                last_seq: 3,
                n_updates: 2,
                at_ms: 7,
            }),
            r#"{"type":"doc_changed","doc":"d","actor":{"sub":"ann","name":"Ann"},"first_seq":1,"last_seq":3,"n_updates":2,"at_ms":7}"#
        );
        assert_eq!(
            json(DocEvent::Presence {
                doc: "d".into(),
                peers: 2
            }),
            r#"{"type":"doc_presence","doc":"d","peers":2}"#
        );
        assert_eq!(
            json(DocEvent::VersionCreated {
                doc: "d".into(),
                version: 4,
                name: None,
                kind: tandem_store::VersionKind::Auto,
                actor: Actor::server(),
                at_ms: 8,
            }),
            r#"{"type":"version_created","doc":"d","version":4,"name":null,"kind":"auto","actor":{"sub":null,"name":"Tandem"},"at_ms":8}"#
        );
        assert_eq!(
            json(DocEvent::VersionRestored {
                doc: "d".into(),
                version: 2,
                actor,
                at_ms: 9,
            }),
            r#"{"type":"version_restored","doc":"d","version":2,"actor":{"sub":"ann","name":"Ann"},"at_ms":9}"#
        );
    }
}
