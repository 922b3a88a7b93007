#!/usr/bin/env python3
"""HF PEFT's LoRA training speed, the peer of `ferrotune bench train` (which runs this script):
a LLaMA of the given shape with fresh random weights (transformers' own init, std 0.02), LoRA
r=16 (alpha 32) on all seven projections, AdamW (lr 2e-4), clipping at 1.0, one random token batch
repeated every step with loss on every token. CPU in f32, or CUDA in bf16 (LoRA weights f32, as
PEFT keeps them by default; SDPA attention; no gradient checkpointing).
Prints one JSON line {"tokens_per_sec", "peak_rss_gib", "losses", and on CUDA
"torch_max_allocated_gib", "torch_max_reserved_gib"} over the timed steps (after one warm-up).
"""
import argparse
import json
import resource
import time

import peft
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--dropout", type=float, default=0.05)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = LlamaConfig(tie_word_embeddings=True, rms_norm_eps=1e-5, head_dim=64, **SHAPES[a.shape])
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype)
    lcfg = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=a.dropout, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, lcfg)  # LoRA weights in f32 (autocast_adapter_dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)
    losses = []

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())  # synchronises the device

    step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"tokens_per_sec": a.batch * a.seq * a.steps / dt, "peak_rss_gib": rss, "losses": losses}
    if cuda:
        out["torch_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["torch_max_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    print(json.dumps(out))


if __name__ == "__main__":
    main()
