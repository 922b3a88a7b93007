#!/usr/bin/env bash
# The main job on the default model. Today (model core only): install the default model and
# answer a question with it. Fine-tuning and evaluation join this script with their issues.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-models.sh
./target/release/ferrotune generate --chat "What is the capital of France?" --max-tokens 64 --stats
