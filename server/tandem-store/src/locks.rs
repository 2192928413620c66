//! WebDAV write locks (`protocol-spec/webdav.md`, "Locks"): one sealed row per lock, keyed by its
//! token, so the server restores them at start. The store keeps rows only; what conflicts with
//! what, and when a lock has expired, is the server's lock service (`tandem-server/src/locks/`).

use redb::{ReadableDatabase, ReadableTable, TableHandle};

use crate::Store;
use crate::checksum::{self, unseal_entry};
use crate::error::StoreError;
use crate::record::{Reader, put_opt_str, put_str};
use crate::schema::LOCKS;
use crate::space::WriteKind;

/// The layout byte of a lock record.
const RECORD_VERSION: u8 = 1;

/// One write lock on a workspace path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// `urn:uuid:...`; the key, not repeated in the record.
    pub token: String,
    /// The workspace path it locks, without a leading slash (`""` is the workspace root).
    pub path: String,
    /// Depth infinity: the lock covers every path below `path` too.
    pub deep: bool,
    /// A shared lock; otherwise exclusive.
    pub shared: bool,
    /// The `DAV:owner` XML the client sent, as text, if any.
    pub owner: Option<String>,
    /// The account that took it (`None` without authentication).
    pub principal: Option<String>,
    /// When it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The timeout it was granted (or last refreshed with), ms.
    pub timeout_ms: u64,
    /// When it lapses, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl LockRecord {
    /// Version 1: `u8 1`, `path`, `u8 deep`, `u8 shared`, optional `owner`, optional
    /// `principal`, `u64 created_ms`, `u64 timeout_ms`, `u64 expires_ms`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        put_str(&mut out, &self.path);
        out.push(u8::from(self.deep));
        out.push(u8::from(self.shared));
        put_opt_str(&mut out, self.owner.as_deref());
        put_opt_str(&mut out, self.principal.as_deref());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.timeout_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out
    }

    fn decode(token: &str, bytes: &[u8]) -> Result<LockRecord, StoreError> {
        let corrupt = |detail: String| StoreError::CorruptEntry {
            table: "locks",
            key: token.to_owned(),
            detail,
        };
        let mut reader = Reader::new(bytes);
        match reader.u8() {
            Some(RECORD_VERSION) => {}
            Some(version) => return Err(corrupt(format!("unknown record version {version}"))),
            None => return Err(corrupt("record is empty".into())),
        }
        let flag = |byte: Option<u8>| match byte {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        };
        let decoded = (|| {
            let record = LockRecord {
                token: token.to_owned(),
                path: reader.string()?,
                deep: flag(reader.u8())?,
                shared: flag(reader.u8())?,
                owner: reader.opt_string()?,
                principal: reader.opt_string()?,
                created_ms: reader.u64()?,
                timeout_ms: reader.u64()?,
                expires_ms: reader.u64()?,
            };
            reader.is_empty().then_some(record)
        })();
        decoded.ok_or_else(|| {
            corrupt("record is truncated, has trailing bytes, a bad flag or is not UTF-8".into())
        })
    }
}

