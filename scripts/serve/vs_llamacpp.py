#!/usr/bin/env python3
"""ferrotune serve vs llama.cpp's own server (llama-cpp-python[server]) under the same concurrent
load, one after the other, on the same GGUF. Prints aggregate generated tokens/s, requests,
p50/p99 time to first token, errors and the ratio ferrotune / llama.cpp.

    scripts/parity/install-llama-cpp.sh .venv-llamacpp
    .venv-llamacpp/bin/pip install 'llama-cpp-python[server]==0.3.36'
    cargo build --release -p ferrotune-cli
    FERROTUNE_HOME=$PWD/.ferrotune python3 scripts/serve/vs_llamacpp.py --streams 32 --seconds 180 [--json out.json]

What each side runs (both on `--threads` threads, default 2, and the model's full context):

- ferrotune: `target/release/ferrotune serve --model GGUF --no-auth --weights W` (loopback only),
  RAYON_NUM_THREADS=threads. One engine thread with continuous batching: every running sequence
  advances in one batched decode step (engine.max_batch = 32 by default, KV budget 65536 tokens).
  `--ferrotune-weights` picks f32 (GGUF dequantized at load) or quantized (the GGUF's blocks).
- llama.cpp: `python -m llama_cpp.server --model GGUF --n_threads T --n_threads_batch T
  --n_ctx 8192 --interrupt_requests False --logits_all False` (llama-cpp-python 0.3.36, the
  llama.cpp it builds, AVX2/FMA/AVX512 flags from install-llama-cpp.sh). Its server holds ONE
  `Llama` instance behind a lock: requests run one at a time (there is no parallel-slot or
  batching option in llama-cpp-python's server; `n_seq_max` is only raised for embeddings). What
  it does offer and we use: it keeps the previous request's KV cache and re-uses the longest
  common prompt prefix (the chat template's system prompt here); `logits_all False` skips the
  head on every prompt position (its default True computes it for logprobs we never ask);
  `interrupt_requests False` — its default cuts a stream short with [DONE] as soon as another
  request waits, which under concurrent load would end nearly every stream after one token.
  (llama.cpp's C++ `llama-server` has `--parallel` slots with batched decode; it is not what
  llama-cpp-python ships.)

The load: `--streams` client threads; each loops, for `--seconds`, over streaming chat requests
(`stream: true`, `max_tokens`, temperature 0 — greedy, the one sampling setting both sides
compute alike) cycling through PROMPTS. New requests stop at the deadline; the requests in flight
then finish and count; tokens/s = completion tokens / (first request sent → last one done).
Before the load each server answers every prompt once, not streamed (warm-up, not counted);
that gives each prompt's reference text and `usage.completion_tokens`.

Counting generated tokens: from the API's `usage`. ferrotune sends it in the stream
(`stream_options.include_usage`). llama-cpp-python's streams carry no usage, so a streamed
answer counts its prompt's reference `usage.completion_tokens` — valid because decoding is greedy:
the script checks that the streamed text equals the reference text, and reports any that do not
(`text_mismatch`; those count the reference usage too, and the count is printed so a
non-deterministic run is visible). Both servers are checked the same way.

Quiet machine: the load average before and after each phase is printed with the numbers, and
each server's CPU seconds (from /proc) with tokens per CPU-second.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import pct, rss_mib, stream_chat  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Varied customer-support and general prompts (different lengths of prompt and answer).
PROMPTS = [
    "Explain what a refund policy is in two sentences.",
    "Write a short greeting for a customer who lost their password.",
    "List three tips for writing clear emails.",
    "What is the difference between a list and a tuple in Python?",
    "My order arrived damaged. What should I do?",
    "Summarise the benefits of regular exercise.",
    "How do I reset my router to factory settings?",
    "Write a polite reply to a customer asking for a discount.",
    "What are the main causes of climate change?",
    "Describe how a bicycle works to a child.",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue?",
    "Write a haiku about the ocean.",
    "What should I check before shipping a parcel abroad?",
    "Explain the difference between weather and climate.",
    "How can I improve my sleep?",
]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def resolve_gguf(ferrotune, model):
    """An installed model name → its GGUF path (from `ferrotune models list`), or a path as is."""
    if model.endswith(".gguf") and Path(model).is_file():
        return str(Path(model).resolve())
    out = subprocess.run([ferrotune, "models", "list"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == model and parts[-1].endswith(".gguf"):
            return parts[-1]
    sys.exit(f"error: `{model}` is neither a .gguf file nor an installed GGUF model (see `ferrotune models list`)")


def wait_ready(url, proc, log, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with {proc.returncode} before it was ready; its log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"error: the server was not ready after {timeout}s; its log: {log}")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat_once(base_url, body):
    """One non-streamed request: (text, usage.completion_tokens)."""
    req = urllib.request.Request(f"{base_url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        d = json.loads(r.read())
    return d["choices"][0]["message"]["content"] or "", d["usage"]["completion_tokens"]


def run_load(base_url, a, refs):
    out = {"tokens": 0, "requests": 0, "ttft": [], "latency": [], "errors": Counter(),
           "usage_in_stream": 0, "text_mismatch": 0}
    lock = threading.Lock()
    t0 = time.time()
    deadline = t0 + a.seconds
    last_done = [t0]

    def client(i):
        n = 0
        while time.time() < deadline:
            p = (i + n) % len(PROMPTS)
            n += 1
            body = {"model": a.served_name, "messages": [{"role": "user", "content": PROMPTS[p]}],
                    "max_tokens": a.max_tokens, "temperature": 0.0, "stream": True,
                    "stream_options": {"include_usage": True}}
            try:
                r = stream_chat(base_url, body)
            except Exception as e:  # noqa: BLE001 - every failure kind is reported
                with lock:
                    out["errors"][type(e).__name__] += 1
                continue
            with lock:
                if r["status"] != 200:
                    out["errors"][str(r["status"])] += 1
                    continue
                ref_text, ref_tokens = refs[p]
                if r["text"] != ref_text:
                    out["text_mismatch"] += 1
                if r["usage_tokens"] is not None:
                    out["usage_in_stream"] += 1
                    out["tokens"] += r["usage_tokens"]
                else:
                    out["tokens"] += ref_tokens
                out["requests"] += 1
                if r["ttft"] is not None:
                    out["ttft"].append(r["ttft"])
                out["latency"].append(r["latency"])
                last_done[0] = max(last_done[0], time.time())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = last_done[0] - t0
    return {
        "seconds": round(wall, 1),
        "requests": out["requests"],
        "generated_tokens": out["tokens"],
        "tokens_per_s": round(out["tokens"] / wall, 2) if wall > 0 else 0.0,
        "ttft_p50_s": round(pct(out["ttft"], 50), 3),
        "ttft_p99_s": round(pct(out["ttft"], 99), 3),
        "latency_p50_s": round(pct(out["latency"], 50), 3),
        "errors": dict(out["errors"]),
        "usage_in_stream": out["usage_in_stream"],
        "text_mismatch": out["text_mismatch"],
    }


def bench(name, cmd, env, port, ready_path, a):
    log = Path(a.log_dir) / f"{name}.log"
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready_path, proc, log)
        refs = []
        for p in PROMPTS:
            body = {"model": a.served_name, "messages": [{"role": "user", "content": p}],
                    "max_tokens": a.max_tokens, "temperature": 0.0}
            refs.append(chat_once(base, body))
        rss0, cpu0, load0 = rss_mib(proc.pid), cpu_seconds(proc.pid), loadavg()
        print(f"   warm-up done (reference answers: {sum(t for _, t in refs)} tokens over {len(refs)} prompts); "
              f"load average {load0}; running {a.streams} streams for {a.seconds:.0f} s", flush=True)
        res = run_load(base, a, refs)
        cpu1 = cpu_seconds(proc.pid)
        res.update({
            "command": " ".join(cmd),
            "rss_mib_before": rss0, "rss_mib_after": rss_mib(proc.pid),
            "server_cpu_s": round(cpu1 - cpu0, 1) if cpu0 is not None and cpu1 is not None else None,
            "loadavg_before": load0, "loadavg_after": loadavg(),
        })
        if res["server_cpu_s"]:
            res["tokens_per_cpu_s"] = round(res["generated_tokens"] / res["server_cpu_s"], 2)
        print(json.dumps(res, indent=2), flush=True)
        return res
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="installed GGUF model name or a .gguf path")
    ap.add_argument("--ferrotune", default=str(ROOT / "target/release/ferrotune"))
    ap.add_argument("--llama-python", default=str(ROOT / ".venv-llamacpp/bin/python"),
                    help="a Python with llama-cpp-python[server]")
    ap.add_argument("--ferrotune-weights", choices=["f32", "quantized"], default="f32")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192, help="llama.cpp n_ctx (ferrotune: the model's context)")
    ap.add_argument("--only", choices=["ferrotune", "llamacpp"], help="run one side only")
    ap.add_argument("--port", type=int, default=8311, help="ferrotune's port; llama.cpp gets port+1")
    ap.add_argument("--log-dir", default="/tmp", help="where the servers' logs go")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    if a.streams < 1 or a.seconds <= 0 or a.max_tokens < 1 or a.threads < 1:
        sys.exit("error: --streams, --seconds, --max-tokens and --threads must be positive")
    if not Path(a.ferrotune).is_file():
        sys.exit(f"error: no ferrotune binary at {a.ferrotune} (cargo build --release -p ferrotune-cli)")
    if a.only != "ferrotune" and not Path(a.llama_python).is_file():
        sys.exit(f"error: no Python at {a.llama_python} (scripts/parity/install-llama-cpp.sh, then pip install "
                 "'llama-cpp-python[server]==0.3.36' into it)")
    gguf = resolve_gguf(a.ferrotune, a.model)
    a.served_name = re.sub(r"\.gguf$", "", Path(gguf).name) if a.model.endswith(".gguf") else a.model
    print(f"GGUF {gguf}; {a.streams} streams, {a.seconds:.0f} s, max_tokens {a.max_tokens}, temperature 0, "
          f"{a.threads} threads; {os.cpu_count()} cores; load average {loadavg()}")

    results = {"gguf": gguf, "streams": a.streams, "seconds": a.seconds, "max_tokens": a.max_tokens,
               "threads": a.threads, "cores": os.cpu_count()}
    if a.only in (None, "ferrotune"):
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        cmd = [a.ferrotune, "serve", "--model", gguf, "--served-model-name", a.served_name, "--no-auth",
               "--host", "127.0.0.1", "--port", str(a.port), "--weights", a.ferrotune_weights]
        results["ferrotune"] = bench("ferrotune", cmd, env, a.port, "/ready", a)
    if a.only in (None, "llamacpp"):
        cmd = [a.llama_python, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", a.served_name,
               "--host", "127.0.0.1", "--port", str(a.port + 1), "--n_threads", str(a.threads),
               "--n_threads_batch", str(a.threads), "--n_ctx", str(a.ctx), "--interrupt_requests", "False",
               "--logits_all", "False", "--verbose", "False"]
        results["llamacpp"] = bench("llamacpp", cmd, dict(os.environ), a.port + 1, "/v1/models", a)

    print("\n| server | tokens/s | requests | TTFT p50 s | TTFT p99 s | errors | text mismatches | load avg before→after |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ("ferrotune", "llamacpp"):
        r = results.get(k)
        if r:
            print(f"| {k} | {r['tokens_per_s']} | {r['requests']} | {r['ttft_p50_s']} | {r['ttft_p99_s']} | "
                  f"{r['errors'] or 0} | {r['text_mismatch']} | {r['loadavg_before'][0]}→{r['loadavg_after'][0]} |")
    if "ferrotune" in results and "llamacpp" in results and results["llamacpp"]["tokens_per_s"] > 0:
        ratio = results["ferrotune"]["tokens_per_s"] / results["llamacpp"]["tokens_per_s"]
        results["ratio"] = round(ratio, 2)
        print(f"\naggregate tokens/s ratio ferrotune / llama.cpp at {a.streams} streams: {ratio:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
