//! Shared fixtures for Tandem's benchmarks.
//!
//! Every bench group measures a baseline in the same run (a plain copy, a bare commit) so that
//! results can be read as ratios, which hold on noisy machines where absolute figures do not.

use yrs::{Doc, Text, Transact};

/// `n` small text updates from one client, each appending `chunk` (typing-sized edits).
pub fn typing_updates(n: usize, chunk: &str) -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    (0..n)
        .map(|_| {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, chunk);
            txn.encode_update_v1()
        })
        .collect()
}

pub mod loadgen;
