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
    /// The store is read-only: a write failed because the disk is full or the file cannot be
    /// written. Nothing of the refused write is stored; reads still work, and writes resume by
    /// themselves once space returns (see `space.rs`). Retry later.
    #[error("the store is read-only: {reason}")]
    ReadOnly {
        /// Why writes are refused.
        reason: ReadOnlyReason,
    },
    /// redb panicked inside the operation, most likely on a damaged page of the file. Only
    /// this operation failed; the next one reopens the file.
    #[error("the store panicked during {operation} (is the file damaged?): {detail}")]
    Panicked {
        /// The `Store` method.
        operation: &'static str,
        /// The panic's message.
        detail: String,
    },
    /// A shared database (cluster mode's Postgres) could not be reached or failed the
    /// operation. Retry later; nothing of the failed operation was stored.
    #[error("{backend} unavailable: {detail}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What went wrong (never a secret).
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
    /// The file holds a table this build does not know, so a backup of it would be incomplete.
    #[error("the database holds table {table:?}, which this build does not know")]
    UnknownTable {
        /// The table's name.
        table: String,
    },
}

/// Why the store refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyReason {
    /// The disk (or the user's quota) is full.
    DiskFull,
    /// Another I/O error (the file could not be written or synced).
    Io,
}

impl ReadOnlyReason {
    /// A short stable name: `"disk full"` or `"i/o error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadOnlyReason::DiskFull => "disk full",
            ReadOnlyReason::Io => "i/o error",
        }
    }
}

impl std::fmt::Display for ReadOnlyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreError {
    /// Whether this is a storage fault that makes the store read-only (a full disk or another
    /// I/O error, including redb's "a previous I/O error occurred"), and which. `None` for
    /// every other error: corruption, a refused operation, a lock held elsewhere.
    pub fn read_only_reason(&self) -> Option<ReadOnlyReason> {
        match self {
            StoreError::ReadOnly { reason } => Some(*reason),
            StoreError::Database(error) => match error.as_ref() {
                redb::Error::Io(error) => Some(io_reason(error)),
                redb::Error::PreviousIo => Some(ReadOnlyReason::Io),
                _ => None,
            },
            _ => None,
        }
    }

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
            StoreError::Closed
            | StoreError::AlreadyOpen
            | StoreError::ReadOnly { .. }
            | StoreError::Unavailable { .. }
            | StoreError::UnsupportedFormat { .. }
            | StoreError::UnknownTable { .. } => false,
        }
    }
}

/// Classifies an I/O error: `ENOSPC` and `EDQUOT` are a full disk, anything else is `Io`.
pub fn io_reason(error: &std::io::Error) -> ReadOnlyReason {
    /// `EDQUOT` on Linux: the user's disk quota is used up, which for us is a full disk.
    const EDQUOT: i32 = 122;
    if error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
        || error.raw_os_error() == Some(EDQUOT)
    {
        ReadOnlyReason::DiskFull
    } else {
        ReadOnlyReason::Io
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        StoreError::Database(Box::new(error.into()))
    }
}
