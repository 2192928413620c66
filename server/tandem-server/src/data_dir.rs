//! Start-up checks of the data directory, before the store is opened.
//!
//! redb creates a missing or empty database file without complaint, and the file cleanup then
//! sees every blob as unreferenced. So a lost or truncated `tandem.redb` beside the blobs,
//! uploads or server key of an earlier store would start an empty server that deletes the
//! team's files. [`check_store_file`] refuses that start instead; `--init` (or an empty data
//! directory) is how a new store is made. See `protocol-spec/storage.md`, "Start-up".

use std::io;
use std::path::Path;

use crate::ServerError;
use crate::auth::SERVER_KEY_FILE;

/// Data beside the database that only an earlier store leaves behind.
const EARLIER_STORE_DATA: [&str; 3] = ["blobs", "uploads", SERVER_KEY_FILE];

/// Refuses a database file that is not a regular file, or that is missing or empty while the
/// data directory holds data of an earlier store (unless `init`).
pub(crate) fn check_store_file(
    data_dir: &Path,
    db_path: &Path,
    init: bool,
) -> Result<(), ServerError> {
    let state = match std::fs::metadata(db_path) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => return Ok(()),
        Ok(meta) if !meta.is_file() => {
            return Err(ServerError::UnsafeDataDir(format!(
                "refusing to start: database {} is not a regular file; move it away and restore \
                 tandem.redb from a backup",
                db_path.display()
            )));
        }
        Ok(_) => "empty (0 bytes)",
        Err(error) if error.kind() == io::ErrorKind::NotFound => "missing",
        Err(source) => {
            return Err(ServerError::Io {
                context: "reading the database file's metadata",
                source,
            });
        }
    };
    if init {
        return Ok(());
    }
    let mut found = Vec::new();
    for name in EARLIER_STORE_DATA {
        let path = data_dir.join(name);
        let holds_data = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                dir_holds_a_file(&path).map_err(|source| ServerError::Io {
                    context: "reading the data directory",
                    source,
                })?
            }
            Ok(_) => true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(ServerError::Io {
                    context: "reading the data directory",
                    source,
                });
            }
        };
        if holds_data {
            found.push(name);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(ServerError::UnsafeDataDir(format!(
        "refusing to start: database {} is {state}, but {} holds {} of an earlier store; restore \
         tandem.redb from a backup, or start with --init to create an empty store beside them",
        db_path.display(),
        data_dir.display(),
        found.join(", ")
    )))
}

/// Whether `dir` or a directory under it holds at least one file.
fn dir_holds_a_file(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if !file_type.is_dir() || dir_holds_a_file(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(dir: &Path, init: bool) -> Option<String> {
        match check_store_file(dir, &dir.join(crate::DB_FILE_NAME), init) {
            Ok(()) => None,
            Err(error) => Some(error.to_string()),
        }
    }

    #[test]
    fn an_empty_data_directory_or_init_makes_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(refused(dir.path(), false), None);
        // Empty directories, as `Files::open` leaves them, are no data.
        std::fs::create_dir_all(dir.path().join("blobs/ab")).unwrap();
        std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
        assert_eq!(refused(dir.path(), false), None);
        std::fs::write(dir.path().join("blobs/ab/abcd"), b"file").unwrap();
        assert_eq!(refused(dir.path(), true), None);
    }

    #[test]
    fn a_missing_or_empty_database_beside_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SERVER_KEY_FILE), b"key").unwrap();
        let line = refused(dir.path(), false).expect("refused");
        assert!(
            line.contains("is missing") && line.contains("server-key") && line.contains("--init"),
            "{line}"
        );
        std::fs::write(dir.path().join(crate::DB_FILE_NAME), b"").unwrap();
        let line = refused(dir.path(), false).expect("refused");
        assert!(line.contains("is empty"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_directory_in_place_of_the_database_is_refused_even_with_init() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(crate::DB_FILE_NAME)).unwrap();
        let line = refused(dir.path(), true).expect("refused");
        assert!(line.contains("not a regular file"), "{line}");
    }
}
