//! The binary's one-shot commands besides `serve`: `tandem user add|remove|list` and
//! `tandem user app-password add|list|remove`,
//! `tandem webhook add|list|remove|log`, `tandem token mint`, `tandem backup` and
//! `restore-backup` (`backup.rs`), `tandem export` and `import`, and `tandem check`, one file
//! each. `backup`, `export` and `import` talk to a running server through `client.rs`.
//!
//! `user` and `webhook` commands work through a [`Backend`](backend::Backend): the database
//! `<data-dir>/tandem.redb` directly when this process can open it, otherwise the account and
//! webhook API of the server that holds it open (see `backend.rs`). Each command is written once,
//! against the backend's operations; only the backend knows the two ways of doing them.
//! `token mint` needs neither: it signs with the server key in the data directory.
//!
//! Each function returns the text to print; `main.rs` prints it, or the error, and sets the
//! exit code. Passwords are never printed or logged. The flags are declared in `cli.rs`.

mod backend;
mod backup;
mod check;
mod client;
mod export;
mod import;
mod token;
mod user;
mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;

use tandem_store::StoreError;

use crate::accounts::validate_docs;
use crate::auth::{AuthLoadError, Role};
use crate::cli::{
    AppPasswordCommand, BackupArgs, CheckArgs, DocRole, ExportArgs, ImportArgs, RestoreBackupArgs,
    TokenCommand, UserCommand, WebhookCommand,
};

pub use backend::ADMIN_TOKEN_TTL;

/// Why a command failed; `main.rs` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// An argument or the password is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The password could not be read.
    #[error("reading the password: {0}")]
    Password(#[source] std::io::Error),
    /// The database could not be used.
    #[error("opening {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The server key could not be read or created.
    #[error("{0}")]
    Key(#[from] AuthLoadError),
    /// The database is in use and the server at `--server` did not answer.
    #[error(
        "the database is in use (is the server running?) and the server at {server} cannot be \
         reached: {detail}"
    )]
    Unreachable {
        /// `--server`.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The running server refused the request.
    #[error("the server at {server} answered {status} {code}: {message}")]
    Refused {
        /// `--server`.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The `error` code of the body.
        code: String,
        /// The `message` of the body.
        message: String,
    },
    /// The server a `backup`, `export` or `import` talks to did not answer.
    #[error("cannot reach the server at {server}: {detail}")]
    Connect {
        /// `--server`.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// A local file or directory could not be read or written.
    #[error("{what}: {error}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The error.
        #[source]
        error: std::io::Error,
    },
    /// `user remove` of an account that does not exist.
    #[error("no user {0:?}")]
    NoSuchUser(String),
    /// `user app-password remove` of an app password that does not exist.
    #[error("user {sub:?} has no app password {id:?}")]
    NoSuchAppPassword {
        /// The account.
        sub: String,
        /// The id given.
        id: String,
    },
    /// `webhook remove` or `log` of a webhook that does not exist.
    #[error("no webhook {0:?}")]
    NoSuchWebhook(String),
}

/// Runs a `tandem user` command and returns the line to print.
pub async fn run_user(command: UserCommand) -> Result<String, CommandError> {
    match command {
        UserCommand::Add(args) => user::add(args).await,
        UserCommand::Remove(args) => user::remove(args).await,
        UserCommand::List(args) => user::list(args).await,
        UserCommand::AppPassword(AppPasswordCommand::Add(args)) => {
            user::add_app_password(args).await
        }
        UserCommand::AppPassword(AppPasswordCommand::List(args)) => {
            user::list_app_passwords(args).await
        }
        UserCommand::AppPassword(AppPasswordCommand::Remove(args)) => {
            user::remove_app_password(args).await
        }
    }
}

/// Runs a `tandem webhook` command and returns the lines to print.
pub async fn run_webhook(command: WebhookCommand) -> Result<String, CommandError> {
    match command {
        WebhookCommand::Add(args) => webhook::add(args).await,
        WebhookCommand::List(args) => webhook::list(&args.target).await,
        WebhookCommand::Remove(args) => webhook::remove(args).await,
        WebhookCommand::Log(args) => webhook::log(args).await,
    }
}

/// Runs a `tandem token` command and returns the line to print (the token).
pub fn run_token(command: TokenCommand) -> Result<String, CommandError> {
    match command {
        TokenCommand::Mint(args) => token::mint(&args),
    }
}

/// Runs `tandem backup` and returns the line to print.
pub async fn run_backup(args: BackupArgs) -> Result<String, CommandError> {
    backup::backup(&args).await
}

/// Runs `tandem restore-backup` and returns the line to print. Blocking.
pub fn run_restore_backup(args: &RestoreBackupArgs) -> Result<String, CommandError> {
    backup::restore(args)
}

/// Runs `tandem export` and returns the lines to print.
pub async fn run_export(args: ExportArgs) -> Result<String, CommandError> {
    export::export(&args).await
}

/// Runs `tandem import` and returns the lines to print.
pub async fn run_import(args: ImportArgs) -> Result<String, CommandError> {
    import::import(&args).await
}

/// Runs `tandem check`: the lines to print (one per problem, then a summary) and whether the
/// data directory is sound. Blocking.
pub fn run_check(args: &CheckArgs) -> Result<(String, bool), CommandError> {
    check::check(args)
}

/// The `--doc PATTERN=ROLE` flags as an account's or token's documents, validated as the
/// server validates them.
fn docs_of(docs: &[DocRole]) -> Result<BTreeMap<String, Role>, CommandError> {
    let docs: BTreeMap<String, Role> = docs
        .iter()
        .map(|doc| (doc.pattern.clone(), doc.role))
        .collect();
    validate_docs(&docs).map_err(CommandError::Invalid)?;
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_roles_parse_with_the_last_equals_sign() {
        let parsed: DocRole = "team/a=b/*=write".parse().unwrap();
        assert_eq!(parsed.pattern, "team/a=b/*");
        assert_eq!(parsed.role, Role::Write);
        assert!("team/*".parse::<DocRole>().is_err());
        assert!("team/*=owner".parse::<DocRole>().is_err());
    }
}
