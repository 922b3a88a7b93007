//! Corpus BLEU exactly as sacrebleu 2.x's `corpus_bleu(hyps, [refs])` computes it with its
//! defaults: the `13a` tokenizer (mteval-v13a), mixed case, n-grams up to 4, brevity penalty over
//! the whole corpus, `exp` smoothing (NIST / mteval "method 3"), no effective order.
//!
//! Row statistics are sacrebleu's segment statistics: `[hyp_len, ref_len, correct_1..4,
//! total_1..4]`; the corpus score is computed from their sums (`BLEU._compute_score_from_stats`).

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::pystr;

const MAX_ORDER: usize = 4;

/// Number of statistics per row.
pub(crate) const STATS: usize = 2 + 2 * MAX_ORDER;

/// sacrebleu's `TokenizerRegexp` rules after the first (which is done by a character test):
/// split `.`/`,` not preceded by a digit, then not followed by a digit, and `-` after a digit.
static RULES: LazyLock<[(Regex, &str); 3]> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("constant regex");
    [
        (re(r"([^0-9])([\.,])"), "${1} ${2} "),
        (re(r"([\.,])([^0-9])"), " ${1} ${2}"),
        (re(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

/// sacrebleu `Tokenizer13a`, applied as BLEU applies it (`tokenizer(sent.rstrip())`).
///
/// The language-independent part drops `<skipped>`, joins `-\n` hyphenations, turns newlines into
/// spaces and unescapes `&quot; &amp; &lt; &gt;` (in that order, once each). The
/// language-dependent part (`TokenizerRegexp`) puts spaces around ASCII punctuation except
/// `' , - .`, splits `.` and `,` unless between digits, splits `-` after a digit, and collapses
/// whitespace.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = pystr::rstrip(line).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // Rule 1 on `f' {line} '`: `([\{-\~\[-\` -\&\(-\+\:-\@\/])` -> ` \1 `.
    let mut text = String::with_capacity(line.len() * 2 + 6);
    for c in format!(" {line} ").chars() {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            text.push(' ');
            text.push(c);
            text.push(' ');
        } else {
            text.push(c);
        }
    }
    for (re, rep) in RULES.iter() {
        text = re.replace_all(&text, *rep).into_owned();
    }
    pystr::split(&text).collect::<Vec<_>>().join(" ")
}

/// All word n-grams of orders 1..=4 with counts (`extract_all_word_ngrams`).
fn ngram_counts<'a>(tokens: &'a [&'a str]) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// One segment's statistics against a single reference (`_compute_segment_statistics`).
pub(crate) fn row_stats(prediction: &str, reference: &str) -> Vec<f64> {
    let hyp_line = tokenize_13a(prediction);
    let ref_line = tokenize_13a(reference);
    let hyp: Vec<&str> = pystr::split(&hyp_line).collect();
    let refs: Vec<&str> = pystr::split(&ref_line).collect();
    let ref_counts = ngram_counts(&refs);
    let mut correct = [0u64; MAX_ORDER];
    let mut total = [0u64; MAX_ORDER];
    for (gram, count) in ngram_counts(&hyp) {
        let n = gram.len() - 1;
        total[n] += count;
        if let Some(r) = ref_counts.get(gram) {
            correct[n] += count.min(*r);
        }
    }
    let mut stats = Vec::with_capacity(STATS);
    stats.push(hyp.len() as f64);
    stats.push(refs.len() as f64);
    stats.extend(correct.iter().map(|&c| c as f64));
    stats.extend(total.iter().map(|&t| t as f64));
    stats
}

/// `BLEU.compute_bleu` with `smooth_method="exp"`, `effective_order=False`, on summed statistics.
/// Floating-point operations follow sacrebleu's order so scores agree to the last bit.
pub(crate) fn score_from_stats(stats: &[f64]) -> f64 {
    let (sys_len, ref_len) = (stats[0], stats[1]);
    let correct = &stats[2..2 + MAX_ORDER];
    let total = &stats[2 + MAX_ORDER..STATS];

    let bp = if sys_len < ref_len {
        if sys_len > 0.0 { (1.0 - ref_len / sys_len).exp() } else { 0.0 }
    } else {
        1.0
    };
    // "Early stop if there are no matches (#141)".
    if correct.iter().all(|&c| c == 0.0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut smooth_mteval = 1.0f64;
    for n in 0..MAX_ORDER {
        if total[n] == 0.0 {
            break;
        }
        precisions[n] = if correct[n] == 0.0 {
            smooth_mteval *= 2.0;
            100.0 / (smooth_mteval * total[n])
        } else {
            100.0 * correct[n] / total[n]
        };
    }
    // `my_log` floors log(0) at -9999999999, which drives the score to exactly 0.
    let log_sum: f64 = precisions.iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum();
    bp * (log_sum / MAX_ORDER as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world! It costs $3.50."), "Hello , world ! It costs $ 3.50 .");
        assert_eq!(tokenize_13a("1,000.5 and 1990-2000"), "1,000.5 and 1990 - 2000");
        assert_eq!(tokenize_13a("state-of-the-art isn't"), "state-of-the-art isn't");
        assert_eq!(tokenize_13a("&quot;hi&quot; &amp;amp;"), "\" hi \" & amp ;");
        assert_eq!(tokenize_13a("hyphen-\nated <skipped>end  \n"), "hyphenated end");
    }

    #[test]
    fn perfect_match_scores_100_and_no_match_scores_0() {
        let s = row_stats("the cat sat on the mat", "the cat sat on the mat");
        assert!((score_from_stats(&s) - 100.0).abs() < 1e-12);
        assert_eq!(score_from_stats(&row_stats("dog", "the cat sat on the mat")), 0.0);
        assert_eq!(score_from_stats(&row_stats("", "")), 0.0);
    }

    #[test]
    fn short_hypothesis_pays_the_brevity_penalty() {
        // All n-grams of the hypothesis match; only BP = exp(1 - 6/4) lowers the score.
        let s = row_stats("the cat sat on", "the cat sat on the mat");
        assert_eq!(&s[..2], &[4.0, 6.0]);
        assert!((score_from_stats(&s) - 100.0 * (1.0f64 - 1.5).exp()).abs() < 1e-9);
    }
}
