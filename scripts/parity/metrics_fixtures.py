#!/usr/bin/env python3
"""Reference values for the eval crate's text metrics, computed with the standard implementations
and kept in fixtures/metrics/reference.json (checked by crates/eval/tests/metrics_parity.rs):

- BLEU: sacrebleu `corpus_bleu(hyps, [refs])` with its defaults (13a, exp smoothing, mixed case),
  plus the per-segment sufficient statistics and the 13a tokenization of every string.
- chrF: sacrebleu `corpus_chrf(hyps, [refs])` with its defaults (char order 6, word order 0,
  beta 2, whitespace removed, effective-order averaging), plus per-segment statistics.
- ROUGE-L: rouge-score `RougeScorer(["rougeL"], use_stemmer=False)`, per-pair F-measure.
- SQuAD exact match / token F1: the official SQuAD v2.0 evaluation script's `normalize_answer`,
  `compute_exact` and `compute_f1` (copied below; v2.0 scores a pair of empty answers F1 = 1).

Corpus scores are recorded over the whole set and over a few subsets (first 10, last 20, a seeded
random 25) so that summing statistics over rows is checked, not only single rows.

Run: python3 -m venv /work/metricsvenv && /work/metricsvenv/bin/pip install sacrebleu rouge-score
     /work/metricsvenv/bin/python scripts/parity/metrics_fixtures.py
"""
import collections
import json
import random
import re
import string
from importlib.metadata import version
from pathlib import Path

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "metrics" / "reference.json"


# --- SQuAD v2.0 official evaluation script (evaluate-v2.0.py), verbatim logic --------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s):
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


# --- the pairs: (prediction, reference) -----------------------------------------------------------
PAIRS = [
    # identical / trivial
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("", "The reference is not empty."),
    ("The prediction is not empty.", ""),
    ("", ""),
    ("   ", "Only whitespace in the prediction."),
    # punctuation and case
    ("the cat sat on the mat", "The cat sat on the mat."),
    ("THE CAT SAT ON THE MAT!", "The cat sat on the mat."),
    ("Hello, world!", "hello world"),
    ("Yes.", "yes"),
    ("(a) The answer is B.", "The answer is (B)."),
    ("well... maybe; or not?!", "Well, maybe -- or not."),
    # numbers
    ("The total is 1,234.56 dollars.", "The total is 1234.56 dollars."),
    ("It costs $3.50, not $4.", "It costs 3.50 USD, not 4 USD."),
    ("Call 555-0199 before 5 p.m.", "Call 555-0199 before 5pm."),
    ("Version 2.0.1 was released in 2023.", "Version 2.0.1 came out in 2023."),
    ("Between 10-20 items, i.e. 15%.", "Between 10 - 20 items, i.e. 15 %."),
    ("3.14159", "3.14"),
    # unicode: accents, CJK, emoji, Greek final sigma, Turkish dotted I, odd whitespace
    ("Café au lait, s'il vous plaît.", "Cafe au lait, s'il vous plait."),
    ("Le thé est prêt à être servi.", "Le the\u0301 est pre\u0302t a\u0300 e\u0302tre servi."),
    ("东京是日本的首都。", "日本的首都是东京。"),
    ("我喜欢吃苹果 and bananas", "我喜欢吃香蕉 and apples"),
    ("Great job! 🎉👍", "Great job 🎉"),
    ("ΟΔΟΣ ΑΘΗΝΩΝ", "οδος αθηνων"),
    ("İstanbul is big", "istanbul is big"),
    ("Straße und STRASSE", "strasse und straße"),
    ("tab\tseparated\u00a0nbsp\u3000ideographic", "tab separated nbsp ideographic"),
    ("unit\x1eseparator and\u2028line sep", "unit separator and line sep"),
    ("naïve coöperation résumé", "naive cooperation resume"),
    # very short
    ("Paris", "Paris"),
    ("Paris", "London"),
    ("an", "the"),
    ("a apple", "an apple"),
    ("New York City", "NYC"),
    ("no", "No."),
    # 13a tokenization edge cases
    ("state-of-the-art results", "state of the art results"),
    ("It's John's book, isn't it?", "It is John's book, is it not?"),
    ("He said &quot;hello&quot; &amp; left.", 'He said "hello" & left.'),
    ("5 &lt; 7 &gt; 3 &amp;amp; done", "5 < 7 > 3 & done"),
    ("The range was 1990-2000 -- roughly.", "The range was 1990 - 2000, roughly."),
    ("In 1999. Then 2000.5 and 3.", "In 1999 . Then 2000.5 and 3 ."),
    ("e.g. U.S.A. and a.m.", "e.g. USA and am"),
    ("multi-\nline hyphen-\nated text", "multiline hyphenated text"),
    ("<skipped> kept words", "kept words"),
    ("trailing spaces   \n", "trailing spaces"),
    ("x—y – z ‘quoted’ “double”", "x - y - z 'quoted' \"double\""),
    ("path/to/file.txt {a:b} [c] @user #tag", "path / to / file.txt { a : b } [ c ] @ user # tag"),
    ("1,000,000 and 1.000.000", "1 000 000 and 1.000.000"),
    ("a.b,c.d", "a . b , c . d"),
    # JSON-looking strings
    ('{"name": "Alice", "age": 30}', '{"age": 30, "name": "Alice"}'),
    ('{"status": "refunded", "amount": 12.5}', '{"status": "refunded", "amount": 12.50}'),
    ('```json\n{"intent": "cancel_order"}\n```', '{"intent": "cancel_order"}'),
    ('["a", "b", "c"]', '["a","b","c"]'),
    # long, multi-sentence
    (
        "The quick brown fox jumps over the lazy dog. It then runs into the forest, where it "
        "finds a small stream. After drinking some water, the fox lies down and falls asleep.",
        "A quick brown fox jumped over a lazy dog. Then it ran into the woods and found a small "
        "stream. The fox drank some water, lay down, and fell asleep.",
    ),
    (
        "Machine translation quality is often measured with BLEU, which counts matching n-grams "
        "between a candidate and one or more references. chrF instead uses character n-grams, "
        "which makes it more robust to morphology.",
        "Translation quality is commonly measured using BLEU, counting n-gram matches between a "
        "hypothesis and references, while chrF relies on character n-grams and is therefore more "
        "robust for morphologically rich languages.",
    ),
    # realistic customer-support answers
    (
        "I'm sorry for the inconvenience! Your order #48213 has been cancelled and a full refund "
        "of $59.99 will appear on your card within 5-7 business days.",
        "Sorry about that. I've cancelled order #48213; the refund of $59.99 should reach your card "
        "in 5-7 business days.",
    ),
    (
        "To reset your password, go to Settings > Account > Security and click \"Reset password\". "
        "You'll receive an email with a link that expires in 24 hours.",
        "Open Settings > Account > Security, then select 'Reset password'. We'll email you a link "
        "(valid for 24 hours).",
    ),
    (
        "Our support team is available Monday to Friday, 9 a.m. to 6 p.m. CET.",
        "Support hours: Mon-Fri, 9:00-18:00 CET.",
    ),
    (
        "Unfortunately, items bought on sale can't be returned, but they can be exchanged within "
        "30 days.",
        "Sale items are not eligible for returns; exchanges are possible within 30 days of purchase.",
    ),
    (
        "Yes, we ship to Canada. Shipping takes 7–10 days and costs CA$15.",
        "We do ship to Canada: delivery takes 7-10 business days and costs 15 CAD.",
    ),
    (
        "Your subscription renews on 2024-03-01. You can turn off auto-renewal at any time.",
        "The plan renews automatically on March 1, 2024 unless you disable auto-renewal.",
    ),
    (
        "Please restart the router, wait 30 seconds, and try connecting again.",
        "Please restart the router, wait 30 seconds, and try connecting again.",
    ),
    (
        "I have escalated your ticket to our billing team; they'll contact you within 48 hours.",
        "Your ticket was escalated to billing, who will reach out within two days.",
    ),
]


