//! App passwords: random secrets an account holder makes for one client (a WebDAV mount, a
//! script), each revocable on its own, accepted over HTTP Basic instead of the account password
//! (`protocol-spec/auth.md`, "App passwords").
//!
//! This file owns their shape: making a secret, the hash stored for it, the limits, and the
//! changes of a stored account that add or remove one. It stores nothing itself (the callers
//! pass these changes to `UserTable::modify_user`) and never logs a secret.
//!
//! Invariants:
//! - A secret is shown once, when made; only its SHA-256 is stored. Because it is 256 random
//!   bits, a fast unsalted hash is as safe as Argon2 would be: nobody can search that space, and
//!   no two accounts share a secret worth a rainbow table.
//! - An account holds at most [`MAX_APP_PASSWORDS`], so a check is at most that many
//!   comparisons, and a record stays small.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_store::{AppPasswordRecord, UserRecord};

/// Most app passwords one account may have.
pub const MAX_APP_PASSWORDS: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Every app password starts with this, so that secret scanners and people recognise one, and
/// HTTP Basic can tell it from an account password without hashing.
pub const APP_PASSWORD_PREFIX: &str = "tandem_app_";
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Random bytes in an id (short enough to type in `app-password remove`).
const ID_BYTES: usize = 6;
/// Length of a secret: the prefix and 32 bytes in unpadded base64url (43 characters).
const SECRET_CHARS: usize = APP_PASSWORD_PREFIX.len() + 43;

/// Why adding an app password was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AddRefused {
    /// No account of that name.
    NoSuchUser,
    /// The account has [`MAX_APP_PASSWORDS`] already.
    Full,
}

