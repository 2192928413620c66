//! See `meta/mod.rs`.

/// Migration 2: accounts, the activity feed, webhooks.
pub(crate) const MIGRATION: &str = "SELECT 1";
