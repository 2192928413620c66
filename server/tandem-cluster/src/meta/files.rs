//! See `meta/mod.rs`.

/// Migration 3: file metadata, uploads, versions of docs.
pub(crate) const MIGRATION: &str = "SELECT 1";
