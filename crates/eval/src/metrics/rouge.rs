//! ROUGE-L as Google's `rouge-score` package computes it with
//! `RougeScorer(["rougeL"], use_stemmer=False)`: its default tokenizer, the LCS of the token
//! sequences, and the F-measure of LCS precision and recall. Porter stemming (`use_stemmer=True`)
//! is not offered: it would need NLTK's stemmer reproduced exactly, and fine-tuning evals compare
//! two systems on the same tokenisation either way.

/// `rouge_score.tokenize.tokenize(text, None)`: lowercase, replace every run of characters other
/// than `[a-z0-9]` with a space, split, keep tokens matching `^[a-z0-9]+$`. That leaves exactly
/// the maximal runs of ASCII lowercase letters and digits of the lowercased text, so words in
/// other scripts (accented letters split a word, CJK disappears) do not count.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Length of the longest common subsequence (rouge-score's `_lcs_table(...)[-1][-1]`), in
/// O(len(a) * len(b)) time and O(len(b)) memory.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// rouge-score's `_score_lcs(target, prediction).fmeasure`: 0 when either side has no tokens.
pub(crate) fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let target = tokenize(reference);
    let pred = tokenize(prediction);
    if target.is_empty() || pred.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&target, &pred) as f64;
    let precision = lcs / pred.len() as f64;
    let recall = lcs / target.len() as f64;
    // `scoring.fmeasure`, same operation order.
    if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_keeps_only_ascii_alphanumeric_runs() {
        assert_eq!(tokenize("Café 2-for-1, naïve ÉTÉ 東京"), ["caf", "2", "for", "1", "na", "ve", "t"]);
        // U+212A KELVIN SIGN lowercases to ASCII "k" in Python and in Rust.
        assert_eq!(tokenize("5\u{212a}"), ["5k"]);
    }

    #[test]
    fn lcs_is_a_subsequence_not_a_substring() {
        let t = |s: &str| tokenize(s);
        assert_eq!(lcs_len(&t("a b c d e"), &t("a x c y e")), 3);
        assert_eq!(lcs_len(&t("a b"), &t("b a")), 1);
        assert_eq!(lcs_len(&t(""), &t("a")), 0);
    }

    #[test]
    fn rouge_l_of_reordered_sentence() {
        // LCS("police killed the gunman", "the gunman police killed") = 2; p = r = 0.5.
        assert_eq!(rouge_l("the gunman police killed", "police killed the gunman"), 0.5);
        assert_eq!(rouge_l("", ""), 0.0);
    }
}
