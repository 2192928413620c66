//! `tandem user add|remove|list`: the accounts of password sign-in, in the database or through
//! the running server's account API (`protocol-spec/http.md`), whichever [`Backend`] opens.

use std::io::{BufRead, IsTerminal, Read};

use super::backend::{Backend, NewUser};
use super::{CommandError, docs_of};
use crate::accounts::{
    MAX_PASSWORD_BYTES, UserView, validate_name, validate_password, validate_sub,
};
use crate::cli::{UserAddArgs, UserListArgs, UserRemoveArgs};

/// Creates or changes an account. Arguments and password are checked here, before the backend
/// is opened, so a typo never waits for a server.
pub(super) async fn add(args: UserAddArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    if let Some(name) = &args.name {
        validate_name(name).map_err(CommandError::Invalid)?;
    }
    let docs = docs_of(&args.docs)?;
    let password = read_password(&args.sub, args.password_stdin)?;
    validate_password(&password).map_err(CommandError::Invalid)?;
    let backend = Backend::open(&args.target).await?;
    let created = backend
        .put_user(NewUser {
            sub: &args.sub,
            name: args.name,
            password,
            docs,
            admin: args.admin,
        })
        .await?;
    let verb = if created { "added" } else { "updated" };
    Ok(format!("{verb} user {}{}", args.sub, backend.via()))
}

/// Removes an account; one that does not exist is an error.
pub(super) async fn remove(args: UserRemoveArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    let removed = Backend::open(&args.target)
        .await?
        .remove_user(&args.sub)
        .await?;
    if !removed {
        return Err(CommandError::NoSuchUser(args.sub));
    }
    Ok(format!("removed user {}", args.sub))
}

/// Lists the accounts, one per line.
pub(super) async fn list(args: UserListArgs) -> Result<String, CommandError> {
    let users = Backend::open(&args.target).await?.list_users().await?;
    Ok(format_users(&users))
}

/// One line per account: `sub`, name, `admin` or `-`, and its patterns.
fn format_users(users: &[UserView]) -> String {
    if users.is_empty() {
        return "no users".into();
    }
    let width = users.iter().map(|user| user.sub.len()).max().unwrap_or(0);
    let lines: Vec<String> = users
        .iter()
        .map(|user| {
            let docs: Vec<String> = user
                .docs
                .iter()
                .map(|(pattern, role)| format!("{pattern}={role}"))
                .collect();
            format!(
                "{:width$}  {:?}  {}  {}",
                user.sub,
                user.name,
                if user.admin { "admin" } else { "-" },
                if docs.is_empty() {
                    "(no documents)".to_owned()
                } else {
                    docs.join(" ")
                },
            )
        })
        .collect();
    lines.join("\n")
}

/// The password: a line of standard input with `--password-stdin` or without a terminal,
/// otherwise typed twice at a prompt without echo.
fn read_password(sub: &str, from_stdin: bool) -> Result<String, CommandError> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        // Bounded: a longer line fails validation rather than filling memory.
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES as u64 + 2)
            .read_line(&mut line)
            .map_err(CommandError::Password)?;
        let password = line.trim_end_matches(['\n', '\r']);
        return Ok(password.to_owned());
    }
    let first = rpassword::prompt_password(format!("password for {sub}: "))
        .map_err(CommandError::Password)?;
    let again =
        rpassword::prompt_password("the same password again: ").map_err(CommandError::Password)?;
    if first != again {
        return Err(CommandError::Invalid("the two passwords differ".into()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn users_are_listed_one_per_line() {
        let users = [
            UserView {
                sub: "ada".into(),
                name: "Ada".into(),
                docs: BTreeMap::from([("team/*".into(), "write".into())]),
                admin: true,
                created_ms: 0,
            },
            UserView {
                sub: "grace".into(),
                name: "Grace".into(),
                docs: BTreeMap::new(),
                admin: false,
                created_ms: 0,
            },
        ];
        assert_eq!(
            format_users(&users),
            "ada    \"Ada\"  admin  team/*=write\ngrace  \"Grace\"  -  (no documents)"
        );
        assert_eq!(format_users(&[]), "no users");
    }
}
