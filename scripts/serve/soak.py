#!/usr/bin/env python3
"""Soak test for `ferrotune serve`: many concurrent clients for minutes with a hostile mix
(stdlib only). `scripts/serve/soak.sh` prepares keys, adapters and the server, then runs this.

    python3 scripts/serve/soak.py --base-url http://127.0.0.1:8000 --key ft-... \
        --admin-key ft-... --limited-key ft-... --adapters support-a,support-b \
        --hot-adapter hot=runs/soak/hot/adapter --pid PID --clients 32 --seconds 300

Each client loops over a weighted draw of request kinds:
- 10% invalid (malformed JSON, a missing field, an out-of-range value, an unknown model, a bad key):
  only the designed 400 / 401 / 404 statuses are accepted;
- 5% on a key with a tiny rate limit: 200 or the designed 429;
- 10% streams cancelled mid-way (the client reads a few events and closes the connection);
- the rest: chat and completions, streaming and not, on the base model and two LoRA adapters,
  and on an adapter an admin thread loads and unloads every `--reload-every` seconds (404 is
  designed there while it is unloaded).
Every stream must end with `data: [DONE]` (after an `error` event when the server stops one);
every non-streamed 200 must be a well-formed completion object. The server's RSS and open file
descriptors are sampled every `--sample-every` seconds from /proc.

Goals checked at the end (exit 1 when one fails): 0 responses with a 5xx status, 0 unexpected
statuses or network errors, 0 malformed streams or bodies, RSS at the end within +5% of RSS after
warm-up (`--warmup` seconds), and open fds after the clients stop within `--fd-slack` of the count
before they started. Writes a JSON summary to `--out` when given.
"""

import argparse
import http.client
import json
import os
import random
import statistics
import threading
import time
import urllib.parse
from collections import Counter

PROMPTS = [
    "How do I reset my password?",
    "My order arrived damaged. What should I do?",
    "Explain what a refund policy is in two sentences.",
    "Can I change the delivery address after ordering?",
    "List three tips for writing clear emails.",
    "What payment methods do you accept?",
]


def proc_sample(pid):
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = Counter()  # kind -> requests
        self.statuses = Counter()  # (kind, status) -> count
        self.failures = []  # (kind, message)
        self.tokens = 0
        self.streams_ok = 0
        self.cancelled = 0
        self.latencies = []

    def record(self, kind, status, ok, message=None, tokens=0, latency=None):
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[(kind, status)] += 1
            self.tokens += tokens
            if latency is not None:
                self.latencies.append(latency)
            if not ok:
                self.failures.append((kind, status, message))


def connect(base, timeout):
    u = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def headers(key):
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def read_stream(resp, cancel_after=None):
    """Reads an SSE response. Returns (events, done, error_event, tokens). With `cancel_after`,
    stops after that many data events (the caller closes the connection)."""
    events, done, error, tokens = 0, False, None, 0
    buf = b""
    for raw in resp:
        buf += raw
        if not buf.endswith(b"\n"):
            continue
        line = buf.decode().strip()
        buf = b""
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)  # a malformed event raises: counted as a failure
        events += 1
        if "error" in chunk:
            error = chunk["error"]
        if chunk.get("usage"):
            tokens = chunk["usage"].get("completion_tokens", 0)
        if cancel_after is not None and events >= cancel_after:
            return events, False, error, tokens
    return events, done, error, tokens


def body_for(endpoint, model, stream, max_tokens, rng):
    prompt = rng.choice(PROMPTS)
    b = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "seed": rng.randrange(1 << 30)}
    if endpoint == "chat":
        b["messages"] = [{"role": "user", "content": prompt}]
    else:
        b["prompt"] = prompt
    if stream:
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
    return b


def check_completion(endpoint, obj):
    if obj.get("object") != ("chat.completion" if endpoint == "chat" else "text_completion"):
        return f"object is {obj.get('object')!r}"
    if not obj.get("choices"):
        return "no choices"
    c = obj["choices"][0]
    if endpoint == "chat" and not isinstance(c.get("message", {}).get("content"), str):
        return "choice has no message content"
    if endpoint == "completions" and not isinstance(c.get("text"), str):
        return "choice has no text"
    if c.get("finish_reason") not in ("stop", "length", "content_filter"):
        return f"finish_reason {c.get('finish_reason')!r}"
    return None


INVALID = [
    # (name, endpoint, raw body, key kind, designed statuses)
    ("malformed-json", "/v1/chat/completions", b'{"model": "x", "messages": [', "good", {400}),
    ("missing-messages", "/v1/chat/completions", None, "good", {400}),
    ("negative-max-tokens", "/v1/chat/completions", None, "good", {400}),
    ("unknown-model", "/v1/chat/completions", None, "good", {400, 404}),
    ("bad-key", "/v1/chat/completions", None, "bad", {401}),
    ("no-key", "/v1/completions", None, "none", {401}),
    ("wrong-type", "/v1/completions", None, "good", {400}),
]


