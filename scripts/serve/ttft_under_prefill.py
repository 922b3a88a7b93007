#!/usr/bin/env python3
"""Time to first token of short requests while a long prompt prefills, against the same requests
on an idle server (stdlib only). Chunked prefill should keep the ratio small: the engine
prefills a long prompt one chunk ([engine] prefill_chunk_tokens) per step and serves the short
ones between chunks.

    ferrotune serve --no-auth --port 8000 &          # the real default model
    python3 scripts/serve/ttft_under_prefill.py --base-url http://127.0.0.1:8000 \
        --long-tokens 8000 --shorts 8 [--key ft-...] [--pid $(pgrep -n ferrotune)]

Idle phase: `--shorts` streaming chat requests one after another (temperature 0.7 and a distinct
seed each, so the response cache never answers; max_tokens 4), TTFT of each. Busy phase: a
`--long-tokens` token-id prompt is sent to /v1/completions with `echo`, `logprobs: 1` and
`max_tokens: 1` (lm-evaluation-harness' scoring shape, so the prompt's logprobs are computed
too), and the same short requests go one after another while it prefills; only those that
finished before the long one count. Prints median TTFT idle / busy and their ratio, the long
request's latency, and with --pid the server's peak RSS (VmHWM).
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import rss_mib, stream_chat  # noqa: E402

QUESTIONS = [
    "What is a refund?",
    "Name a colour.",
    "Say hello.",
    "What is two plus two?",
]


def post_json(base_url, path, body, key, timeout=3600):
    u = urllib.parse.urlparse(base_url)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def get_json(base_url, path, key):
    u = urllib.parse.urlparse(base_url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def peak_rss_mib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def short(a, model, i):
    body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": 4, "temperature": 0.7, "seed": 1000 + i, "stream": True}
    r = stream_chat(a.base_url, body, a.key)
    if r["status"] != 200 or r["ttft"] is None:
        raise SystemExit(f"short request {i}: status {r['status']}, no first token")
    return r["ttft"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default="")
    ap.add_argument("--model", default=None, help="default: the first model /v1/models lists")
    ap.add_argument("--long-tokens", type=int, default=8000)
    ap.add_argument("--shorts", type=int, default=8)
    ap.add_argument("--pid", type=int, default=None)
    a = ap.parse_args()

    model = a.model or get_json(a.base_url, "/v1/models", a.key)["data"][0]["id"]
    short(a, model, 0)  # warm-up (first-request costs)
    idle = [short(a, model, i) for i in range(1, a.shorts + 1)]

    # Token ids inside any LLaMA-family vocabulary's ordinary range (not special tokens).
    ids = [1000 + (i * 7919) % 20000 for i in range(a.long_tokens)]
    long_body = {"model": model, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    done = {}

    def run_long():
        t0 = time.time()
        status, v = post_json(a.base_url, "/v1/completions", long_body, a.key)
        done["secs"] = time.time() - t0
        done["status"] = status
        done["body"] = v

    th = threading.Thread(target=run_long)
    th.start()
    time.sleep(0.5)  # let the long prompt be admitted first
    busy = []
    i = a.shorts + 1
    while th.is_alive() and len(busy) < a.shorts:
        ttft = short(a, model, i)
        i += 1
        if th.is_alive():
            busy.append(ttft)
    th.join()
    if done.get("status") != 200:
        raise SystemExit(f"long request: status {done.get('status')}: {str(done.get('body'))[:300]}")
    lps = done["body"]["choices"][0]["logprobs"]["token_logprobs"]
    print(f"long prompt: {a.long_tokens} token ids, echo + logprobs, {done['secs']:.1f}s, {len(lps)} logprobs returned")
    if not busy:
        raise SystemExit("no short request finished while the long prompt prefilled")
    mi, mb = statistics.median(idle), statistics.median(busy)
    print(f"TTFT idle: median {mi * 1000:.0f} ms over {len(idle)} ({', '.join(f'{x * 1000:.0f}' for x in idle)})")
    print(f"TTFT during the long prefill: median {mb * 1000:.0f} ms over {len(busy)} ({', '.join(f'{x * 1000:.0f}' for x in busy)})")
    print(f"ratio busy / idle: {mb / mi:.2f}x (goal: within 2x)")
    if a.pid:
        print(f"server RSS now {rss_mib(a.pid):.0f} MiB, peak {peak_rss_mib(a.pid):.0f} MiB")


if __name__ == "__main__":
    main()
