//! WebDAV's own state: the folders made with `MKCOL` (the workspace's folders are otherwise
//! only the `/` in the names of files and docs, so an empty one could not exist) and the dead
//! properties of `PROPPATCH`, each by workspace path.
//!
//! The store keeps a property as an opaque value under its key (`{namespace}name`); what the
//! bytes mean (the property's XML, its prefix) belongs to the server (`api/dav/`). The layout is
//! in `protocol-spec/storage.md`.
//!
//! Invariant: every change is one durable transaction; a move or removal of a tree changes the
//! folders and properties at the path and below it together.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};

use crate::Store;
use crate::checksum;
use crate::error::StoreError;
use crate::schema::{DAV_FOLDERS, DAV_PROPS};
use crate::space::WriteKind;

/// One dead property of one path, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadProp {
    /// `{namespace}name`, unique per path.
    pub key: String,
    /// The server's encoding of the property (sealed on disk).
    pub value: Vec<u8>,
}

macro_rules! open_or_empty {
    ($txn:expr, $table:expr, $empty:expr) => {
        match $txn.open_table($table) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok($empty),
            Err(error) => return Err(error.into()),
        }
    };
}

/// Whether `key` is `path` or below it (`path/...`); the root (`""`) holds everything.
fn in_tree(key: &str, path: &str) -> bool {
    path.is_empty()
        || key == path
        || (key.len() > path.len() && key.starts_with(path) && key.as_bytes()[path.len()] == b'/')
}

/// `key` moved from under `from` to under `to` (`key` is in `from`'s tree).
fn rebase(key: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &key[from.len()..])
}

fn corrupt_prop(path: &str, key: &str, detail: &str) -> StoreError {
    StoreError::CorruptEntry {
        table: DAV_PROPS.name(),
        key: format!("{path} {key}"),
        detail: detail.to_owned(),
    }
}

/// Every folder key in `path`'s tree, read in `txn`.
fn folders_in_tree(txn: &WriteTransaction, path: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let table = txn.open_table(DAV_FOLDERS)?;
    let mut out = Vec::new();
    if let Some(value) = table.get(path)? {
        out.push((path.to_owned(), value.value()));
    }
    let prefix = format!("{path}/");
    let start = if path.is_empty() { "" } else { prefix.as_str() };
    for entry in table.range::<&str>((Bound::Included(start), Bound::Unbounded))? {
        let (key, value) = entry?;
        let key = key.value();
        if !in_tree(key, path) {
            break;
        }
        if key != path {
            out.push((key.to_owned(), value.value()));
        }
    }
    Ok(out)
}

/// Whether a scan of rows from `path` on, in key order, is past `path`'s tree: rows named
/// between `path` and `path/` (`path x`, `path.md`) come first and are skipped, the tree's
/// rows after them are contiguous.
fn past_tree(key: &str, path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let prefix = format!("{path}/");
    key > prefix.as_str() && !key.starts_with(&prefix)
}

/// Every property row in `path`'s tree, payloads checked, read in `txn`.
fn props_in_tree(
    txn: &WriteTransaction,
    path: &str,
) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
    let table = txn.open_table(DAV_PROPS)?;
    let mut out = Vec::new();
    for entry in table.range::<(&str, &str)>((Bound::Included((path, "")), Bound::Unbounded))? {
        let (key, value) = entry?;
        let (key_path, key_prop) = key.value();
        if past_tree(key_path, path) {
            break;
        }
        if !in_tree(key_path, path) {
            continue;
        }
        let payload = checksum::unseal(DAV_PROPS.name(), (key_path, key_prop), value.value())
            .map_err(|mismatch| corrupt_prop(key_path, key_prop, &mismatch.to_string()))?;
        out.push((key_path.to_owned(), key_prop.to_owned(), payload.to_vec()));
    }
    Ok(out)
}

