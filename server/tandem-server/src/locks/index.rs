//! The in-memory index of every lock, and the rules of what conflicts with what: pure, with the
//! time passed in, so the tests need no clock. The service (`mod.rs`) keeps one behind a std
//! mutex and never holds it across an `.await`.
//!
//! Paths are workspace paths without a leading slash; `""` is the workspace root, the parent of
//! every path. A lock *covers* its own path and, when deep, every path below it.

use std::collections::BTreeMap;

use tandem_store::LockRecord;

/// What a lock request asks for, before it has a token and times.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub(crate) path: String,
    pub(crate) deep: bool,
    pub(crate) shared: bool,
}

/// Who submits a request, for [`Index::check`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submitter<'a> {
    /// The lock tokens the request carries.
    pub(crate) tokens: &'a [String],
    /// The account behind the request (`None` without authentication).
    pub(crate) principal: Option<&'a str>,
    /// Whether a token counts whoever submits it (dav-server's `ignore_principal`).
    pub(crate) ignore_principal: bool,
}

/// Every lock, by path and by token.
#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    /// Locks by the path they lock; several only when they are shared.
    by_path: BTreeMap<String, Vec<LockRecord>>,
    /// Token -> path, for unlock and refresh by token.
    by_token: BTreeMap<String, String>,
}

/// Whether `path` is `ancestor` or below it.
pub(crate) fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path == ancestor
        || (path.len() > ancestor.len()
            && path.starts_with(ancestor)
            && path.as_bytes()[ancestor.len()] == b'/')
}

