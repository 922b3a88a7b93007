#!/usr/bin/env bash
# On the GPU machine: where a LoRA training step's GPU time goes, kernel by kernel. Runs
# `bench train` (one warm-up + STEPS timed steps, no peer) under Nsight Compute with only the
# kernel-duration metric (no cache flush, clocks left alone: device METHOD.md), then sums the
# durations by kernel name. Writes ncu.csv and kernels.txt to $OUT (default runs/gpu).
#   SHAPE=llama-1b BATCH=8 SEQ=1024 STEPS=1 scripts/gpu/profile-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
scripts/gpu/run.sh --version >/dev/null   # unpack the binary once, outside the profiler
ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
  --log-file "$out/ncu.csv" \
  scripts/gpu/run.sh bench train --device cuda --shape "${SHAPE:-llama-1b}" --batch "${BATCH:-8}" \
  --seq "${SEQ:-1024}" --steps "${STEPS:-1}" > "$out/bench.txt" 2>&1 || { tail -20 "$out/bench.txt"; exit 1; }
python3 - "$out/ncu.csv" "${STEPS:-1}" <<'PY' | tee "$out/kernels.txt"
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
steps = 1 + int(sys.argv[2])  # warm-up included
tot, cnt = collections.Counter(), collections.Counter()
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "ns")
    v *= {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "nsecond": 1e-6, "ms": 1.0, "msecond": 1.0}.get(unit, 1e-6)
    name = r["Kernel Name"].split("(")[0][:90]
    tot[name] += v
    cnt[name] += 1
all_ms = sum(tot.values())
print(f"{sum(cnt.values())} kernels, {all_ms:.1f} ms GPU time over {steps} steps ({all_ms/steps:.1f} ms a step)")
for name, ms in tot.most_common(45):
    print(f"{ms/steps:9.2f} ms/step {cnt[name]//steps:6d} calls/step  {100*ms/all_ms:5.1f}%  {name}")
PY
