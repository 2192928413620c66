//! Panics inside redb contained at the `Store` API boundary.
//!
//! redb trusts its own pages and can panic on a damaged one (debug builds assert on a page
//! that "cannot" be invalid, where release builds return `Corrupted`). Like a yrs panic in the
//! doc actor, such a panic must fail only the operation that met it: the open functions run
//! through [`contain`] and every other public `Store` method that reaches the database or the
//! disk through [`Store::contain`], which catch the panic and return [`StoreError::Panicked`]
//! (methods without an error to return, `set_reserve` and `report_io_error`, log it). Reopening
//! the file (`release_cache` on the writer thread, the read-only transition) is contained as
//! well, so a panic there cannot kill the writer thread. redb's in-memory state after a panic is
//! not trusted: the handle is dropped and the next operation reopens the file, which runs redb's
//! own checks again.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::Store;
use crate::error::StoreError;

/// Runs `work`; a panic inside it becomes `StoreError::Panicked { operation }`.
pub(crate) fn contain<T, E: From<StoreError>>(
    operation: &'static str,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    try_contain(operation, work).unwrap_or_else(|panicked| Err(panicked.into()))
}

/// Runs `work`, telling a caught panic apart from the errors `work` returns.
fn try_contain<T>(operation: &'static str, work: impl FnOnce() -> T) -> Result<T, StoreError> {
    // Unwind safety: `work` borrows the store, whose database handle is dropped after a panic
    // (see `Store::contain`), and its arguments, which the caller gets back only as an error.
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| StoreError::Panicked {
        operation,
        detail: panic_message(payload.as_ref()),
    })
}

/// The text a panic was raised with, if it was a string.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic without a message".to_owned()
    }
}

impl Store {
    /// Runs one public operation with its panics contained; after a panic the database handle
    /// is dropped, so the next operation reopens the file.
    pub(crate) fn contain<T, E: From<StoreError>>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        match try_contain(operation, work) {
            Ok(res) => res,
            Err(panicked) => {
                self.drop_handle_after_panic();
                Err(panicked.into())
            }
        }
    }
}
