#!/usr/bin/env bash
# lm-evaluation-harness (`local-completions`) against `ferrotune serve`, on a small offline task.
#
#     cargo build --release -p ferrotune-cli
#     scripts/serve/lm_eval_check.sh            # VENV=/tmp/lmeval-venv MODEL=smollm2-135m-instruct PORT=8011
#
# Installs `lm_eval[api]` + transformers into $VENV (no torch), exports the model's tokenizer as
# an HF directory (lm-eval tokenizes requests itself and sends token ids), writes a task of its
# own (a few local JSONL rows: a loglikelihood task and a multiple-choice one), starts the server
# without auth on 127.0.0.1:$PORT, runs lm_eval, and checks:
#   - lm-eval finished both tasks with finite metrics;
#   - every per-sample log-likelihood lm-eval logged (it sends `max_tokens: 1, echo: true,
#     logprobs: 1` and drops the last entry as the generated token) equals the sum of the
#     continuation's logprobs from the server's own scoring request (`max_tokens: 0`), within
#     1e-3 — so no prompt token is dropped, also when the next token is EOS.
# Exits non-zero on the first failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-/tmp/lmeval-venv}
BIN=${FERROTUNE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ferrotune}
MODEL=${MODEL:-smollm2-135m-instruct}
PORT=${PORT:-8011}
WORK=$(mktemp -d /tmp/ferrotune-lmeval.XXXXXX)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

[ -x "$BIN" ] || { echo "FAIL no ferrotune binary at $BIN (cargo build --release -p ferrotune-cli)"; exit 1; }
if [ ! -x "$VENV/bin/lm_eval" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "lm_eval[api]" transformers
fi
"$VENV/bin/python" -c "import torch" 2>/dev/null && echo "note: torch is installed in $VENV (not needed)"

"$BIN" models export "$MODEL" --out "$WORK/hf" >/dev/null
mkdir -p "$WORK/tasks"
cat > "$WORK/tasks/rows.jsonl" <<'ROWS'
{"context": "The capital of France is", "continuation": " Paris", "question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Madrid"], "answer": 0}
{"context": "One, two, three, four,", "continuation": " five", "question": "Which number comes after four?", "choices": ["seven", "five", "two"], "answer": 1}
{"context": "Water freezes at zero degrees", "continuation": " Celsius.", "question": "What colour is the sky on a clear day?", "choices": ["green", "red", "blue"], "answer": 2}
{"context": "Thank you for contacting support. Your order", "continuation": " has been shipped.", "question": "Which animal barks?", "choices": ["a dog", "a fish", "a snake"], "answer": 0}
{"context": "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi!", "continuation": "<|im_end|>", "question": "How many legs does a cat have?", "choices": ["two", "four", "six"], "answer": 1}
ROWS
for kind in loglikelihood multiple_choice; do
    {
        echo "task: ferrotune_check_$kind"
        echo "dataset_path: json"
        echo "dataset_kwargs:"
        echo "  data_files:"
        echo "    test: $WORK/tasks/rows.jsonl"
        echo "test_split: test"
        echo "output_type: $kind"
        if [ "$kind" = loglikelihood ]; then
            echo 'doc_to_text: "{{context}}"'
            echo 'doc_to_target: "{{continuation}}"'
            echo "metric_list:"
            echo "  - metric: perplexity"
            echo "  - metric: acc"
        else
            echo 'doc_to_text: "Question: {{question}}\nAnswer:"'
            echo 'doc_to_choice: "{{choices}}"'
            echo 'doc_to_target: "{{answer}}"'
            echo "metric_list:"
            echo "  - metric: acc"
        fi
    } > "$WORK/tasks/$kind.yaml"
done

"$BIN" serve --model "$MODEL" --no-auth --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; echo "FAIL the server exited"; exit 1; }
    sleep 0.5
done
echo "ok   server up ($MODEL on port $PORT)"

cd "$WORK"
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$VENV/bin/lm_eval" --model local-completions \
    --model_args "model=$MODEL,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer=$WORK/hf,tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1" \
    --tasks ferrotune_check_loglikelihood,ferrotune_check_multiple_choice --include_path "$WORK/tasks" \
    --output_path "$WORK/out" --log_samples > "$WORK/lm_eval.log" 2>&1 || { tail -40 "$WORK/lm_eval.log"; echo "FAIL lm_eval"; exit 1; }
grep -E "^\|" "$WORK/lm_eval.log" || true

"$VENV/bin/python" - "$WORK" "$PORT" "$MODEL" <<'PY'
import glob, json, math, sys, urllib.request
from transformers import AutoTokenizer

work, port, model = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(f"{work}/hf")

def check(name, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    if not cond:
        sys.exit(1)

def score(ctx_ids, cont_ids):
    body = {"model": model, "prompt": ctx_ids + cont_ids, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    lp = json.load(urllib.request.urlopen(req))["choices"][0]["logprobs"]["token_logprobs"]
    return sum(lp[len(ctx_ids):])

results = glob.glob(f"{work}/out/**/results_*.json", recursive=True)
check("lm_eval results written", len(results) == 1, ", ".join(results))
res = json.load(open(results[0]))["results"]
for task, metrics in sorted(res.items()):
    vals = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
    check(f"{task} metrics finite", vals and all(math.isfinite(v) for v in vals.values()), json.dumps(vals))

n = worst = 0
for path in glob.glob(f"{work}/out/**/samples_*.jsonl", recursive=True):
    for line in open(path):
        s = json.loads(line)
        for args, resp in zip(s["arguments"].values() if isinstance(s["arguments"], dict) else s["arguments"], s["resps"]):
            ctx, cont = args["arg_0"], args["arg_1"]
            ll = float(resp[0][0])
            # As lm-eval's TemplateAPI encodes a (context, continuation) pair.
            whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
            ours = score(ctx_ids, whole[len(ctx_ids):])
            worst = max(worst, abs(ours - ll))
            n += 1
check("lm-eval's log-likelihoods equal the server's own scoring", n > 0 and worst < 1e-3, f"{n} pairs, max |diff| {worst:.2e}")
PY
echo "ok   all lm-eval checks passed"
