//! Files: the metadata of uploaded files, their content-addressed blobs, uploads in progress
//! and each workspace's usage, in four tables (`files`, `blobs`, `uploads`, `file_usage`).
//!
//! The bytes themselves are not in redb: the server keeps each blob as a file named by its
//! SHA-256 (`tandem-server/src/files/blobs.rs`). The store keeps the refcount of every blob, so
//! the same bytes under many paths or versions are stored once, and a blob whose count falls to
//! zero is reported back for the server to delete. Records are versioned binary encodings,
//! described byte for byte in `protocol-spec/storage.md`.
//!
//! Invariants:
//! - One transaction changes a file's versions, the refcounts of their blobs and the usage of
//!   the workspace together, so `file_usage[w]` is always the sum of the charges
//!   ([`FileVersion::charge_for`]) of every version of every file in `w`, and a blob's refcount
//!   the number of versions naming it.
//! - A file keeps at most the number of versions its caller allows: storing one more drops the
//!   oldest in the same transaction.
//! - A path is never both a file and a stored doc: `put_file_version` and `move_file` refuse a
//!   path in the `docs` table in the same transaction that would create it.

use redb::{ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};

use crate::Store;
use crate::checksum;
use crate::error::StoreError;
use crate::record::{Reader, put_opt_str, put_str};
use crate::schema::{BLOBS, DOCS, FILE_USAGE, FILES, UPLOADS};
use crate::space::{WriteError, WriteKind};

/// The version byte at the start of every encoded [`FileEntry`].
const FILE_ENTRY_VERSION: u8 = 1;
/// The version byte at the start of every encoded [`UploadRecord`].
const UPLOAD_RECORD_VERSION: u8 = 1;

/// Who uploaded something: the token's `sub` (none with authentication off) and display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploader {
    /// The verified account id, if any.
    pub sub: Option<String>,
    /// The name to show.
    pub name: String,
}

/// One stored version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    /// 1 for the first upload of a path, then one more per upload.
    pub version: u64,
    /// The blob: lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
    /// The media type served with it.
    pub content_type: String,
    /// The file name the uploader gave (the last path segment unless told otherwise).
    pub name: String,
    /// Who uploaded it.
    pub uploader: Uploader,
    /// When it was stored, milliseconds since the Unix epoch.
    pub uploaded_ms: u64,
}

impl FileVersion {
    /// The least a version counts against its workspace's quota, whatever its size, so that
    /// empty or tiny uploads are not free.
    pub const MIN_CHARGE: u64 = 4096;

    /// Bytes a version of `size` bytes counts against its workspace's quota.
    pub fn charge_for(size: u64) -> u64 {
        size.max(Self::MIN_CHARGE)
    }
}

/// A file and every version of it, oldest first; the last is the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's path (also the key).
    pub path: String,
    /// Never empty.
    pub versions: Vec<FileVersion>,
}

impl FileEntry {
    /// The newest version.
    pub fn current(&self) -> &FileVersion {
        self.versions
            .last()
            .expect("an entry is never stored without a version")
    }

    /// Bytes counted against the workspace quota: the charge of every version
    /// ([`FileVersion::charge_for`]).
    pub fn total_size(&self) -> u64 {
        self.versions
            .iter()
            .map(|version| FileVersion::charge_for(version.size))
            .sum()
    }
}

/// An upload in progress (tus): what was declared when it was created. The bytes received so
/// far are the upload's file on disk; its length is the offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The random upload id (the key).
    pub id: String,
    /// Where the file goes when the upload completes.
    pub path: String,
    /// The declared length in bytes.
    pub length: u64,
    /// The declared SHA-256 (lower-case hex), checked at completion.
    pub sha256: Option<String>,
    /// The media type to store.
    pub content_type: String,
    /// The original file name.
    pub name: String,
    /// Who created it.
    pub uploader: Uploader,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// After this the upload and its bytes are deleted, milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// A blob as the store counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRow {
    /// Length in bytes.
    pub size: u64,
    /// Versions (of any file) that name this blob.
    pub refcount: u64,
}

