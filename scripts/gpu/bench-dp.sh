#!/usr/bin/env bash
# On the 2-GPU machine: data-parallel LoRA training (`--devices`) against one GPU, same shape,
# batch, sequence length, weights and steps. For each shape it runs `bench train` on GPU 0 alone
# and on GPUs $DEVICES; the data-parallel run also prints its gradient check (the split's summed
# gradients against GPU 0 alone on the whole batch, and each GPU alone against GPU 0) and the
# peak memory of each GPU. Writes dp-SHAPE-DROPOUT-{one,dp}.{txt,json} to $OUT (default runs/gpu).
#   SHAPES="smollm2-135m llama-1b" DROPOUTS="0 0.05" BATCH=8 SEQ=1024 STEPS=10 scripts/gpu/bench-dp.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
status=0
for shape in ${SHAPES:-smollm2-135m llama-1b}; do
  for p in ${DROPOUTS:-0}; do
    for mode in one dp; do
      if [ $mode = dp ]; then where=(--device cuda --devices "${DEVICES:-0,1}"); else where=(--device cuda:0); fi
      name=dp-$shape-$p-$mode
      scripts/gpu/run.sh bench train "${where[@]}" --shape "$shape" --batch "${BATCH:-8}" --seq "${SEQ:-1024}" \
        --steps "${STEPS:-10}" --lora-dropout "$p" --json "$out/$name.json" 2>&1 | tee "$out/$name.txt"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    done
  done
done
exit $status
