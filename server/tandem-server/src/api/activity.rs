//! `GET /api/activity` (`protocol-spec/activity.md`): a page of the activity entries the token
//! may read, newest first. The recorder that writes them is the activity service (`activity/`);
//! this only reads the store and filters by the token's claims.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_store::{ActivityEntry, ActivityQuery};

use super::error::ApiError;
use super::extract::{AppQuery, MaybeClaims};
use super::{AppState, blocking};
use crate::activity::{MAX_SESSION, entry_json};
use crate::auth::Claims;

/// Page size of `GET /api/activity` without `limit`.
const DEFAULT_LIMIT: usize = 50;
/// Largest page.
const MAX_LIMIT: usize = 500;
/// Entries one page request examines at most (filters that hide most entries stop early and
/// return a cursor).
const MAX_SCAN: usize = 20_000;

/// Query of `GET /api/activity`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FeedParams {
    /// Entries about exactly this doc or file path.
    doc: Option<String>,
    /// Entries with a path starting with this, e.g. `team/`.
    prefix: Option<String>,
    /// Entries of this actor: a `sub`, or a name with authentication off.
    user: Option<String>,
    /// Entries that ended at or after this time (ms since the Unix epoch).
    since: Option<u64>,
    /// The cursor: the `next` of the previous page.
    before: Option<String>,
    /// Page size, default 50, at most 500.
    limit: Option<usize>,
    /// Tokens may travel in the query (`?token=`), as for every other endpoint.
    #[allow(dead_code)]
    token: Option<String>,
}

/// `GET /api/activity`: a page of entries the token may read, newest first.
#[utoipa::path(
    get,
    path = "/api/activity",
    operation_id = "activity_feed",
    tag = "activity",
    params(FeedParams),
    responses(
        (status = 200, description = "A page of entries, newest first", body = super::openapi::ActivityPage),
        (status = 400, description = "`bad_query`", body = super::openapi::ErrorJson),
        (status = 401, description = "Missing or invalid token", body = super::openapi::ErrorJson),
        (status = 503, description = "`storage_unavailable`", body = super::openapi::ErrorJson),
    ),
)]
pub(super) async fn feed(
    State(state): State<AppState>,
    MaybeClaims(claims): MaybeClaims,
    AppQuery(params): AppQuery<FeedParams>,
) -> Result<Response, ApiError> {
    let before_id = match params.before.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .parse::<u64>()
                .map_err(|_| ApiError::BadQuery(format!("before: not a cursor: {cursor:?}")))?,
        ),
    };
    let limit = match params.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(ApiError::BadQuery("limit must be at least 1".into())),
        Some(limit) => limit.min(MAX_LIMIT),
    };
    let query = ActivityQuery {
        path: params.doc.filter(|doc| !doc.is_empty()),
        prefix: params.prefix.filter(|prefix| !prefix.is_empty()),
        actor: params.user.filter(|user| !user.is_empty()),
        since_ms: params.since,
        before_id,
        limit,
        max_span_ms: MAX_SESSION.as_millis() as u64,
        max_scan: MAX_SCAN,
    };
    let store = state.tables.activity.clone();
    let (page, next) = blocking(
        move || store.list_activity(&query, &mut |entry| visible(claims.as_ref(), entry)),
        |error| ApiError::from_store(&error, "reading activity"),
    )
    .await?;
    let entries: Vec<Value> = page.iter().map(entry_json).collect();
    let next = next.map(|id| id.to_string());
    Ok(axum::Json(json!({ "entries": entries, "next": next })).into_response())
}

/// Whether the holder of `claims` may read every path of `entry` (`None`: authentication off).
fn visible(claims: Option<&Claims>, entry: &ActivityEntry) -> bool {
    claims.is_none_or(|claims| {
        claims.role_for(&entry.path).is_some()
            && entry
                .other_paths
                .iter()
                .all(|path| claims.role_for(path).is_some())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::activity::Sessions;
    use tandem_hub::Actor;

    use crate::bus::Event;

    fn actor(sub: &str) -> Actor {
        Actor {
            sub: Some(sub.into()),
            name: sub.to_uppercase(),
        }
    }

    fn changed(doc: &str, who: &str, seq: u64) -> Event {
        Event::DocChanged {
            doc: doc.into(),
            actor: actor(who),
            first_seq: seq,
            last_seq: seq,
            n_updates: 1,
            at_ms: seq,
        }
    }

    #[test]
    fn an_entry_is_visible_only_when_every_path_is_readable() {
        let claims: Claims = serde_json::from_value(json!({
            "sub": "ada", "exp": 1, "docs": {"a/*": "read"}
        }))
        .unwrap();
        let mut sessions = Sessions::new(Duration::from_secs(300), 1..u64::MAX);
        let inside = sessions.record(&changed("a/doc", "bob", 1)).unwrap();
        let outside = sessions.record(&changed("b/doc", "bob", 1)).unwrap();
        let moved_out = sessions
            .record(&Event::FileRenamed {
                from: "a/f".into(),
                to: "b/f".into(),
                actor: actor("bob"),
                at_ms: 1,
            })
            .unwrap();
        assert!(visible(Some(&claims), &inside));
        assert!(!visible(Some(&claims), &outside));
        assert!(!visible(Some(&claims), &moved_out));
        assert!(visible(None, &outside));
    }
}
