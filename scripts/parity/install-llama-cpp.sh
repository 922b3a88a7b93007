#!/usr/bin/env bash
# Build llama.cpp (through llama-cpp-python) into a venv for the parity fixtures and the
# generation benchmark. ~20 min on 2 cores. Not needed by CI: fixtures are committed.
# Usage: scripts/parity/install-llama-cpp.sh [VENV_DIR]   (default: .venv-llamacpp)
set -euo pipefail
venv=${1:-.venv-llamacpp}
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet numpy jinja2
# A native build crashed with an illegal instruction on this CPU; these flags work (CRATES.md).
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  "$venv/bin/pip" install llama-cpp-python==0.3.36
echo "llama.cpp ready: $venv/bin/python"