impl Store {
    /// Every folder made with `MKCOL`, sorted.
    pub fn dav_folders(&self) -> Result<Vec<String>, StoreError> {
        self.contain("dav_folders", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, DAV_FOLDERS, Vec::new());
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (key, _) = entry?;
                out.push(key.value().to_owned());
            }
            Ok(out)
        })
    }

    /// Records folder `path` (made at `now_ms`), durably; `false` if it was recorded already.
    pub fn add_dav_folder(&self, path: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.contain("add_dav_folder", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let added = {
                    let mut table = txn.open_table(DAV_FOLDERS)?;
                    let existed = table.get(path)?.is_some();
                    if !existed {
                        table.insert(path, now_ms)?;
                    }
                    !existed
                };
                txn.commit()?;
                Ok(added)
            })
        })
    }

    /// Every path that has dead properties, sorted: one scan, so a listing of many entries
    /// asks the store for the properties of only those that have some.
    pub fn dav_prop_paths(&self) -> Result<Vec<String>, StoreError> {
        self.contain("dav_prop_paths", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, DAV_PROPS, Vec::new());
            let mut out: Vec<String> = Vec::new();
            for entry in table.iter()? {
                let (key, _) = entry?;
                let (path, _) = key.value();
                if out.last().map(String::as_str) != Some(path) {
                    out.push(path.to_owned());
                }
            }
            Ok(out)
        })
    }

    /// The dead properties of `path`, by key. A damaged row fails the read
    /// (`StoreError::CorruptEntry`).
    pub fn dav_props(&self, path: &str) -> Result<Vec<DeadProp>, StoreError> {
        self.contain("dav_props", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = open_or_empty!(txn, DAV_PROPS, Vec::new());
            let mut out = Vec::new();
            for entry in
                table.range::<(&str, &str)>((Bound::Included((path, "")), Bound::Unbounded))?
            {
                let (key, value) = entry?;
                let (key_path, key_prop) = key.value();
                if key_path != path {
                    break;
                }
                let payload =
                    checksum::unseal(DAV_PROPS.name(), (key_path, key_prop), value.value())
                        .map_err(|mismatch| {
                            corrupt_prop(key_path, key_prop, &mismatch.to_string())
                        })?;
                out.push(DeadProp {
                    key: key_prop.to_owned(),
                    value: payload.to_vec(),
                });
            }
            Ok(out)
        })
    }

    /// Applies `changes` to `path`'s properties in order, all in one durable transaction: each
    /// sets the property of its key to the value given, or removes it for `None` (RFC 4918
    /// section 9.2: the instructions of one PROPPATCH apply in document order).
    pub fn patch_dav_props(
        &self,
        path: &str,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        self.contain("patch_dav_props", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(DAV_PROPS)?;
                    for (key, value) in changes {
                        match value {
                            None => {
                                table.remove((path, key.as_str()))?;
                            }
                            Some(value) => {
                                let sealed =
                                    checksum::seal(DAV_PROPS.name(), (path, key.as_str()), value);
                                table.insert((path, key.as_str()), sealed.as_slice())?;
                            }
                        }
                    }
                }
                txn.commit()?;
                Ok(())
            })
        })
    }

    /// Moves (or copies, with `copy`) the folders and properties at `from` and below it to `to`,
    /// replacing what `to`'s tree held, in one durable transaction.
    pub fn move_dav_tree(&self, from: &str, to: &str, copy: bool) -> Result<(), StoreError> {
        self.contain("move_dav_tree", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let folders = folders_in_tree(&txn, from)?;
                let props = props_in_tree(&txn, from)?;
                remove_tree_in(&txn, to)?;
                if !copy {
                    remove_tree_in(&txn, from)?;
                }
                {
                    let mut table = txn.open_table(DAV_FOLDERS)?;
                    for (key, made) in &folders {
                        table.insert(rebase(key, from, to).as_str(), *made)?;
                    }
                }
                {
                    let mut table = txn.open_table(DAV_PROPS)?;
                    for (key_path, key_prop, payload) in &props {
                        let new_path = rebase(key_path, from, to);
                        let sealed = checksum::seal(
                            DAV_PROPS.name(),
                            (new_path.as_str(), key_prop.as_str()),
                            payload,
                        );
                        table.insert((new_path.as_str(), key_prop.as_str()), sealed.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
        })
    }

    /// Removes the folders and properties at `path` and below it, durably.
    pub fn remove_dav_tree(&self, path: &str) -> Result<(), StoreError> {
        self.contain("remove_dav_tree", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                remove_tree_in(&txn, path)?;
                txn.commit()?;
                Ok(())
            })
        })
    }
}

