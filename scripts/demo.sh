#!/usr/bin/env bash
# The main job on the default model and the bundled example (examples/support, a fictional
# shop's support answers in a fixed house format with policy rules):
#   install the models -> validate the data -> fine-tune a LoRA (~5-10 min on 2 cores, with
#   progress) -> `ferrotune eval` of base vs tuned on the held-out split (ROUGE-L, BLEU, chrF,
#   exact match, F1, loss, with 95% intervals; report in runs/demo/eval) -> answers side by side.
# Writes runs/demo (replaced on each run). Set STEPS to train longer (default 30 steps of 4 rows).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-30}
bin="${CARGO_TARGET_DIR:-target}/release/ferrotune"
scripts/install-models.sh
echo
echo "== 1. validate the data"
$bin data validate examples/support/train.jsonl --eval examples/support/eval.jsonl --model smollm2-135m-instruct
echo
echo "== 2. fine-tune (LoRA r=16 on all 7 projections, $steps steps; eval loss on the held-out split before and after)"
rm -rf runs/demo
$bin train --data examples/support/train.jsonl --eval-data examples/support/eval.jsonl \
  --max-steps "$steps" --lr 1e-3 --eval-steps "$steps" --out runs/demo
echo
echo "== 3. evaluate base vs tuned on all held-out rows (greedy, batched; metrics with 95% intervals)"
$bin eval --data examples/support/eval.jsonl --adapter runs/demo/adapter --max-tokens 160 --out runs/demo/eval
echo
echo "== 4. three held-out questions, side by side"
python3 - <<'PY'
import json
ev = json.load(open("runs/demo/eval/eval.json"))
for r in ev["rows"][:3]:
    print("-" * 78)
    print("QUESTION :", r["question"])
    print("REFERENCE:", r["reference"].replace("\n", "\n           "))
    for o in r["outputs"]:
        label = "BASE" if o["system"] == "base" else "TUNED"
        print(f"{label:<9}:", o["prediction"].strip().replace("\n", "\n           "))
print("-" * 78)
PY
echo "report: runs/demo/eval/report.md (chart metrics.svg)   loss curve: runs/demo/loss.svg"
echo "metrics: runs/demo/metrics.jsonl   adapter: runs/demo/adapter   lineage: runs/demo/lineage.json"
