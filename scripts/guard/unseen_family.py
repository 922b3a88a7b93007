#!/usr/bin/env python3
"""How the injection detector does on an attack family it never saw.

    python3 scripts/guard/unseen_family.py [--bin target/release/ferrotune] [--out bench/guard-injection-unseen.json]

For each attack family with at least 40 rows in the corpus: train with `ferrotune guard train`
on crates/guard/corpus/train.jsonl without that family (threshold at 1% FPR on validation
without it), then `ferrotune guard eval` on every row of that family from all three splits plus
the benign rows of the held-out test split. The recall at the model's threshold is the number
that matters: the threshold was chosen without the family, as it would be for a new attack.
The held-out test split's own numbers (bench/guard-injection.json) mix families seen in
training; this is the harder question.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CORPUS = os.path.join(REPO, "crates", "guard", "corpus")


def load(name):
    with open(os.path.join(CORPUS, f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "ferrotune"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "guard-injection-unseen.json"))
    args = ap.parse_args()
    train, val, test = load("train"), load("validation"), load("test")
    everything = train + val + test
    sizes = Counter(r["family"] for r in everything if r["label"] == 1)
    families = sorted(f for f, n in sizes.items() if n >= 40)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in families:
            tr = [r for r in train if r["family"] != fam]
            va = [r for r in val if r["family"] != fam]
            ev = [r for r in everything if r["family"] == fam] + [r for r in test if r["label"] == 0]
            paths = {k: os.path.join(tmp, f"{k}.jsonl") for k in ("train", "val", "eval")}
            write(paths["train"], tr)
            write(paths["val"], va)
            write(paths["eval"], ev)
            model = os.path.join(tmp, "m.bin")
            subprocess.run([args.bin, "guard", "train", "--data", paths["train"], "--validation", paths["val"], "--out", model],
                           check=True, capture_output=True)
            out = subprocess.run([args.bin, "guard", "eval", "--data", paths["eval"], "--model", model, "--json", "--latency-runs", "1"],
                                 check=True, capture_output=True, text=True).stdout
            rep = json.loads(out)["report"]
            at = rep["at_threshold"]
            fam_row = rep["per_family"][fam]
            rules = sum(c["attacks"] for c in rep["rules"].values())
            res = {
                "family": fam,
                "rows": fam_row["attacks"],
                "recall_at_model_threshold": round(fam_row["caught"] / fam_row["attacks"], 4),
                "caught_by_a_rule": rules,
                "benign_fpr_at_model_threshold": round(at["fpr"], 4),
                "recall_at_1pct_fpr": round(rep["at_fpr"][0]["recall"], 4),
                "auroc": round(rep["auroc"], 4),
            }
            print(json.dumps(res), file=sys.stderr)
            results.append(res)
    record = {
        "bench": "guard-injection-unseen-family",
        "command": "python3 scripts/guard/unseen_family.py",
        "method": __doc__.strip().split("\n\n")[2].replace("\n", " "),
        "results": results,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
