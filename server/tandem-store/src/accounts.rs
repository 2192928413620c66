//! Accounts: the `users` table, for teams that sign in with a name and password instead of an
//! identity provider.
//!
//! The store keeps each account as an opaque, versioned record ([`UserRecord`]) and checks
//! nothing about it beyond its encoding: password hashing, the role names and the rules for
//! account names belong to the server (`tandem-server/src/accounts/`). The byte layout is in
//! `protocol-spec/storage.md`.
//!
//! Invariant: a record is written whole, in one durable transaction; a reader sees the old record
//! or the new one, never a mix.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle};

use crate::Store;
use crate::checksum;
use crate::error::StoreError;
use crate::record::{Reader, put_str};
use crate::schema::USERS;
use crate::space::WriteKind;

/// The version byte at the start of every encoded [`UserRecord`]. Version 1 (without app
/// passwords) is still read, as an account with none.
const USER_RECORD_VERSION: u8 = 2;
/// The record version before app passwords.
const USER_RECORD_VERSION_1: u8 = 1;

/// One account, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The account id (the key of the table, and the `sub` of its tokens).
    pub sub: String,
    /// The display name.
    pub name: String,
    /// The password hash as a PHC string (`$argon2id$v=19$...`). Never leaves the server.
    pub password_hash: String,
    /// Document name patterns and the role name each grants (`read`, `write`, `admin`).
    pub docs: BTreeMap<String, String>,
    /// Whether the account may manage accounts.
    pub admin: bool,
    /// When the account was first created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The account's app passwords (for HTTP Basic), oldest first.
    pub app_passwords: Vec<AppPasswordRecord>,
}

/// One app password of an account, as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordRecord {
    /// Its id, unique within the account.
    pub id: String,
    /// What the owner called it (`laptop`).
    pub label: String,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it was last used, coarsely (the server updates it at most hourly); 0 if never.
    pub last_used_ms: u64,
}

impl UserRecord {
    /// Version 2: `u8 2`, then `name`, `password_hash` (each a string), `u8 admin` (0 or 1),
    /// `u64 created_ms`, `u32 n_docs` and `n_docs` pairs of strings (pattern, role), then
    /// `u32 n_app_passwords` and that many of: `id`, `label` (strings), 32 bytes of SHA-256,
    /// `u64 created_ms`, `u64 last_used_ms`. Version 1 ends after the docs. A string is a `u32`
    /// byte length and that many bytes of UTF-8. Integers are little-endian. The `sub` is the key
    /// and is not repeated.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![USER_RECORD_VERSION];
        put_str(&mut out, &self.name);
        put_str(&mut out, &self.password_hash);
        out.push(u8::from(self.admin));
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        let n_docs = u32::try_from(self.docs.len()).expect("fewer than 2^32 patterns in memory");
        out.extend_from_slice(&n_docs.to_le_bytes());
        for (pattern, role) in &self.docs {
            put_str(&mut out, pattern);
            put_str(&mut out, role);
        }
        let n_app_passwords =
            u32::try_from(self.app_passwords.len()).expect("fewer than 2^32 app passwords");
        out.extend_from_slice(&n_app_passwords.to_le_bytes());
        for app_password in &self.app_passwords {
            put_str(&mut out, &app_password.id);
            put_str(&mut out, &app_password.label);
            out.extend_from_slice(&app_password.secret_sha256);
            out.extend_from_slice(&app_password.created_ms.to_le_bytes());
            out.extend_from_slice(&app_password.last_used_ms.to_le_bytes());
        }
        out
    }

    fn decode(sub: &str, bytes: &[u8]) -> Result<UserRecord, StoreError> {
        let corrupt = |detail: &str| StoreError::CorruptUser {
            sub: sub.to_owned(),
            detail: detail.to_owned(),
        };
        let mut reader = Reader::new(bytes);
        let version = match reader.u8() {
            Some(version @ (USER_RECORD_VERSION | USER_RECORD_VERSION_1)) => version,
            Some(version) => return Err(corrupt(&format!("unknown record version {version}"))),
            None => return Err(corrupt("empty record")),
        };
        let truncated = || corrupt("record is truncated or not UTF-8");
        let name = reader.string().ok_or_else(truncated)?;
        let password_hash = reader.string().ok_or_else(truncated)?;
        let admin = match reader.u8().ok_or_else(truncated)? {
            0 => false,
            1 => true,
            _ => return Err(corrupt("admin flag is neither 0 nor 1")),
        };
        let created_ms = reader.u64().ok_or_else(truncated)?;
        let n_docs = reader.u32().ok_or_else(truncated)?;
        let mut docs = BTreeMap::new();
        for _ in 0..n_docs {
            // Each pair needs at least 8 bytes, so a huge `n_docs` runs out of bytes quickly
            // instead of allocating.
            let pattern = reader.string().ok_or_else(truncated)?;
            let role = reader.string().ok_or_else(truncated)?;
            docs.insert(pattern, role);
        }
        let mut app_passwords = Vec::new();
        if version == USER_RECORD_VERSION {
            let n_app_passwords = reader.u32().ok_or_else(truncated)?;
            for _ in 0..n_app_passwords {
                // At least 56 bytes each: a huge count runs out of bytes, as above.
                app_passwords.push(AppPasswordRecord {
                    id: reader.string().ok_or_else(truncated)?,
                    label: reader.string().ok_or_else(truncated)?,
                    secret_sha256: reader.array().ok_or_else(truncated)?,
                    created_ms: reader.u64().ok_or_else(truncated)?,
                    last_used_ms: reader.u64().ok_or_else(truncated)?,
                });
            }
        }
        if !reader.is_empty() {
            return Err(corrupt("trailing bytes after the record"));
        }
        Ok(UserRecord {
            sub: sub.to_owned(),
            name,
            password_hash,
            docs,
            admin,
            created_ms,
            app_passwords,
        })
    }
}

