//! The WebSocket upgrades: `GET /ws/{name}` (y-websocket), whose doc name and token are checked
//! like any request's before the connection is handed to `connection::run` in a tracked task;
//! and `GET /ws` (Hocuspocus), handed to `hocuspocus::run` with an [`Authorizer`] that checks
//! each document's token inside the socket the same way.
//!
//! It only admits and hands over; the connection's life (frames, pings, close reasons) belongs to
//! the hub's `connection.rs`, and the RFC 6455 handshake to `ws_upgrade.rs`.

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};

use tandem_core::DocId;
use tandem_hub::PeerAddr;
use tandem_hub::connection;
use tandem_hub::hocuspocus::{self, AuthorizeFuture, Authorizer, Refusal};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::AppState;
use super::error::ApiError;
use super::extract::DocGrant;
use super::ws_upgrade::{Socket, Upgrade};
use crate::auth::WS_PROTOCOL;
use crate::files::FileError;
use crate::listener::RequestPermit;
use crate::metrics::{ConnectionGuard, Protocol};
use crate::proxy::ClientAddr;

/// Read buffer of each WebSocket. tungstenite's default (128 KiB) is allocated and touched per
/// connection; larger frames still arrive (the buffer grows for them), idle peers stay cheap.
const WS_READ_BUFFER_BYTES: usize = 2 * 1024;
/// Bytes tungstenite buffers before writing to the socket; the writer flushes after each batch.
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// `GET /ws/{name}`.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    // The name and the token are checked before the upgrade headers, so a bad name is always a
    // 400 and a missing or bad token a 401/403, with a JSON body, before any upgrade.
    DocGrant { doc, grant }: DocGrant,
    request: Request,
) -> Result<Response, ApiError> {
    // A file's path cannot also be a doc (the workspace tree would be ambiguous). A doc open
    // here is a doc: no need to ask (in cluster mode, Postgres, which may be down while open
    // docs keep working).
    if state.hub.get(&doc).is_none() && state.files.is_file(doc.as_str()).await? {
        return Err(FileError::PathTaken {
            path: doc.to_string(),
        }
        .into());
    }
    accept(
        state,
        client,
        request,
        move |socket, state, remote, permit| async move {
            // Counted for the admin view and `tandem_connections` while the socket lives: held
            // with the permit by the connection's own task.
            let mut counted = state.telemetry.connection_opened(Protocol::YWebsocket);
            if let Some(identity) = &grant.identity {
                counted.add_identity(&identity.sub);
            }
            connection::run(
                socket,
                doc,
                grant.peer_grant(),
                state.hub,
                state.connection,
                remote,
                (permit, counted),
            )
            .await;
        },
    )
}

/// `GET /ws` and `GET /ws/`: a Hocuspocus connection. Nothing is checked at the upgrade but the
/// upgrade itself: the provider cannot send headers, and the documents, each with its own token,
/// are named inside the socket (`protocol-spec/hocuspocus.md`). Each token goes through
/// [`HocuspocusAuth`], the same checks as the upgrade of `GET /ws/{name}`.
pub(super) async fn upgrade_hocuspocus(
    State(state): State<AppState>,
    Extension(client): Extension<ClientAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    accept(
        state,
        client,
        request,
        |socket, state, remote, permit| async move {
            let hub = state.hub.clone();
            let connection = state.connection.clone();
            let counted = state.telemetry.connection_opened(Protocol::Hocuspocus);
            let authorizer = Arc::new(HocuspocusAuth {
                state,
                counted: Mutex::new(counted),
            });
            hocuspocus::run(socket, hub, connection, authorizer, remote, permit).await;
        },
    )
}

/// Accepts the WebSocket upgrade of `request` (or answers why not) and serves the socket with
/// `serve` as a task of the lifecycle, so shutdown waits for it. No span here: each protocol's
/// task makes its own root span, so the request's does not live as long as the connection.
fn accept<F, Fut>(
    state: AppState,
    client: ClientAddr,
    mut request: Request,
    serve: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Socket, AppState, PeerAddr, Option<RequestPermit>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    // A browser that sent its token as a subprotocol must get one of its offers back.
    let upgrade =
        match Upgrade::from_request(request.method(), request.headers(), on_upgrade, WS_PROTOCOL) {
            Ok(upgrade) => upgrade,
            Err(refusal) => return Ok(refusal.into_response()),
        };
    if state.lifecycle.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let config = socket_config(&state);
    // A client forwarded by a trusted proxy holds its per-address slot for the WebSocket's life.
    let permit = request.extensions_mut().remove::<RequestPermit>();
    let (response, socket) = upgrade.accept(config);
    let lifecycle = state.lifecycle.clone();
    lifecycle.spawn(tracing::Span::none(), async move {
        match socket.await {
            Ok(socket) => {
                let remote = PeerAddr {
                    ip: client.ip,
                    proxy: client.proxy(),
                };
                serve(socket, state, remote, permit).await;
            }
            Err(error) => tracing::debug!(%error, remote = %client.ip, "websocket upgrade failed"),
        }
    });
    Ok(response)
}

/// The tungstenite settings of every WebSocket: small buffers, the frame size limit.
fn socket_config(state: &AppState) -> WebSocketConfig {
    let max_frame = usize::try_from(state.limits.max_frame_bytes).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// What a Hocuspocus token may do on one doc: the checks of `GET /ws/{name}`'s upgrade (the
/// name, the token and its role, a file's path that is not a doc), answered as the reason of a
/// permission-denied instead of an HTTP status.
struct HocuspocusAuth {
    state: AppState,
    /// The socket, counted while it lives, with each identity whose token a document accepted.
    counted: Mutex<ConnectionGuard>,
}

impl Authorizer for HocuspocusAuth {
    fn authorize<'a>(&'a self, doc_name: &'a str, token: &'a str) -> AuthorizeFuture<'a> {
        Box::pin(async move {
            let doc = DocId::new(doc_name)
                .map_err(|error| Refusal::Denied(format!("bad document name: {error}")))?;
            // The provider sends "" when it has no token: that is no token.
            let token = Some(token).filter(|token| !token.is_empty());
            let grant = self
                .state
                .auth
                .grant(token, &doc)
                .map_err(|error| Refusal::Denied(error.to_string()))?;
            if self.state.hub.get(&doc).is_none() {
                match self.state.files.is_file(doc.as_str()).await {
                    Ok(false) => {}
                    Ok(true) => {
                        return Err(Refusal::Denied(
                            FileError::PathTaken {
                                path: doc.to_string(),
                            }
                            .to_string(),
                        ));
                    }
                    // Not an answer about the token (Postgres may be unreachable in cluster
                    // mode): the socket closes with 1013 and the provider retries, as a
                    // y-websocket upgrade answers 503.
                    Err(error) => {
                        tracing::warn!(%error, "cannot tell whether a doc name is a file's path");
                        return Err(Refusal::Unavailable);
                    }
                }
            }
            if let Some(identity) = &grant.identity {
                self.counted
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .add_identity(&identity.sub);
            }
            Ok((doc, grant.peer_grant()))
        })
    }
}
