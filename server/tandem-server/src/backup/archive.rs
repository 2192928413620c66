//! The backup archive: a tar stream whose first entry is a JSON manifest listing every other
//! entry with its size and SHA-256 (`protocol-spec/storage.md`, "Backups").
//!
//! The server writes it ([`write`]); `tandem backup` reads it back to verify what it received,
//! and `tandem restore-backup` to lay it out ([`read`]). Reading checks the manifest's format
//! and version, refuses any entry the manifest does not list or whose path is not one of the
//! three kinds below (so nothing outside the target directory can be named), hashes every entry
//! while it is read, and fails unless each listed entry came exactly once with its size and hash.
//!
//! Entry paths: `tandem.redb`, `server-key`, and `blobs/<first 2 hex>/<sha256 hex>`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::DB_FILE_NAME;
use crate::auth::SERVER_KEY_FILE;
use crate::files::blobs::is_sha256_hex;

/// The first entry of every archive.
pub(crate) const MANIFEST_NAME: &str = "tandem-backup.json";
/// `format` of the manifest.
pub(crate) const ARCHIVE_FORMAT: &str = "tandem-backup";
/// The archive layout this build writes and reads.
pub(crate) const ARCHIVE_VERSION: u32 = 1;
/// Largest manifest read (a manifest lists blobs at about 120 bytes each).
const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// The first entry of an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Always [`ARCHIVE_FORMAT`].
    pub(crate) format: String,
    /// [`ARCHIVE_VERSION`] when written by this build.
    pub(crate) version: u32,
    /// The store format version of `tandem.redb` (`storage.md`).
    pub(crate) store_format_version: u64,
    /// When the backup's read transaction began, milliseconds since the Unix epoch.
    pub(crate) created_ms: u64,
    /// Stored documents in `tandem.redb`.
    pub(crate) n_docs: u64,
    /// Every other entry, in archive order.
    pub(crate) entries: Vec<ManifestEntry>,
}

/// One entry the manifest lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    /// Its path in the archive, and relative to the data directory.
    pub(crate) path: String,
    /// Length in bytes.
    pub(crate) size: u64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// Reading failed (a truncated download, a disk error).
    #[error("reading the backup: {0}")]
    Io(#[from] io::Error),
    /// The archive breaks the format.
    #[error("not a valid backup: {0}")]
    Invalid(String),
}

/// The path of blob `sha256` in an archive and in a data directory.
pub(crate) fn blob_path(sha256: &str) -> String {
    format!("blobs/{}/{sha256}", &sha256[..2])
}

/// Whether `path` may appear in an archive.
pub(crate) fn is_allowed_path(path: &str) -> bool {
    if path == DB_FILE_NAME || path == SERVER_KEY_FILE {
        return true;
    }
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("blobs"), Some(prefix), Some(sha256), None)
            if is_sha256_hex(sha256) && prefix == &sha256[..2]
    )
}

/// Writes the archive of `manifest` to `out`: the manifest, then each entry's bytes from
/// `open`, which must yield exactly the entry's size.
pub(crate) fn write<W: Write>(
    out: W,
    manifest: &Manifest,
    mut open: impl FnMut(&ManifestEntry) -> io::Result<Box<dyn Read>>,
) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    let mtime = manifest.created_ms / 1000;
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    append(
        &mut builder,
        MANIFEST_NAME,
        json.len() as u64,
        mtime,
        &json[..],
    )?;
    for entry in &manifest.entries {
        let reader = open(entry)?;
        append(&mut builder, &entry.path, entry.size, mtime, reader)?;
    }
    builder.into_inner()
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mtime: u64,
    reader: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    let mut exact = Exact {
        inner: reader.take(size),
        left: size,
    };
    builder.append_data(&mut header, path, &mut exact)
}

