//! [`Client`]: the running server's HTTP API as `backup`, `export` and `import` call it, with
//! the token given (`--token`) or one signed with the server key of `--data-dir`.
//!
//! Unlike `backend.rs`'s remote, which only exists for the few seconds of an account change,
//! these commands may run for long (a large archive, thousands of documents), so the minted
//! token lives for [`COMMAND_TOKEN_TTL`] and only the connection, not the whole exchange, has a
//! time limit. No redirects and no proxies, as everywhere (`outbound.rs`): the token goes to the
//! server named and nowhere else.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri, header};

use super::CommandError;
use crate::auth::{Claims, Role, mint_offline};
use crate::cli::ServerArgs;
use tandem_hub::clock::now_s;

/// Lifetime of the token a command mints when none is given.
const COMMAND_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
/// `sub` of that token, as the server's log shows it.
const COMMAND_TOKEN_SUB: &str = "tandem-cli";
/// Longest wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one document request's answer.
const DOC_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Characters escaped in a document name put in a path: everything but unreserved characters
/// and `/`, which separates the name's segments as the server reads them.
const NAME_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The API of the server at `--server`.
pub(super) struct Client {
    /// `--server` as given, for messages.
    server: String,
    /// `scheme://authority`, without a path.
    origin: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `args`, minting a token from `--data-dir` unless one is given.
    pub(super) fn new(args: &ServerArgs) -> Result<Client, CommandError> {
        let unreachable = |detail: String| CommandError::Connect {
            server: args.server.clone(),
            detail,
        };
        let uri: Uri = args
            .server
            .parse()
            .map_err(|error| unreachable(format!("not a URL: {error}")))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            Some(other) => return Err(unreachable(format!("{other}:// is not http(s)://"))),
            None => return Err(unreachable("the URL needs http:// or https://".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| unreachable("the URL has no host".into()))?;
        let http = crate::outbound::client_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|error| unreachable(format!("starting the HTTP client: {error}")))?;
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let now = now_s();
                let claims = Claims {
                    sub: COMMAND_TOKEN_SUB.into(),
                    name: None,
                    docs: BTreeMap::from([("*".to_owned(), Role::Write)]),
                    admin: true,
                    exp: now + COMMAND_TOKEN_TTL.as_secs(),
                    nbf: None,
                    iat: Some(now),
                    iss: None,
                    session: None,
                };
                mint_offline(&args.data_dir, &claims)?
            }
        };
        Ok(Client {
            server: args.server.clone(),
            origin: format!("{scheme}://{authority}"),
            token,
            http,
        })
    }

    /// `--server` as given.
    pub(super) fn server(&self) -> &str {
        &self.server
    }

    /// The path of document `name` under `/api/docs/`, with `suffix` (`""` or `/update`).
    pub(super) fn doc_path(name: &str, suffix: &str) -> String {
        let name = percent_encoding::utf8_percent_encode(name, NAME_ESCAPES);
        format!("/api/docs/{name}{suffix}")
    }

    /// Sends one request; any answer but 2xx becomes [`CommandError::Refused`] (its status
    /// kept, so callers can tell a 404). `timeout` bounds the whole exchange, if given.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, CommandError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.origin))
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/octet-stream");
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |name: &str| error[name].as_str().unwrap_or_default().to_owned();
        Err(CommandError::Refused {
            server: self.server.clone(),
            status: status.as_u16(),
            code: field("error"),
            message: format!("{method} {path}: {}", field("message")),
        })
    }

    /// `GET path` as bytes; `None` for a 404.
    pub(super) async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, CommandError> {
        match self
            .send(Method::GET, path, None, Some(DOC_REQUEST_TIMEOUT))
            .await
        {
            Ok(response) => Ok(Some(self.body(response).await?)),
            Err(CommandError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// `POST path` with `body`.
    pub(super) async fn post(&self, path: &str, body: Vec<u8>) -> Result<(), CommandError> {
        let response = self
            .send(Method::POST, path, Some(body), Some(DOC_REQUEST_TIMEOUT))
            .await?;
        self.body(response).await.map(drop)
    }

    /// The rest of `response`'s body.
    pub(super) async fn body(&self, response: reqwest::Response) -> Result<Vec<u8>, CommandError> {
        response
            .bytes()
            .await
            .map(|bytes| bytes.to_vec())
            .map_err(|error| self.unreachable(&error))
    }

    /// A transport error as [`CommandError::Unreachable`], named by its innermost cause.
    pub(super) fn unreachable(&self, error: &reqwest::Error) -> CommandError {
        let mut innermost: &dyn std::error::Error = error;
        while let Some(cause) = innermost.source() {
            innermost = cause;
        }
        CommandError::Connect {
            server: self.server.clone(),
            detail: if error.is_timeout() {
                "no answer in time".into()
            } else {
                innermost.to_string()
            },
        }
    }
}
