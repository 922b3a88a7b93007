#!/usr/bin/env python3
"""PromQL of deploy/: list it, and check its metric names against a /metrics scrape.

  promql.py exprs                      every expression, one JSON object a line
                                       ({"where": "dashboard: Time to first token", "expr": ...})
  promql.py names SCRAPE METRICS_RS    each metric name in the dashboard and the alert rules:
                                       "ok" if the scrape has it, "registered" if it has no series
                                       in the scrape but crates/serve/src/metrics.rs registers its
                                       family, "missing" otherwise; exit 1 on any missing

Used by scripts/deploy/check.sh. Names are found by stripping strings, label matchers, ranges and
by/without/on/ignoring lists, then taking identifiers not followed by "(" (functions) that are
not keywords.
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/ferrotune.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
# Series Prometheus makes itself, not ferrotune.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def exprs():
    dash = json.loads(DASHBOARD.read_text())
    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield f"dashboard: {p['title']} ({t.get('legendFormat', t['refId'])})", t["expr"]
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:
            yield f"dashboard variable ${var['name']}", m.group(1)
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # 1e3, 0.5
        if tok.lower() in KEYWORDS or re.match(r"\s*\(", e[m.end():]):
            continue
        names.add(tok)
    return names


def scraped_names(text):
    """Sample names, plus the series names each `# TYPE` promises (families with no sample)."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.update(name + s for s in suffixes.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def registered_families(metrics_rs):
    return set(re.findall(r'"(ferrotune:[a-z0-9_:]+)"', Path(metrics_rs).read_text()))


def main():
    if sys.argv[1:2] == ["exprs"]:
        for where, expr in exprs():
            print(json.dumps({"where": where, "expr": expr}))
        return 0
    if sys.argv[1:2] != ["names"] or len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    scraped = scraped_names(Path(sys.argv[2]).read_text())
    families = registered_families(sys.argv[3])
    used = {}
    for where, expr in exprs():
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    missing = 0
    for name in sorted(used):
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if name in scraped or name in PROMETHEUS_OWN:
            status = "ok"
        elif family in families:
            status = "registered"
        else:
            status = "missing"
            missing += 1
        print(f"{status:10} {name}  ({len(used[name])} use(s): {used[name][0]}{' …' if len(used[name]) > 1 else ''})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
