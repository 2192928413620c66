//! `tandem check --data-dir DIR`: the offline check of a stopped server's data directory.
//!
//! The store's part is `tandem_store::check` (opened read-only: checksums, docs, refcounts,
//! usage, orphan records); this adds what the store cannot know: that each doc's records are
//! Yjs updates yrs applies, with nothing missing, and that every blob the store names is in
//! `blobs/` with its size and SHA-256. Nothing is written: the blob files are only read.

use std::fs;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use sha2::{Digest, Sha256};
use tandem_store::StoredDoc;
use tandem_store::check::check_file;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact, Update};

use super::CommandError;
use crate::DB_FILE_NAME;
use crate::backup::archive::blob_path;
use crate::cli::CheckArgs;

/// Bytes hashed at a time.
const HASH_BUFFER_BYTES: usize = 256 * 1024;

pub(super) fn check(args: &CheckArgs) -> Result<(String, bool), CommandError> {
    let db = args.data_dir.join(DB_FILE_NAME);
    if !db.is_file() {
        return Err(CommandError::Invalid(format!(
            "{} is not a file; is {} a data directory?",
            db.display(),
            args.data_dir.display()
        )));
    }
    let mut report = check_file(&db, check_doc).map_err(|source| match source {
        tandem_store::StoreError::AlreadyOpen => CommandError::Invalid(format!(
            "{} is open in a running server; stop it first, or use `tandem backup` and check \
             the restored copy",
            db.display()
        )),
        source => CommandError::Store {
            path: db.clone(),
            source,
        },
    })?;
    for blob in &report.blobs {
        if let Some(problem) = check_blob(&args.data_dir, &blob.sha256, blob.size) {
            report.problems.push(problem);
        }
    }
    let mut out = String::new();
    for problem in &report.problems {
        out.push_str(problem);
        out.push('\n');
    }
    out.push_str(&format!(
        "checked {}: {} documents, {} blobs, {} problem(s)",
        args.data_dir.display(),
        report.n_docs,
        report.blobs.len(),
        report.problems.len()
    ));
    Ok((out, report.problems.is_empty()))
}

/// A problem with a doc's content: an update yrs refuses or panics on, or one that needs data
/// that is not stored.
fn check_doc(_: &str, stored: &StoredDoc) -> Option<String> {
    let applied = catch_unwind(AssertUnwindSafe(|| {
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        for (index, bytes) in stored.iter().enumerate() {
            let what = if index == 0 && stored.snapshot.is_some() {
                "the snapshot".to_owned()
            } else {
                format!("log entry {}", index + 1)
            };
            let update = Update::decode_v1(bytes)
                .map_err(|error| format!("{what} is not a Yjs update: {error}"))?;
            txn.apply_update(update)
                .map_err(|error| format!("{what} does not apply: {error}"))?;
        }
        if txn.has_missing_updates() {
            return Err("its updates depend on changes that are not stored".to_owned());
        }
        Ok(())
    }));
    match applied {
        Ok(Ok(())) => None,
        Ok(Err(problem)) => Some(problem),
        Err(_) => Some("yrs panicked applying its updates".into()),
    }
}

/// A problem with blob `sha256` on disk: missing, unreadable, wrong size or wrong content.
fn check_blob(data_dir: &Path, sha256: &str, size: u64) -> Option<String> {
    let path = data_dir.join(blob_path(sha256));
    let mut file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "blob {sha256}: missing ({} does not exist)",
                path.display()
            ));
        }
        Err(error) => return Some(format!("blob {sha256}: cannot be read: {error}")),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    let mut n_bytes = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                n_bytes += n as u64;
            }
            Err(error) => return Some(format!("blob {sha256}: cannot be read: {error}")),
        }
    }
    if n_bytes != size {
        return Some(format!(
            "blob {sha256}: {n_bytes} bytes on disk, the store says {size}"
        ));
    }
    let actual = hex::encode(hasher.finalize());
    (actual != sha256).then(|| format!("blob {sha256}: its content hashes to {actual}"))
}
