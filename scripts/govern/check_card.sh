#!/usr/bin/env bash
# Check a ferrotune model card with huggingface_hub (front matter, model-index).
# Usage: scripts/govern/check_card.sh README.md [--expect METRIC=VALUE ...] [--expect-name NAME]
# Makes (once) a virtualenv with huggingface_hub in $FERROTUNE_CARD_VENV (default: .venv-card at
# the repository root); pip uses its configured index.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${FERROTUNE_CARD_VENV:-$root/.venv-card}
if ! "$venv/bin/python" -c "import huggingface_hub" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check huggingface_hub
fi
exec "$venv/bin/python" "$here/check_card.py" "$@"