def invalid_body(name, base_model):
    msgs = [{"role": "user", "content": "hi"}]
    return {
        "missing-messages": {"model": base_model, "max_tokens": 4},
        "negative-max-tokens": {"model": base_model, "messages": msgs, "max_tokens": -3},
        "unknown-model": {"model": "no-such-model-xyz", "messages": msgs, "max_tokens": 4},
        "bad-key": {"model": base_model, "messages": msgs, "max_tokens": 4},
        "no-key": {"model": base_model, "prompt": "hi", "max_tokens": 4},
        "wrong-type": {"model": base_model, "prompt": {"not": "a prompt"}, "max_tokens": 4},
    }[name]


class Hot:
    """The adapter the admin thread loads and unloads; `loaded` as last acknowledged."""

    def __init__(self, name, path):
        self.name, self.path = name, path
        self.loaded = False
        self.lock = threading.Lock()
        self.cycles = 0
        self.errors = []


def client(i, args, stats, hot, stop):
    rng = random.Random(1000 + i)
    models = [args.base_model] + args.adapters
    while not stop.is_set():
        r = rng.random()
        try:
            if r < 0.10:
                name, path, raw, keykind, designed = rng.choice(INVALID)
                if raw is None:
                    raw = json.dumps(invalid_body(name, args.base_model)).encode()
                key = {"good": args.key, "bad": "ft-not-a-real-key-000000", "none": ""}[keykind]
                conn = connect(args.base_url, args.timeout)
                conn.request("POST", path, raw, headers(key))
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                ok = resp.status in designed
                msg = None
                if ok:
                    err = json.loads(body).get("error")
                    if not isinstance(err, dict) or not err.get("message"):
                        ok, msg = False, f"error body without error.message: {body[:200]!r}"
                else:
                    msg = f"{name}: {resp.status} {body[:200]!r}"
                stats.record("invalid", resp.status, ok, msg)
                continue
            if r < 0.15:
                b = body_for("chat", args.base_model, False, 4, rng)
                conn = connect(args.base_url, args.timeout)
                conn.request("POST", "/v1/chat/completions", json.dumps(b), headers(args.limited_key))
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                ok = resp.status in (200, 429)
                stats.record("over-limit", resp.status, ok, None if ok else f"{resp.status} {body[:200]!r}")
                continue
            cancel = r < 0.25
            endpoint = rng.choice(["chat", "completions"])
            stream = True if cancel else rng.random() < 0.5
            use_hot = hot is not None and rng.random() < 0.15
            model = hot.name if use_hot else rng.choice(models)
            b = body_for(endpoint, model, stream, args.max_tokens, rng)
            path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
            kind = ("cancel" if cancel else ("stream" if stream else "plain")) + ("-hot" if use_hot else "")
            t0 = time.time()
            conn = connect(args.base_url, args.timeout)
            conn.request("POST", path, json.dumps(b), headers(args.key))
            resp = conn.getresponse()
            if resp.status != 200:
                body = resp.read()
                conn.close()
                # The hot adapter may be unloaded between the draw and the request (or before).
                designed = use_hot and resp.status in (400, 404)
                stats.record(kind, resp.status, designed, None if designed else f"{resp.status} {body[:300]!r}")
                continue
            if cancel:
                events, _, _, _ = read_stream(resp, cancel_after=rng.randint(1, 3))
                conn.close()  # the client leaves mid-stream
                stats.record(kind, 200, True)
                with stats.lock:
                    stats.cancelled += 1
                continue
            if stream:
                events, done, error, tokens = read_stream(resp)
                conn.close()
                ok = done
                msg = None if ok else f"stream ended without [DONE] after {events} events"
                if error is not None and not (use_hot and "unload" in json.dumps(error)):
                    ok, msg = False, f"error event: {error}"
                stats.record(kind, 200, ok, msg, tokens, time.time() - t0)
                if ok:
                    with stats.lock:
                        stats.streams_ok += 1
                continue
            body = resp.read()
            conn.close()
            obj = json.loads(body)
            problem = check_completion(endpoint, obj)
            tokens = obj.get("usage", {}).get("completion_tokens", 0)
            stats.record(kind, 200, problem is None, problem, tokens, time.time() - t0)
        except Exception as e:  # network errors, timeouts, malformed JSON
            stats.record("exception", "exc", False, f"{type(e).__name__}: {e}")


