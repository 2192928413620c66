//! Restore: the update that takes a doc's content back to an earlier state, as a new change on
//! top of the current one. Nothing is destroyed: the history keeps every earlier update, and
//! peers merge the restore like any other edit.
//!
//! [`restore_update`] loads the current state into a scratch doc (with a fresh client id, so the
//! change is attributed to nobody else) and rewrites each root there:
//!
//! - a root holding plain text on both sides gets a minimal character diff (Myers, on Unicode
//!   scalar values, applied at UTF-16 offsets, which is how the scratch doc indexes, so no edit
//!   ever splits a character);
//! - text with formatting or embeds on either side is replaced whole by the old delta;
//! - map entries are set (deep copies of nested shared types) or removed key by key, and entries
//!   that are already equal are left alone;
//! - arrays and XML fragments are replaced whole (deleted, then deep copies inserted) unless they
//!   are already equal;
//! - roots that are not in the old state are emptied (a root itself cannot be removed).
//!
//! The roots of a doc decoded from an update have no declared type, so each root's shape is
//! inferred from its content, as `SharedDoc::to_json` does (through yrs's own inference).
//!
//! Invariant: applying the returned update to the current state yields a doc whose root types
//! read (`to_json`) exactly as the old state's, for text, maps and arrays.

use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};
use yrs::branch::BranchPtr;
use yrs::branch::Root;
use yrs::types::{AsPrelim, Delta, ToJson};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, ClientID, Doc, In, Map, MapRef, OffsetKind, Options, Out, ReadTxn, Text,
    TextRef, Transact, TransactionMut, Update,
};

/// Why no restore update could be computed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// One of the two states is not a loadable v1 update.
    #[error("the {0} state does not load")]
    BadState(&'static str),
    /// yrs failed while reading or rewriting the states.
    #[error("computing the restore failed inside yrs")]
    Failed,
}

/// The v1 update that makes a doc in state `current` read as `target`, authored by `client_id`
/// (which must be fresh: not used by any replica). `None` when they already read the same.
///
/// `deadline` bounds the text diffs: past it, the rest of a text is replaced whole instead of
/// diffed (the result is the same content, only a larger update).
pub fn restore_update(
    current: &[u8],
    target: &[u8],
    client_id: u64,
    deadline: Option<Instant>,
) -> Result<Option<Vec<u8>>, RestoreError> {
    let work = Doc::with_options(Options {
        client_id: ClientID::new(client_id),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let old = Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    load(&work, current).map_err(|()| RestoreError::BadState("current"))?;
    load(&old, target).map_err(|()| RestoreError::BadState("target"))?;
    catch_unwind(AssertUnwindSafe(|| rewrite(&work, &old, deadline)))
        .map_err(|_| RestoreError::Failed)
}

fn load(doc: &Doc, state: &[u8]) -> Result<(), ()> {
    let update = catch_unwind(|| Update::decode_v1(state))
        .map_err(|_| ())?
        .map_err(|_| ())?;
    catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)))
        .map_err(|_| ())?
        .map_err(|_| ())
}

/// What a root holds, as far as restoring it goes.
enum Shape {
    /// Nothing visible.
    Empty,
    /// Text: its delta, and the string if it is plain (no formatting, no embeds).
    Text(Vec<Delta<In>>, Option<String>),
    /// Map entries only.
    Map,
    /// A sequence of values or shared types (an array or an XML fragment).
    Seq,
    /// Map entries and a sequence (an XML element or formatted XML text used as a root).
    Mixed,
}

fn shape<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Shape {
    if branch.len() == 0 && MapRef::from(branch).len(txn) == 0 {
        return Shape::Empty;
    }
    match Out::UndefinedRef(branch).as_prelim(txn) {
        In::Text(delta) => {
            let delta = delta.to_vec();
            let plain = plain_text(&delta);
            Shape::Text(delta, plain)
        }
        In::Map(_) => Shape::Map,
        In::XmlText(_) | In::XmlElement(_) => Shape::Mixed,
        _ => Shape::Seq,
    }
}

/// The string of a delta made only of unformatted strings.
fn plain_text(delta: &[Delta<In>]) -> Option<String> {
    let mut out = String::new();
    for chunk in delta {
        match chunk {
            Delta::Inserted(In::Any(Any::String(s)), None) => out.push_str(s),
            _ => return None,
        }
    }
    Some(out)
}

