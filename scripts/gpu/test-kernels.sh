#!/usr/bin/env bash
# On the GPU machine: the model crate's unit tests from a CUDA build (scripts/gpu/build-cuda.sh
# --tests, carried as dist/model-tests-cuda.xz). The hand-over ops' tests run on the CPU and on
# GPU 0, so the CUDA kernels are checked against candle's composed ops there. Extra arguments go
# to the test binary (a name filter, --nocapture, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
FERROTUNE_CUDA_ARCHIVE=dist/model-tests-cuda.xz FERROTUNE_CUDA_BIN=/tmp/ferrotune-cuda/model-tests \
  exec scripts/gpu/run.sh "$@"
