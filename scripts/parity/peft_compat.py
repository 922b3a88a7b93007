#!/usr/bin/env python3
"""PEFT compatibility, both ways, on the exported default model (CPU is enough: PEFT's math is the
same on any device).

    ferrotune models export smollm2-135m-instruct --out /tmp/smollm2-hf
    $VENV/bin/python scripts/parity/peft_compat.py --model /tmp/smollm2-hf

1. Loads fixtures/peft/ferrotune_adapter (made by `ferrotune train`) with
   `peft.PeftModel.from_pretrained` and records its logits (top-20 per position).
2. Creates an adapter with PEFT itself (r=4, alpha=8, rsLoRA, q/k/v/o + down_proj, random B so
   it is not a no-op), saves it to fixtures/peft/peft_adapter, and records its logits.
crates/model/tests/peft_parity.rs loads both adapters with ferrotune and compares.
"""
import argparse
import json
import pathlib

import peft
import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures/peft"
TOP = 20


def top_logits(model, cases):
    out = []
    for c in cases:
        with torch.no_grad():
            logits = model(torch.tensor([c["ids"]])).logits[0]
        pos = []
        for row in logits:
            vals, idx = torch.topk(row, TOP)
            pos.append({"top_ids": idx.tolist(), "top_logits": [round(v, 5) for v in vals.tolist()]})
        out.append({"name": c["name"], "ids": c["ids"], "positions": pos})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    cases = json.loads((ROOT / "fixtures/llamacpp/logits.json").read_text())["cases"][:2]
    load = lambda: AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()

    ours = peft.PeftModel.from_pretrained(load(), str(OUT / "ferrotune_adapter")).eval()
    n_lora = sum(1 for n, _ in ours.named_parameters() if "lora_" in n)
    print(f"PEFT {peft.__version__} loaded ferrotune's adapter: {n_lora} LoRA tensors")
    (OUT / "ferrotune_adapter_logits.json").write_text(json.dumps({"cases": top_logits(ours, cases)}) + "\n")

    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    theirs = peft.get_peft_model(load(), cfg)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    theirs.eval()
    theirs.save_pretrained(str(OUT / "peft_adapter"))
    (OUT / "peft_adapter_logits.json").write_text(json.dumps({"peft": peft.__version__, "cases": top_logits(theirs, cases)}) + "\n")
    print(f"wrote PEFT's adapter and the logits of both to {OUT}")


if __name__ == "__main__":
    main()