fn roots<T: ReadTxn>(txn: &T) -> BTreeMap<String, BranchPtr> {
    txn.root_refs()
        .filter_map(|(name, value)| branch_of(&value).map(|b| (name.to_owned(), b)))
        .collect()
}

fn branch_of(value: &Out) -> Option<BranchPtr> {
    Some(match value {
        Out::UndefinedRef(b) => *b,
        Out::YText(t) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(t)),
        Out::YArray(a) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(a)),
        Out::YMap(m) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(m)),
        Out::YXmlElement(x) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(x)),
        Out::YXmlFragment(x) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(x)),
        Out::YXmlText(x) => BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(x)),
        _ => return None,
    })
}

fn rewrite(work: &Doc, old: &Doc, deadline: Option<Instant>) -> Option<Vec<u8>> {
    let old_txn = old.transact();
    let mut txn = work.transact_mut();
    let old_roots = roots(&old_txn);
    let mut current_roots = roots(&txn);
    for name in old_roots.keys() {
        if !current_roots.contains_key(name) {
            let root: ArrayRef = Root::new(name.as_str()).get_or_create(&mut txn);
            let branch = BranchPtr::from(AsRef::<yrs::branch::Branch>::as_ref(&root));
            current_roots.insert(name.clone(), branch);
        }
    }
    for (name, branch) in current_roots {
        let old_branch = old_roots.get(&name).copied();
        let old_shape = old_branch.map_or(Shape::Empty, |b| shape(b, &old_txn));
        let current_shape = shape(branch, &txn);
        sync_map(&mut txn, branch, old_branch, &old_txn);
        sync_sequence(
            &mut txn,
            branch,
            &current_shape,
            old_branch,
            &old_shape,
            &old_txn,
            deadline,
        );
    }
    let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
    changed.then(|| txn.encode_update_v1())
}

/// Sets every entry of the old map that differs, and removes every entry it lacks.
fn sync_map<T: ReadTxn>(
    txn: &mut TransactionMut,
    branch: BranchPtr,
    old_branch: Option<BranchPtr>,
    old_txn: &T,
) {
    let map = MapRef::from(branch);
    let old_entries: Vec<(String, Out)> = old_branch
        .map(|b| {
            MapRef::from(b)
                .iter(old_txn)
                .map(|(key, value)| (key.to_owned(), value))
                .collect()
        })
        .unwrap_or_default();
    // A set, so a map root of n keys restored to one of m keys costs O(n + m), not O(n·m).
    let old_keys: HashSet<&str> = old_entries.iter().map(|(key, _)| key.as_str()).collect();
    let stale: Vec<String> = map
        .keys(txn)
        .filter(|key| !old_keys.contains(key))
        .map(str::to_owned)
        .collect();
    drop(old_keys);
    for key in stale {
        map.remove(txn, &key);
    }
    for (key, old_value) in old_entries {
        let same = map
            .get(txn, &key)
            .is_some_and(|value| same_value(&value, txn, &old_value, old_txn));
        if !same {
            map.insert(txn, key, old_value.as_prelim(old_txn));
        }
    }
}