def admin_loop(args, hot, stop):
    """Loads the hot adapter, waits, unloads it, waits; records each acknowledged change."""
    while not stop.wait(args.reload_every):
        want_loaded = not hot.loaded
        path = "/v1/load_lora_adapter" if want_loaded else "/v1/unload_lora_adapter"
        body = {"lora_name": hot.name}
        if want_loaded:
            body["lora_path"] = hot.path
        try:
            conn = connect(args.base_url, args.timeout)
            conn.request("POST", path, json.dumps(body), headers(args.admin_key))
            resp = conn.getresponse()
            text = resp.read()
            conn.close()
            if resp.status == 200:
                with hot.lock:
                    hot.loaded = want_loaded
                    hot.cycles += 1
            else:
                hot.errors.append(f"{path}: {resp.status} {text[:200]!r}")
        except Exception as e:
            hot.errors.append(f"{path}: {type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", required=True, help="a key for every served model")
    ap.add_argument("--admin-key", default="", help="an --admin key (loads and unloads the hot adapter)")
    ap.add_argument("--limited-key", required=True, help="a key with a tiny --rpm (the 429 share)")
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--adapters", default="", help="comma-separated adapter names already served")
    ap.add_argument("--hot-adapter", default="", help="NAME=PATH loaded and unloaded at runtime")
    ap.add_argument("--pid", type=int, required=True, help="the server's pid (RSS and fds)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300, help="how long the clients run")
    ap.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline")
    ap.add_argument("--max-tokens", type=int, default=24, help="max_tokens of generating requests")
    ap.add_argument("--reload-every", type=float, default=30, help="seconds between hot loads/unloads")
    ap.add_argument("--sample-every", type=float, default=5, help="seconds between RSS/fd samples")
    ap.add_argument("--timeout", type=float, default=120, help="per-request socket timeout, s (a hang fails)")
    ap.add_argument("--rss-slack", type=float, default=0.05, help="allowed RSS growth after warm-up")
    ap.add_argument("--fd-slack", type=int, default=4, help="allowed extra open fds at the end")
    ap.add_argument("--out", default="", help="write the JSON summary here")
    args = ap.parse_args()
    args.adapters = [a for a in args.adapters.split(",") if a]

    hot = None
    if args.hot_adapter:
        name, path = args.hot_adapter.split("=", 1)
        hot = Hot(name, path)

    stats = Stats()
    stop = threading.Event()
    samples = []  # (t, rss MiB, fds)
    rss0, fds0 = proc_sample(args.pid)
    t_start = time.time()
    threads = [threading.Thread(target=client, args=(i, args, stats, hot, stop), daemon=True) for i in range(args.clients)]
    if hot is not None:
        threads.append(threading.Thread(target=admin_loop, args=(args, hot, stop), daemon=True))
    for t in threads:
        t.start()
    while time.time() - t_start < args.seconds:
        time.sleep(args.sample_every)
        rss, fds = proc_sample(args.pid)
        samples.append((round(time.time() - t_start, 1), round(rss, 1), fds))
        with stats.lock:
            n = sum(stats.kinds.values())
            nf = len(stats.failures)
        print(f"t={samples[-1][0]:6.1f}s requests={n} failures={nf} rss={rss:.1f} MiB fds={fds}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=args.timeout + 10)
    hung = [t for t in threads if t.is_alive()]
    time.sleep(2)
    rss_end, fds_end = proc_sample(args.pid)

    warm = [s for s in samples if s[0] >= args.warmup]
    rss_warm = warm[0][1] if warm else samples[0][1]
    rss_growth = rss_end / rss_warm - 1
    statuses = Counter()
    for (_, status), c in stats.statuses.items():
        statuses[str(status)] += c
    five_xx = sum(c for s, c in statuses.items() if s.isdigit() and int(s) >= 500)
    lat = sorted(stats.latencies)
    summary = {
        "clients": args.clients,
        "seconds": round(time.time() - t_start, 1),
        "requests": sum(stats.kinds.values()),
        "by_kind": dict(stats.kinds),
        "by_status": dict(statuses),
        "by_kind_status": {f"{k} {s}": c for (k, s), c in sorted(stats.statuses.items(), key=str)},
        "generated_tokens": stats.tokens,
        "streams_complete": stats.streams_ok,
        "cancelled_mid_stream": stats.cancelled,
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p99_s": round(lat[int(0.99 * (len(lat) - 1))], 3) if lat else None,
        "hot_adapter_cycles": hot.cycles if hot else 0,
        "hot_adapter_errors": hot.errors if hot else [],
        "failures": len(stats.failures),
        "failure_examples": [list(f) for f in stats.failures[:20]],
        "five_xx": five_xx,
        "hung_clients": len(hung),
        "rss_mib": {"start": round(rss0, 1), "after_warmup": rss_warm, "end": round(rss_end, 1),
                    "growth_after_warmup": round(rss_growth, 4)},
        "fds": {"before": fds0, "end_idle": fds_end, "max_under_load": max(s[2] for s in samples)},
        "samples": samples,
    }
    checks = {
        "no 5xx": five_xx == 0,
        "no unexpected status, error or malformed response": not stats.failures,
        "no hung client": not hung,
        "hot adapter loads/unloads acknowledged": hot is None or (hot.cycles > 0 and not hot.errors),
        f"RSS growth after warm-up <= {args.rss_slack:.0%}": rss_growth <= args.rss_slack,
        f"fds at the end <= before + {args.fd_slack}": fds_end <= fds0 + args.fd_slack,
    }
    summary["checks"] = checks
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        print("FAILED: " + "; ".join(bad))
        raise SystemExit(1)
    print("soak passed: " + "; ".join(checks))


if __name__ == "__main__":
    main()
