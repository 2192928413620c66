//! A document's root text read and written as a whole plain-text file (WebDAV today).
//!
//! Someone reads a document's text (the *base*), edits it in any editor and saves the whole
//! file back, while others keep typing into the live document. [`write_update`] turns that save
//! into the smallest Yjs change that keeps everyone's work:
//!
//! 1. the character diff from the base to the saved text says what the saver changed, in base
//!    positions;
//! 2. the diff from the base to the document's current text says what happened meanwhile: each
//!    base character either survived (at a known current position) or was deleted;
//! 3. the saver's deletions remove only the base characters that still exist, and the saver's
//!    insertions go right after the last surviving base character before them. Text others
//!    inserted inside a range the saver replaced is kept, as when two people edit live.
//!
//! The change is made on a scratch copy of the current state with a fresh client id and
//! encoded as one v1 update, which the document's owner applies like any other; concurrent
//! updates that arrive after the copy was taken merge as CRDT updates always do.
//!
//! Positions are Unicode scalar values while diffing and UTF-16 code units when applied (the
//! scratch doc indexes like Yjs in a browser), so no edit ever splits a character.
//!
//! Only a root that holds plain text (or nothing) can be written this way: a root with
//! formatting, embeds or another shared type is refused rather than flattened.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ClientID, Doc, GetString, Map, OffsetKind, Options, Out, ReadTxn, Text, TextRef, Transact,
    Update,
};

/// Why a document's text could not be read or written as a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextFileError {
    /// The stored state is not a loadable v1 update.
    #[error("the document's state does not load")]
    BadState,
    /// The root holds something other than plain text.
    #[error("the document's `{0}` holds formatted text or other shared types, not plain text")]
    NotPlainText(String),
    /// yrs failed while reading or changing the copy.
    #[error("computing the change failed inside yrs")]
    Failed,
}

/// The result of [`write_update`].
#[derive(Debug)]
pub struct TextWrite {
    /// The v1 update to apply; `None` when the save changes nothing.
    pub update: Option<Vec<u8>>,
    /// The root's text once the update is applied to the state it was computed on.
    pub text: String,
}

/// The plain text of root `root` in `state` (a v1 update of the whole doc); empty when the root
/// does not exist.
pub fn read_text(state: &[u8], root: &str) -> Result<String, TextFileError> {
    let doc = scratch(None);
    load(&doc, state)?;
    let txn = doc.transact();
    plain(&txn, root)
}

/// The update that turns root `root` of `state` from `base` (the text the saver read) into
/// `saved`, keeping what others changed since `base` (see the module documentation). `client_id`
/// must be fresh. `deadline` bounds the diffs. If the diff from `base` to the current text runs
/// past it, what survived of the base is unknown, so the save is diffed against the current
/// text instead (as if `base` were the current text: the saved text wins where they differ);
/// past it in the second diff, the rest is replaced whole (the same text, a larger update).
pub fn write_update(
    state: &[u8],
    root: &str,
    base: &str,
    saved: &str,
    client_id: u64,
    deadline: Option<Instant>,
) -> Result<TextWrite, TextFileError> {
    let doc = scratch(Some(client_id));
    load(&doc, state)?;
    let current = {
        let txn = doc.transact();
        plain(&txn, root)?
    };
    let base: Vec<char> = base.chars().collect();
    let saved: Vec<char> = saved.chars().collect();
    let current_chars: Vec<char> = current.chars().collect();
    let edits = rebase(&base, &saved, &current_chars, deadline);
    if edits.is_empty() {
        return Ok(TextWrite {
            update: None,
            text: current,
        });
    }
    catch_unwind(AssertUnwindSafe(|| {
        let text = doc.get_or_insert_text(root);
        let mut txn = doc.transact_mut();
        apply(&mut txn, &text, &current_chars, &edits);
        let after = text.get_string(&txn);
        let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
        TextWrite {
            update: changed.then(|| txn.encode_update_v1()),
            text: after,
        }
    }))
    .map_err(|_| TextFileError::Failed)
}

fn scratch(client_id: Option<u64>) -> Doc {
    let mut options = Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    };
    if let Some(id) = client_id {
        options.client_id = ClientID::new(id);
    }
    Doc::with_options(options)
}

