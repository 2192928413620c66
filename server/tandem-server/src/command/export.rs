//! `tandem export DIR [--prefix P]`: every document of a running server (or those whose name
//! starts with `P`) as files, through the HTTP API, so it works against any node of a cluster.
//!
//! Each document `NAME` becomes `DIR/NAME.yjs`, its whole state as one Yjs update (v1), the
//! form y-websocket's, y-sweet's and Hocuspocus's stores hold and `Y.applyUpdate` takes; a
//! `.md` or `.txt` document also becomes `DIR/NAME`, the text of its root `content` (the
//! shared type the web client edits, `protocol-spec/http.md`). `tandem import` reads both back.

use std::fs;
use std::path::{Path, PathBuf};

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Transact, Update};

use super::CommandError;
use super::client::Client;
use crate::cli::ExportArgs;

/// The root shared type whose text a `.md` or `.txt` document's text file holds: the one the
/// web client binds its editor to.
pub(super) const TEXT_ROOT: &str = "content";

/// Whether document `name` has a text file beside its update file.
pub(super) fn is_text_doc(name: &str) -> bool {
    name.ends_with(".md") || name.ends_with(".txt")
}

/// The text of [`TEXT_ROOT`] in the state `update`; `None` if it is not a Yjs update.
pub(super) fn text_of(update: &[u8]) -> Option<String> {
    let update = Update::decode_v1(update).ok()?;
    let doc = Doc::new();
    let mut txn = doc.transact_mut();
    txn.apply_update(update).ok()?;
    Some(
        txn.get_text(TEXT_ROOT)
            .map(|text| text.get_string(&txn))
            .unwrap_or_default(),
    )
}

pub(super) async fn export(args: &ExportArgs) -> Result<String, CommandError> {
    let client = Client::new(&args.server)?;
    #[derive(serde::Deserialize)]
    struct Listed {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct List {
        docs: Vec<Listed>,
    }
    let list = client.get("/api/docs").await?.unwrap_or_default();
    let list: List = serde_json::from_slice(&list).map_err(|error| CommandError::Connect {
        server: client.server().to_owned(),
        detail: format!("unexpected answer to GET /api/docs: {error}"),
    })?;
    let mut n_docs = 0usize;
    let mut n_texts = 0usize;
    // Documents not written, with why: the others are exported all the same.
    let mut skipped = Vec::new();
    for listed in list.docs {
        let name = listed.name;
        if !name.starts_with(&args.prefix) {
            continue;
        }
        // Listed but never written (open, empty): nothing to export.
        let Some(update) = client.get(&Client::doc_path(&name, "")).await? else {
            continue;
        };
        let text = if is_text_doc(&name) {
            Some(text_of(&update).ok_or_else(|| CommandError::Connect {
                server: client.server().to_owned(),
                detail: format!("the state of {name:?} is not a Yjs update"),
            })?)
        } else {
            None
        };
        let written =
            write_file(&args.dir, &format!("{name}.yjs"), &update).and_then(|()| match &text {
                Some(text) => write_file(&args.dir, &name, text.as_bytes()),
                None => Ok(()),
            });
        match written {
            Ok(()) => {
                n_docs += 1;
                n_texts += usize::from(text.is_some());
            }
            Err(reason) => skipped.push(format!("  {name:?}: {reason}")),
        }
    }
    let summary = format!(
        "exported {n_docs} documents ({n_texts} with a text file) from {} into {}",
        client.server(),
        args.dir.display()
    );
    if skipped.is_empty() {
        Ok(summary)
    } else {
        Err(CommandError::Invalid(format!(
            "{summary}; {} documents were not exported:\n{}",
            skipped.len(),
            skipped.join("\n")
        )))
    }
}

/// `dir/relative`, a document name's `/` separating directories, or why the name cannot be a
/// path under `dir`: every segment must be a plain file name (not empty, `.` or `..`, without
/// NUL or `\`). The server never lists such a name (`DocId`), but the path comes from its answer
/// and a file must never be written outside `dir`.
fn export_path(dir: &Path, relative: &str) -> Result<PathBuf, String> {
    let mut path = dir.to_path_buf();
    for segment in relative.split('/') {
        let plain = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && !segment.contains(['\0', '\\'])
            && matches!(
                Path::new(segment)
                    .components()
                    .collect::<Vec<_>>()
                    .as_slice(),
                [std::path::Component::Normal(_)]
            );
        if !plain {
            return Err(format!(
                "{segment:?} is not a plain file name; the document is skipped"
            ));
        }
        path.push(segment);
    }
    Ok(path)
}

/// Writes `bytes` to `dir/relative` ([`export_path`]), creating its directories; the error
/// says why not (a name that is no plain path, or one that collides with another document's
/// file or directory, such as `a.md` and `a.md/b`).
fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> Result<(), String> {
    let path = export_path(dir, relative)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|error| format!("creating {}: {error}", parent.display()))?;
    }
    fs::write(&path, bytes).map_err(|error| format!("writing {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_leaves_the_directory_is_refused() {
        let dir = Path::new("/export");
        assert_eq!(
            export_path(dir, "team/notes.md").expect("plain"),
            PathBuf::from("/export/team/notes.md")
        );
        for bad in [
            "../escape.md",
            "team/../../escape.md",
            "./a.md",
            "team//a.md",
            "/abs.md",
            "a.md/",
            "",
            "a\\..\\b.md",
            "nul\0.md",
        ] {
            assert!(export_path(dir, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_collision_is_reported_for_its_document() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_file(dir.path(), "a.md", b"text").expect("first");
        let refused = write_file(dir.path(), "a.md/b.md", b"text").expect_err("collides");
        assert!(refused.contains("a.md"), "{refused}");
        write_file(dir.path(), "c.md", b"text").expect("the others go on");
    }
}
