//! `GET /api/events`, the live stream of workspace events, and who an HTTP request is credited to.
//!
//! The events themselves and the bus they travel on are `bus.rs`; this module only serves them
//! over HTTP.
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
use tokio::sync::broadcast;

use percent_encoding::percent_decode_str;

use crate::api::{ApiError, AppState};
use crate::auth::{Claims, Grant};
use tandem_hub::Actor;

use crate::bus::Event;

/// The header an unauthenticated client names itself with.
const USER_HEADER: &str = "x-tandem-user";
/// Longest name taken from it.
const MAX_CLAIMED_NAME_CHARS: usize = 64;
/// Comment lines that keep idle streams (and proxies in front of them) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Who made an HTTP request: the token's identity, or with authentication off the name the
/// client gives in `X-Tandem-User` (percent-encoded UTF-8, unverified like presence names;
/// the web client sends its identity dialog's name), else `anonymous`.
pub(crate) fn actor_of_request(grant: &Grant, headers: &HeaderMap) -> Actor {
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

/// `GET /api/events`: a `text/event-stream` of the events the token may see. Every SSE message
/// is `data: <event JSON>`; the first is `{"type":"hello"}` and `{"type":"resync"}` follows a
/// gap. The stream ends when the token expires, so the client reconnects with a fresh one.
#[utoipa::path(
    get,
    path = "/api/events",
    operation_id = "events",
    tag = "realtime",
    responses(
        (status = 200, description = "Server-sent events, one JSON object with a `type` per `data:` line (`http.md`)",
            content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 503, description = "`shutting_down`", body = super::openapi::ErrorJson),
    ),
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = super::extract::request_claims(&state, &headers, &uri)?;
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
    let cancel = state.lifecycle.cancel.clone();
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
            let expiry = tandem_hub::clock::sleep_until(state.expires_at);
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
                    let Some(json) = event.to_json() else {
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
    use axum::http::HeaderValue;
    use tandem_core::Identity;

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
        assert_eq!(actor_of_request(&open_grant(), &headers).name, "anonymous");
        headers.insert(USER_HEADER, HeaderValue::from_static("Z%C3%BCrich%0Ateam"));
        let actor = actor_of_request(&open_grant(), &headers);
        assert_eq!((actor.sub, actor.name.as_str()), (None, "Zürichteam"));
        headers.insert(USER_HEADER, HeaderValue::from_static("%20%20"));
        assert_eq!(actor_of_request(&open_grant(), &headers).name, "anonymous");
        let long = "x".repeat(500);
        headers.insert(USER_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(
            actor_of_request(&open_grant(), &headers).name.len(),
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
        let actor = actor_of_request(&grant, &headers);
        assert_eq!(
            (actor.sub.as_deref(), actor.name.as_str()),
            (Some("ann"), "Ann")
        );
        assert_eq!(actor.id(), "ann");
    }
}
