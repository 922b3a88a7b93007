#!/usr/bin/env bash
# On the GPU machine: `ferrotune train --device cuda` through the normal CLI on the bundled support
# data. The machine has no model hub and the GGUF is too large to carry with the binary, so the
# model is SmolLM2-135M's HF config and tokenizer (carried as dist/smol-hf, from
# `ferrotune models export`) with fresh random weights made there by transformers: this checks
# the GPU path end to end (loading, bf16, LoRA, eval loss, checkpoints, adapter, lineage), not
# the tuned model's quality. Writes the run to $OUT/run (default runs/gpu/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/gpu}
model=/tmp/smollm2-random
python3 - "$model" <<'PY'
import shutil, sys, torch, transformers
dst = sys.argv[1]
cfg = transformers.AutoConfig.from_pretrained("dist/smol-hf")
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dst)
for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"]:
    shutil.copy(f"dist/smol-hf/{f}", dst)
PY
# DEVICES=0,1: data parallel over those GPUs (--devices), each batch's rows split across them.
where=(--device cuda)
if [ -n "${DEVICES:-}" ]; then where+=(--devices "$DEVICES"); fi
scripts/gpu/run.sh train "${where[@]}" --model "$model" --data examples/support/train.jsonl \
  --eval-data examples/support/eval.jsonl --max-steps "${STEPS:-60}" --batch-size 8 --lr 1e-3 \
  --eval-steps 20 --save-total-limit 2 --out "$out/run" --quiet
ls -R "$out/run" | head -30
tail -3 "$out/run/metrics.jsonl"
