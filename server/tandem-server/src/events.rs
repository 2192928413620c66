//! Workspace events: what happened to docs and files, for the live tree, the activity feed and
//! webhooks.
//!
//! Producers (doc actors, file handlers, the version API) call [`Events::publish`]. Each event
//! goes two ways:
//! - to the activity recorder over an unbounded queue, losslessly: it stores the activity entry
//!   and queues webhook deliveries (`activity.rs`, `webhook.rs`);
//! - to every `GET /api/events` stream over a broadcast channel. A stream that falls behind gets
//!   a `resync` event and reloads what it shows; nothing else waits for it.
//!
//! Events are coarse by construction: a doc actor reports edits at most once per
//! [`DOC_CHANGED_INTERVAL`] per author, never per keystroke, so the queue stays small.
//!
//! Invariant: a stream only carries events about paths its token may read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use tandem_core::Identity;
use tokio::sync::{broadcast, mpsc};

use percent_encoding::percent_decode_str;

use crate::api::{ApiError, AppState};
use crate::auth::{Claims, Grant};

/// Events a slow `/api/events` stream may fall behind by before it is told to resync.
const LIVE_CAPACITY: usize = 1024;
/// How often a doc actor reports ongoing edits of one author (`Event::DocChanged`).
pub(crate) const DOC_CHANGED_INTERVAL: Duration = Duration::from_secs(1);
/// The header an unauthenticated client names itself with.
const USER_HEADER: &str = "x-tandem-user";
/// Longest name taken from it.
const MAX_CLAIMED_NAME_CHARS: usize = 64;
/// Comment lines that keep idle streams (and proxies in front of them) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Who did something: the token's `sub` and name, or with authentication off the name the peer
/// chose for its presence (or `peer N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Actor {
    /// The verified account id; `None` when authentication is off.
    pub(crate) sub: Option<String>,
    /// What to show.
    pub(crate) name: String,
}

impl Actor {
    /// The actor behind a verified identity, or `fallback` (authentication off).
    pub(crate) fn from_identity(identity: Option<&Identity>, fallback: impl Into<String>) -> Actor {
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

    /// Who made an HTTP request: the token's identity, or with authentication off the name the
    /// client gives in `X-Tandem-User` (percent-encoded UTF-8, unverified like presence names;
    /// the web client sends its identity dialog's name), else `anonymous`.
    pub(crate) fn of_request(grant: &Grant, headers: &HeaderMap) -> Actor {
        let claimed = headers
            .get(USER_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| percent_decode_str(value).decode_utf8().ok())
            .map(|name| {
                // The characters refused in every other name (controls, direction overrides,
                // line separators) are dropped: the header is optional and unverified anyway.
                name.chars()
                    .filter(|&c| !crate::name::is_forbidden(c))
                    .take(MAX_CLAIMED_NAME_CHARS)
                    .collect::<String>()
            })
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty());
        Actor::from_identity(
            grant.identity.as_ref(),
            claimed.unwrap_or_else(|| "anonymous".to_owned()),
        )
    }

    /// The id activity filters match: the `sub`, or the name when authentication is off.
    pub(crate) fn id(&self) -> &str {
        self.sub.as_deref().unwrap_or(&self.name)
    }
}

/// Something that happened in the workspace. Serialised with a `type` tag; the shapes are part
/// of `protocol-spec/http.md` (`GET /api/events`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// Durable updates of one author on one doc since the last report (at most one report per
    /// author and doc per [`DOC_CHANGED_INTERVAL`], and one when the doc unloads).
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
}

impl Event {
    /// The doc names and file paths this event reveals.
    pub(crate) fn paths(&self) -> Vec<&str> {
        match self {
            Event::DocChanged { doc, .. }
            | Event::DocPresence { doc, .. }
            | Event::VersionCreated { doc, .. }
            | Event::VersionRestored { doc, .. } => vec![doc],
            Event::FileUploaded { path, .. } | Event::FileDeleted { path, .. } => vec![path],
            Event::FileRenamed { from, to, .. } => vec![from, to],
            Event::Activity { paths, .. } => paths.iter().map(String::as_str).collect(),
        }
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

/// The bus. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    live: broadcast::Sender<Arc<Event>>,
    record: mpsc::UnboundedSender<Event>,
}

impl Events {
    /// The bus and the receiving end of the recorder's queue.
    pub(crate) fn new() -> (Events, mpsc::UnboundedReceiver<Event>) {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let (record, records) = mpsc::unbounded_channel();
        (Events { live, record }, records)
    }