/// Why a file operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No file at that path (or no such version).
    #[error("no such file")]
    NotFound,
    /// The target path is already a file or a document.
    #[error("path {path:?} is already taken by a file or document")]
    PathTaken {
        /// The path.
        path: String,
    },
    /// The workspace would go over its quota.
    #[error(
        "workspace {workspace:?} quota exceeded: {used} bytes used, {size} more requested, limit {limit}"
    )]
    QuotaExceeded {
        /// The workspace (first path segment, `""` for the root).
        workspace: String,
        /// Bytes used now.
        used: u64,
        /// Bytes the operation would add.
        size: u64,
        /// The quota.
        limit: u64,
    },
    /// A stored record does not decode.
    #[error("stored file record {key:?} is corrupt: {detail}")]
    Corrupt {
        /// The path or upload id.
        key: String,
        /// What rule was broken.
        detail: String,
    },
}

impl<E: Into<redb::Error>> From<E> for FileError {
    fn from(error: E) -> Self {
        FileError::Store(StoreError::from(error))
    }
}

/// What [`Store::delete_file`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The entry as it was.
    pub entry: FileEntry,
    /// Blobs no version names any more; the caller deletes their files.
    pub unreferenced: Vec<String>,
}

/// The workspace of a path: its first segment, or `""` for a path without `/`.
pub fn workspace_of(path: &str) -> &str {
    path.split_once('/').map_or("", |(first, _)| first)
}

