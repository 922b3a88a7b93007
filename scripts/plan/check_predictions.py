#!/usr/bin/env python3
"""Check `ferrotune plan`'s CPU predictions against real `ferrotune train` runs on this machine.

For each configuration (data, batch size, epochs, max-seq-len) this asks `ferrotune plan --json`
for the LoRA-on-cpu prediction, then runs the same training with `/usr/bin/time -v` and compares:
peak memory (the plan's total vs the process's maximum RSS) and training time (the plan's hours
vs the run's lineage.json started → finished, which includes loading the model: a few seconds).
Run it on a quiet machine: the plan's CPU speed comes from bench/cpu-train.json (or a
`ferrotune plan --calibrate` record), measured quiet.

Usage: check_predictions.py BIN OUT [--json FILE]   (needs the default model installed)
"""
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def configs(data):
    support = REPO / "examples/support/train.jsonl"
    return [
        ("classify, 120 rows, batch 4, 1 epoch", data / "classify-120.jsonl", 4, 1, None),
        ("support, 120 rows, batch 4, 1 epoch", data / "support-120.jsonl", 4, 1, None),
        ("support, 120 rows, batch 8, 1 epoch", data / "support-120.jsonl", 8, 1, None),
    ], support


def main():
    a = sys.argv[1:]
    if len(a) < 2:
        sys.exit(__doc__)
    bin_, out = a[0], Path(a[1])
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "tasks" / "classify" / "train.jsonl").exists():
        subprocess.run([sys.executable, str(HERE / "tasks.py"), str(data / "tasks")], check=True)
    cfgs, support = configs(data)
    (data / "classify-120.jsonl").write_text("\n".join((data / "tasks/classify/train.jsonl").read_text().splitlines()[:120]) + "\n")
    (data / "support-120.jsonl").write_text("\n".join(support.read_text().splitlines()[:120]) + "\n")
    rows = []
    for name, path, batch, epochs, seq in cfgs:
        extra = ["--batch-size", str(batch), "--epochs", str(epochs)] + (["--max-seq-len", str(seq)] if seq else [])
        plan = json.loads(subprocess.run([bin_, "plan", "--data", str(path), "--methods", "lora", "--hardware", "cpu", "--json"] + extra,
                                         check=True, capture_output=True, text=True).stdout)
        opt = plan["options"][0]
        run_dir = out / "runs" / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        p = subprocess.run(["/usr/bin/time", "-v", bin_, "train", "--data", str(path), "--out", str(run_dir), "--no-registry", "--quiet",
                            "--lr", "1e-3", "--save-total-limit", "1"] + extra, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{name}: train failed:\n{p.stderr}")
        rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        lin = json.loads((run_dir / "lineage.json").read_text())
        t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
        secs = (t(lin["finished"]) - t(lin["started"])).total_seconds()
        pred_gib = opt["memory"]["total_bytes"] / 2**30
        pred_s = opt["hours"] * 3600
        row = {"config": name, "steps": opt["settings"]["steps"], "predicted_peak_gib": round(pred_gib, 3), "measured_peak_gib": round(rss_kib / 2**20, 3),
               "memory_ratio": round(pred_gib / (rss_kib / 2**20), 3), "predicted_seconds": round(pred_s, 1), "measured_seconds": secs,
               "time_ratio": round(pred_s / secs, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| configuration | steps | peak GiB predicted / measured | ratio | seconds predicted / measured | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['steps']} | {r['predicted_peak_gib']:.2f} / {r['measured_peak_gib']:.2f} | {r['memory_ratio']:.2f} | "
              f"{r['predicted_seconds']:.0f} / {r['measured_seconds']:.0f} | {r['time_ratio']:.2f} |")
    if "--json" in a:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        Path(a[a.index("--json") + 1]).write_text(json.dumps({"date": datetime.date.today().isoformat(), "commit": commit, "command": "scripts/plan/check_predictions.py BIN OUT", "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
