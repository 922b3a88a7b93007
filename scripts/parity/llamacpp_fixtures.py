#!/usr/bin/env python3
"""Record llama.cpp's tokenization and logits on the default GGUF as small fixtures.

Run once, after scripts/parity/install-llama-cpp.sh:
    $VENV/bin/python scripts/parity/llamacpp_fixtures.py --model PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
It writes fixtures/llamacpp/{tokenize,logits}.json, which CI compares against without llama.cpp
(crates/model/tests/llamacpp_parity.rs).
"""
import argparse
import json
import pathlib

import numpy as np
from llama_cpp import Llama, __version__

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Prompts for the logit comparison (rendered ChatML where it is a chat, as the model sees it).
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
PROMPTS = {
    "chat_capital": SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "chat_code": SYSTEM + "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\ndef reverse(s):\n    return s[::-1]",
    "plain_story": "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "plain_facts": "Water boils at 100 degrees Celsius at sea level. The chemical formula of water is",
}
TOP = 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    # KV cache in f32 (type 0): llama.cpp's default f16 cache alone moves its logits by ~0.25
    # on average (measured on this model), which would hide the comparison of the math itself.
    llm = Llama(model_path=args.model, n_ctx=512, n_threads=args.threads, logits_all=True, verbose=False,
                type_k=0, type_v=0, flash_attn=False)
    corpus = json.loads((ROOT / "scripts/parity/corpus.json").read_text())
    toks = []
    for text in corpus:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        detok = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        toks.append({"text": text, "ids": ids, "detokenized": detok})
    out = ROOT / "fixtures/llamacpp"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"llama_cpp_python": __version__, "model": pathlib.Path(args.model).name, "kv_cache": "f32"}
    (out / "tokenize.json").write_text(json.dumps({"meta": meta, "cases": toks}, ensure_ascii=False, indent=1) + "\n")

    cases = []
    for name, text in PROMPTS.items():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = []
        for p, row in enumerate(scores):
            top = np.argsort(-row)[:TOP]
            positions.append({"top_ids": [int(i) for i in top], "top_logits": [round(float(row[i]), 5) for i in top]})
        cases.append({"name": name, "ids": ids, "positions": positions})
    (out / "logits.json").write_text(json.dumps({"meta": meta, "top": TOP, "cases": cases}) + "\n")
    print(f"wrote {len(toks)} tokenization cases and {len(cases)} logit cases to {out}")


if __name__ == "__main__":
    main()
