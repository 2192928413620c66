//! `tandem user add|remove|list`: the accounts of password sign-in, and
//! `tandem user app-password add|list|remove`: their app passwords, in the database or through
//! the running server's account API (`protocol-spec/http.md`), whichever [`Backend`] opens.

use std::io::{BufRead, IsTerminal, Read};

use super::backend::{Backend, NewUser};
use super::{CommandError, docs_of};
use crate::accounts::{
    AppPasswordView, MAX_PASSWORD_BYTES, UserView, validate_label, validate_name,
    validate_password, validate_sub,
};
use crate::cli::{
    AppPasswordAddArgs, AppPasswordListArgs, AppPasswordRemoveArgs, UserAddArgs, UserListArgs,
    UserRemoveArgs,
};

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

/// Makes an app password and returns its secret, with a line saying it is shown only once.
pub(super) async fn add_app_password(args: AppPasswordAddArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    validate_label(&args.label).map_err(CommandError::Invalid)?;
    let backend = Backend::open(&args.target).await?;
    let added = backend.add_app_password(&args.sub, &args.label).await?;
    Ok(format!(
        "added app password {} ({:?}) for user {}{}; its secret, shown only now:\n{}",
        added.app_password.id,
        added.app_password.label,
        args.sub,
        backend.via(),
        added.secret,
    ))
}

/// Lists an account's app passwords, one per line.
pub(super) async fn list_app_passwords(args: AppPasswordListArgs) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    let apps = Backend::open(&args.target)
        .await?
        .list_app_passwords(&args.sub)
        .await?
        .ok_or_else(|| CommandError::NoSuchUser(args.sub.clone()))?;
    Ok(format_app_passwords(&apps))
}

/// Revokes an app password.
pub(super) async fn remove_app_password(
    args: AppPasswordRemoveArgs,
) -> Result<String, CommandError> {
    validate_sub(&args.sub).map_err(CommandError::Invalid)?;
    Backend::open(&args.target)
        .await?
        .remove_app_password(&args.sub, &args.id)
        .await?;
    Ok(format!(
        "removed app password {} of user {}",
        args.id, args.sub
    ))
}

/// One line per app password: id, label, when made and when last used.
fn format_app_passwords(apps: &[AppPasswordView]) -> String {
    if apps.is_empty() {
        return "no app passwords".into();
    }
    let lines: Vec<String> = apps
        .iter()
        .map(|app| {
            let last_used = app.last_used_ms.map_or_else(
                || "never used".to_owned(),
                |ms| format!("last used {}", utc(ms)),
            );
            format!(
                "{}  {:?}  created {}  {last_used}",
                app.id,
                app.label,
                utc(app.created_ms)
            )
        })
        .collect();
    lines.join("\n")
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the second.
fn utc(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
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

    #[test]
    fn app_passwords_are_listed_one_per_line_with_utc_times() {
        let apps = [
            AppPasswordView {
                id: "a1b2c3d4e5f6".into(),
                label: "laptop".into(),
                created_ms: 1_795_400_000_000,
                last_used_ms: Some(1_795_403_600_000),
            },
            AppPasswordView {
                id: "0f0f0f0f0f0f".into(),
                label: "rclone".into(),
                created_ms: 0,
                last_used_ms: None,
            },
        ];
        assert_eq!(
            format_app_passwords(&apps),
            "a1b2c3d4e5f6  \"laptop\"  created 2026-11-23T02:13:20Z  last used 2026-11-23T03:13:20Z\n\
             0f0f0f0f0f0f  \"rclone\"  created 1970-01-01T00:00:00Z  never used"
        );
        assert_eq!(format_app_passwords(&[]), "no app passwords");
    }
}
