//! `StoreError`: one variant per way the server reacts to a storage failure.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, a full disk, a lock held by another process). Retrying may help.
    #[error("database error: {0}")]
    Database(#[source] Box<redb::Error>),
    /// The stored data of one doc breaks the format's rules. Quarantine the doc; do not retry.
    #[error("stored doc {doc:?} is corrupt: {detail}")]
    Corrupt {
        /// The doc whose data is corrupt.
        doc: String,
        /// What rule was broken.
        detail: String,
    },
    /// The stored record of one account breaks the format's rules. Refuse that account's
    /// sign-in; the others are unaffected.
    #[error("stored account {sub:?} is corrupt: {detail}")]
    CorruptUser {
        /// The account whose record is corrupt.
        sub: String,
        /// What rule was broken.
        detail: String,
    },
    /// One stored history record (a version, an author) breaks the format's rules. It affects
    /// that record only.
    #[error("stored {what} is corrupt: {detail}")]
    CorruptRecord {
        /// Which record.
        what: String,
        /// What rule was broken.
        detail: String,
    },
    /// A stored activity entry, webhook or delivery breaks the format's rules. It affects that
    /// record only.
    #[error("stored {table} record {key} is corrupt: {detail}")]
    CorruptEntry {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// What rule was broken.
        detail: String,
    },
    /// The database is closed: reopening it failed.
    #[error("the database is closed: reopening it failed")]
    Closed,
    /// Another `Database` (in this process or another, e.g. a running server) has the file
    /// open. A command-line tool falls back to the server's HTTP API.
    #[error("the database file is already open, by a running server or another process")]
    AlreadyOpen,
    /// redb panicked inside the operation, most likely on a damaged page of the file. Only
    /// this operation failed; the next one reopens the file.
    #[error("the store panicked during {operation} (is the file damaged?): {detail}")]
    Panicked {
        /// The `Store` method.
        operation: &'static str,
        /// The panic's message.
        detail: String,
    },
    /// The file was written by a different format version. Migrate or use a matching build.
    #[error("unsupported store format version {found}, this build reads version {expected}")]
    UnsupportedFormat {
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        expected: u64,
    },
}

impl StoreError {
    /// Whether the error says the stored data is damaged (a failed checksum, a record that
    /// breaks the format, redb finding a corrupt page or panicking on one), so that retrying
    /// cannot help, as opposed to an I/O failure or a lock that may pass.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Corrupt { .. }
            | StoreError::CorruptUser { .. }
            | StoreError::CorruptRecord { .. }
            | StoreError::CorruptEntry { .. }
            | StoreError::Panicked { .. } => true,
            StoreError::Database(error) => matches!(**error, redb::Error::Corrupted(_)),
            StoreError::Closed | StoreError::AlreadyOpen | StoreError::UnsupportedFormat { .. } => {
                false
            }
        }
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        StoreError::Database(Box::new(error.into()))
    }
}
