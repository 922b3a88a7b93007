#!/usr/bin/env bash
# Soak `ferrotune serve` on the real default model (issue #16, part 3): 32 clients for 5 minutes
# with a hostile mix (scripts/serve/soak.py says which), two LoRA adapters served from the start and
# a third loaded and unloaded at runtime every 30 s.
#
#   scripts/serve/soak.sh [SECONDS] [CLIENTS]       # defaults 300 and 32; summary in $OUT/soak.json
#
# Prepares everything in a scratch folder ($OUT, default runs/soak): a key database with a normal,
# an admin and a rate-limited key (--rpm 2), three small adapters trained here on
# examples/support (a few steps each; reused on a second run), a serve.toml whose adapter_roots
# allows the hot adapter, the server on a free port, and its own audit log folder. Exits with the
# soak's status (non-zero when a goal is missed).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-300}
clients=${2:-32}
export FERROTUNE_HOME=${FERROTUNE_HOME:-$PWD/.ferrotune}
bin=${FERROTUNE_BIN:-"${CARGO_TARGET_DIR:-target}/release/ferrotune"}
out=${OUT:-runs/soak}
# The install script builds the binary too; with FERROTUNE_BIN given, the models must be installed.
[ -n "${FERROTUNE_BIN:-}" ] || scripts/install-models.sh >/dev/null
mkdir -p "$out"

for name in a b hot; do
  if [ ! -f "$out/adapter-$name/adapter/adapter_model.safetensors" ]; then
    echo "== training adapter $name (6 steps)"
    rm -rf "$out/adapter-$name"
    # Different seeds and ranks, so the three adapters really differ.
    r=$([ "$name" = b ] && echo 8 || echo 16)
    "$bin" train --data examples/support/train.jsonl --max-steps 6 --lora-r "$r" --seed "$(case $name in a) echo 1;; b) echo 2;; *) echo 3;; esac)" \
      --out "$out/adapter-$name" --no-registry >"$out/train-$name.log" 2>&1
  fi
done

keys="$out/keys.db"
rm -f "$keys" "$keys"-*
key=$("$bin" keys create --db "$keys" --name soak | grep -o 'ft-[A-Za-z0-9_-]*' | head -1)
admin=$("$bin" keys create --db "$keys" --name soak-admin --admin | grep -o 'ft-[A-Za-z0-9_-]*' | head -1)
limited=$("$bin" keys create --db "$keys" --name soak-limited --rpm 2 | grep -o 'ft-[A-Za-z0-9_-]*' | head -1)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$out/serve.toml" <<EOF
keys_db = "$PWD/$keys"
adapter_roots = ["$PWD/$out"]
[audit]
dir = "$PWD/$out/audit"
EOF
rm -rf "$out/audit"
"$bin" serve --config "$out/serve.toml" --port "$port" \
  --adapter support-a="$out/adapter-a/adapter" --adapter support-b="$out/adapter-b/adapter" \
  >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
  kill -0 $pid 2>/dev/null || { echo "server exited; see $out/serve.log"; cat "$out/serve.log"; exit 1; }
  sleep 0.5
done
echo "== soak: $clients clients for $seconds s against pid $pid on port $port ($(git rev-parse --short HEAD))"
python3 scripts/serve/soak.py --base-url "http://127.0.0.1:$port" --key "$key" --admin-key "$admin" \
  --limited-key "$limited" --adapters support-a,support-b --hot-adapter "support-hot=$PWD/$out/adapter-hot/adapter" \
  --pid "$pid" --clients "$clients" --seconds "$seconds" --out "$out/soak.json" || status=$?
status=${status:-0}
if grep -q 'panicked\|ERROR' "$out/serve.log"; then
  echo "the server logged errors or panics:"; grep 'panicked\|ERROR' "$out/serve.log" | head -20; status=1
fi
exit "$status"