/// `path` and every folder above it, the root (`""`) first, `path` last.
fn ancestors(path: &str) -> Vec<&str> {
    let mut out = vec![""];
    for (idx, byte) in path.bytes().enumerate() {
        if byte == b'/' {
            out.push(&path[..idx]);
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    out
}

/// Whether `lock` covers `path`.
pub(crate) fn covers(lock: &LockRecord, path: &str) -> bool {
    lock.path == path || (lock.deep && is_within(path, &lock.path))
}

impl Index {
    /// An index of `locks`.
    pub(crate) fn from_locks(locks: Vec<LockRecord>) -> Index {
        let mut index = Index::default();
        for lock in locks {
            index.insert(lock);
        }
        index
    }

    /// The lock shown for `path` in listings: the first unexpired lock covering it.
    pub(crate) fn shown(&self, path: &str, now_ms: u64) -> Option<&LockRecord> {
        ancestors(path)
            .into_iter()
            .filter_map(|ancestor| self.by_path.get(ancestor))
            .flatten()
            .find(|lock| lock.expires_ms > now_ms && covers(lock, path))
    }

    /// Whether there is no lock at all, expired or not.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Adds a lock (a restored or a new one).
    pub(crate) fn insert(&mut self, lock: LockRecord) {
        self.by_token.insert(lock.token.clone(), lock.path.clone());
        self.by_path
            .entry(lock.path.clone())
            .or_default()
            .push(lock);
    }

    /// Removes the lock `token`, if it exists.
    pub(crate) fn remove(&mut self, token: &str) -> Option<LockRecord> {
        let path = self.by_token.remove(token)?;
        let locks = self.by_path.get_mut(&path)?;
        let idx = locks.iter().position(|lock| lock.token == token)?;
        let lock = locks.remove(idx);
        if locks.is_empty() {
            self.by_path.remove(&path);
        }
        Some(lock)
    }

    /// The lock `token`, expired or not.
    pub(crate) fn get(&self, token: &str) -> Option<&LockRecord> {
        let path = self.by_token.get(token)?;
        self.by_path
            .get(path)?
            .iter()
            .find(|lock| lock.token == token)
    }

    /// The lock `token`, to change it in place (a refresh).
    pub(crate) fn get_mut(&mut self, token: &str) -> Option<&mut LockRecord> {
        let path = self.by_token.get(token)?;
        self.by_path
            .get_mut(path)?
            .iter_mut()
            .find(|lock| lock.token == token)
    }

    /// Every lock that has not expired at `now_ms`, in path order.
    pub(crate) fn all(&self, now_ms: u64) -> Vec<LockRecord> {
        self.by_path
            .values()
            .flatten()
            .filter(|lock| lock.expires_ms > now_ms)
            .cloned()
            .collect()
    }

    /// Every lock expired at `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<LockRecord> {
        self.by_path
            .values()
            .flatten()
            .filter(|lock| lock.expires_ms <= now_ms)
            .cloned()
            .collect()
    }

    /// Every unexpired lock covering `path`: the deep locks of the folders above it and the
    /// locks of `path` itself, the root's first.
    pub(crate) fn covering(&self, path: &str, now_ms: u64) -> Vec<LockRecord> {
        ancestors(path)
            .into_iter()
            .filter_map(|ancestor| self.by_path.get(ancestor))
            .flatten()
            .filter(|lock| lock.expires_ms > now_ms && covers(lock, path))
            .cloned()
            .collect()
    }

    /// Every unexpired lock strictly below `path`.
    pub(crate) fn below(&self, path: &str, now_ms: u64) -> Vec<LockRecord> {
        let start = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        self.by_path
            .range(start.clone()..)
            .take_while(|(key, _)| key.starts_with(&start))
            .filter(|(key, _)| key.as_str() != path)
            .flat_map(|(_, locks)| locks)
            .filter(|lock| lock.expires_ms > now_ms)
            .cloned()
            .collect()
    }

    /// Every lock (expired or not) at `path` or below it.
    pub(crate) fn at_or_below(&self, path: &str) -> Vec<LockRecord> {
        self.by_path
            .iter()
            .filter(|(key, _)| is_within(key, path))
            .flat_map(|(_, locks)| locks.iter().cloned())
            .collect()
    }

    /// The lock that keeps `wanted` from being granted, if any (RFC 4918 §6.1 and §7): an
    /// exclusive lock conflicts with any other lock on a path it would cover or that covers
    /// it; shared locks live together. Covering means the locks above (deep ones) and, for a
    /// deep request, every lock below.
    pub(crate) fn conflict(&self, wanted: &Wanted, now_ms: u64) -> Option<LockRecord> {
        let mut candidates = self.covering(&wanted.path, now_ms);
        if wanted.deep {
            candidates.extend(self.below(&wanted.path, now_ms));
        }
        candidates
            .into_iter()
            .find(|lock| !(lock.shared && wanted.shared))
    }

    /// Whether a write to `path` (and, if `deep`, to everything below it) by `submitter` is
    /// allowed. Like dav-server's own lock system: an exclusive lock the submitter does not
    /// hold refuses; shared locks refuse unless the submitter holds at least one of those on
    /// the way to `path`. Returns the lock that refuses.
    pub(crate) fn check(
        &self,
        path: &str,
        deep: bool,
        submitter: Submitter<'_>,
        now_ms: u64,
    ) -> Result<(), Box<LockRecord>> {
        let holds = |lock: &LockRecord| {
            submitter.tokens.contains(&lock.token)
                && (submitter.ignore_principal
                    || lock.principal.is_none()
                    || submitter.principal == lock.principal.as_deref())
        };
        let mut first_shared: Option<LockRecord> = None;
        let mut holds_one = false;
        for lock in self.covering(path, now_ms) {
            if holds(&lock) {
                holds_one = true;
            } else if !lock.shared {
                return Err(Box::new(lock));
            } else if first_shared.is_none() {
                first_shared = Some(lock);
            }
        }
        if !holds_one && let Some(lock) = first_shared {
            return Err(Box::new(lock));
        }
        if deep && let Some(lock) = self.below(path, now_ms).into_iter().find(|l| !holds(l)) {
            return Err(Box::new(lock));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(token: &str, path: &str, deep: bool, shared: bool, expires_ms: u64) -> LockRecord {
        LockRecord {
            token: token.into(),
            path: path.into(),
            deep,
            shared,
            owner: None,
            principal: Some("ann".into()),
            created_ms: 0,
            timeout_ms: expires_ms,
            expires_ms,
        }
    }

    fn want(path: &str, deep: bool, shared: bool) -> Wanted {
        Wanted {
            path: path.into(),
            deep,
            shared,
        }
    }

    fn nobody() -> Submitter<'static> {
        Submitter {
            tokens: &[],
            principal: None,
            ignore_principal: false,
        }
    }

    #[test]
    fn within_respects_segment_boundaries() {
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(is_within("a", ""));
        assert!(!is_within("ab", "a"));
        assert!(!is_within("a", "a/b"));
        assert_eq!(ancestors("a/b/c"), vec!["", "a", "a/b", "a/b/c"]);
        assert_eq!(ancestors(""), vec![""]);
    }

    #[test]
    fn a_deep_folder_lock_covers_its_files_and_a_shallow_one_does_not() {
        let mut index = Index::default();
        index.insert(lock("deep", "team", true, false, 100));
        index.insert(lock("shallow", "docs", false, false, 100));
        let tokens = |locks: Vec<LockRecord>| -> Vec<String> {
            locks.into_iter().map(|lock| lock.token).collect()
        };
        assert_eq!(tokens(index.covering("team/a/b.md", 1)), ["deep"]);
        assert_eq!(tokens(index.covering("team", 1)), ["deep"]);
        assert!(index.covering("teamwork/x", 1).is_empty());
        assert!(index.covering("docs/x", 1).is_empty());
        assert_eq!(tokens(index.covering("docs", 1)), ["shallow"]);
        assert_eq!(tokens(index.below("", 1)), ["shallow", "deep"]);
        assert!(index.check("docs/x", false, nobody(), 1).is_ok());
        assert_eq!(
            index
                .check("team/a", false, nobody(), 1)
                .map_err(|l| l.token),
            Err("deep".into())
        );
        // Deleting a folder above a locked file is a write to it too.
        assert_eq!(
            index.check("", true, nobody(), 1).map_err(|l| l.token),
            Err("shallow".into())
        );
    }

    #[test]
    fn exclusive_conflicts_with_everything_and_shared_with_exclusive_only() {
        let mut index = Index::default();
        index.insert(lock("s1", "f", false, true, 100));
        assert!(index.conflict(&want("f", false, true), 1).is_none());
        assert_eq!(
            index.conflict(&want("f", false, false), 1).map(|l| l.token),
            Some("s1".into())
        );
        // A deep lock on the folder above would cover the shared lock's file.
        assert!(index.conflict(&want("", true, false), 1).is_some());
        assert!(index.conflict(&want("", false, false), 1).is_none());
        index.insert(lock("x", "g", true, false, 100));
        assert!(index.conflict(&want("g/h", false, true), 1).is_some());
    }

    #[test]
    fn expired_locks_neither_conflict_nor_refuse() {
        let mut index = Index::default();
        index.insert(lock("old", "f", true, false, 10));
        assert!(index.check("f", false, nobody(), 9).is_err());
        assert!(index.check("f", false, nobody(), 10).is_ok());
        assert!(index.conflict(&want("f", false, false), 10).is_none());
        assert_eq!(index.expired(10)[0].token, "old");
        assert!(index.shown("f", 10).is_none());
        assert!(index.shown("f", 9).is_some());
        assert!(index.all(10).is_empty());
        assert!(index.remove("old").is_some());
        assert!(index.get("old").is_none());
    }

    #[test]
    fn the_holder_writes_with_its_token_and_principal() {
        let mut index = Index::default();
        index.insert(lock("t", "f", false, false, 100));
        let tokens = ["t".to_owned()];
        let ann = Submitter {
            tokens: &tokens,
            principal: Some("ann"),
            ignore_principal: false,
        };
        assert!(index.check("f", false, ann, 1).is_ok());
        let bob = Submitter {
            principal: Some("bob"),
            ..ann
        };
        assert!(index.check("f", false, bob, 1).is_err());
        let anyone = Submitter {
            ignore_principal: true,
            ..bob
        };
        assert!(index.check("f", false, anyone, 1).is_ok());
    }

    #[test]
    fn one_held_shared_lock_is_enough() {
        let mut index = Index::default();
        index.insert(lock("s1", "f", false, true, 100));
        index.insert(lock("s2", "f", false, true, 100));
        let tokens = ["s2".to_owned()];
        let holder = Submitter {
            tokens: &tokens,
            principal: Some("ann"),
            ignore_principal: false,
        };
        assert!(index.check("f", false, holder, 1).is_ok());
        assert_eq!(
            index.check("f", false, nobody(), 1).map_err(|l| l.token),
            Err("s1".into())
        );
        assert_eq!(index.remove("s1").map(|l| l.token), Some("s1".into()));
        assert_eq!(index.at_or_below("").len(), 1);
    }
}