fn load(doc: &Doc, state: &[u8]) -> Result<(), TextFileError> {
    if state.is_empty() {
        return Ok(());
    }
    let update = catch_unwind(|| Update::decode_v1(state))
        .map_err(|_| TextFileError::BadState)?
        .map_err(|_| TextFileError::BadState)?;
    catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)))
        .map_err(|_| TextFileError::BadState)?
        .map_err(|_| TextFileError::BadState)
}

/// The root's text if it is plain: no formatting, no embeds, no map entries.
fn plain<T: ReadTxn>(txn: &T, root: &str) -> Result<String, TextFileError> {
    let Some(value) = txn
        .root_refs()
        .find(|(name, _)| *name == root)
        .map(|(_, v)| v)
    else {
        return Ok(String::new());
    };
    let refused = || TextFileError::NotPlainText(root.to_owned());
    let text: TextRef = match value {
        Out::YText(text) => text,
        Out::UndefinedRef(branch) => {
            if yrs::MapRef::from(branch).len(txn) > 0 {
                return Err(refused());
            }
            TextRef::from(branch)
        }
        _ => return Err(refused()),
    };
    let mut out = String::new();
    for chunk in text.diff(txn, yrs::types::text::YChange::identity) {
        match (chunk.insert, chunk.attributes) {
            (Out::Any(Any::String(s)), None) => out.push_str(&s),
            _ => return Err(refused()),
        }
    }
    Ok(out)
}

/// The saver's edits in current positions: the current characters to delete, and the text to
/// insert before each current position.
#[derive(Debug, Default, PartialEq, Eq)]
struct Edits {
    delete: Vec<bool>,
    insert: BTreeMap<usize, String>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.insert.is_empty() && !self.delete.iter().any(|d| *d)
    }
}

fn rebase(base: &[char], saved: &[char], current: &[char], deadline: Option<Instant>) -> Edits {
    // Where each base character is now (None: deleted by someone else meanwhile).
    let mut now: Vec<Option<usize>> = vec![None; base.len()];
    if base == current {
        for (i, slot) in now.iter_mut().enumerate() {
            *slot = Some(i);
        }
    } else {
        for op in capture_diff_slices_deadline(Algorithm::Myers, base, current, deadline) {
            if let DiffOp::Equal {
                old_index,
                new_index,
                len,
            } = op
            {
                for k in 0..len {
                    now[old_index + k] = Some(new_index + k);
                }
            }
        }
        // A diff cut short by the deadline leaves base characters unmatched that did survive:
        // taken as deleted by others, the saver's deletions of them would be skipped. Without
        // a trustworthy map, the save is diffed against the current text.
        if deadline.is_some_and(|deadline| Instant::now() > deadline) {
            return rebase(current, saved, current, deadline);
        }
    }
    // The current position an insertion at base boundary `k` goes to: right after the last
    // surviving base character before it.
    let mut after_last = Vec::with_capacity(base.len() + 1);
    let mut point = 0;
    after_last.push(point);
    for slot in &now {
        if let Some(at) = slot {
            point = at + 1;
        }
        after_last.push(point);
    }
    let mut edits = Edits {
        delete: vec![false; current.len()],
        insert: BTreeMap::new(),
    };
    for op in capture_diff_slices_deadline(Algorithm::Myers, base, saved, deadline) {
        let (deleted, inserted, at) = match op {
            DiffOp::Equal { .. } => continue,
            DiffOp::Delete {
                old_index, old_len, ..
            } => (old_index..old_index + old_len, 0..0, old_index),
            DiffOp::Insert {
                old_index,
                new_index,
                new_len,
            } => (0..0, new_index..new_index + new_len, old_index),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => (
                old_index..old_index + old_len,
                new_index..new_index + new_len,
                old_index,
            ),
        };
        for i in deleted {
            if let Some(at) = now[i] {
                edits.delete[at] = true;
            }
        }
        if !inserted.is_empty() {
            let text: String = saved[inserted].iter().collect();
            edits
                .insert
                .entry(after_last[at])
                .or_default()
                .push_str(&text);
        }
    }
    edits
}

