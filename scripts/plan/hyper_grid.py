#!/usr/bin/env python3
"""Run the hyperparameter evidence grid behind `ferrotune plan`'s training defaults.

For each task (scripts/plan/tasks.py's three plus a subset of examples/support) and each setting
(learning rate x epochs, LoRA r=16 on all seven projections, the CLI's other defaults), this
fine-tunes SmolLM2-135M-Instruct on the CPU with `ferrotune train`, scores base and tuned on the
task's held-out test split with `ferrotune eval` (greedy), and appends one JSON line per run to
OUT/results.jsonl (task, rows, lr, epochs, steps, train seconds, metric, base and tuned score
with its 95% bootstrap interval). Runs already in results.jsonl are skipped, so an interrupted
grid resumes. `--table` prints the markdown table of results.jsonl (docs/plan.md holds one).

Usage: hyper_grid.py BIN OUT [--only TASK,...] [--settings LR:EPOCHS,...]
       hyper_grid.py --table OUT/results.jsonl
"""
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# (task, train rows, metric, max new tokens)
# Sized for a 2-core CPU: the whole grid trains ~1,500 steps of 4 rows (about an hour with the evals).
TASKS = [
    ("classify-120", 120, "json_match", 40),
    ("extract-120", 120, "json_match", 72),
    ("dates-120", 120, "exact_match", 16),
    ("classify-40", 40, "json_match", 40),
    ("support-60", 60, "rougeL", 160),
]
SETTINGS = [(2e-4, 3), (1e-3, 3), (3e-3, 3), (1e-3, 1)]
# Per task: the settings run instead of SETTINGS (small data: does the step count matter more
# than the epoch count? long answers: the two learning rates that matter).
ONLY = {"classify-40": [(1e-3, 3), (1e-3, 10), (2e-4, 10)], "support-60": [(2e-4, 3), (1e-3, 3)],
        "extract-120": SETTINGS[:3], "dates-120": SETTINGS[:3]}


def prepare(out: Path):
    data = out / "data"
    if not (data / "dates" / "test.jsonl").exists():
        subprocess.run([sys.executable, str(HERE / "tasks.py"), str(data)], check=True)
    for name, rows, _, _ in TASKS:
        base = name.split("-")[0]
        d = data / name
        if d.exists() and (d / "test.jsonl").exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        if base == "support":
            train = (REPO / "examples/support/train.jsonl").read_text().splitlines()[:rows]
            test = (REPO / "examples/support/eval.jsonl").read_text().splitlines()[:24]
        else:
            train = (data / base / "train.jsonl").read_text().splitlines()[:rows]
            test = (data / base / "test.jsonl").read_text().splitlines()
        (d / "train.jsonl").write_text("\n".join(train) + "\n")
        (d / "test.jsonl").write_text("\n".join(test) + "\n")
    return data


def find_score(ev, metric, system):
    """(value, ci95 low, ci95 high) of one system's metric in eval.json."""
    for m in ev.get("metrics", []):
        if m.get("name") != metric:
            continue
        for sc in m.get("scores", []):
            if sc.get("system") == system:
                ci = sc.get("ci95") or [None, None]
                return sc.get("value"), ci[0], ci[1]
    return None, None, None


def steps_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(l).get("step", 0) for l in lines if l.strip()), default=0)


def score_run(name, rows, metric, lr, epochs, run_dir, train_s):
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    base = find_score(ev, metric, "base")
    tuned = find_score(ev, metric, "tuned")
    return {"task": name, "rows": rows, "metric": metric, "lr": lr, "epochs": epochs, "steps": steps_of(run_dir),
            "train_seconds": round(train_s, 1), "base": base[0], "tuned": tuned[0], "tuned_ci": [tuned[1], tuned[2]],
            "model": "smollm2-135m-instruct", "method": "lora r=16 (7 projections)"}


def run(bin_, out, only, settings):
    data = prepare(out)
    results = out / "results.jsonl"
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["task"], r["lr"], r["epochs"]))
    for name, rows, metric, max_tokens in TASKS:
        if only and name not in only:
            continue
        for lr, epochs in ONLY.get(name, settings):
            if (name, lr, epochs) in done:
                continue
            tag = f"{name}-lr{lr:g}-ep{epochs}"
            run_dir = out / "runs" / tag
            t0 = time.time()
            subprocess.run([bin_, "train", "--data", str(data / name / "train.jsonl"), "--lr", str(lr), "--epochs", str(epochs),
                            "--out", str(run_dir), "--no-registry", "--quiet", "--save-total-limit", "1"], check=True)
            train_s = time.time() - t0
            ev_dir = run_dir / "eval"
            subprocess.run([bin_, "eval", "--data", str(data / name / "test.jsonl"), "--adapter", f"tuned={run_dir / 'adapter'}",
                            "--metrics", metric, "--max-tokens", str(max_tokens), "--out", str(ev_dir), "--resamples", "2000",
                            "--no-registry"], check=True, stdout=subprocess.DEVNULL)
            row = score_run(name, rows, metric, lr, epochs, run_dir, train_s)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def table(path):
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    settings = sorted({(r["lr"], r["epochs"]) for r in rows}, key=lambda s: (s[1], s[0]))
    head = "| task (train rows, metric) | base | " + " | ".join(f"lr {lr:g}, {ep} ep" for lr, ep in settings) + " |"
    print(head)
    print("|" + "---|" * (2 + len(settings)))
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = {(r["lr"], r["epochs"]): r for r in rows if r["task"] == task}
        first = next(iter(rs.values()))
        cells = []
        for s in settings:
            r = rs.get(s)
            cells.append("–" if r is None or r["tuned"] is None else f"{r['tuned']:.3f} ({r['train_seconds']:.0f} s)")
        print(f"| {task} ({first['rows']}, {first['metric']}) | {first['base']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["--table"]:
        table(a[1])
    elif len(a) >= 2:
        only = a[a.index("--only") + 1].split(",") if "--only" in a else None
        settings = [(float(x.split(":")[0]), int(x.split(":")[1])) for x in a[a.index("--settings") + 1].split(",")] if "--settings" in a else SETTINGS
        run(a[0], Path(a[1]), only, settings)
    else:
        sys.exit(__doc__)
