#!/usr/bin/env python3
"""What the audit log costs a busy server: tokens/s at N concurrent streams with `[audit]` off and
on, measured in the same run, alternating off/on/off/on… so drift on a shared machine hits both.

    FERROTUNE_HOME=$PWD/.ferrotune python3 scripts/serve/audit_overhead.py \
        [--model smollm2-135m-instruct] [--clients 32] [--max-tokens 64] [--seconds 60] \
        [--rounds 2] [--out bench/audit-overhead.json]

Each run starts `target/release/ferrotune serve` (build it first: `cargo build --release -p
ferrotune-cli`) with a fresh serve.toml (auth off on loopback, no embedder, `[audit] enabled` as
the run says, the log in a temporary folder), waits for /ready, warms up, drives it with
scripts/serve/load.py (streaming chat, distinct seeds so the response cache never answers),
reads the audit counters from /metrics, stops it with SIGTERM (graceful shutdown: the audit log
flushes and signs a checkpoint), and checks that the log holds one `inference` entry per
request. Prints tokens/s per run, the mean per mode and on/off; with --out, writes the record.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metric(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def one_run(a, audit_on, work):
    port = free_port()
    audit_dir = os.path.join(work, f"audit-{time.time_ns()}")
    cfg = os.path.join(work, "serve.toml")
    with open(cfg, "w") as f:
        f.write(f'auth = false\n\n[embeddings]\nmodel = ""\n\n[audit]\nenabled = {"true" if audit_on else "false"}\ndir = "{audit_dir}"\n')
    log = open(os.path.join(work, f"server-{'on' if audit_on else 'off'}-{port}.log"), "w")
    server = subprocess.Popen(
        [a.binary, "serve", "--config", cfg, "--model", a.model, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}; see {log.name}")
            try:
                if get(f"{base}/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > 180:
                raise SystemExit("the server did not get ready in 180 s")
            time.sleep(0.2)
        load = [sys.executable, os.path.join(ROOT, "scripts/serve/load.py"), "--base-url", base, "--model", a.model,
                "--clients", str(a.clients), "--max-tokens", str(a.max_tokens), "--pid", str(server.pid)]
        if a.warmup > 0:
            subprocess.run(load + ["--seconds", str(a.warmup)], check=True, capture_output=True)
        out = subprocess.run(load + ["--seconds", str(a.seconds)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout)
        m = get(f"{base}/metrics")[1]
        result["audit_inference_events"] = metric(m, 'ferrotune:audit_events_total{action="inference"}')
        result["audit_errors"] = metric(m, "ferrotune:audit_errors_total")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    result["server_exit"] = server.returncode
    result["audit_dir_written"] = os.path.isdir(audit_dir)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrotune"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5, help="seconds of load before each measured run")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternating")
    ap.add_argument("--out", default=None, help="write the record here (bench/audit-overhead.json)")
    ap.add_argument("--note", default="", help="free text for the record (machine load, other jobs)")
    a = ap.parse_args()
    if not os.path.exists(a.binary):
        raise SystemExit(f"{a.binary} is missing: cargo build --release -p ferrotune-cli")
    runs = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="audit-overhead-") as work:
        for r in range(a.rounds):
            for on in (False, True):
                res = one_run(a, on, work)
                res.update({"round": r + 1, "audit": "on" if on else "off", "loadavg_after": loadavg()})
                runs.append(res)
                print(f"round {r + 1} audit {res['audit']:>3}: {res['tokens_per_s']:7.1f} tokens/s, {res['requests']} requests, "
                      f"audit entries {int(res['audit_inference_events'])}, errors {res['errors']}, load {res['loadavg_after']}", flush=True)
    tps = {m: [x["tokens_per_s"] for x in runs if x["audit"] == m] for m in ("off", "on")}
    mean = {m: statistics.mean(v) for m, v in tps.items()}
    median = {m: statistics.median(v) for m, v in tps.items()}
    ratio = mean["on"] / mean["off"] if mean["off"] else float("nan")
    # Pairwise (each on run against the off run just before it): drift shows as spread here.
    pairs = [on / off for off, on in zip(tps["off"], tps["on"]) if off]
    for x in runs:
        if x["audit"] == "on" and (x["audit_inference_events"] < x["requests"] or not x["audit_dir_written"] or x["audit_errors"]):
            print(f"warning: round {x['round']}: {x['audit_inference_events']} inference entries for {x['requests']} requests, "
                  f"errors {x['audit_errors']}", file=sys.stderr)
        if x["audit"] == "off" and x["audit_dir_written"]:
            print(f"warning: round {x['round']}: an audit folder was written with the audit log off", file=sys.stderr)
    summary = {
        "tokens_per_s_off": tps["off"],
        "tokens_per_s_on": tps["on"],
        "mean_off": round(mean["off"], 1),
        "mean_on": round(mean["on"], 1),
        "ratio_on_over_off": round(ratio, 4),
        "median_off": round(median["off"], 1),
        "median_on": round(median["on"], 1),
        # Less moved by one run a neighbour's build slowed down.
        "median_ratio_on_over_off": round(median["on"] / median["off"], 4) if median["off"] else None,
        "pairwise_ratios": [round(p, 4) for p in pairs],
        "within_5_percent": ratio >= 0.95,
    }
    print(json.dumps(summary, indent=2))
    if a.out:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        record = {
            "benchmark": "audit log overhead: tokens/s at concurrent streams, [audit] off vs on, alternating in one run",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(),
                        "loadavg_before": load_before, "loadavg_after": loadavg()},
            "command": "FERROTUNE_HOME=$PWD/.ferrotune python3 scripts/serve/audit_overhead.py " + " ".join(sys.argv[1:]),
            "settings": {"model": a.model, "clients": a.clients, "max_tokens": a.max_tokens, "seconds": a.seconds,
                         "warmup_s": a.warmup, "rounds": a.rounds, "order": "off, on, off, on, …"},
            "summary": summary,
            "runs": runs,
            "note": a.note,
        }
        with open(a.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