/// Removes the folder and property rows of `path`'s tree inside `txn`. Rows are removed by key,
/// without decoding, so a damaged property goes with its path.
fn remove_tree_in(txn: &WriteTransaction, path: &str) -> Result<(), StoreError> {
    let folders: Vec<String> = folders_in_tree(txn, path)?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    {
        let mut table = txn.open_table(DAV_FOLDERS)?;
        for key in &folders {
            table.remove(key.as_str())?;
        }
    }
    let mut table = txn.open_table(DAV_PROPS)?;
    let mut doomed: Vec<(String, String)> = Vec::new();
    for entry in table.range::<(&str, &str)>((Bound::Included((path, "")), Bound::Unbounded))? {
        let (key, _) = entry?;
        let (key_path, key_prop) = key.value();
        if past_tree(key_path, path) {
            break;
        }
        if in_tree(key_path, path) {
            doomed.push((key_path.to_owned(), key_prop.to_owned()));
        }
    }
    for (key_path, key_prop) in &doomed {
        table.remove((key_path.as_str(), key_prop.as_str()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(key: &str, value: &str) -> DeadProp {
        DeadProp {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_paths_with_properties_are_listed_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.redb")).expect("open");
        assert!(store.dav_prop_paths().expect("none yet").is_empty());
        let set = |key: &str| (key.to_owned(), Some(b"v".to_vec()));
        store
            .patch_dav_props("b/f.txt", &[set("{x:}one"), set("{x:}two")])
            .expect("set");
        store.patch_dav_props("a", &[set("{x:}top")]).expect("set");
        assert_eq!(store.dav_prop_paths().expect("read"), ["a", "b/f.txt"]);
        store
            .patch_dav_props("a", &[("{x:}top".to_owned(), None)])
            .expect("remove");
        assert_eq!(store.dav_prop_paths().expect("read"), ["b/f.txt"]);
    }

    #[test]
    fn folders_and_properties_move_copy_and_go_with_their_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.redb")).expect("open");
        assert!(store.add_dav_folder("a", 1).expect("add"));
        assert!(!store.add_dav_folder("a", 2).expect("again"));
        store.add_dav_folder("a/b", 3).expect("add");
        store.add_dav_folder("a b", 4).expect("add");
        let set = |key: &str, value: &str| (key.to_owned(), Some(value.as_bytes().to_vec()));
        let remove = |key: &str| (key.to_owned(), None);
        store
            .patch_dav_props("a/b/f.txt", &[set("{x:}one", "1"), set("{x:}two", "2")])
            .expect("set");
        store
            .patch_dav_props("a", &[set("{x:}top", "t")])
            .expect("set");
        store
            .patch_dav_props("a.md", &[set("{x:}other", "o")])
            .expect("set");
        // In order: set then remove leaves nothing, remove then set leaves the value.
        store
            .patch_dav_props(
                "a/b/f.txt",
                &[
                    remove("{x:}two"),
                    set("{x:}three", "3"),
                    remove("{x:}three"),
                ],
            )
            .expect("remove");
        store
            .patch_dav_props("a.md", &[remove("{x:}new"), set("{x:}new", "n")])
            .expect("set");
        store
            .patch_dav_props("a.md", &[remove("{x:}new")])
            .expect("remove");
        assert_eq!(
            store.dav_props("a/b/f.txt").expect("read"),
            vec![prop("{x:}one", "1")]
        );

        store.move_dav_tree("a", "c", true).expect("copy");
        assert_eq!(
            store.dav_folders().expect("list"),
            vec!["a", "a b", "a/b", "c", "c/b"]
        );
        assert_eq!(
            store.dav_props("c/b/f.txt").expect("read"),
            vec![prop("{x:}one", "1")]
        );

        store.move_dav_tree("a", "d", false).expect("move");
        assert_eq!(
            store.dav_folders().expect("list"),
            vec!["a b", "c", "c/b", "d", "d/b"]
        );
        assert!(store.dav_props("a/b/f.txt").expect("read").is_empty());
        assert_eq!(
            store.dav_props("d").expect("read"),
            vec![prop("{x:}top", "t")]
        );
        assert_eq!(
            store.dav_props("a.md").expect("read"),
            vec![prop("{x:}other", "o")]
        );

        store.remove_dav_tree("c").expect("remove");
        assert_eq!(store.dav_folders().expect("list"), vec!["a b", "d", "d/b"]);
        assert!(store.dav_props("c/b/f.txt").expect("read").is_empty());
        assert_eq!(
            store.dav_props("a.md").expect("read"),
            vec![prop("{x:}other", "o")]
        );

        // Durable: a reopened store has the same rows.
        drop(store);
        let store = Store::open(&dir.path().join("t.redb")).expect("reopen");
        assert_eq!(store.dav_folders().expect("list"), vec!["a b", "d", "d/b"]);
        assert_eq!(
            store.dav_props("d/b/f.txt").expect("read"),
            vec![prop("{x:}one", "1")]
        );
    }
}
