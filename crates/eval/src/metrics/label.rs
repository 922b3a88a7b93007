//! Accuracy for label tasks (classification, routing, yes/no): the model's answer is compared to
//! the gold label after a light normalisation that forgives how chat models tend to phrase a
//! label — surrounding whitespace, capitalisation, and a closing full stop.

/// Sentence punctuation removed from the end of a label: ASCII `. , ! ? ; :`, their CJK
/// full-width forms and the ellipsis. Brackets, quotes, `+` and `#` are kept, so labels such as
/// "C++", "C#" or "(B)" stay distinct.
const TRAILING: &[char] = &['.', ',', '!', '?', ';', ':', '。', '，', '！', '？', '；', '：', '…'];

/// The normalised label: trimmed, lowercased (Unicode lowercase mapping; not full case folding,
/// so "ß" and "SS" differ), then trailing sentence punctuation and whitespace stripped.
pub(crate) fn normalize_label(s: &str) -> String {
    s.trim().to_lowercase().trim_end_matches(|c: char| TRAILING.contains(&c) || c.is_whitespace()).to_owned()
}

/// 1.0 when the normalised labels are equal, else 0.0.
pub(crate) fn accuracy(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(normalize_label(prediction) == normalize_label(reference)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_forgives_case_whitespace_and_closing_punctuation() {
        assert_eq!(accuracy("  Positive.\n", "positive"), 1.0);
        assert_eq!(accuracy("NEGATIVE !", "negative"), 1.0);
        assert_eq!(accuracy("はい。", "はい"), 1.0);
    }

    #[test]
    fn label_keeps_meaningful_symbols() {
        assert_eq!(accuracy("C++", "C"), 0.0);
        assert_eq!(accuracy("(B)", "B"), 0.0);
        assert_eq!(accuracy("not positive", "positive"), 0.0);
    }

    #[test]
    fn empty_labels_match_only_empty_labels() {
        assert_eq!(accuracy("", " . "), 1.0);
        assert_eq!(accuracy("", "yes"), 0.0);
    }
}