/// Whether two values read the same and are of the same kind.
fn same_value<A: ReadTxn, B: ReadTxn>(a: &Out, a_txn: &A, b: &Out, b_txn: &B) -> bool {
    match (a, b) {
        (Out::Any(a), Out::Any(b)) => a == b,
        (Out::Any(_), _) | (_, Out::Any(_)) => false,
        _ => {
            std::mem::discriminant(a) == std::mem::discriminant(b)
                && a.to_json(a_txn) == b.to_json(b_txn)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sync_sequence<T: ReadTxn>(
    txn: &mut TransactionMut,
    branch: BranchPtr,
    current: &Shape,
    old_branch: Option<BranchPtr>,
    old: &Shape,
    old_txn: &T,
    deadline: Option<Instant>,
) {
    match (current, old) {
        (Shape::Empty | Shape::Map, Shape::Empty | Shape::Map) => {}
        // Plain text on both sides (or one side empty): a minimal character diff.
        (Shape::Text(_, Some(now)), Shape::Text(_, Some(then))) => {
            diff_text(txn, &TextRef::from(branch), now, then, deadline);
        }
        (Shape::Empty | Shape::Map, Shape::Text(_, Some(then))) => {
            diff_text(txn, &TextRef::from(branch), "", then, deadline);
        }
        (Shape::Text(_, Some(now)), Shape::Empty | Shape::Map) => {
            diff_text(txn, &TextRef::from(branch), now, "", deadline);
        }
        // Formatted text somewhere: the old delta replaces the whole sequence.
        (_, Shape::Text(delta, _)) => {
            if !matches!(current, Shape::Text(now, _) if now == delta) {
                clear_sequence(txn, branch);
                TextRef::from(branch).apply_delta(txn, delta.iter().cloned());
            }
        }
        (_, Shape::Empty | Shape::Map) => clear_sequence(txn, branch),
        // An array or XML sequence in the old state: copied whole unless already equal.
        (_, Shape::Seq | Shape::Mixed) => {
            let Some(old_branch) = old_branch else { return };
            let old_array = ArrayRef::from(old_branch);
            let equal = matches!(current, Shape::Seq | Shape::Mixed)
                && ArrayRef::from(branch).to_json(txn) == old_array.to_json(old_txn);
            if equal {
                return;
            }
            clear_sequence(txn, branch);
            let array = ArrayRef::from(branch);
            let items: Vec<In> = old_array
                .iter(old_txn)
                .map(|v| v.as_prelim(old_txn))
                .collect();
            for (index, item) in (0u32..).zip(items) {
                array.insert(txn, index, item);
            }
        }
    }
}

/// Deletes the sequence part of a root (its map entries stay).
fn clear_sequence(txn: &mut TransactionMut, branch: BranchPtr) {
    let len = branch.len();
    if len > 0 {
        ArrayRef::from(branch).remove_range(txn, 0, len);
    }
}

/// Applies the character diff from `now` to `then` to `text` (UTF-16 offsets).
fn diff_text(
    txn: &mut TransactionMut,
    text: &TextRef,
    now: &str,
    then: &str,
    deadline: Option<Instant>,
) {
    if now == then {
        return;
    }
    let now: Vec<char> = now.chars().collect();
    let then: Vec<char> = then.chars().collect();
    let units = |chars: &[char]| chars.iter().map(|c| c.len_utf16() as u32).sum::<u32>();
    let mut pos = 0u32;
    for op in capture_diff_slices_deadline(Algorithm::Myers, &now, &then, deadline) {
        let (old_range, new_range) = match op {
            DiffOp::Equal { old_index, len, .. } => {
                pos += units(&now[old_index..old_index + len]);
                continue;
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => (old_index..old_index + old_len, 0..0),
            DiffOp::Insert {
                new_index, new_len, ..
            } => (0..0, new_index..new_index + new_len),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => (
                old_index..old_index + old_len,
                new_index..new_index + new_len,
            ),
        };
        let removed = units(&now[old_range]);
        if removed > 0 {
            text.remove_range(txn, pos, removed);
        }
        if !new_range.is_empty() {
            let inserted: String = then[new_range].iter().collect();
            text.insert(txn, pos, &inserted);
            pos += inserted.encode_utf16().count() as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use yrs::{
        ArrayPrelim, GetString, MapPrelim, StateVector, WriteTxn, XmlFragment, XmlTextPrelim,
    };

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The roots as JSON, without empty ones (a root cannot be removed, only emptied).
    fn json(state: &[u8]) -> serde_json::Value {
        let mut json = crate::SharedDoc::load(crate::Limits::default(), [state])
            .expect("loads")
            .to_json();
        if let Some(roots) = json.as_object_mut() {
            roots.retain(|_, v| {
                !(v == &serde_json::json!([]) || v == &serde_json::json!({}) || v == "")
            });
        }
        json
    }

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// Restores `doc` to `old` and checks the result reads as `old`.
    fn restore_and_check(doc: &Doc, old: &[u8]) -> Option<Vec<u8>> {
        let update = restore_update(&state(doc), old, 9_999, None).expect("restores");
        if let Some(update) = &update {
            apply(doc, update);
        }
        assert_eq!(json(&state(doc)), json(old));
        update
    }

    #[test]
    fn text_with_emoji_and_cjk_restores_exactly_with_a_small_update() {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        text.insert(
            &mut doc.transact_mut(),
            0,
            "héllo 👩‍👩‍👧 世界, long unchanged tail ".repeat(20).as_str(),
        );
        let old = state(&doc);
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 3, "🎉中");
            text.remove_range(&mut txn, 10, 4);
        }
        let update = restore_and_check(&doc, &old).expect("something changed");
        assert!(update.len() < 100, "update of {} bytes", update.len());
        assert_eq!(
            restore_update(&state(&doc), &old, 9_999, None).unwrap(),
            None
        );
    }

    #[test]
    fn maps_arrays_nested_types_and_xml_restore() {
        let doc = Doc::with_client_id(1);
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let xml = doc.get_or_insert_xml_fragment("x");
        {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "keep", 1);
            map.insert(&mut txn, "change", "old");
            map.insert(
                &mut txn,
                "nested",
                MapPrelim::from([("k", In::Any(Any::from("v")))]),
            );
            array.insert_range(&mut txn, 0, [1, 2, 3]);
            array.insert(&mut txn, 3, ArrayPrelim::from([true, false]));
            xml.insert(&mut txn, 0, XmlTextPrelim::new("para"));
        }
        let old = state(&doc);
        {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "change", "new");
            map.insert(&mut txn, "added", 5);
            map.remove(&mut txn, "nested");
            array.remove_range(&mut txn, 0, 2);
            array.push_back(&mut txn, "x");
            xml.remove_range(&mut txn, 0, 1);
            txn.get_or_insert_text("later")
                .insert(&mut txn, 0, "new root");
        }
        restore_and_check(&doc, &old);
        assert_eq!(
            doc.get_or_insert_text("later").get_string(&doc.transact()),
            ""
        );
    }

    #[test]
    fn a_concurrent_edit_still_merges_after_a_restore() {
        let server = Doc::with_client_id(1);
        let text = server.get_or_insert_text("t");
        text.insert(&mut server.transact_mut(), 0, "version one");
        let old = state(&server);
        text.insert(&mut server.transact_mut(), 7, " and two");
        let peer = Doc::with_client_id(2);
        apply(&peer, &state(&server));
        // The peer edits while the server restores.
        let peer_text = peer.get_or_insert_text("t");
        let peer_edit = {
            let mut txn = peer.transact_mut();
            peer_text.insert(&mut txn, 0, ">> ");
            txn.encode_update_v1()
        };
        let restore = restore_update(&state(&server), &old, 3, None)
            .unwrap()
            .unwrap();
        apply(&server, &restore);
        apply(&server, &peer_edit);
        apply(&peer, &restore);
        let a = text.get_string(&server.transact());
        let b = peer_text.get_string(&peer.transact());
        assert_eq!(a, b);
        assert_eq!(a, ">> version one");
    }

    #[test]
    fn a_state_that_does_not_load_is_refused() {
        let doc = Doc::with_client_id(1);
        assert!(matches!(
            restore_update(&state(&doc), &[1, 2, 3], 3, None),
            Err(RestoreError::BadState("target"))
        ));
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(u32, String),
        Delete(u32, u32),
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        let chunk = "[a-c😀👍🏽中文é\u{301}\n ]{0,6}";
        prop::collection::vec(
            prop_oneof![
                (any::<u32>(), chunk).prop_map(|(p, s)| Edit::Insert(p, s)),
                (any::<u32>(), 0u32..8).prop_map(|(p, n)| Edit::Delete(p, n)),
            ],
            0..25,
        )
    }

    /// Applies edits at char boundaries, whatever the doc's offset kind.
    fn run(doc: &Doc, text: &TextRef, edits: &[Edit]) {
        for edit in edits {
            let mut txn = doc.transact_mut();
            let current = text.get_string(&txn);
            let chars: Vec<char> = current.chars().collect();
            let offset = |i: usize| -> u32 { chars[..i].iter().map(|c| c.len_utf8() as u32).sum() };
            match edit {
                Edit::Insert(p, s) => {
                    let i = *p as usize % (chars.len() + 1);
                    text.insert(&mut txn, offset(i), s);
                }
                Edit::Delete(p, n) => {
                    if chars.is_empty() {
                        continue;
                    }
                    let i = *p as usize % chars.len();
                    let j = (i + *n as usize).min(chars.len());
                    text.remove_range(&mut txn, offset(i), offset(j) - offset(i));
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum MapEdit {
        Set(u8, i64),
        SetNested(u8, Vec<i64>),
        Remove(u8),
        Push(i64),
        ArrayDelete(u32),
    }

    fn map_edits() -> impl Strategy<Value = Vec<MapEdit>> {
        prop::collection::vec(
            prop_oneof![
                (0u8..5, any::<i64>()).prop_map(|(k, v)| MapEdit::Set(k, v)),
                (0u8..5, prop::collection::vec(any::<i64>(), 0..3))
                    .prop_map(|(k, v)| MapEdit::SetNested(k, v)),
                (0u8..5).prop_map(MapEdit::Remove),
                any::<i64>().prop_map(MapEdit::Push),
                any::<u32>().prop_map(MapEdit::ArrayDelete),
            ],
            0..20,
        )
    }

    fn run_map(doc: &Doc, edits: &[MapEdit]) {
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let mut txn = doc.transact_mut();
        for edit in edits {
            match edit {
                MapEdit::Set(k, v) => {
                    map.insert(&mut txn, format!("k{k}"), *v);
                }
                MapEdit::SetNested(k, v) => {
                    map.insert(&mut txn, format!("k{k}"), ArrayPrelim::from(v.clone()));
                }
                MapEdit::Remove(k) => {
                    map.remove(&mut txn, &format!("k{k}"));
                }
                MapEdit::Push(v) => {
                    array.push_back(&mut txn, *v);
                }
                MapEdit::ArrayDelete(i) => {
                    let len = array.len(&txn);
                    if len > 0 {
                        array.remove(&mut txn, i % len);
                    }
                }
            }
        }
    }

    #[test]
    fn a_map_root_with_many_keys_restores_in_linear_time() {
        // 20 000 keys now, 20 000 other keys then: comparing every key with every old one
        // would be 4·10^8 string comparisons; a set of the old keys makes it 40 000 lookups.
        let n = 20_000;
        let doc = Doc::with_client_id(1);
        let map = doc.get_or_insert_map("m");
        {
            let mut txn = doc.transact_mut();
            for i in 0..n {
                map.insert(&mut txn, format!("old key {i}"), i);
            }
        }
        let old = state(&doc);
        {
            let mut txn = doc.transact_mut();
            map.clear(&mut txn);
            for i in 0..n {
                map.insert(&mut txn, format!("new key {i}"), i);
            }
        }
        let started = Instant::now();
        let update = restore_update(&state(&doc), &old, 9_999, None)
            .unwrap()
            .expect("changed");
        let took = started.elapsed();
        apply(&doc, &update);
        let txn = doc.transact();
        assert_eq!(map.len(&txn), n);
        assert!(map.get(&txn, "old key 7").is_some() && map.get(&txn, "new key 7").is_none());
        assert!(took.as_secs() < 5, "restoring {n} map keys took {took:?}");
    }

    proptest! {
        #[test]
        fn random_map_and_array_edits_restore_exactly(before in map_edits(), after in map_edits()) {
            let doc = Doc::with_client_id(1);
            run_map(&doc, &before);
            let old = state(&doc);
            run_map(&doc, &after);
            if let Some(update) = restore_update(&state(&doc), &old, 77, None).unwrap() {
                apply(&doc, &update);
            }
            prop_assert_eq!(json(&state(&doc)), json(&old));
        }

        #[test]
        fn random_text_edits_restore_exactly(before in edits(), after in edits()) {
            // Byte offsets here: the server's docs index by bytes, the scratch doc by UTF-16.
            let doc = Doc::with_options(Options { client_id: ClientID::new(1), offset_kind: OffsetKind::Bytes, ..Options::default() });
            let text = doc.get_or_insert_text("t");
            run(&doc, &text, &before);
            let old = state(&doc);
            let old_string = text.get_string(&doc.transact());
            run(&doc, &text, &after);
            if let Some(update) = restore_update(&state(&doc), &old, 77, None).unwrap() {
                apply(&doc, &update);
            }
            prop_assert_eq!(text.get_string(&doc.transact()), old_string);
        }
    }
}
