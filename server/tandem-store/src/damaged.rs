//! Damaged rows met by a list or a scan: left out, and logged once.
//!
//! A list or a scan (`list_webhooks`, `due_deliveries`, `prune_activity`, `list_users`, ...)
//! that meets a row failing its checksum or its decoding leaves that row out instead of failing
//! as a whole: one damaged record must not disable a feature or stop the server (invariant 18).
//! The row stays refused wherever it is read by its key, and stays in the file: a damaged store
//! is never cleaned. Each such row is logged at error level once per process, naming its table
//! and key, so that a worker polling the outbox does not repeat the line on every pass.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use crate::Store;

/// Most damaged rows remembered as logged; past it, each meeting of another one is logged again.
const MAX_REMEMBERED: usize = 4096;

/// The damaged rows already logged, by table and key.
#[derive(Default)]
pub(crate) struct DamagedRows(Mutex<HashSet<(&'static str, String)>>);

impl Store {
    /// Leaves the damaged row `key` of `table` out of a list or scan, logging it the first time.
    pub(crate) fn skip_damaged(
        &self,
        table: &'static str,
        key: &str,
        error: &dyn std::fmt::Display,
    ) {
        let first = {
            let mut logged = self
                .damaged
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let row = (table, key.to_owned());
            if logged.contains(&row) {
                false
            } else {
                if logged.len() < MAX_REMEMBERED {
                    logged.insert(row);
                }
                true
            }
        };
        if first {
            tracing::error!(
                table,
                key,
                %error,
                "damaged record left out of a list; it stays refused"
            );
        }
    }
}