/// The account stored under `sub`, if its checksum matches (format version 2) and it decodes.
fn read_user(sub: &str, stored: &[u8]) -> Result<UserRecord, StoreError> {
    let payload = checksum::unseal(USERS.name(), sub, stored).map_err(|mismatch| {
        StoreError::CorruptUser {
            sub: sub.into(),
            detail: mismatch.to_string(),
        }
    })?;
    UserRecord::decode(sub, payload)
}

impl Store {
    /// Creates or replaces the account `user.sub`, durably.
    ///
    /// This is a write transaction beside the server's writer thread; redb runs one at a time,
    /// so it waits for the current group commit at most (accounts change rarely).
    pub fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.contain("put_user", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                txn.open_table(USERS)?.insert(
                    user.sub.as_str(),
                    checksum::seal(USERS.name(), user.sub.as_str(), &user.encode()).as_slice(),
                )?;
                txn.commit()?;
                Ok(())
            })
        })
    }

    /// Reads the account `sub` and, in the same write transaction, stores what `change` makes of
    /// it (`None`: nothing is written). Returns what was written. Concurrent changes of the
    /// account are serialised, so none is lost (redb runs one write transaction at a time).
    pub fn modify_user(
        &self,
        sub: &str,
        change: &mut dyn FnMut(Option<&UserRecord>) -> Option<UserRecord>,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.contain("modify_user", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let written = {
                    let mut table = txn.open_table(USERS)?;
                    let current = match table.get(sub)? {
                        Some(value) => Some(read_user(sub, value.value())?),
                        None => None,
                    };
                    let Some(new) = change(current.as_ref()) else {
                        return Ok(None);
                    };
                    debug_assert_eq!(new.sub, sub, "modify_user keeps the account's key");
                    table.insert(
                        sub,
                        checksum::seal(USERS.name(), sub, &new.encode()).as_slice(),
                    )?;
                    new
                };
                txn.commit()?;
                Ok(Some(written))
            })
        })
    }

    /// Removes the account `sub`; `false` if there was none.
    pub fn remove_user(&self, sub: &str) -> Result<bool, StoreError> {
        self.contain("remove_user", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let removed = txn.open_table(USERS)?.remove(sub)?.is_some();
                txn.commit()?;
                Ok(removed)
            })
        })
    }

    /// The account `sub`, if it exists.
    pub fn get_user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.contain("get_user", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(USERS) {
                Ok(table) => table,
                // A file from before accounts existed.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            let Some(value) = table.get(sub)? else {
                return Ok(None);
            };
            read_user(sub, value.value()).map(Some)
        })
    }

    /// Every account, sorted by `sub`.
    pub fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.contain("list_users", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(USERS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut users = Vec::new();
            for entry in table.iter()? {
                let (sub, value) = entry?;
                match read_user(sub.value(), value.value()) {
                    Ok(user) => users.push(user),
                    // The account's sign-in stays refused; the others are listed.
                    Err(error) => self.skip_damaged(USERS.name(), sub.value(), &error),
                }
            }
            Ok(users)
        })
    }

    /// How many accounts exist.
    pub fn count_users(&self) -> Result<u64, StoreError> {
        self.contain("count_users", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            match txn.open_table(USERS) {
                Ok(table) => Ok(table.len()?),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(error) => Err(error.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::Database;

    fn record(sub: &str) -> UserRecord {
        UserRecord {
            sub: sub.into(),
            name: format!("{sub} the user"),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            docs: BTreeMap::from([
                ("team/*".into(), "write".into()),
                ("team/archive/*".into(), "read".into()),
            ]),
            admin: sub == "root",
            created_ms: 1_795_400_000_000,
            app_passwords: (sub == "ada")
                .then(|| AppPasswordRecord {
                    id: "k3x9".into(),
                    label: "laptop".into(),
                    secret_sha256: [7; 32],
                    created_ms: 1_795_400_000_001,
                    last_used_ms: 0,
                })
                .into_iter()
                .collect(),
        }
    }

    /// Regression: one damaged account failed `list_users` as a whole (the admin's account
    /// list). Now it is left out; its own sign-in stays refused.
    #[test]
    fn a_damaged_account_is_left_out_of_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store.put_user(&record("ada")).unwrap();
        store.put_user(&record("bob")).unwrap();
        {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut users = txn.open_table(USERS).unwrap();
                let mut stored = users.get("ada").unwrap().unwrap().value().to_vec();
                stored[4] ^= 0x20;
                users.insert("ada", stored.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(store.list_users().unwrap(), vec![record("bob")]);
        assert!(store.get_user("ada").is_err_and(|error| error.is_damage()));
    }

    #[test]
    fn accounts_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_user(&record("ada")).unwrap();
            store.put_user(&record("root")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get_user("ada").unwrap(), Some(record("ada")));
        assert_eq!(store.get_user("root").unwrap(), Some(record("root")));
        assert_eq!(store.get_user("nobody").unwrap(), None);
        assert_eq!(store.count_users().unwrap(), 2);
    }

    #[test]
    fn put_replaces_and_remove_reports_whether_the_account_existed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        store.put_user(&record("ada")).unwrap();
        let changed = UserRecord {
            docs: BTreeMap::new(),
            name: String::new(),
            ..record("ada")
        };
        store.put_user(&changed).unwrap();
        assert_eq!(store.get_user("ada").unwrap(), Some(changed));
        store.put_user(&record("bob")).unwrap();
        let subs: Vec<String> = store
            .list_users()
            .unwrap()
            .into_iter()
            .map(|user| user.sub)
            .collect();
        assert_eq!(subs, ["ada", "bob"]);
        assert!(store.remove_user("ada").unwrap());
        assert!(!store.remove_user("ada").unwrap());
        assert_eq!(store.get_user("ada").unwrap(), None);
        assert_eq!(store.count_users().unwrap(), 1);
    }

    #[test]
    fn a_file_without_the_users_table_reads_as_no_accounts_and_accepts_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        // A version-1 file written before accounts existed: meta only, no `users` table.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(crate::schema::META)
                .unwrap()
                .insert(crate::schema::FORMAT_VERSION_KEY, crate::FORMAT_VERSION)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count_users().unwrap(), 0);
        assert_eq!(store.list_users().unwrap(), Vec::new());
        assert_eq!(store.get_user("ada").unwrap(), None);
        assert!(!store.remove_user("ada").unwrap());
        store.put_user(&record("ada")).unwrap();
        assert_eq!(store.get_user("ada").unwrap(), Some(record("ada")));
    }

    #[test]
    fn a_damaged_record_is_reported_for_that_account_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_user(&record("ada")).unwrap();
        }
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(USERS).unwrap();
                // Sealed with a right checksum, so the record's own decoding is what fails.
                let mut cut = record("bob").encode();
                cut.truncate(cut.len() - 3);
                let sealed = checksum::seal(USERS.name(), "bob", &cut);
                table.insert("bob", sealed.as_slice()).unwrap();
                let mut future = record("eve").encode();
                future[0] = 9;
                let sealed = checksum::seal(USERS.name(), "eve", &future);
                table.insert("eve", sealed.as_slice()).unwrap();
                // A flipped bit in the hash: the record would decode, to the wrong password.
                let mut flipped = checksum::seal(USERS.name(), "cy", &record("cy").encode());
                let last = flipped.len() - 20;
                flipped[last] ^= 1;
                table.insert("cy", flipped.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get_user("ada").unwrap(), Some(record("ada")));
        let res = store.get_user("bob");
        assert!(
            matches!(&res, Err(StoreError::CorruptUser { sub, detail }) if sub == "bob" && detail.contains("truncated")),
            "{res:?}"
        );
        let res = store.get_user("cy");
        assert!(
            matches!(&res, Err(StoreError::CorruptUser { sub, detail }) if sub == "cy" && detail.contains("checksum")),
            "{res:?}"
        );
        let res = store.get_user("eve");
        assert!(
            matches!(&res, Err(StoreError::CorruptUser { sub, detail }) if sub == "eve" && detail.contains("version 9")),
            "{res:?}"
        );
    }

    #[test]
    fn decoding_any_prefix_of_a_record_fails_without_panicking() {
        let bytes = record("ada").encode();
        for len in 0..bytes.len() {
            assert!(
                UserRecord::decode("ada", &bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(UserRecord::decode("ada", &long).is_err());
        assert_eq!(UserRecord::decode("ada", &bytes).unwrap(), record("ada"));
    }

    #[test]
    fn a_version_1_record_reads_as_an_account_without_app_passwords() {
        let bob = record("bob");
        let mut v1 = bob.encode();
        v1[0] = USER_RECORD_VERSION_1;
        // Version 1 ends after the docs: drop the app password count.
        v1.truncate(v1.len() - 4);
        assert_eq!(UserRecord::decode("bob", &v1).unwrap(), bob);
        // A version-1 record followed by app passwords is not version 1.
        let mut ada_v1 = record("ada").encode();
        ada_v1[0] = USER_RECORD_VERSION_1;
        assert!(UserRecord::decode("ada", &ada_v1).is_err());
    }

    #[test]
    fn modify_user_changes_the_stored_account_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        // Nothing to change: nothing written.
        let written = store.modify_user("ada", &mut |current| {
            assert!(current.is_none());
            None
        });
        assert_eq!(written.unwrap(), None);
        assert_eq!(store.count_users().unwrap(), 0);
        store.put_user(&record("ada")).unwrap();
        let written = store
            .modify_user("ada", &mut |current| {
                let mut user = current.cloned()?;
                user.app_passwords.clear();
                Some(user)
            })
            .unwrap();
        let expected = UserRecord {
            app_passwords: Vec::new(),
            ..record("ada")
        };
        assert_eq!(written, Some(expected.clone()));
        assert_eq!(store.get_user("ada").unwrap(), Some(expected));
    }

    #[test]
    fn a_second_open_of_the_same_file_is_reported_as_already_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let _first = Store::open(&path).unwrap();
        let res = Store::open(&path);
        assert!(
            matches!(res, Err(StoreError::AlreadyOpen)),
            "{:?}",
            res.err()
        );
    }
}
