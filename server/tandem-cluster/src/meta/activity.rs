//! See `meta/mod.rs`.
