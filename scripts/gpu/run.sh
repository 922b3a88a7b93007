#!/usr/bin/env bash
# Run the CUDA build of ferrotune on the GPU machine (built here by scripts/gpu/build-cuda.sh and
# carried as dist/ferrotune-cuda.xz):
#
#   scripts/gpu/run.sh train --device cuda --model M --data train.jsonl --out runs/gpu
#   scripts/gpu/run.sh bench train --device cuda --shape llama-1b --batch 8 --seq 1024 \
#       --peft-python /opt/torch/.venv/bin/python
#
# It unpacks the binary once (again when the archive is newer) and points the loader at the
# CUDA 13 libraries of the machine's PyTorch (cuBLAS, cuRAND, NVRTC, NCCL) and at the driver.
# NVLink multicast stays off in NCCL (the machine's rule: it can take the host's GPUs down).
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=${FERROTUNE_CUDA_ARCHIVE:-dist/ferrotune-cuda.xz}
bin=${FERROTUNE_CUDA_BIN:-/tmp/ferrotune-cuda/ferrotune}
if [ ! -x "$bin" ] || [ "$archive" -nt "$bin" ]; then
  [ -f "$archive" ] || { echo "error: $archive not found (build it with scripts/gpu/build-cuda.sh and carry it)" >&2; exit 2; }
  mkdir -p "$(dirname "$bin")"
  if command -v xz >/dev/null; then
    xz -dc "$archive" > "$bin.tmp"
  else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$archive" "$bin.tmp"
  fi
  chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"
fi
libs=${FERROTUNE_CUDA_LIBS:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)}
nccl=${FERROTUNE_NCCL_LIBS:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/nccl/lib 2>/dev/null | head -1)}
export LD_LIBRARY_PATH=$libs${nccl:+:$nccl}:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0
exec "$bin" "$@"
