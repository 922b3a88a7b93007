"""Check that huggingface_hub reads a ferrotune model card's front matter.

Usage: python check_card.py README.md [--expect METRIC=VALUE ...] [--expect-name NAME]

Loads the card with huggingface_hub.ModelCard.load and asserts base_model, base_model_relation,
library_name and license are set; when the front matter has a model-index, that eval_results
is non-empty and every result has a metric type, a numeric value and a dataset. --expect checks
a metric's value (relative tolerance 1e-9); --expect-name the model-index name. Prints a short
summary; exits 1 on failure.
"""

import argparse
import math
import sys

from huggingface_hub import ModelCard


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("readme")
    ap.add_argument("--expect", action="append", default=[], metavar="METRIC=VALUE")
    ap.add_argument("--expect-name")
    a = ap.parse_args()

    card = ModelCard.load(a.readme)
    data = card.data
    raw = data.to_dict()
    problems = []
    for key in ("base_model", "base_model_relation", "library_name", "license"):
        if not getattr(data, key, None):
            problems.append(f"{key} missing")
    if data.base_model_relation not in ("adapter", "finetune", "merge", "quantized"):
        problems.append(f"base_model_relation {data.base_model_relation!r} is not one the Hub knows")
    results = data.eval_results or []
    if "model-index" in raw or "model_index" in raw or a.expect:
        if not results:
            problems.append("model-index present but eval_results is empty")
    for r in results:
        if not r.metric_type or not isinstance(r.metric_value, (int, float)) or not r.dataset_name or not r.task_type:
            problems.append(f"incomplete eval result {r}")
    for e in a.expect:
        name, _, value = e.partition("=")
        want = float(value)
        got = [r.metric_value for r in results if r.metric_type == name]
        if not got:
            problems.append(f"no eval result for {name}")
        elif not any(math.isclose(float(g), want, rel_tol=1e-9, abs_tol=1e-12) for g in got):
            problems.append(f"{name}: expected {want}, card has {got}")
    if a.expect_name is not None and data.model_name != a.expect_name:
        problems.append(f"model-index name: expected {a.expect_name!r}, got {data.model_name!r}")

    print(f"{a.readme}:")
    print(f"  base_model={data.base_model!r} relation={data.base_model_relation!r} library={data.library_name!r} license={data.license!r}")
    print(f"  tags={data.tags!r} language={getattr(data, 'language', None)!r} datasets={getattr(data, 'datasets', None)!r}")
    print(f"  model-index name={data.model_name!r}, {len(results)} eval results: "
          + ", ".join(f"{r.metric_type}={r.metric_value} on {r.dataset_name} ({r.dataset_type})" for r in results))
    if problems:
        for p in problems:
            print(f"  FAIL: {p}")
        return 1
    print("  OK: huggingface_hub parsed the card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
