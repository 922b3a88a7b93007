//! SQuAD exact match and token F1, as the official SQuAD v2.0 evaluation script computes them
//! (`normalize_answer`, `compute_exact`, `compute_f1` in `evaluate-v2.0.py`).

use std::collections::HashMap;

use super::pystr;

/// `normalize_answer`: lowercase, drop ASCII punctuation (`string.punctuation`), replace the
/// articles a/an/the (whole words, `re.sub(r"\b(a|an|the)\b", " ", …)`) by a space, then collapse
/// whitespace (`" ".join(text.split())`).
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: Vec<char> = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let no_articles = remove_articles(&no_punct);
    pystr::split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)` on a `str`: the regex only ever matches the whole
/// words "a", "an" and "the" (the alternation backtracks from "a" to "an" when `\b` fails), with
/// `\b` judged on the original text.
fn remove_articles(text: &[char]) -> String {
    const ARTICLES: [&str; 3] = ["a", "an", "the"];
    let word_at = |i: usize| text.get(i).is_some_and(|&c| pystr::is_word(c));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let at_boundary = i == 0 || !word_at(i - 1);
        // Tried in the regex's alternation order; articles are ASCII, so bytes = chars.
        let matched = ARTICLES
            .iter()
            .find(|article| {
                let end = i + article.len();
                at_boundary
                    && text.get(i..end).is_some_and(|w| article.chars().eq(w.iter().copied()))
                    && !word_at(end)
            })
            .map(|article| article.len());
        match matched {
            Some(len) => {
                out.push(' ');
                i += len;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
}

/// `compute_exact`: 1.0 when the normalised strings are equal, else 0.0.
pub(crate) fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(normalize_answer(prediction) == normalize_answer(reference)))
}

/// `compute_f1`: harmonic mean of token precision and recall over the multiset of normalised
/// tokens. When either side has no tokens the score is 1.0 if both are empty, else 0.0.
pub(crate) fn token_f1(prediction: &str, reference: &str) -> f64 {
    let pred_norm = normalize_answer(prediction);
    let gold_norm = normalize_answer(reference);
    let pred: Vec<&str> = pystr::split(&pred_norm).collect();
    let gold: Vec<&str> = pystr::split(&gold_norm).collect();
    if pred.is_empty() || gold.is_empty() {
        return f64::from(u8::from(pred == gold));
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold {
        *gold_counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &pred {
        if let Some(n) = gold_counts.get_mut(t).filter(|n| **n > 0) {
            *n -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    // Same operation order as the script, so the result is bit-identical.
    let precision = 1.0 * same as f64 / pred.len() as f64;
    let recall = 1.0 * same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_are_removed_only_as_whole_words() {
        assert_eq!(normalize_answer("The Answer, is an apple!"), "answer is apple");
        assert_eq!(normalize_answer("theatre anthem a-ha"), "theatre anthem aha");
        assert_eq!(normalize_answer("Then a"), "then");
        assert_eq!(normalize_answer("an"), "");
    }

    #[test]
    fn decomposed_accent_after_article_letters_behaves_like_python() {
        // Python's \b sees U+0300 as a non-word char, so NFD "à" loses its "a".
        assert_eq!(normalize_answer("a\u{300} bientôt"), "\u{300} bientôt");
    }

    #[test]
    fn f1_counts_repeated_tokens_as_a_multiset() {
        // pred: cat cat dog, gold: cat dog dog -> overlap 2, p = r = 2/3.
        let f1 = token_f1("cat cat dog", "cat dog dog");
        assert!((f1 - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn f1_of_two_empty_answers_is_one_and_of_one_empty_is_zero() {
        assert_eq!(token_f1("", "The."), 1.0);
        assert_eq!(token_f1("", "cat"), 0.0);
        assert_eq!(token_f1("cat", ""), 0.0);
    }

    #[test]
    fn exact_match_ignores_case_punctuation_and_articles() {
        assert_eq!(exact_match("The Eiffel Tower.", "eiffel tower"), 1.0);
        assert_eq!(exact_match("Eiffel Towers", "eiffel tower"), 0.0);
    }
}
