#!/usr/bin/env python3
"""Data-stage benchmark: `ferrotune data validate` (format checks + PII + exact/near dedup +
rendering with the model's chat template and token statistics) over N generated chat rows, vs a
Python reference in the same run: the OpenAI cookbook's format checks + datasketch MinHash (128
permutations) + MinHashLSH at the same threshold. Prints rows/s, peak RSS and the ratio.

The Python reference does NOT count tokens (the cookbook uses tiktoken, whose encodings are
downloaded at run time and are not available here), so it does less work than we do. ferrotune
reads only the model's tokenizer and chat template (no weights), so its peak RSS is the scan's
working set plus the dedup index, which grows with the row count (exact, prompt and LSH tables).

    /work/datavenv/bin/python scripts/bench/data_bench.py --rows 1000000 --python-rows 20000
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

WORDS = ("order refund delivery parcel warranty screen battery laptop camera account payment label customer "
         "support policy window days price express return replace photo email store ticket member standard "
         "fee week kettle vacuum speaker monitor keyboard charger cable box damaged late missing wrong size").split()


def gen_rows(n, seed=7):
    rng = random.Random(seed)
    base = []
    for i in range(n):
        if base and rng.random() < 0.02:  # ~2% near or exact copies of earlier rows
            row = json.loads(rng.choice(base))
            if rng.random() < 0.5:
                row["messages"][1]["content"] += " please"
            yield json.dumps(row)
            continue
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 40)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(15, 80)))
        row = {"messages": [{"role": "system", "content": "You are the support assistant."},
                            {"role": "user", "content": f"Hi, question {i}: {q}?"},
                            {"role": "assistant", "content": f"Answer {i}: {a}."}],
               "metadata": {"topic": rng.choice(["refund", "shipping", "warranty", "billing"])}}
        s = json.dumps(row)
        if len(base) < 1000:
            base.append(s)
        yield s


def python_reference(path, limit, threshold):
    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    errors = defaultdict(int)
    near = 0
    t0 = time.perf_counter()
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            ex = json.loads(line)
            # The cookbook's format checks.
            if not isinstance(ex, dict):
                errors["data_type"] += 1
                continue
            messages = ex.get("messages", None)
            if not messages:
                errors["missing_messages_list"] += 1
                continue
            for message in messages:
                if "role" not in message or "content" not in message:
                    errors["message_missing_key"] += 1
                if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                    errors["message_unrecognized_key"] += 1
                if message.get("role", None) not in ("system", "user", "assistant", "function"):
                    errors["unrecognized_role"] += 1
                content = message.get("content", None)
                if not content or not isinstance(content, str):
                    errors["missing_content"] += 1
            if not any(m.get("role", None) == "assistant" for m in messages):
                errors["example_missing_assistant_message"] += 1
            # Near duplicates: same shingles as ours (word 3-grams of user + assistant text).
            text = "\n".join(m["content"] for m in messages if m.get("role") != "system")
            words = [w.lower() for w in re.split(r"[^0-9A-Za-z]+", text) if w]
            m = MinHash(num_perm=128)
            m.update_batch([" ".join(words[j:j + 3]).encode() for j in range(len(words) - 2)])
            if lsh.query(m):
                near += 1
            else:
                lsh.insert(str(i), m)
    dt = time.perf_counter() - t0
    return min(limit, i + 1), dt, near


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--python-rows", type=int, default=20_000)
    ap.add_argument("--ferrotune", default="target/release/ferrotune")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threshold", type=float, default=0.85)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.jsonl")
        with open(path, "w") as f:
            for s in gen_rows(a.rows):
                f.write(s + "\n")
        size = os.path.getsize(path)
        # Flush the generated file to disk first, so that the kernel's write-back of it does not
        # compete with the timed runs (it took a core for seconds after a 700 MB write).
        os.sync()
        cmd = ["/usr/bin/time", "-f", "%e %M", a.ferrotune, "data", "validate", path, "--model", a.model,
               "--json", "--max-findings", "10", "--near-dup-threshold", str(a.threshold), "--max-seq-len", "100000"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall, rss_kb = p.stderr.strip().splitlines()[-1].split()
        report = json.loads(p.stdout)
        ours = a.rows / float(wall)
        print(f"ferrotune: {a.rows} rows ({size / 1e6:.0f} MB) in {float(wall):.1f} s = {ours:,.0f} rows/s, "
              f"peak RSS {int(rss_kb) / 1024:.0f} MiB; near dups {report['stats']['near_duplicates']}, "
              f"exact {report['stats']['exact_duplicates']}, tokens total {report['stats']['total_tokens']['sum']}")
        n, dt, near = python_reference(path, a.python_rows, a.threshold)
        py = n / dt
        print(f"python (cookbook checks + datasketch MinHash/LSH, no token counting): {n} rows in {dt:.1f} s = {py:,.0f} rows/s"
              f" (near dups {near})")
        print(f"ratio: {ours / py:.1f}x   (threads: RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}, cores {os.cpu_count()})")


if __name__ == "__main__":
    sys.exit(main())