/// A file write's storage faults make the store read-only like any other write's (`space.rs`).
impl WriteError for FileError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            FileError::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl Store {
    /// Stores a new version of `path` (its first if the path is new) naming blob `version.sha256`
    /// of `version.size` bytes, and removes upload `upload_id` if given, in one durable
    /// transaction. `version.version` is ignored and assigned. `quota` (bytes per workspace,
    /// `None` for unlimited) is checked against the usage inside the transaction. Beyond
    /// `max_versions` (`None` for unlimited) the oldest versions are dropped in the same
    /// transaction; the blobs no version names any more are returned for the caller to delete.
    pub fn put_file_version(
        &self,
        path: &str,
        version: FileVersion,
        quota: Option<u64>,
        upload_id: Option<&str>,
        max_versions: Option<usize>,
    ) -> Result<(FileEntry, Vec<String>), FileError> {
        self.contain("put_file_version", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let stored = {
                    if doc_exists(&txn, path)? {
                        return Err(FileError::PathTaken { path: path.into() });
                    }
                    let mut files = txn.open_table(FILES)?;
                    let mut entry = match files.get(path)? {
                        Some(bytes) => read_entry(path, bytes.value())?,
                        None => FileEntry {
                            path: path.to_owned(),
                            versions: Vec::new(),
                        },
                    };
                    let workspace = workspace_of(path);
                    add_blob_ref(&txn, &version.sha256, version.size)?;
                    let number = entry.versions.last().map_or(1, |last| last.version + 1);
                    let charge = FileVersion::charge_for(version.size);
                    entry.versions.push(FileVersion {
                        version: number,
                        ..version
                    });
                    let excess = max_versions
                        .map_or(0, |max| entry.versions.len().saturating_sub(max.max(1)));
                    let dropped: Vec<FileVersion> = entry.versions.drain(..excess).collect();
                    let freed: u64 = dropped
                        .iter()
                        .map(|old| FileVersion::charge_for(old.size))
                        .sum();
                    // What the dropped versions free counts before the new one is checked.
                    sub_usage(&txn, workspace, freed)?;
                    add_usage(&txn, workspace, charge, quota)?;
                    let mut unreferenced = Vec::new();
                    let mut blobs = txn.open_table(BLOBS)?;
                    for old in &dropped {
                        release_blob(&mut blobs, &old.sha256, &mut unreferenced)?;
                    }
                    files.insert(path, sealed_entry(path, &entry).as_slice())?;
                    if let Some(id) = upload_id {
                        txn.open_table(UPLOADS)?.remove(id)?;
                    }
                    (entry, unreferenced)
                };
                txn.commit().map_err(StoreError::from)?;
                Ok(stored)
            })
        })
    }

    /// The file at `path`, if any.
    pub fn file(&self, path: &str) -> Result<Option<FileEntry>, FileError> {
        self.contain("file", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(FILES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            match table.get(path)? {
                Some(bytes) => read_entry(path, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Every file, sorted by path.
    pub fn list_files(&self) -> Result<Vec<FileEntry>, FileError> {
        self.contain("list_files", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(FILES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut out = Vec::new();
            for row in table.iter()? {
                let (path, bytes) = row?;
                match read_entry(path.value(), bytes.value()) {
                    Ok(entry) => out.push(entry),
                    // Reading the file by its path still fails; the others are listed.
                    Err(error) => self.skip_damaged(FILES.name(), path.value(), &error),
                }
            }
            Ok(out)
        })
    }

    /// The path of every file, sorted, without reading the entries: a damaged entry still
    /// lists its path (reading it then fails), so one damaged record cannot stop the server.
    pub fn file_paths(&self) -> Result<Vec<String>, FileError> {
        self.contain("file_paths", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(FILES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut out = Vec::new();
            for row in table.iter()? {
                let (path, _) = row?;
                out.push(path.value().to_owned());
            }
            Ok(out)
        })
    }

    /// Moves `from` with all its versions to `to`, durably. Refused if `to` is a file or a doc;
    /// the quota of `to`'s workspace is checked when the workspace changes.
    pub fn move_file(
        &self,
        from: &str,
        to: &str,
        quota: Option<u64>,
    ) -> Result<FileEntry, FileError> {
        self.contain("move_file", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                let entry = {
                    if doc_exists(&txn, to)? {
                        return Err(FileError::PathTaken { path: to.into() });
                    }
                    let mut files = txn.open_table(FILES)?;
                    if files.get(to)?.is_some() {
                        return Err(FileError::PathTaken { path: to.into() });
                    }
                    let Some(bytes) = files.remove(from)?.map(|bytes| bytes.value().to_vec())
                    else {
                        return Err(FileError::NotFound);
                    };
                    let mut entry = read_entry(from, &bytes)?;
                    entry.path = to.to_owned();
                    let (from_ws, to_ws) = (workspace_of(from), workspace_of(to));
                    if from_ws != to_ws {
                        let size = entry.total_size();
                        sub_usage(&txn, from_ws, size)?;
                        add_usage(&txn, to_ws, size, quota)?;
                    }
                    files.insert(to, sealed_entry(to, &entry).as_slice())?;
                    entry
                };
                txn.commit().map_err(StoreError::from)?;
                Ok(entry)
            })
        })
    }

    /// Deletes `path` and all its versions, durably; reports the blobs no longer referenced
    /// (their rows are gone; the caller deletes the files).
    pub fn delete_file(&self, path: &str) -> Result<Deleted, FileError> {
        self.contain("delete_file", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let deleted = {
                    let mut files = txn.open_table(FILES)?;
                    let Some(bytes) = files.remove(path)?.map(|bytes| bytes.value().to_vec())
                    else {
                        return Err(FileError::NotFound);
                    };
                    let entry = read_entry(path, &bytes)?;
                    sub_usage(&txn, workspace_of(path), entry.total_size())?;
                    let mut blobs = txn.open_table(BLOBS)?;
                    let mut unreferenced = Vec::new();
                    for version in &entry.versions {
                        release_blob(&mut blobs, &version.sha256, &mut unreferenced)?;
                    }
                    Deleted {
                        entry,
                        unreferenced,
                    }
                };
                txn.commit().map_err(StoreError::from)?;
                Ok(deleted)
            })
        })
    }

    /// The refcount row of blob `sha256`, if any version names it.
    pub fn blob(&self, sha256: &str) -> Result<Option<BlobRow>, FileError> {
        self.contain("blob", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(BLOBS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            Ok(table.get(sha256)?.map(|row| {
                let (size, refcount) = row.value();
                BlobRow { size, refcount }
            }))
        })
    }

    /// Bytes `workspace` is charged for: the charge of every version of its files.
    pub fn workspace_usage(&self, workspace: &str) -> Result<u64, FileError> {
        self.contain("workspace_usage", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            match txn.open_table(FILE_USAGE) {
                Ok(table) => Ok(table.get(workspace)?.map_or(0, |used| used.value())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(error) => Err(error.into()),
            }
        })
    }

    /// Creates or replaces upload `record.id`, durably.
    pub fn put_upload(&self, record: &UploadRecord) -> Result<(), FileError> {
        self.contain("put_upload", || {
            self.write(WriteKind::Grow, |db| {
                let txn = db.begin_write()?;
                txn.open_table(UPLOADS)?
                    .insert(record.id.as_str(), sealed_upload(record).as_slice())?;
                txn.commit().map_err(StoreError::from)?;
                Ok(())
            })
        })
    }

    /// Upload `id`, if it exists.
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, FileError> {
        self.contain("upload", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(UPLOADS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            match table.get(id)? {
                Some(bytes) => read_upload(id, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Every upload in progress, sorted by id.
    pub fn list_uploads(&self) -> Result<Vec<UploadRecord>, FileError> {
        self.contain("list_uploads", || {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let table = match txn.open_table(UPLOADS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut out = Vec::new();
            for row in table.iter()? {
                let (id, bytes) = row?;
                match read_upload(id.value(), bytes.value()) {
                    Ok(record) => out.push(record),
                    Err(error) => self.skip_damaged(UPLOADS.name(), id.value(), &error),
                }
            }
            Ok(out)
        })
    }

    /// Removes upload `id`, durably; `false` if there was none.
    pub fn remove_upload(&self, id: &str) -> Result<bool, FileError> {
        self.contain("remove_upload", || {
            self.write(WriteKind::Free, |db| {
                let txn = db.begin_write()?;
                let removed = txn.open_table(UPLOADS)?.remove(id)?.is_some();
                txn.commit().map_err(StoreError::from)?;
                Ok(removed)
            })
        })
    }
}

fn doc_exists(txn: &WriteTransaction, path: &str) -> Result<bool, FileError> {
    Ok(txn.open_table(DOCS)?.get(path)?.is_some())
}

fn add_usage(
    txn: &WriteTransaction,
    workspace: &str,
    size: u64,
    quota: Option<u64>,
) -> Result<(), FileError> {
    let mut usage = txn.open_table(FILE_USAGE)?;
    let used = usage.get(workspace)?.map_or(0, |used| used.value());
    if let Some(limit) = quota
        && used.saturating_add(size) > limit
    {
        return Err(FileError::QuotaExceeded {
            workspace: workspace.to_owned(),
            used,
            size,
            limit,
        });
    }
    usage.insert(workspace, used.saturating_add(size))?;
    Ok(())
}

fn sub_usage(txn: &WriteTransaction, workspace: &str, size: u64) -> Result<(), FileError> {
    let mut usage = txn.open_table(FILE_USAGE)?;
    let used = usage.get(workspace)?.map_or(0, |used| used.value());
    let left = used.saturating_sub(size);
    if left == 0 {
        usage.remove(workspace)?;
    } else {
        usage.insert(workspace, left)?;
    }
    Ok(())
}

/// Drops one reference to blob `sha256`; a blob left without any is removed and added to
/// `unreferenced` (once).
fn release_blob(
    blobs: &mut redb::Table<'_, &str, (u64, u64)>,
    sha256: &str,
    unreferenced: &mut Vec<String>,
) -> Result<(), FileError> {
    let row = blobs.get(sha256)?.map(|row| row.value());
    let Some((size, refcount)) = row else {
        return Ok(());
    };
    if refcount <= 1 {
        blobs.remove(sha256)?;
        if !unreferenced.iter().any(|known| known == sha256) {
            unreferenced.push(sha256.to_owned());
        }
    } else {
        blobs.insert(sha256, (size, refcount - 1))?;
    }
    Ok(())
}

fn add_blob_ref(txn: &WriteTransaction, sha256: &str, size: u64) -> Result<(), FileError> {
    let mut blobs = txn.open_table(BLOBS)?;
    let refcount = blobs.get(sha256)?.map_or(0, |row| row.value().1);
    blobs.insert(sha256, (size, refcount + 1))?;
    Ok(())
}

/// The stored form of `entry` under `path`: its encoding, sealed (format version 2).
fn sealed_entry(path: &str, entry: &FileEntry) -> Vec<u8> {
    checksum::seal(FILES.name(), path, &encode_entry(entry))
}

/// The entry stored under `path`, if its checksum matches and it decodes.
fn read_entry(path: &str, stored: &[u8]) -> Result<FileEntry, FileError> {
    let payload =
        checksum::unseal(FILES.name(), path, stored).map_err(|mismatch| FileError::Corrupt {
            key: path.into(),
            detail: mismatch.to_string(),
        })?;
    decode_entry(path, payload)
}

/// The stored form of `record`: its encoding, sealed under its id.
fn sealed_upload(record: &UploadRecord) -> Vec<u8> {
    checksum::seal(UPLOADS.name(), record.id.as_str(), &encode_upload(record))
}

/// The upload stored under `id`, if its checksum matches and it decodes.
fn read_upload(id: &str, stored: &[u8]) -> Result<UploadRecord, FileError> {
    let payload =
        checksum::unseal(UPLOADS.name(), id, stored).map_err(|mismatch| FileError::Corrupt {
            key: id.into(),
            detail: mismatch.to_string(),
        })?;
    decode_upload(id, payload)
}

/// Version 1: `u8 1`, `u32 n_versions`, then per version, oldest first: `u64 version`, string
/// `sha256`, `u64 size`, string `content_type`, string `name`, uploader, `u64 uploaded_ms`.
fn encode_entry(entry: &FileEntry) -> Vec<u8> {
    let mut out = vec![FILE_ENTRY_VERSION];
    let n = u32::try_from(entry.versions.len()).expect("fewer than 2^32 versions");
    out.extend_from_slice(&n.to_le_bytes());
    for version in &entry.versions {
        out.extend_from_slice(&version.version.to_le_bytes());
        put_str(&mut out, &version.sha256);
        out.extend_from_slice(&version.size.to_le_bytes());
        put_str(&mut out, &version.content_type);
        put_str(&mut out, &version.name);
        put_uploader(&mut out, &version.uploader);
        out.extend_from_slice(&version.uploaded_ms.to_le_bytes());
    }
    out
}

pub(crate) fn decode_entry(path: &str, bytes: &[u8]) -> Result<FileEntry, FileError> {
    let corrupt = |detail: &str| FileError::Corrupt {
        key: path.to_owned(),
        detail: detail.to_owned(),
    };
    let mut reader = Reader::new(bytes);
    match reader.u8() {
        Some(FILE_ENTRY_VERSION) => {}
        Some(other) => return Err(corrupt(&format!("unknown record version {other}"))),
        None => return Err(corrupt("empty record")),
    }
    let truncated = || corrupt("record is truncated or not UTF-8");
    let n = reader.u32().ok_or_else(truncated)?;
    let mut versions = Vec::new();
    for _ in 0..n {
        // Each version needs dozens of bytes, so a huge `n` runs out of bytes quickly.
        versions.push(FileVersion {
            version: reader.u64().ok_or_else(truncated)?,
            sha256: reader.string().ok_or_else(truncated)?,
            size: reader.u64().ok_or_else(truncated)?,
            content_type: reader.string().ok_or_else(truncated)?,
            name: reader.string().ok_or_else(truncated)?,
            uploader: read_uploader(&mut reader).ok_or_else(truncated)?,
            uploaded_ms: reader.u64().ok_or_else(truncated)?,
        });
    }
    if !reader.is_empty() {
        return Err(corrupt("trailing bytes after the record"));
    }
    if versions.is_empty() {
        return Err(corrupt("entry without versions"));
    }
    Ok(FileEntry {
        path: path.to_owned(),
        versions,
    })
}

/// Version 1: `u8 1`, string `path`, `u64 length`, `u8 has_sha256` (0 or 1) and the string if 1,
/// string `content_type`, string `name`, uploader, `u64 created_ms`, `u64 expires_ms`.
fn encode_upload(record: &UploadRecord) -> Vec<u8> {
    let mut out = vec![UPLOAD_RECORD_VERSION];
    put_str(&mut out, &record.path);
    out.extend_from_slice(&record.length.to_le_bytes());
    put_opt_str(&mut out, record.sha256.as_deref());
    put_str(&mut out, &record.content_type);
    put_str(&mut out, &record.name);
    put_uploader(&mut out, &record.uploader);
    out.extend_from_slice(&record.created_ms.to_le_bytes());
    out.extend_from_slice(&record.expires_ms.to_le_bytes());
    out
}

fn decode_upload(id: &str, bytes: &[u8]) -> Result<UploadRecord, FileError> {
    let corrupt = |detail: &str| FileError::Corrupt {
        key: id.to_owned(),
        detail: detail.to_owned(),
    };
    let mut reader = Reader::new(bytes);
    match reader.u8() {
        Some(UPLOAD_RECORD_VERSION) => {}
        Some(other) => return Err(corrupt(&format!("unknown record version {other}"))),
        None => return Err(corrupt("empty record")),
    }
    let truncated = || corrupt("record is truncated or not UTF-8");
    let record = UploadRecord {
        id: id.to_owned(),
        path: reader.string().ok_or_else(truncated)?,
        length: reader.u64().ok_or_else(truncated)?,
        sha256: reader.opt_string().ok_or_else(truncated)?,
        content_type: reader.string().ok_or_else(truncated)?,
        name: reader.string().ok_or_else(truncated)?,
        uploader: read_uploader(&mut reader).ok_or_else(truncated)?,
        created_ms: reader.u64().ok_or_else(truncated)?,
        expires_ms: reader.u64().ok_or_else(truncated)?,
    };
    if !reader.is_empty() {
        return Err(corrupt("trailing bytes after the record"));
    }
    Ok(record)
}

/// An uploader: optional string `sub` (`u8` flag, then the string if 1), string `name`.
fn put_uploader(out: &mut Vec<u8>, uploader: &Uploader) {
    put_opt_str(out, uploader.sub.as_deref());
    put_str(out, &uploader.name);
}

/// Reads an uploader (see `put_uploader`).
fn read_uploader(reader: &mut Reader<'_>) -> Option<Uploader> {
    let sub = reader.opt_string()?;
    let name = reader.string()?;
    Some(Uploader { sub, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOp;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("t.redb")).expect("open");
        (dir, store)
    }

    fn version(sha: &str, size: u64) -> FileVersion {
        FileVersion {
            version: 0,
            sha256: sha.into(),
            size,
            content_type: "application/zip".into(),
            name: "app.zip".into(),
            uploader: Uploader {
                sub: Some("ada".into()),
                name: "Ada".into(),
            },
            uploaded_ms: 7,
        }
    }

    const K: u64 = FileVersion::MIN_CHARGE;

    #[test]
    fn versions_refcounts_and_usage_move_together() {
        let (_dir, store) = open();
        store
            .put_file_version("team/a.zip", version("aa", K + 10), None, None, None)
            .unwrap();
        let (entry, _) = store
            .put_file_version("team/a.zip", version("bb", K + 5), None, None, None)
            .unwrap();
        assert_eq!(
            entry.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2]
        );
        store
            .put_file_version("team/b.zip", version("aa", K + 10), None, None, None)
            .unwrap();
        assert_eq!(store.workspace_usage("team").unwrap(), 3 * K + 25);
        assert_eq!(store.blob("aa").unwrap().unwrap().refcount, 2);
        let deleted = store.delete_file("team/a.zip").unwrap();
        assert_eq!(deleted.unreferenced, ["bb"]);
        assert_eq!(store.blob("aa").unwrap().unwrap().refcount, 1);
        assert_eq!(store.workspace_usage("team").unwrap(), K + 10);
        let moved = store.move_file("team/b.zip", "other/b.zip", None).unwrap();
        assert_eq!(moved.path, "other/b.zip");
        assert_eq!(store.workspace_usage("team").unwrap(), 0);
        assert_eq!(store.workspace_usage("other").unwrap(), K + 10);
        assert_eq!(store.list_files().unwrap().len(), 1);
        assert!(matches!(
            store.delete_file("team/b.zip"),
            Err(FileError::NotFound)
        ));
    }

    #[test]
    fn quota_and_doc_paths_are_refused_without_changes() {
        let (_dir, store) = open();
        store
            .commit(
                &[WriteOp::Append {
                    doc: "team/notes",
                    seq: 1,
                    update: b"u",
                    author: None,
                }],
                1,
                true,
            )
            .unwrap();
        assert!(matches!(
            store.put_file_version("team/notes", version("aa", 1), None, None, None),
            Err(FileError::PathTaken { .. })
        ));
        store
            .put_file_version("team/a", version("aa", K + 8), Some(K + 10), None, None)
            .unwrap();
        let res = store.put_file_version("team/b", version("bb", 3), Some(K + 10), None, None);
        assert!(
            matches!(
                res,
                Err(FileError::QuotaExceeded {
                    used,
                    size: K,
                    limit,
                    ..
                }) if used == K + 8 && limit == K + 10
            ),
            "{res:?}"
        );
        assert_eq!(store.blob("bb").unwrap(), None);
        assert_eq!(store.workspace_usage("team").unwrap(), K + 8);
        assert!(matches!(
            store.move_file("team/a", "team/notes", None),
            Err(FileError::PathTaken { .. })
        ));
    }

    #[test]
    fn upload_records_round_trip_and_any_prefix_fails_to_decode() {
        let (_dir, store) = open();
        let record = UploadRecord {
            id: "abc".into(),
            path: "team/x.bin".into(),
            length: 99,
            sha256: Some("ff".into()),
            content_type: "application/octet-stream".into(),
            name: "x.bin".into(),
            uploader: Uploader {
                sub: None,
                name: "anonymous".into(),
            },
            created_ms: 1,
            expires_ms: 2,
        };
        store.put_upload(&record).unwrap();
        assert_eq!(store.upload("abc").unwrap(), Some(record.clone()));
        assert_eq!(store.list_uploads().unwrap(), vec![record.clone()]);
        let bytes = encode_upload(&record);
        for len in 0..bytes.len() {
            assert!(decode_upload("abc", &bytes[..len]).is_err());
        }
        let entry = FileEntry {
            path: "p".into(),
            versions: vec![version("aa", 1)],
        };
        let bytes = encode_entry(&entry);
        for len in 0..bytes.len() {
            assert!(decode_entry("p", &bytes[..len]).is_err());
        }
        assert_eq!(decode_entry("p", &bytes).unwrap(), entry);
        // Completing the upload removes its record in the same transaction.
        store
            .put_file_version("team/x.bin", version("aa", 99), None, Some("abc"), None)
            .unwrap();
        assert_eq!(store.upload("abc").unwrap(), None);
        assert!(!store.remove_upload("abc").unwrap());
    }

    #[test]
    fn beyond_max_versions_the_oldest_go_with_their_blobs_and_usage() {
        let (_dir, store) = open();
        for (sha, size) in [("aa", 0), ("bb", K + 1), ("aa", 0), ("cc", 2)] {
            let (entry, unreferenced) = store
                .put_file_version("team/a", version(sha, size), None, None, Some(2))
                .unwrap();
            assert!(entry.versions.len() <= 2);
            if sha == "cc" {
                // "bb" is dropped; "aa" is still named by version 3.
                assert_eq!(unreferenced, ["bb"]);
                assert_eq!(
                    entry.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
                    [3, 4]
                );
            }
        }
        assert_eq!(store.blob("bb").unwrap(), None);
        assert_eq!(store.blob("aa").unwrap().unwrap().refcount, 1);
        // Two versions, each charged at least the minimum.
        assert_eq!(store.workspace_usage("team").unwrap(), 2 * K);
        // Dropping an old version makes room within the quota in the same transaction.
        let (_, unreferenced) = store
            .put_file_version("team/a", version("dd", K), Some(2 * K), None, Some(2))
            .unwrap();
        assert_eq!(unreferenced, ["aa"]);
        assert_eq!(store.workspace_usage("team").unwrap(), 2 * K);
        store.delete_file("team/a").unwrap();
        assert_eq!(store.workspace_usage("team").unwrap(), 0);
    }
}
