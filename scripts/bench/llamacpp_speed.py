#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on a GGUF, for `ferrotune bench generate`.

Prefill: one eval of the given prompt tokens (n_batch = prompt length). Decode: greedy, one token
per eval, EOS ignored. Prints one JSON line {"prefill_tok_s", "decode_tok_s"}.
"""
import argparse
import json
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="JSON array of prompt token ids")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    prompt = json.loads(a.tokens)
    llm = Llama(model_path=a.model, n_ctx=len(prompt) + a.gen + 16, n_batch=max(512, len(prompt)),
                n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    llm.eval(prompt[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t0
    t1 = time.perf_counter()
    vocab = llm.n_vocab()
    for _ in range(a.gen):
        # The last row of logits straight from the context (no Python-side copy of all rows).
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        nxt = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab,))))
        llm.eval([nxt])
    decode = time.perf_counter() - t1
    print(json.dumps({"prefill_tok_s": len(prompt) / prefill, "decode_tok_s": a.gen / decode}))


if __name__ == "__main__":
    main()
