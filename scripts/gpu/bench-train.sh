#!/usr/bin/env bash
# On the GPU machine: LoRA training speed and memory, ferrotune vs HF PEFT, side by side in one
# process each (same shape, random weights with transformers' init, same batch, sequence length,
# LoRA config and optimizer). Writes bench-SHAPE.{txt,json} to $OUT (default runs/gpu).
#   SHAPES="smollm2-135m llama-1b" BATCH=8 SEQ=1024 STEPS=10 scripts/gpu/bench-train.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
py=${PEFT_PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
status=0
for shape in ${SHAPES:-smollm2-135m llama-1b}; do
  scripts/gpu/run.sh bench train --device cuda --shape "$shape" --batch "${BATCH:-8}" --seq "${SEQ:-1024}" \
    --steps "${STEPS:-10}" --peft-python "$py" --json "$out/bench-$shape.json" 2>&1 | tee "$out/bench-$shape.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
