#!/usr/bin/env python3
"""Check `ferrotune models export` against Hugging Face transformers, and record transformers' f32
logits as fixtures for crates/model/tests/hf_parity.rs.

    ferrotune models export smollm2-135m-instruct --out /tmp/smollm2-hf
    $VENV/bin/python scripts/parity/hf_logits.py --model /tmp/smollm2-hf

Loads the exported directory with AutoModelForCausalLM / AutoTokenizer (eager attention, f32, CPU),
checks the tokenizer against llama.cpp's ids on the corpus and the chat template, and writes the
top-20 logits per position for the prompts of fixtures/llamacpp/logits.json.
"""
import argparse
import json
import pathlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOP = 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()

    corpus = json.loads((ROOT / "fixtures/llamacpp/tokenize.json").read_text())["cases"]
    bad = [c["text"] for c in corpus if tok.encode(c["text"], add_special_tokens=False) != c["ids"]]
    print(f"tokenizer: {len(corpus) - len(bad)}/{len(corpus)} corpus texts tokenize as llama.cpp does")
    for t in bad:
        print("  differs:", repr(t))
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    print("chat template renders:", repr(chat))

    cases = []
    for c in json.loads((ROOT / "fixtures/llamacpp/logits.json").read_text())["cases"]:
        with torch.no_grad():
            logits = model(torch.tensor([c["ids"]])).logits[0]
        positions = []
        for row in logits:
            vals, idx = torch.topk(row, TOP)
            positions.append({"top_ids": idx.tolist(), "top_logits": [round(v, 5) for v in vals.tolist()]})
        cases.append({"name": c["name"], "ids": c["ids"], "positions": positions})
    import transformers
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "dtype": "float32", "attn": "eager"}
    out = ROOT / "fixtures/hf"
    out.mkdir(parents=True, exist_ok=True)
    (out / "logits.json").write_text(json.dumps({"meta": meta, "top": TOP, "cases": cases}) + "\n")
    print(f"wrote {len(cases)} cases to {out / 'logits.json'}")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
