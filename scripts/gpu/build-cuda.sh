#!/usr/bin/env bash
# Build the CUDA binary of ferrotune on this (GPU-less) machine, for the lent H200 machine.
#
#   scripts/gpu/build-cuda.sh            # -> dist/ferrotune-cuda.xz (stripped, compressed)
#   scripts/gpu/build-cuda.sh --tests    # also dist/model-tests-cuda.xz: the model crate's unit
#                                        # tests with the CUDA kernels (run there with
#                                        # scripts/gpu/test-kernels.sh)
#
# What it does, and why (facts measured on the H200 machine, issue #8):
# - nvcc must be 13.0: the driver there (580) rejects PTX from newer compilers. The CUDA 13.0
#   wheels from PyPI are installed with --no-deps into .venv-cuda/ (≈1.2 GB, once), pinned, or
#   pip pulls 13.5 parts.
# - candle 0.11 links cudarc 0.19 with `dynamic-linking`: the linker wants libcuda.so (the
#   driver, which no wheel ships) and unversioned libcublas.so etc. We build a stub libcuda.so.1
#   exporting every driver symbol cudarc declares (the real driver is loaded at run time) and
#   link the wheels' versioned libraries under unversioned names, in .cuda-root/lib64.
# - CUDA_COMPUTE_CAP=90 (H200; becomes sm_90a). NVCC_APPEND_FLAGS=--compress-mode=size keeps
#   candle's kernels small (set before the first build: it is part of the kernels' cache key).
# - NCCL (`--devices 0,1`: gradients summed and weights broadcast between GPUs) comes from the
#   nvidia-nccl-cu13 wheel (pinned, ≈340 MB), linked as lib64/libnccl.so; at run time the GPU
#   machine's PyTorch has its own (scripts/gpu/run.sh points the loader at it).
# - A separate target dir (target-cuda/) keeps the CPU build's cache intact.
# Cold build ≈ 25 min on 2 cores (mostly candle-kernels' quantized-matmul kernels); later
# builds recompile only ferrotune's crates.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=$root/.venv-cuda
cuda_root=$root/.cuda-root

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
nv=$("$venv/bin/python" -c 'import site,os; print(os.path.join(site.getsitepackages()[0], "nvidia", "cu13"))')
if [ ! -x "$nv/bin/nvcc" ] || ! "$nv/bin/nvcc" --version | grep -q "release 13.0"; then
  echo "installing the CUDA 13.0 wheels into $venv (≈1.2 GB)"
  "$venv/bin/pip" install --quiet --no-deps \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19
fi
nccl_lib=$(dirname "$nv")/nccl/lib
if [ ! -f "$nccl_lib/libnccl.so.2" ]; then
  echo "installing NCCL into $venv (≈340 MB)"
  "$venv/bin/pip" install --quiet --no-deps nvidia-nccl-cu13==2.32.3
fi

# The CUDA root cudarc and candle-kernels look in: include/, bin/, nvvm/ from the wheels;
# lib64/ with unversioned names; lib64/stubs/libcuda.so.
rm -rf "$cuda_root"
mkdir -p "$cuda_root/lib64/stubs"
for d in bin include nvvm; do ln -s "$nv/$d" "$cuda_root/$d"; done
for f in "$nv"/lib/lib*.so.*; do
  base=$(basename "$f")
  ln -sf "$f" "$cuda_root/lib64/$base"
  ln -sf "$f" "$cuda_root/lib64/${base%%.so.*}.so"
done
ln -sf "$nccl_lib/libnccl.so.2" "$cuda_root/lib64/libnccl.so"
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
cargo fetch --quiet
cudarc_src=$(ls -d "$registry"cudarc-0.19.* | tail -1)
stub_c=$cuda_root/lib64/stubs/libcuda.c
{
  echo "/* Link-time stub of the CUDA driver: every symbol cudarc declares. Never loaded at run time. */"
  grep -ohE "fn (cu[A-Za-z0-9_]+)\(" "$cudarc_src"/src/driver/sys/mod.rs | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
    while read -r s; do echo "int $s(void) { return 0; }"; done
} > "$stub_c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_root/lib64/stubs/libcuda.so" "$stub_c"
ln -sf libcuda.so "$cuda_root/lib64/stubs/libcuda.so.1"

export CUDA_ROOT=$cuda_root CUDA_PATH=$cuda_root CUDA_HOME=$cuda_root
export PATH=$nv/bin:$PATH
export LIBRARY_PATH=$cuda_root/lib64:$cuda_root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export NVCC_APPEND_FLAGS=${NVCC_APPEND_FLAGS:---compress-mode=size}
LD_LIBRARY_PATH=$nv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} python3 scripts/gpu/check-kernels.py
echo "building: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute cap $CUDA_COMPUTE_CAP"
cargo build --release -p ferrotune-cli --features cuda,nccl --target-dir "${CUDA_TARGET_DIR:-target-cuda}"

mkdir -p dist
strip -o dist/ferrotune-cuda "${CUDA_TARGET_DIR:-target-cuda}"/release/ferrotune
xz -T2 -9 -k -f dist/ferrotune-cuda
ls -l dist/ferrotune-cuda dist/ferrotune-cuda.xz
echo "built dist/ferrotune-cuda.xz — run it on the GPU machine with scripts/gpu/run.sh"
if [ "${1:-}" = "--tests" ]; then
  tests=$(cargo test --release -p ferrotune-model --lib --features cuda --target-dir "${CUDA_TARGET_DIR:-target-cuda}" --no-run 2>&1 |
    tee /dev/stderr | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' | tail -1)
  [ -n "$tests" ] || { echo "error: no test binary found" >&2; exit 1; }
  strip -o dist/model-tests-cuda "$tests"
  xz -T2 -9 -k -f dist/model-tests-cuda
  ls -l dist/model-tests-cuda.xz
  echo "built dist/model-tests-cuda.xz — run it on the GPU machine with scripts/gpu/test-kernels.sh"
fi
