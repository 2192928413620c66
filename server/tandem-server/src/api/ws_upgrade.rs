//! The WebSocket upgrade (RFC 6455 §4.2), done here instead of through axum's `WebSocketUpgrade`
//! so that connections get tokio-tungstenite's stream itself. The hub's `connection::run` takes
//! that stream (the hub knows nothing of axum), and it writes a big message (such as a big
//! doc's sync step 2, shared by the joiners that sent the same state vector) as one frame
//! straight to the underlying socket once tungstenite's buffer is flushed, which axum's wrapper
//! cannot: nothing is copied per joiner into a write buffer that would keep its capacity for as
//! long as the connection lasts.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A server-side WebSocket over an upgraded HTTP/1.1 connection.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A request that asked for a WebSocket and may have one.
pub(crate) struct Upgrade {
    accept: String,
    protocol: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade: axum's statuses and reasons, in our JSON error
/// shape (`protocol-spec/http.md`).
#[derive(Debug)]
pub(crate) struct NotAnUpgrade {
    status: StatusCode,
    reason: &'static str,
}

impl NotAnUpgrade {
    /// The `error` code of the JSON body.
    fn code(&self) -> &'static str {
        match self.status {
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UPGRADE_REQUIRED => "upgrade_required",
            _ => "bad_upgrade",
        }
    }
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({
            "error": self.code(),
            "message": self.reason,
        }));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = [(header::ALLOW, HeaderValue::from_static("GET"))];
            return (self.status, allow, body).into_response();
        }
        (self.status, body).into_response()
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl Upgrade {
    /// Checks the upgrade headers and takes the connection's upgrade handle. `offered` is the
    /// one subprotocol the server speaks; it is selected when the client offers it.
    pub(crate) fn from_request(
        method: &Method,
        headers: &HeaderMap,
        on_upgrade: Option<OnUpgrade>,
        offered: &'static str,
    ) -> Result<Upgrade, NotAnUpgrade> {
        let refuse = |status, reason| Err(NotAnUpgrade { status, reason });
        if method != Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET");
        }
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            );
        }
        if !header_has_token(headers, header::UPGRADE, "websocket") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            );
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            );
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            );
        };
        let Some(on_upgrade) = on_upgrade else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            );
        };
        let protocol = header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, offered)
            .then(|| HeaderValue::from_static(offered));
        Ok(Upgrade {
            accept: derive_accept_key(key.as_bytes()),
            protocol,
            on_upgrade,
        })
    }

    /// The 101 response, and the future that yields the socket once hyper has sent it.
    pub(crate) fn accept(
        self,
        config: WebSocketConfig,
    ) -> (
        Response,
        impl Future<Output = Result<Socket, hyper::Error>> + Send,
    ) {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&self.accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        let on_upgrade = self.on_upgrade;
        let socket =
            async move {
                let upgraded = on_upgrade.await?;
                Ok(WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await)
            };
        (response, socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_are_matched_in_lists_and_without_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(&headers, header::CONNECTION, "close"));
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
