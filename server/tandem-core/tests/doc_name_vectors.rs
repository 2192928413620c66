//! The document-name vectors of `protocol-spec/vectors/doc-names.json`, checked against
//! `DocId::new`. The web client's unit tests (`web-client/src/api/names.test.ts`) read the same
//! file, so the two implementations of the rule cannot drift apart unnoticed. Rust is the
//! contract: a vector that fails here is wrong, one that fails only there is a client bug.

use serde_json::Value;
use tandem_core::doc_id::MAX_DOC_ID_BYTES;
use tandem_core::{DocId, DocIdError};

const VECTORS: &str = include_str!("../../../protocol-spec/vectors/doc-names.json");

/// Fewer vectors than this means the file was lost or cut short.
const MIN_VALID: usize = 10;
const MIN_INVALID: usize = 15;

/// The vector file's name for each way a decoded name can be refused.
fn class(error: &DocIdError) -> &'static str {
    match error {
        DocIdError::Empty => "empty",
        DocIdError::TooLong { .. } => "too_long",
        DocIdError::ForbiddenCharacter => "forbidden_character",
        DocIdError::BadSegment => "bad_segment",
        // Only `from_url_path` returns these; the vectors hold decoded names.
        DocIdError::BadEncoding => "bad_encoding",
        DocIdError::EncodedSeparator => "encoded_separator",
    }
}

fn cases<'a>(vectors: &'a Value, key: &str) -> &'a Vec<Value> {
    vectors[key]
        .as_array()
        .unwrap_or_else(|| panic!("doc-names.json: `{key}` is not a list"))
}

fn name(case: &Value) -> &str {
    case["name"]
        .as_str()
        .unwrap_or_else(|| panic!("doc-names.json: case without a `name`: {case}"))
}

#[test]
fn doc_name_vectors_match_doc_id() {
    let vectors: Value = serde_json::from_str(VECTORS).expect("doc-names.json is JSON");
    assert_eq!(
        vectors["max_bytes"].as_u64(),
        Some(MAX_DOC_ID_BYTES as u64),
        "max_bytes"
    );

    let valid = cases(&vectors, "valid");
    assert!(valid.len() >= MIN_VALID, "only {} valid names", valid.len());
    for case in valid {
        let name = name(case);
        match DocId::new(name) {
            Ok(id) => assert_eq!(id.as_str(), name),
            Err(error) => panic!("{name:?} ({}) was refused: {error}", case["note"]),
        }
    }

    let invalid = cases(&vectors, "invalid");
    assert!(
        invalid.len() >= MIN_INVALID,
        "only {} invalid names",
        invalid.len()
    );
    for case in invalid {
        let name = name(case);
        let expected = case["error"]
            .as_str()
            .expect("an invalid case has an `error`");
        match DocId::new(name) {
            Ok(_) => panic!("{name:?} ({}) was accepted", case["note"]),
            Err(error) => assert_eq!(class(&error), expected, "{name:?} ({})", case["note"]),
        }
    }
}