def main():
    hyps = [p for p, _ in PAIRS]
    refs = [r for _, r in PAIRS]
    n = len(PAIRS)

    bleu = BLEU()
    chrf = CHRF()
    tok = Tokenizer13a()
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    # Per-segment sufficient statistics, as sacrebleu sums them for corpus scores.
    bleu_stats = bleu._extract_corpus_statistics(hyps, [refs])
    chrf_stats = chrf._extract_corpus_statistics(hyps, [refs])

    pairs = []
    for i, (h, r) in enumerate(PAIRS):
        pairs.append({
            "prediction": h,
            "reference": r,
            # BLEU pre-processing is `tokenizer(sent.rstrip())`
            "tok13a_prediction": tok(h.rstrip()),
            "tok13a_reference": tok(r.rstrip()),
            "bleu_stats": [int(x) for x in bleu_stats[i]],
            "chrf_stats": [int(x) for x in chrf_stats[i]],
            "bleu": BLEU().corpus_score([h], [[r]]).score,
            "chrf": CHRF().corpus_score([h], [[r]]).score,
            "rougeL": rouge.score(r, h)["rougeL"].fmeasure,
            "exact_match": compute_exact(r, h),
            "f1": compute_f1(r, h),
        })

    rng = random.Random(20240601)
    subsets = {
        "all": list(range(n)),
        "first_10": list(range(10)),
        "last_20": list(range(n - 20, n)),
        "random_25": sorted(rng.sample(range(n), 25)),
    }
    corpus = {}
    for name, idx in subsets.items():
        sh = [hyps[i] for i in idx]
        sr = [refs[i] for i in idx]
        em = [pairs[i]["exact_match"] for i in idx]
        f1 = [pairs[i]["f1"] for i in idx]
        rl = [pairs[i]["rougeL"] for i in idx]
        corpus[name] = {
            "indices": idx,
            "bleu": BLEU().corpus_score(sh, [sr]).score,
            "chrf": CHRF().corpus_score(sh, [sr]).score,
            "rougeL": sum(rl) / len(rl),
            "exact_match": sum(em) / len(em),
            "f1": sum(f1) / len(f1),
        }

    out = {
        "generator": "scripts/parity/metrics_fixtures.py",
        "versions": {pkg: version(pkg) for pkg in ("sacrebleu", "rouge-score", "nltk")},
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "pairs": pairs,
        "corpus": corpus,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {n} pairs, subsets {list(subsets)}")
    for name, c in corpus.items():
        print(f"  {name:10s} BLEU {c['bleu']:.4f}  chrF {c['chrf']:.4f}  rougeL {c['rougeL']:.4f}"
              f"  EM {c['exact_match']:.4f}  F1 {c['f1']:.4f}")


if __name__ == "__main__":
    main()
