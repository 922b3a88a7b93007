#!/usr/bin/env bash
# The registry's serving path on the real default model, as an operator meets it: after
# scripts/demo.sh (which releases support@champion), start `ferrotune serve`, ask for "support",
# disable the version and time how long until the server refuses it, re-enable it, change one
# byte of its adapter_config.json (refused with the hashes) and restore it.
# Usage: scripts/govern/registry_serve_check.sh [PORT]   (uses $FERROTUNE_HOME, default ~/.ferrotune)
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${1:-8399}
bin="${CARGO_TARGET_DIR:-target}/release/ferrotune"
ref=$($bin registry list aliases --json | python3 -c '
import json, sys
a = next((a for a in json.load(sys.stdin) if a["name"] == "support" and a["alias"] == "champion"), None)
sys.exit("no support@champion: run scripts/demo.sh first") if a is None else print("support@%d" % a["version"])')
dir=$($bin registry list artifacts --json | python3 -c "
import json, sys
print(next(a['path'] for a in json.load(sys.stdin) if f\"{a['name']}@{a['version']}\" == '$ref'))")
key=$($bin keys create --name "registry-check-$$" 2>/dev/null)
work=$(mktemp -d)
cp "$dir/adapter_config.json" "$work/adapter_config.json"
$bin serve --port "$port" > "$work/serve.log" 2>&1 &
server=$!
cleanup() {
  cp "$work/adapter_config.json" "$dir/adapter_config.json"
  kill "$server" 2>/dev/null || true
  $bin registry enable "$ref" --by registry-check > /dev/null 2>&1 || true
  $bin keys revoke --name "registry-check-$$" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
h=(-H "Host: 127.0.0.1" -H "Authorization: Bearer $key")
for _ in $(seq 1 240); do curl -s "${h[@]}" "127.0.0.1:$port/ready" | grep -q ready && break; sleep 0.5; done
ask() {
  curl -s -o "$work/resp.json" -D "$work/headers" -w '%{http_code}' "${h[@]}" -H 'Content-Type: application/json' \
    "127.0.0.1:$port/v1/chat/completions" \
    -d '{"model":"support","max_tokens":24,"temperature":0,"messages":[{"role":"user","content":"My Drift e-scooter arrived broken, can I get a refund?"}]}'
}
field() { python3 -c "import json,sys; d=json.load(open('$work/resp.json')); print($1)"; }
code=$(ask)
echo "support -> $code ($(grep -i x-ferrotune-artifact "$work/headers" | tr -d '\r')): $(field 'd["choices"][0]["message"]["content"][:70]')"
[ "$code" = 200 ]
echo "/v1/models: $(curl -s "${h[@]}" "127.0.0.1:$port/v1/models" | python3 -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin)["data"]])')"
$bin registry disable "$ref" --reason "registry_serve_check" --by registry-check > /dev/null
t0=$(date +%s%N); code=$(ask)
while [ "$code" != 403 ]; do [ $(( $(date +%s%N) - t0 )) -lt 10000000000 ] || { echo "still $code after 10 s"; exit 1; }; sleep 0.02; code=$(ask); done
echo "disabled -> 403 after $(( ($(date +%s%N) - t0) / 1000000 )) ms after the disable command returned: $(field 'd["error"]["message"]')"
$bin registry enable "$ref" --by registry-check > /dev/null
t0=$(date +%s%N); code=$(ask)
while [ "$code" != 200 ]; do [ $(( $(date +%s%N) - t0 )) -lt 30000000000 ] || { echo "still $code after 30 s"; exit 1; }; sleep 0.05; code=$(ask); done
echo "enabled -> 200 after $(( ($(date +%s%N) - t0) / 1000000 )) ms after the enable command returned (reload and re-hash included)"
printf ' ' >> "$dir/adapter_config.json"
code=$(ask)
echo "one byte added to adapter_config.json -> $code: $(field 'd["error"]["message"][:160]')"
[ "$code" = 503 ]
cp "$work/adapter_config.json" "$dir/adapter_config.json"
code=$(ask)
echo "restored -> $code"
[ "$code" = 200 ]
curl -s "${h[@]}" "127.0.0.1:$port/metrics" | grep -E '^ferrotune:registry'
echo "OK"
