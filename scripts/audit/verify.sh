#!/usr/bin/env bash
# Independent verifier for ferrotune audit-log proofs, consistency proofs and exports.
# Usage: scripts/audit/verify.sh proof FILE [--key VKEY | --key-file F]
#        scripts/audit/verify.sh consistency FILE [--key VKEY | --key-file F]
#        scripts/audit/verify.sh bundle DIR [--key VKEY | --key-file F]
#        scripts/audit/verify.sh --test        (runs scripts/audit/test_verify.py)
# Makes (once) a virtualenv with `cryptography` in $FERROTUNE_AUDIT_VENV (default: .venv-audit at
# the repository root); pip uses its configured index.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${FERROTUNE_AUDIT_VENV:-$root/.venv-audit}
if ! "$venv/bin/python" -c "import cryptography" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check cryptography >&2
fi
if [[ "${1:-}" == "--test" ]]; then
  shift
  exec "$venv/bin/python" -m unittest "$here/test_verify.py" "$@"
fi
exec "$venv/bin/python" "$here/verify.py" "$@"
