//! The few Python `str` semantics the reference implementations rely on, so tokenizers written
//! against CPython behave the same here.

/// CPython's `str.isspace()` for one code point (what `str.split()` / `str.strip()` split on).
///
/// It is Unicode `White_Space` (Rust's [`char::is_whitespace`]) plus the ASCII information
/// separators U+001C..U+001F, which CPython counts as whitespace (bidi class B/S) and Rust does not.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// CPython's `str.split()` with no argument: runs of whitespace separate, empty pieces dropped.
pub(crate) fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|t| !t.is_empty())
}

/// CPython's `str.rstrip()` with no argument.
pub(crate) fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// A "word" character for Python `re`'s `\b` on `str` patterns: `str.isalnum()` or `_`.
///
/// `char::is_alphanumeric` (Alphabetic or Numeric) equals `isalnum` on letters, digits and the
/// plain combining diacritics (U+0300..U+036F are neither), so NFD text splits the same way. It
/// differs only on `Other_Alphabetic` marks (e.g. Indic vowel signs, circled letters), which
/// Python does not count as alphanumeric; such marks never sit next to the ASCII words the SQuAD
/// normaliser looks for in realistic text.
pub(crate) fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_on_unusual_whitespace() {
        // Python: "a\x1eb\u00a0c\u3000d\u2028e\x85f".split() == ['a','b','c','d','e','f']
        let got: Vec<&str> = split("a\u{1e}b\u{a0}c\u{3000}d\u{2028}e\u{85}f").collect();
        assert_eq!(got, ["a", "b", "c", "d", "e", "f"]);
        // U+200B ZERO WIDTH SPACE is not whitespace in Python either.
        assert_eq!(split("a\u{200b}b").count(), 1);
    }

    #[test]
    fn combining_marks_are_not_word_characters() {
        assert!(!is_word('\u{301}'));
        assert!(is_word('é') && is_word('_') && is_word('7') && is_word('東'));
        assert!(!is_word('-') && !is_word(' '));
    }
}
