#!/usr/bin/env python3
"""Load test for `ferrotune serve`: N concurrent streaming clients for a fixed time (stdlib only).

    python3 scripts/serve/load.py --base-url http://127.0.0.1:8000 --key ft-... \
        --clients 32 --seconds 180 --max-tokens 64 [--pid $(pgrep -n ferrotune)]

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


def stream_chat(base_url, body, key="", timeout=600):
    """One streaming chat request. Returns a dict: `status` (HTTP status), `ttft` (seconds to
    the first content chunk, None if none came), `latency`, `text` (the content streamed),
    `usage_tokens` (completion_tokens from the stream's `usage` chunk; None when the server sent
    none), `finish_reason`. Network errors raise."""
    u = urllib.parse.urlparse(base_url)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.time()
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        out = {"status": resp.status, "ttft": None, "text": "", "usage_tokens": None, "finish_reason": None}
        if resp.status != 200:
            resp.read()
            out["latency"] = time.time() - t0
            return out
        parts = []
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                out["usage_tokens"] = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                piece = c.get("delta", {}).get("content")
                if piece:
                    if out["ttft"] is None:
                        out["ttft"] = time.time() - t0
                    parts.append(piece)
                if c.get("finish_reason"):
                    out["finish_reason"] = c["finish_reason"]
        out["text"] = "".join(parts)
        out["latency"] = time.time() - t0
        return out
    finally:
        conn.close()


def client(i, a, deadline, out, lock):
    n = 0
    while time.time() < deadline:
        n += 1
        body = {
            "model": a.model,
            "messages": ([{"role": "system", "content": a.system}] if a.system else [])
            + [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
            "max_tokens": a.max_tokens, "temperature": 0.7, "seed": i * 100000 + n, "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            r = stream_chat(a.base_url, body, a.key)
        except Exception as e:  # noqa: BLE001 - report every failure kind
            with lock:
                out["errors"][type(e).__name__] += 1
            continue
        with lock:
            if r["status"] != 200:
                out["errors"][r["status"]] += 1
            else:
                out["tokens"] += r["usage_tokens"] or 0
                out["requests"] += 1
                if r["ttft"] is not None:
                    out["ttft"].append(r["ttft"])
                out["latency"].append(r["latency"])
        if r["status"] != 200:
            time.sleep(0.2)


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
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pid", type=int, default=None, help="server pid, for RSS")
    ap.add_argument("--system", default="", help="a system message put before every prompt")
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