/// Checks a label: 1 to [`MAX_LABEL_BYTES`] bytes, nothing `name.rs` forbids.
pub fn validate_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() || label.len() > MAX_LABEL_BYTES || crate::name::has_forbidden(label)
    {
        return Err(format!(
            "app password label must be 1 to {MAX_LABEL_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// A new app password labelled `label` (already validated), made at `now_ms`: the record to
/// store and the secret to show once.
pub fn new_app_password(label: &str, now_ms: u64) -> (AppPasswordRecord, String) {
    let mut rng = rand::rng();
    let mut secret_bytes = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret_bytes);
    let mut id_bytes = [0u8; ID_BYTES];
    rng.fill_bytes(&mut id_bytes);
    let secret = format!(
        "{APP_PASSWORD_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(secret_bytes)
    );
    let record = AppPasswordRecord {
        id: hex::encode(id_bytes),
        label: label.to_owned(),
        secret_sha256: secret_sha256(&secret),
        created_ms: now_ms,
        last_used_ms: 0,
    };
    (record, secret)
}

/// The stored hash of a secret.
pub(crate) fn secret_sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` has the form of an app password (the prefix and the length).
pub(crate) fn looks_like_app_password(secret: &str) -> bool {
    secret.len() == SECRET_CHARS && secret.starts_with(APP_PASSWORD_PREFIX)
}

/// The app password of `user` whose secret hashes to `sha256`, if any. Each comparison takes
/// the same time whatever the bytes (not that a hash of an unknown secret leaks much).
pub(crate) fn find<'a>(user: &'a UserRecord, sha256: &[u8; 32]) -> Option<&'a AppPasswordRecord> {
    user.app_passwords.iter().find(|app| {
        let diff = app
            .secret_sha256
            .iter()
            .zip(sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    })
}

/// The change of `modify_user` that adds `app` to the account, unless it is missing or full.
/// `outcome` tells which.
pub(crate) fn add_to(
    current: Option<&UserRecord>,
    app: &AppPasswordRecord,
    outcome: &mut Result<(), AddRefused>,
) -> Option<UserRecord> {
    let Some(current) = current else {
        *outcome = Err(AddRefused::NoSuchUser);
        return None;
    };
    if current.app_passwords.len() >= MAX_APP_PASSWORDS {
        *outcome = Err(AddRefused::Full);
        return None;
    }
    let mut user = current.clone();
    user.app_passwords.push(app.clone());
    *outcome = Ok(());
    Some(user)
}

/// The change of `modify_user` that removes the app password `id`; `found` tells whether the
/// account and the app password existed.
pub(crate) fn remove_from(
    current: Option<&UserRecord>,
    id: &str,
    found: &mut (bool, bool),
) -> Option<UserRecord> {
    let current = current?;
    found.0 = true;
    let mut user = current.clone();
    user.app_passwords.retain(|app| app.id != id);
    if user.app_passwords.len() == current.app_passwords.len() {
        return None;
    }
    found.1 = true;
    Some(user)
}

/// One app password in `GET /api/users/{sub}/app-passwords` and `app-password list`; never the
/// secret or its hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct AppPasswordView {
    /// Its id, for removing it.
    pub id: String,
    /// What its owner called it.
    pub label: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it was last used, to the hour; absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

impl From<&AppPasswordRecord> for AppPasswordView {
    fn from(app: &AppPasswordRecord) -> Self {
        AppPasswordView {
            id: app.id.clone(),
            label: app.label.clone(),
            created_ms: app.created_ms,
            last_used_ms: Some(app.last_used_ms).filter(|ms| *ms > 0),
        }
    }
}

/// Answer of `POST /api/users/{sub}/app-passwords`: the app password and, this once, its secret.
#[derive(Serialize, Deserialize, Debug, Clone, utoipa::ToSchema)]
pub struct NewAppPassword {
    /// The app password.
    #[serde(flatten)]
    pub app_password: AppPasswordView,
    /// The secret, shown only in this answer.
    pub secret: String,
}

/// Body of `POST /api/users/{sub}/app-passwords`.
#[derive(Serialize, Deserialize, Debug, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddAppPasswordRequest {
    /// What the client is (`laptop`): 1 to 64 bytes.
    pub label: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_with(n_apps: usize) -> UserRecord {
        UserRecord {
            sub: "ada".into(),
            name: "Ada".into(),
            password_hash: String::new(),
            docs: Default::default(),
            admin: false,
            created_ms: 1,
            app_passwords: (0..n_apps)
                .map(|n| new_app_password(&format!("client {n}"), 2).0)
                .collect(),
        }
    }

    #[test]
    fn secrets_are_random_prefixed_and_stored_only_as_their_hash() {
        let (first, secret) = new_app_password("laptop", 5);
        let (second, other) = new_app_password("laptop", 5);
        assert!(looks_like_app_password(&secret), "{secret}");
        assert_ne!(secret, other);
        assert_ne!(first.id, second.id);
        assert_eq!(first.id.len(), 12);
        assert_eq!(first.secret_sha256, secret_sha256(&secret));
        assert_eq!((first.label.as_str(), first.created_ms), ("laptop", 5));
        let mut user = user_with(0);
        user.app_passwords = vec![first.clone(), second];
        assert_eq!(find(&user, &secret_sha256(&secret)), Some(&first));
        assert_eq!(find(&user, &secret_sha256("tandem_app_wrong")), None);
        assert!(!looks_like_app_password("correct horse battery staple"));
        assert!(!looks_like_app_password(&secret[1..]));
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_label("laptop").is_ok());
        assert!(validate_label("Ada's \u{1f4bb}").is_ok());
        for bad in ["", "  ", "a\nb", &"x".repeat(MAX_LABEL_BYTES + 1)] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn adding_stops_at_the_limit_and_removing_names_what_was_missing() {
        let (app, _) = new_app_password("one more", 3);
        let mut outcome = Ok(());
        assert_eq!(add_to(None, &app, &mut outcome), None);
        assert_eq!(outcome, Err(AddRefused::NoSuchUser));
        let full = user_with(MAX_APP_PASSWORDS);
        assert_eq!(add_to(Some(&full), &app, &mut outcome), None);
        assert_eq!(outcome, Err(AddRefused::Full));
        let almost = user_with(MAX_APP_PASSWORDS - 1);
        let added = add_to(Some(&almost), &app, &mut outcome).unwrap();
        assert_eq!(outcome, Ok(()));
        assert_eq!(added.app_passwords.last(), Some(&app));

        let mut found = (false, false);
        assert_eq!(remove_from(None, &app.id, &mut found), None);
        assert_eq!(found, (false, false));
        assert_eq!(remove_from(Some(&almost), &app.id, &mut found), None);
        assert_eq!(found, (true, false));
        let mut found = (false, false);
        let removed = remove_from(Some(&added), &app.id, &mut found).unwrap();
        assert_eq!(found, (true, true));
        assert_eq!(removed, almost);
    }
}
