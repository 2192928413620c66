//! What a name a person gives may contain: version names, display names, file names and the
//! paths of new files. One rule for all of them, so a name shown in one place cannot be refused
//! or mangled in another. Contract: `protocol-spec/security.md`.
//!
//! Refused:
//! - control characters (Unicode category Cc: C0 including NUL, DEL, C1), which end strings in C
//!   code, move terminal cursors and split log lines;
//! - the bidirectional embedding, override and isolate controls (U+202A..U+202E,
//!   U+2066..U+2069), which reorder the text after them, so a name could display as something
//!   other than what it is (`invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`; CVE-2021-42574);
//! - the line and paragraph separators U+2028 and U+2029, which break lines like a newline.
//!
//! Other format characters (Cf) are kept: zero-width joiners and non-joiners are part of emoji
//! sequences and of Persian and Indic spelling, and the single direction marks U+200E/U+200F are
//! how right-to-left text is written correctly; none of them can hide what follows.
//!
//! Doc names are not checked here: a `DocId` is also the key of stored data, so it keeps its own
//! rule (no Cc, no backslash), and tightening it would strand docs that already exist.

/// Whether `c` may not appear in a name.
pub(crate) fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Whether `name` contains a character [`is_forbidden`] refuses.
pub(crate) fn has_forbidden(name: &str) -> bool {
    name.chars().any(is_forbidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_overrides_and_separators_are_refused_and_joiners_kept() {
        for bad in [
            "a\0b",
            "a\u{7f}",
            "a\u{85}",
            "a\u{9b}",
            "tab\there",
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{2028}b",
        ] {
            assert!(has_forbidden(bad), "{bad:?}");
        }
        for good in [
            "Entwurf 2",
            "שלום\u{200F} v2",
            "👩\u{200D}💻",
            "می\u{200C}خواهم",
            "naïve café",
        ] {
            assert!(!has_forbidden(good), "{good:?}");
        }
    }
}
