//! `tandem import DIR [--prefix P] [--replace]`: documents into a running server from files,
//! through `POST /api/docs/{name}/update`, so every write goes through the doc's actor and is
//! acknowledged only once stored.
//!
//! The rules, per file under `DIR` (its path relative to `DIR` names the document):
//! - `NAME.yjs`: a Yjs update (v1), as `tandem export`, y-websocket's, y-sweet's or
//!   Hocuspocus's stores hold them, merged into `NAME`. Merging is the CRDT's: importing into a
//!   document that has content keeps both, and importing the same file twice changes nothing.
//! - `NAME.md` or `NAME.txt` with no `NAME.md.yjs` (or `.txt.yjs`) beside it: the text of the
//!   document's root `content`. A new or empty document gets it; a document whose text is
//!   already that text is left alone; a document with any other content is refused unless
//!   `--replace`, which replaces the text of `content` (its other roots stay) by one update.
//! - Any other file is skipped and counted.
//!
//! A refused file does not stop the others; the command fails at the end if any was refused.

use std::fs;
use std::path::Path;

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use super::CommandError;
use super::client::Client;
use super::export::{TEXT_ROOT, is_text_doc};
use crate::cli::ImportArgs;

/// What a text file did to its document.
enum TextOutcome {
    Written,
    Unchanged,
    Refused(String),
}

pub(super) async fn import(args: &ImportArgs) -> Result<String, CommandError> {
    let mut files = Vec::new();
    walk(&args.dir, "", &mut files)?;
    files.sort();
    let client = Client::new(&args.server)?;
    let (mut n_updates, mut n_texts, mut n_unchanged, mut n_skipped) = (0, 0, 0, 0);
    let mut refused = Vec::new();
    for relative in &files {
        let path = args.dir.join(relative);
        if let Some(name) = relative.strip_suffix(".yjs") {
            if !name.starts_with(&args.prefix) {
                continue;
            }
            let update = read(&path)?;
            match client
                .post(&Client::doc_path(name, "/update"), update)
                .await
            {
                Ok(()) => n_updates += 1,
                Err(CommandError::Refused {
                    status,
                    code,
                    message,
                    ..
                }) if status < 500 => {
                    refused.push(format!("{relative}: refused ({status} {code}): {message}"));
                }
                Err(error) => return Err(error),
            }
        } else if is_text_doc(relative) {
            if !relative.starts_with(&args.prefix)
                || files.binary_search(&format!("{relative}.yjs")).is_ok()
            {
                continue;
            }
            let text = String::from_utf8(read(&path)?).map_err(|_| {
                CommandError::Invalid(format!("{}: not UTF-8 text", path.display()))
            })?;
            match import_text(&client, relative, &text, args.replace).await? {
                TextOutcome::Written => n_texts += 1,
                TextOutcome::Unchanged => n_unchanged += 1,
                TextOutcome::Refused(reason) => refused.push(format!("{relative}: {reason}")),
            }
        } else {
            n_skipped += 1;
        }
    }
    let summary = format!(
        "imported into {}: {n_updates} Yjs updates merged, {n_texts} texts written, \
         {n_unchanged} texts already there, {n_skipped} other files skipped",
        client.server()
    );
    if refused.is_empty() {
        Ok(summary)
    } else {
        Err(CommandError::Invalid(format!(
            "{summary}; refused:\n{}",
            refused.join("\n")
        )))
    }
}

/// Writes `text` into doc `name` by the rules of the module docs.
async fn import_text(
    client: &Client,
    name: &str,
    text: &str,
    replace: bool,
) -> Result<TextOutcome, CommandError> {
    let current = client.get(&Client::doc_path(name, "")).await?;
    let doc = Doc::new();
    let mut txn = doc.transact_mut();
    if let Some(current) = &current {
        let update = Update::decode_v1(current).map_err(|error| CommandError::Connect {
            server: client.server().to_owned(),
            detail: format!("the state of {name:?} is not a Yjs update: {error}"),
        })?;
        txn.apply_update(update)
            .map_err(|error| CommandError::Connect {
                server: client.server().to_owned(),
                detail: format!("the state of {name:?} does not apply: {error}"),
            })?;
    }
    let before = txn.state_vector();
    let has_content = before != StateVector::default();
    let root = txn.get_or_insert_text(TEXT_ROOT);
    let existing = root.get_string(&txn);
    if existing == text {
        return Ok(TextOutcome::Unchanged);
    }
    if has_content && !replace {
        return Ok(TextOutcome::Refused(
            "the document already has other content; --replace replaces its text".into(),
        ));
    }
    let len = root.len(&txn);
    root.remove_range(&mut txn, 0, len);
    root.insert(&mut txn, 0, text);
    let update = txn.encode_diff_v1(&before);
    drop(txn);
    match client
        .post(&Client::doc_path(name, "/update"), update)
        .await
    {
        Ok(()) => Ok(TextOutcome::Written),
        Err(CommandError::Refused {
            status,
            code,
            message,
            ..
        }) if status < 500 => Ok(TextOutcome::Refused(format!(
            "refused ({status} {code}): {message}"
        ))),
        Err(error) => Err(error),
    }
}

/// Every file under `dir`, as paths relative to the import root with `/` separators.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), CommandError> {
    let entries = fs::read_dir(dir).map_err(|error| CommandError::Io {
        what: format!("reading {}", dir.display()),
        error,
    })?;
    for entry in entries {
        let entry = entry.map_err(|error| CommandError::Io {
            what: format!("reading {}", dir.display()),
            error,
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(CommandError::Invalid(format!(
                "{}: file names must be UTF-8",
                entry.path().display()
            )));
        };
        let relative = format!("{prefix}{name}");
        let kind = entry.file_type().map_err(|error| CommandError::Io {
            what: format!("reading {}", entry.path().display()),
            error,
        })?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{relative}/"), out)?;
        } else if kind.is_file() {
            out.push(relative);
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, CommandError> {
    fs::read(path).map_err(|error| CommandError::Io {
        what: format!("reading {}", path.display()),
        error,
    })
}