    /// Records `event` (activity, webhooks) and shows it to live streams.
    pub(crate) fn publish(&self, event: Event) {
        // The recorder stops only at shutdown; events after that are not recorded.
        let _ = self.record.send(event.clone());
        self.publish_live(event);
    }

    /// Shows `event` to live streams only (the recorder's own `Activity` events).
    pub(crate) fn publish_live(&self, event: Event) {
        // No stream open is not an error.
        let _ = self.live.send(Arc::new(event));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /api/events`: a `text/event-stream` of the events the token may see. Every SSE message
/// is `data: <event JSON>`; the first is `{"type":"hello"}` and `{"type":"resync"}` follows a
/// gap. The stream ends when the token expires, so the client reconnects with a fresh one.
pub(crate) async fn stream(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = crate::api::extract::request_claims(&state, &headers, &uri)?;
    let expires_at = claims.as_ref().map(|claims| {
        let exp = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let left = exp
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + left
    });
    let receiver = state.events.subscribe();
    let cancel = state.hub.lifecycle().cancel.clone();
    let stream = event_stream(receiver, claims, expires_at, cancel);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

fn event_stream(
    receiver: broadcast::Receiver<Arc<Event>>,
    claims: Option<Claims>,
    expires_at: Option<tokio::time::Instant>,
    cancel: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct Stream {
        receiver: broadcast::Receiver<Arc<Event>>,
        claims: Option<Claims>,
        expires_at: Option<tokio::time::Instant>,
        cancel: tokio_util::sync::CancellationToken,
        said_hello: bool,
    }
    let state = Stream {
        receiver,
        claims,
        expires_at,
        cancel,
        said_hello: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if !state.said_hello {
            state.said_hello = true;
            let hello = SseEvent::default().data(r#"{"type":"hello"}"#);
            return Some((Ok(hello), state));
        }
        loop {
            let expiry = async {
                match state.expires_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                () = state.cancel.cancelled() => return None,
                () = expiry => return None,
                received = state.receiver.recv() => received,
            };
            match received {
                Ok(event) => {
                    if !event.visible_to(state.claims.as_ref()) {
                        continue;
                    }
                    let Ok(json) = serde_json::to_string(&*event) else {
                        continue;
                    };
                    return Some((Ok(SseEvent::default().data(json)), state));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event stream fell behind; asking it to resync");
                    let resync = SseEvent::default().data(r#"{"type":"resync"}"#);
                    return Some((Ok(resync), state));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::HeaderValue;

    use super::*;
    use crate::auth::Role;

    fn open_grant() -> Grant {
        Grant {
            role: Role::Admin,
            identity: None,
            expires_at: None,
        }
    }

    #[test]
    fn an_unauthenticated_request_is_named_by_its_header_cleaned() {
        let mut headers = HeaderMap::new();
        assert_eq!(Actor::of_request(&open_grant(), &headers).name, "anonymous");
        headers.insert(USER_HEADER, HeaderValue::from_static("Z%C3%BCrich%0Ateam"));
        let actor = Actor::of_request(&open_grant(), &headers);
        assert_eq!((actor.sub, actor.name.as_str()), (None, "Zürichteam"));
        headers.insert(USER_HEADER, HeaderValue::from_static("%20%20"));
        assert_eq!(Actor::of_request(&open_grant(), &headers).name, "anonymous");
        let long = "x".repeat(500);
        headers.insert(USER_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(
            Actor::of_request(&open_grant(), &headers).name.len(),
            MAX_CLAIMED_NAME_CHARS
        );
    }

    #[test]
    fn a_verified_identity_wins_over_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_HEADER, HeaderValue::from_static("Mallory"));
        let grant = Grant {
            identity: Some(Identity {
                sub: "ann".into(),
                name: "Ann".into(),
            }),
            ..open_grant()
        };
        let actor = Actor::of_request(&grant, &headers);
        assert_eq!(
            (actor.sub.as_deref(), actor.name.as_str()),
            (Some("ann"), "Ann")
        );
        assert_eq!(actor.id(), "ann");
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
}
