//! `DocId`: the validated name of a shared document.
//!
//! A name is parsed once, at the edge, from the URL path after `/ws/` or `/api/docs/`. It is an
//! opaque key in redb and is never turned into a filesystem path. Validation keeps exactly one
//! spelling per document: no empty, `.` or `..` segments, no leading or trailing `/`, and no
//! percent-encoded `/`, so `a/../b`, `/b`, `b/` and `a%2Fb` can never alias `b` or `a/b`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Longest document name in bytes (after percent-decoding).
pub const MAX_DOC_ID_BYTES: usize = 255;

/// A validated document name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(Arc<str>);

/// Why a document name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocIdError {
    /// The name is empty.
    #[error("document name is empty")]
    Empty,
    /// The name is longer than [`MAX_DOC_ID_BYTES`].
    #[error("document name is {len} bytes, limit {max}", max = MAX_DOC_ID_BYTES)]
    TooLong {
        /// Length in bytes after decoding.
        len: usize,
    },
    /// Percent-decoding produced invalid UTF-8 or a bad escape.
    #[error("document name is not valid percent-encoded utf-8")]
    BadEncoding,
    /// `%2F` or `%5C`: an encoded separator would alias another name.
    #[error("document name contains an encoded separator")]
    EncodedSeparator,
    /// A control character or a backslash.
    #[error("document name contains a forbidden character")]
    ForbiddenCharacter,
    /// An empty, `.` or `..` segment, or a leading or trailing `/`.
    #[error("document name has an empty, '.' or '..' segment")]
    BadSegment,
}

impl DocId {
    /// Validates an already decoded name.
    pub fn new(name: &str) -> Result<DocId, DocIdError> {
        if name.is_empty() {
            return Err(DocIdError::Empty);
        }
        if name.len() > MAX_DOC_ID_BYTES {
            return Err(DocIdError::TooLong { len: name.len() });
        }
        if name.chars().any(|c| c.is_control() || c == '\\') {
            return Err(DocIdError::ForbiddenCharacter);
        }
        if name
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(DocIdError::BadSegment);
        }
        Ok(DocId(Arc::from(name)))
    }

    /// Parses the raw (still percent-encoded) URL path segment(s) that name a document.
    pub fn from_url_path(raw: &str) -> Result<DocId, DocIdError> {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(DocIdError::EncodedSeparator);
        }
        let decoded: Cow<'_, str> = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| DocIdError::BadEncoding)?;
        DocId::new(&decoded)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_folder_style_names() {
        for name in ["team/notes.md", "a", "über/ß.txt", "x y/z", "a.b/c..d"] {
            assert_eq!(
                DocId::new(name).map(|id| id.to_string()),
                Ok(name.to_string())
            );
        }
    }

    #[test]
    fn percent_decoding_is_handled() {
        assert_eq!(
            DocId::from_url_path("team/my%20notes.md").unwrap().as_str(),
            "team/my notes.md"
        );
    }

    #[test]
    fn refuses_names_that_could_alias_or_escape() {
        let cases = [
            ("", DocIdError::Empty),
            ("/etc/passwd", DocIdError::BadSegment),
            ("a/../b", DocIdError::BadSegment),
            ("..", DocIdError::BadSegment),
            ("a//b", DocIdError::BadSegment),
            ("a/", DocIdError::BadSegment),
            ("./a", DocIdError::BadSegment),
            ("a%2Fb", DocIdError::EncodedSeparator),
            ("a%2fb", DocIdError::EncodedSeparator),
            ("a%5Cb", DocIdError::EncodedSeparator),
            ("%2e%2e/x", DocIdError::BadSegment),
            ("a%00b", DocIdError::ForbiddenCharacter),
            ("a\\b", DocIdError::ForbiddenCharacter),
            ("%ff", DocIdError::BadEncoding),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                DocId::from_url_path(raw).err(),
                Some(expected),
                "case {raw:?}"
            );
        }
        let long = "x".repeat(MAX_DOC_ID_BYTES + 1);
        assert_eq!(
            DocId::new(&long).err(),
            Some(DocIdError::TooLong { len: long.len() })
        );
    }
}
