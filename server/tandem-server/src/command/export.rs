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
    for listed in list.docs {
        let name = listed.name;
        if !name.starts_with(&args.prefix) {
            continue;
        }
        // Listed but never written (open, empty): nothing to export.
        let Some(update) = client.get(&Client::doc_path(&name, "")).await? else {
            continue;
        };
        write_file(&args.dir, &format!("{name}.yjs"), &update)?;
        n_docs += 1;
        if is_text_doc(&name) {
            let text = text_of(&update).ok_or_else(|| CommandError::Connect {
                server: client.server().to_owned(),
                detail: format!("the state of {name:?} is not a Yjs update"),
            })?;
            write_file(&args.dir, &name, text.as_bytes())?;
            n_texts += 1;
        }
    }
    Ok(format!(
        "exported {n_docs} documents ({n_texts} with a text file) from {} into {}",
        client.server(),
        args.dir.display()
    ))
}

/// Writes `bytes` to `dir/relative` (a document name's `/` separates directories; names never
/// hold `.` or `..` segments, see `DocId`), creating its directories.
fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> Result<(), CommandError> {
    let path: PathBuf = relative
        .split('/')
        .fold(dir.to_path_buf(), |path, part| path.join(part));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|error| CommandError::Io {
            what: format!("creating {}", parent.display()),
            error,
        })?;
    }
    fs::write(&path, bytes).map_err(|error| CommandError::Io {
        what: format!("writing {}", path.display()),
        error,
    })
}