/// Applies `edits` (in positions of `current`) to `text`, from the end so earlier positions
/// stay valid.
fn apply(txn: &mut yrs::TransactionMut, text: &TextRef, current: &[char], edits: &Edits) {
    let mut units = Vec::with_capacity(current.len() + 1);
    let mut sum = 0u32;
    units.push(sum);
    for c in current {
        sum += c.len_utf16() as u32;
        units.push(sum);
    }
    let mut p = current.len();
    loop {
        if let Some(inserted) = edits.insert.get(&p) {
            text.insert(txn, units[p], inserted);
        }
        if p == 0 {
            break;
        }
        if !edits.delete[p - 1] {
            p -= 1;
            continue;
        }
        // A run of deleted characters ending at `p`, cut where something is inserted inside
        // it (that insertion goes in on the next turn, at the run's start).
        let end = p;
        p -= 1;
        while p > 0 && edits.delete[p - 1] && !edits.insert.contains_key(&p) {
            p -= 1;
        }
        text.remove_range(txn, units[p], units[end] - units[p]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::StateVector;

    const ROOT: &str = "content";

    fn doc_with(text: &str, client: u64) -> Doc {
        let doc = scratch(Some(client));
        let root = doc.get_or_insert_text(ROOT);
        root.insert(&mut doc.transact_mut(), 0, text);
        doc
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn text(doc: &Doc) -> String {
        let root = doc.get_or_insert_text(ROOT);
        root.get_string(&doc.transact())
    }

    fn apply_update(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).expect("decodes"))
            .expect("applies");
    }

    #[test]
    fn a_save_on_an_unchanged_doc_is_the_saved_text() {
        let doc = doc_with("hello world\nsecond line\n", 1);
        let write = write_update(
            &state(&doc),
            ROOT,
            "hello world\nsecond line\n",
            "hello there world\nsecond line\nthird\n",
            99,
            None,
        )
        .expect("writes");
        assert_eq!(write.text, "hello there world\nsecond line\nthird\n");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "hello there world\nsecond line\nthird\n");
    }

    /// Bug: when the base-to-current diff hit the deadline, the base characters it left
    /// unmatched counted as deleted by others, and the saver's deletion of them was dropped.
    #[test]
    fn a_save_whose_first_diff_runs_out_of_time_keeps_the_savers_deletions() {
        let doc = doc_with("abc-def-ghi", 1);
        let base = text(&doc);
        // Changes at both ends, so no common prefix or suffix matches the base for free.
        let root = doc.get_or_insert_text(ROOT);
        {
            let mut txn = doc.transact_mut();
            root.insert(&mut txn, 0, "X");
            let len = root.len(&txn);
            root.insert(&mut txn, len, "Y");
        }
        let spent = Some(Instant::now());
        let write = write_update(&state(&doc), ROOT, &base, "abc-ghi", 99, spent).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert!(!text(&doc).contains("def"), "{}", text(&doc));
        assert_eq!(write.text, text(&doc));
    }

    #[test]
    fn concurrent_edits_since_the_base_survive_the_save() {
        let doc = doc_with("alpha\nbeta\ngamma\n", 1);
        let base = text(&doc);
        // Someone types at the start and the end while the file is open elsewhere.
        let root = doc.get_or_insert_text(ROOT);
        {
            let mut txn = doc.transact_mut();
            root.insert(&mut txn, 0, "# title\n");
            let len = root.len(&txn);
            root.insert(&mut txn, len, "delta\n");
        }
        // The saver changed the middle line only.
        let write = write_update(&state(&doc), ROOT, &base, "alpha\nBETA!\ngamma\n", 99, None)
            .expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "# title\nalpha\nBETA!\ngamma\ndelta\n");
        assert_eq!(write.text, text(&doc));
    }

    #[test]
    fn text_inserted_inside_a_replaced_range_is_kept() {
        let doc = doc_with("one 222 three", 1);
        let base = text(&doc);
        let root = doc.get_or_insert_text(ROOT);
        root.insert(&mut doc.transact_mut(), 5, "[x]");
        assert_eq!(text(&doc), "one 2[x]22 three");
        let write = write_update(&state(&doc), ROOT, &base, "one three", 99, None).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        // The saver's deletion is applied around the insertion, which stays (where exactly
        // depends on which of the equally short diffs Myers picks).
        let merged = text(&doc);
        assert!(merged.contains("[x]"), "{merged}");
        assert_eq!(merged.replace("[x]", ""), "one three");
    }

    #[test]
    fn text_others_deleted_stays_deleted() {
        let doc = doc_with("keep drop keep", 1);
        let base = text(&doc);
        let root = doc.get_or_insert_text(ROOT);
        root.remove_range(&mut doc.transact_mut(), 5, 5);
        assert_eq!(text(&doc), "keep keep");
        // The saver's file still has the dropped word; it edits elsewhere.
        let write =
            write_update(&state(&doc), ROOT, &base, "Keep drop keep", 99, None).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "Keep keep");
    }

    #[test]
    fn characters_outside_the_basic_plane_are_never_split() {
        let doc = doc_with("a😀b😀c", 1);
        let base = text(&doc);
        let write = write_update(&state(&doc), ROOT, &base, "a😀B😀😀c", 99, None).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "a😀B😀😀c");
    }

    #[test]
    fn an_insertion_inside_a_deleted_run_lands_in_place() {
        let doc = doc_with("abcdefgh", 1);
        let write = write_update(&state(&doc), ROOT, "abcdefgh", "aXh", 99, None).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "aXh");
        let write = write_update(&state(&doc), ROOT, "aXh", "", 98, None).expect("writes");
        apply_update(&doc, &write.update.expect("a change"));
        assert_eq!(text(&doc), "");
    }

    #[test]
    fn an_unchanged_save_makes_no_update_and_an_empty_doc_can_be_written() {
        let doc = doc_with("same", 1);
        let write = write_update(&state(&doc), ROOT, "same", "same", 99, None).expect("writes");
        assert!(write.update.is_none());
        let write = write_update(&[], ROOT, "", "new file\n", 99, None).expect("writes");
        let fresh = scratch(None);
        apply_update(&fresh, &write.update.expect("a change"));
        assert_eq!(text(&fresh), "new file\n");
        assert_eq!(read_text(&[], ROOT), Ok(String::new()));
    }

    #[test]
    fn formatted_text_and_other_types_are_refused() {
        let doc = doc_with("plain", 1);
        let root = doc.get_or_insert_text(ROOT);
        root.format(
            &mut doc.transact_mut(),
            0,
            2,
            [("bold".into(), Any::Bool(true))].into_iter().collect(),
        );
        let refused = write_update(&state(&doc), ROOT, "plain", "x", 99, None);
        assert!(matches!(refused, Err(TextFileError::NotPlainText(_))));
        assert!(matches!(
            read_text(&state(&doc), ROOT),
            Err(TextFileError::NotPlainText(_))
        ));
        let other = scratch(Some(3));
        let map = other.get_or_insert_map(ROOT);
        map.insert(&mut other.transact_mut(), "k", "v");
        assert!(read_text(&state(&other), ROOT).is_err());
        assert_eq!(
            read_text(b"\xff\x01garbage", ROOT),
            Err(TextFileError::BadState)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Text with multi-byte and astral characters, so offsets are tested in every unit.
        fn any_text() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![Just('a'), Just('b'), Just('\n'), Just('é'), Just('😀')],
                0..24,
            )
            .prop_map(|chars| chars.into_iter().collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// With nothing typed since the base, the doc reads exactly as the saved file.
            #[test]
            fn an_unchanged_doc_reads_as_the_save(base in any_text(), saved in any_text()) {
                let doc = doc_with(&base, 1);
                let write = write_update(&state(&doc), ROOT, &base, &saved, 99, None).expect("writes");
                if let Some(update) = write.update {
                    apply_update(&doc, &update);
                }
                prop_assert_eq!(text(&doc), saved.clone());
                prop_assert_eq!(write.text, saved);
            }

            /// Text others inserted since the base survives any save, in one piece.
            #[test]
            fn concurrent_insertions_survive(base in any_text(), saved in any_text(), at in 0usize..25) {
                let doc = doc_with(&base, 1);
                let marker = "[XYZ]";
                let root = doc.get_or_insert_text(ROOT);
                {
                    let mut txn = doc.transact_mut();
                    let chars = base.chars().count();
                    let units: u32 = base.chars().take(at.min(chars)).map(|c| c.len_utf16() as u32).sum();
                    root.insert(&mut txn, units, marker);
                }
                let write = write_update(&state(&doc), ROOT, &base, &saved, 99, None).expect("writes");
                if let Some(update) = write.update {
                    apply_update(&doc, &update);
                }
                let merged = text(&doc);
                prop_assert!(merged.contains(marker), "{merged:?}");
                prop_assert_eq!(merged.replacen(marker, "", 1), saved);
            }
        }
    }
}