/// Fails the read that ends before `left` bytes came, so a short source never leaves a
/// padded, wrong entry in the archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the source ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads and verifies an archive from `input`, handing each entry's bytes to `on_entry` (which
/// may read them or not; what it leaves is drained and hashed). Returns the manifest once every
/// entry it lists came with the right size and SHA-256.
pub(crate) fn read<R: Read>(
    input: R,
    mut on_entry: impl FnMut(&ManifestEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<Manifest, ArchiveError> {
    let invalid = |detail: String| ArchiveError::Invalid(detail);
    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries()?;
    let manifest: Manifest = {
        let mut first = entries
            .next()
            .ok_or_else(|| invalid("the archive is empty".into()))??;
        let path = entry_path(&first)?;
        if path != MANIFEST_NAME {
            return Err(invalid(format!(
                "the first entry is {path:?}, not {MANIFEST_NAME}"
            )));
        }
        if first.size() > MAX_MANIFEST_BYTES {
            return Err(invalid("the manifest is too large".into()));
        }
        let mut json = Vec::new();
        first.read_to_end(&mut json)?;
        serde_json::from_slice(&json)
            .map_err(|error| invalid(format!("the manifest does not parse: {error}")))?
    };
    if manifest.format != ARCHIVE_FORMAT {
        return Err(invalid(format!(
            "the manifest's format is {:?}",
            manifest.format
        )));
    }
    if manifest.version != ARCHIVE_VERSION {
        return Err(invalid(format!(
            "archive version {} (this build reads version {ARCHIVE_VERSION})",
            manifest.version
        )));
    }
    if manifest.store_format_version > tandem_store::FORMAT_VERSION {
        return Err(invalid(format!(
            "store format version {} was written by a newer Tandem (this build reads up to {})",
            manifest.store_format_version,
            tandem_store::FORMAT_VERSION
        )));
    }
    let mut expected: BTreeMap<&str, &ManifestEntry> = BTreeMap::new();
    for entry in &manifest.entries {
        if !is_allowed_path(&entry.path) {
            return Err(invalid(format!(
                "the manifest lists {:?}, which a backup never holds",
                entry.path
            )));
        }
        if expected.insert(&entry.path, entry).is_some() {
            return Err(invalid(format!(
                "the manifest lists {:?} twice",
                entry.path
            )));
        }
    }
    if !expected.contains_key(DB_FILE_NAME) {
        return Err(invalid(format!("the manifest lists no {DB_FILE_NAME}")));
    }
    for tar_entry in entries {
        let mut tar_entry = tar_entry?;
        let path = entry_path(&tar_entry)?;
        let Some(listed) = expected.remove(path.as_str()) else {
            return Err(invalid(format!(
                "entry {path:?} is not in the manifest, or comes twice"
            )));
        };
        if tar_entry.header().entry_type() != tar::EntryType::Regular {
            return Err(invalid(format!("entry {path:?} is not a regular file")));
        }
        let mut hashing = Hashing {
            inner: &mut tar_entry,
            hasher: Sha256::new(),
            n_bytes: 0,
        };
        on_entry(listed, &mut hashing)?;
        io::copy(&mut hashing, &mut io::sink())?;
        let sha256 = hex::encode(hashing.hasher.finalize());
        if hashing.n_bytes != listed.size || sha256 != listed.sha256 {
            return Err(invalid(format!(
                "{path}: {} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                hashing.n_bytes, listed.size, listed.sha256
            )));
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(invalid(format!(
            "{} listed entries are missing, among them {missing:?} (a truncated archive?)",
            expected.len()
        )));
    }
    Ok(manifest)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let path = entry.path_bytes();
    String::from_utf8(path.into_owned())
        .map_err(|_| ArchiveError::Invalid("an entry's path is not UTF-8".into()))
}

/// Counts and hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n_bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, bytes: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    fn archive(manifest: &Manifest, bytes: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
        write(Vec::new(), manifest, |entry| {
            Ok(Box::new(io::Cursor::new(bytes[&entry.path].clone())))
        })
        .unwrap()
    }

    #[test]
    fn an_archive_reads_back_and_any_damage_is_refused() {
        let blob = b"blob bytes".to_vec();
        let sha = hex::encode(Sha256::digest(&blob));
        let files: BTreeMap<String, Vec<u8>> = [
            (DB_FILE_NAME.to_owned(), b"db".to_vec()),
            (blob_path(&sha), blob.clone()),
        ]
        .into();
        let manifest = Manifest {
            format: ARCHIVE_FORMAT.into(),
            version: ARCHIVE_VERSION,
            store_format_version: tandem_store::FORMAT_VERSION,
            created_ms: 1,
            n_docs: 0,
            entries: files
                .iter()
                .map(|(path, bytes)| entry(path, bytes))
                .collect(),
        };
        let bytes = archive(&manifest, &files);
        let mut seen = Vec::new();
        read(&bytes[..], |entry, reader| {
            let mut content = Vec::new();
            reader.read_to_end(&mut content)?;
            seen.push((entry.path.clone(), content));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.into_iter().collect::<BTreeMap<_, _>>(), files);

        let truncated = &bytes[..bytes.len() - 1536];
        assert!(read(truncated, |_, _| Ok(())).is_err());
        let at = bytes.windows(10).position(|w| w == b"blob bytes").unwrap();
        let mut flipped = bytes.clone();
        flipped[at] ^= 1;
        let error = read(&flipped[..], |_, _| Ok(())).unwrap_err().to_string();
        assert!(error.contains(&blob_path(&sha)), "{error}");

        let mut escaping = manifest.clone();
        escaping.entries[0].path = "../outside".into();
        let error = read(&archive_raw(&escaping)[..], |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("never holds"), "{error}");
    }

    /// An archive of only `manifest`, for manifests `write` would not be asked to follow.
    fn archive_raw(manifest: &Manifest) -> Vec<u8> {
        let json = serde_json::to_vec_pretty(manifest).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(json.len() as u64);
        header.set_mode(0o600);
        builder
            .append_data(&mut header, MANIFEST_NAME, &json[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn only_the_three_kinds_of_path_are_allowed() {
        let sha = "ab".repeat(32);
        assert!(is_allowed_path("tandem.redb"));
        assert!(is_allowed_path("server-key"));
        assert!(is_allowed_path(&blob_path(&sha)));
        assert!(!is_allowed_path(&format!("blobs/cd/{sha}")));
        assert!(!is_allowed_path("blobs/ab/../../etc"));
        assert!(!is_allowed_path("/etc/passwd"));
        assert!(!is_allowed_path(&format!("blobs/ab/{sha}/x")));
    }
}
