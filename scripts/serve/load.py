#!/usr/bin/env python3
"""Load test for `ferrotune serve`: N concurrent streaming clients for a fixed time (stdlib only).

    python3 scripts/serve/load.py --base-url http://127.0.0.1:8000 --key ft-... \
        --clients 32 --seconds 120 --max-tokens 64 [--pid $(pgrep -n ferrotune)]

Each client loops: one streaming chat request (temperature 0.7, a distinct seed, so the response
cache never answers), measuring time to first token and counting streamed chunks. Prints
aggregate generated tokens/s (from the usage the server reports), p50/p99 TTFT, errors by status
(only 429/503 are designed), and the server's RSS before and after when --pid is given.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse
from collections import Counter

PROMPTS = [
    "Explain what a refund policy is in two sentences.",
    "Write a short greeting for a customer who lost their password.",
    "List three tips for writing clear emails.",
    "What is the difference between a list and a tuple in Python?",
]


def rss_mib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def client(i, a, deadline, out, lock):
    u = urllib.parse.urlparse(a.base_url)
    n = 0
    while time.time() < deadline:
        n += 1
        body = json.dumps({
            "model": a.model, "messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
            "max_tokens": a.max_tokens, "temperature": 0.7, "seed": i * 100000 + n, "stream": True,
            "stream_options": {"include_usage": True},
        })
        t0 = time.time()
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
            conn.request("POST", "/v1/chat/completions", body,
                         {"Content-Type": "application/json", "Authorization": f"Bearer {a.key}"})
            resp = conn.getresponse()
            if resp.status != 200:
                resp.read()
                with lock:
                    out["errors"][resp.status] += 1
                conn.close()
                time.sleep(0.2)
                continue
            ttft = None
            tokens = 0
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    if c.get("delta", {}).get("content") and ttft is None:
                        ttft = time.time() - t0
            conn.close()
            with lock:
                out["tokens"] += tokens
                out["requests"] += 1
                if ttft is not None:
                    out["ttft"].append(ttft)
                out["latency"].append(time.time() - t0)
        except Exception as e:  # noqa: BLE001 - report every failure kind
            with lock:
                out["errors"][type(e).__name__] += 1


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default="")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pid", type=int, default=None, help="server pid, for RSS")
    a = ap.parse_args()
    out = {"tokens": 0, "requests": 0, "ttft": [], "latency": [], "errors": Counter()}
    lock = threading.Lock()
    rss0 = rss_mib(a.pid)
    t0 = time.time()
    deadline = t0 + a.seconds
    threads = [threading.Thread(target=client, args=(i, a, deadline, out, lock)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    rss1 = rss_mib(a.pid)
    print(json.dumps({
        "clients": a.clients,
        "seconds": round(wall, 1),
        "requests": out["requests"],
        "generated_tokens": out["tokens"],
        "tokens_per_s": round(out["tokens"] / wall, 1),
        "ttft_p50_s": round(pct(out["ttft"], 50), 3),
        "ttft_p99_s": round(pct(out["ttft"], 99), 3),
        "latency_p50_s": round(statistics.median(out["latency"]), 3) if out["latency"] else None,
        "errors": {str(k): v for k, v in out["errors"].items()},
        "rss_mib_before": rss0,
        "rss_mib_after": rss1,
    }, indent=2))


if __name__ == "__main__":
    main()