impl Store {
    /// Stores (or replaces, on a refresh) a lock, durably.
    pub fn put_lock(&self, lock: &LockRecord) -> Result<(), StoreError> {
        self.contain("put_lock", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                txn.open_table(LOCKS)?.insert(
                    lock.token.as_str(),
                    checksum::seal(LOCKS.name(), lock.token.as_str(), &lock.encode()).as_slice(),
                )?;
                txn.commit()?;
                Ok(())
            })
        })
    }

    /// Stores `lock` unless `conflict`, given every stored lock, names one that keeps it out;
    /// returns that one then, storing nothing. The read and the write are one transaction, so
    /// no other lock is stored between them.
    pub fn create_lock(
        &self,
        lock: &LockRecord,
        conflict: &(dyn Fn(&[LockRecord]) -> Option<LockRecord> + Send + Sync),
    ) -> Result<Option<LockRecord>, StoreError> {
        self.contain("create_lock", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(LOCKS)?;
                    let mut stored = Vec::new();
                    for row in table.iter()? {
                        let (token, value) = row?;
                        let token = token.value();
                        if let Ok(existing) = unseal_entry("locks", token, value.value())
                            .and_then(|payload| LockRecord::decode(token, payload))
                        {
                            stored.push(existing);
                        }
                    }
                    if let Some(found) = conflict(&stored) {
                        return Ok(Some(found));
                    }
                    table.insert(
                        lock.token.as_str(),
                        checksum::seal(LOCKS.name(), lock.token.as_str(), &lock.encode())
                            .as_slice(),
                    )?;
                }
                txn.commit()?;
                Ok(None)
            })
        })
    }

    /// Replaces the stored lock with `lock`'s token (a refresh); `false`, storing nothing, if
    /// there is none (it was unlocked meanwhile).
    pub fn update_lock(&self, lock: &LockRecord) -> Result<bool, StoreError> {
        self.contain("update_lock", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let updated = {
                    let mut table = txn.open_table(LOCKS)?;
                    let exists = table.get(lock.token.as_str())?.is_some();
                    if exists {
                        table.insert(
                            lock.token.as_str(),
                            checksum::seal(LOCKS.name(), lock.token.as_str(), &lock.encode())
                                .as_slice(),
                        )?;
                    }
                    exists
                };
                txn.commit()?;
                Ok(updated)
            })
        })
    }

    /// Removes the locks with these tokens in one durable transaction; returns how many
    /// existed.
    pub fn remove_locks(&self, tokens: &[String]) -> Result<usize, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        self.contain("remove_locks", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let mut removed = 0;
                {
                    let mut table = txn.open_table(LOCKS)?;
                    for token in tokens {
                        if table.remove(token.as_str())?.is_some() {
                            removed += 1;
                        }
                    }
                }
                txn.commit()?;
                Ok(removed)
            })
        })
    }

    /// Every stored lock, expired or not, in token order. A damaged row is left out (and
    /// logged once).
    pub fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        self.contain("list_locks", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(LOCKS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut locks = Vec::new();
            for row in table.iter()? {
                let (token, value) = row?;
                let token = token.value();
                match unseal_entry("locks", token, value.value())
                    .and_then(|payload| LockRecord::decode(token, payload))
                {
                    Ok(lock) => locks.push(lock),
                    Err(error) => self.skip_damaged(LOCKS.name(), token, &error),
                }
            }
            Ok(locks)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(token: &str, path: &str) -> LockRecord {
        LockRecord {
            token: token.into(),
            path: path.into(),
            deep: true,
            shared: false,
            owner: Some("<D:owner xmlns:D=\"DAV:\">ann</D:owner>".into()),
            principal: Some("ann".into()),
            created_ms: 1,
            timeout_ms: 3_600_000,
            expires_ms: 3_600_001,
        }
    }

    #[test]
    fn locks_survive_a_reopen_and_go_when_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.redb");
        let a = lock("urn:uuid:a", "team/notes.md");
        let mut b = lock("urn:uuid:b", "team");
        b.owner = None;
        b.principal = None;
        b.shared = true;
        {
            let store = Store::open(&path).expect("open");
            store.put_lock(&a).expect("put a");
            store.put_lock(&b).expect("put b");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.list_locks().expect("list"),
            vec![a.clone(), b.clone()]
        );
        let removed = store
            .remove_locks(&["urn:uuid:a".into(), "urn:uuid:missing".into()])
            .expect("remove");
        assert_eq!(removed, 1);
        assert_eq!(store.list_locks().expect("list"), vec![b.clone()]);

        // A conditional create sees every stored lock and stores nothing on a conflict.
        let c = lock("urn:uuid:c", "team/x");
        let refused = store
            .create_lock(&c, &|stored| stored.first().cloned())
            .expect("create");
        assert_eq!(refused, Some(b.clone()));
        assert_eq!(store.create_lock(&c, &|_| None).expect("create"), None);
        assert_eq!(store.list_locks().expect("list").len(), 2);
        let mut refreshed = c.clone();
        refreshed.expires_ms = 9;
        assert!(store.update_lock(&refreshed).expect("update"));
        assert!(store.list_locks().expect("list").contains(&refreshed));
        assert!(
            !store
                .update_lock(&lock("urn:uuid:gone", "p"))
                .expect("update")
        );
        assert_eq!(store.list_locks().expect("list").len(), 2);
    }

    #[test]
    fn a_record_that_does_not_decode_is_refused() {
        let mut bytes = lock("t", "p").encode();
        bytes[1 + 4 + 1] = 7; // The `deep` flag after the path "p".
        assert!(matches!(
            LockRecord::decode("t", &bytes),
            Err(StoreError::CorruptEntry { table: "locks", .. })
        ));
        let good = lock("t", "p").encode();
        assert!(LockRecord::decode("t", &good[..good.len() - 1]).is_err());
    }
}
