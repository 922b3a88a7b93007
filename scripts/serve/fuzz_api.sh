#!/usr/bin/env bash
# Fuzz the OpenAI-compatible server through its own OpenAPI document (GET /openapi.json) with
# schemathesis: every phase (examples, coverage, fuzzing, stateful), valid and invalid data
# (--mode all), all checks but the ones listed in EXCLUDED below, once with an admin API key and
# once without a key. A 5xx, a body that breaks its schema, a request past the per-request
# timeout (a hang) or any other failed check makes the script exit non-zero.
#
#   scripts/serve/fuzz_api.sh                 # the default model (smollm2-135m-instruct)
#   MAX_EXAMPLES=20 scripts/serve/fuzz_api.sh # a quicker pass
#
# Env: FERROTUNE_HOME (default ./.ferrotune, where the models are installed), MODEL (an
# installed model), PORT (default 8765), MAX_EXAMPLES (per operation and mode, default 200),
# REQUEST_TIMEOUT (seconds, default 60), SKIP_BUILD=1 (use target/release/ferrotune as it is),
# OUT (reports; default a temp folder). Results and findings: reliability/api-fuzz.md.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
export FERROTUNE_HOME=${FERROTUNE_HOME:-$ROOT/.ferrotune}
MODEL=${MODEL:-}
PORT=${PORT:-8765}
MAX_EXAMPLES=${MAX_EXAMPLES:-200}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-60}
SCHEMATHESIS_VERSION=4.32.5
VENV=$ROOT/.venv-fuzz
WORK=$(mktemp -d)
OUT=${OUT:-$WORK/reports}
mkdir -p "$OUT"

# Checks left out, and why:
# - positive_data_acceptance: a body valid by the schema may still be refused with a 400 for
#   what a schema cannot state: a prompt longer than the model's context in *tokens*, prompt +
#   max_tokens past the context, a JSON Schema in response_format that the grammar compiler
#   cannot enforce, a chat the model's template refuses, best_of != n. OpenAI's API answers
#   these with 400 too. (404, 403 and 409 are already allowed by the check.)
EXCLUDED=positive_data_acceptance

if [[ ! -x $VENV/bin/st ]] || ! "$VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -p ferrotune-cli
fi
BIN=$ROOT/target/release/ferrotune

# The server's state in a temp folder: its own key database, audit log and a copy of the
# registry, so fuzzing leaves $FERROTUNE_HOME as it was.
[[ -f $FERROTUNE_HOME/registry.db ]] && cp "$FERROTUNE_HOME/registry.db" "$WORK/registry.db"
cat > "$WORK/serve.toml" <<EOF
host = "127.0.0.1"
port = $PORT
auth = true
keys_db = "$WORK/keys.db"
# Generation stays short on a CPU: a request that leaves max_tokens out gets 4 new tokens, and the
# hooks (fuzz_hooks.py) cut generated max_tokens above 4 down to 4.
default_max_tokens = 4

[registry]
path = "$WORK/registry.db"

[audit]
dir = "$WORK/audit"

[limits]
request_timeout_s = $REQUEST_TIMEOUT
EOF
KEY=$("$BIN" keys create --db "$WORK/keys.db" --name fuzz --admin | grep -o 'ft-[A-Za-z0-9_-]*' | head -n1)
[[ -n $KEY ]] || { echo "could not create an API key" >&2; exit 1; }

SERVER_LOG=$OUT/server.log
args=(serve --config "$WORK/serve.toml")
[[ -n $MODEL ]] && args+=(--model "$MODEL")
"$BIN" "${args[@]}" > "$SERVER_LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 600); do
    curl -sf "$URL/ready" > /dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$SERVER_LOG" >&2; exit 1; }
    sleep 0.5
done
curl -sf "$URL/ready" > /dev/null || { echo "the server did not become ready" >&2; exit 1; }

# The served names, for the hooks (fuzz_hooks.py): the generating model and the embedder.
MODELS=$(curl -sf -H "Authorization: Bearer $KEY" "$URL/v1/models")
export FUZZ_GEN_MODEL FUZZ_EMBED_MODEL
FUZZ_GEN_MODEL=$(python3 -c 'import json, sys; print(next(m["id"] for m in json.load(sys.stdin)["data"] if m.get("max_model_len")))' <<< "$MODELS")
FUZZ_EMBED_MODEL=$(python3 -c 'import json, sys; print(next((m["id"] for m in json.load(sys.stdin)["data"] if not m.get("max_model_len")), ""))' <<< "$MODELS")
echo "models: $FUZZ_GEN_MODEL (generation), ${FUZZ_EMBED_MODEL:-none} (embeddings)"
export SCHEMATHESIS_HOOKS=fuzz_hooks
export PYTHONPATH=$ROOT/scripts/serve${PYTHONPATH:+:$PYTHONPATH}

# One schemathesis run; its requests are counted from its HAR report.
run() {
    local name=$1
    shift
    local rc=0
    # From the temp folder: schemathesis keeps its state in ./.schemathesis.
    (cd "$WORK" && timeout 3600 "$VENV/bin/st" run "$URL/openapi.json" \
        --phases examples,coverage,fuzzing,stateful \
        --mode all \
        --checks all --exclude-checks "$EXCLUDED" \
        --max-examples "$MAX_EXAMPLES" \
        --request-timeout "$REQUEST_TIMEOUT" \
        --suppress-health-check all \
        --generation-database none \
        --report har,junit --report-dir "$OUT/$name" \
        --no-color \
        "$@") 2>&1 | tee "$OUT/$name.log" || rc=$?
    local requests
    requests=$("$VENV/bin/python" -c "
import glob, json, sys
print(sum(len(json.load(open(f))['log']['entries']) for f in glob.glob(sys.argv[1] + '/har-*.json')))" "$OUT/$name")
    echo "$name: $requests requests, exit $rc" | tee -a "$OUT/summary.txt"
    return "$rc"
}

status=0
run with-key -H "Authorization: Bearer $KEY" || status=1
run without-key || status=1
kill -0 "$SERVER" 2>/dev/null || { echo "the server died during the run" >&2; status=1; }
echo "reports: $OUT"
cat "$OUT/summary.txt"
exit $status
