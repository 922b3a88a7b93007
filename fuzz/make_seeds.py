#!/usr/bin/env python3
"""Writes the binary seeds of the fuzz corpus (the text seeds are copies of examples/ and
fixtures/ files): a tiny llama GGUF (259 byte-level tokens, one layer of hidden size 8, every
tensor F32, ChatML template) and a small injection-classifier file (2^4 weights).
Run from fuzz/: python3 make_seeds.py"""
import hashlib
import json
import os
import struct

def bytes_to_unicode():
    # GPT-2's byte-level alphabet (the tiny test model's tokens are these 256 characters).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]

def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b

def kv(key, typ, value):
    out = gstr(key) + struct.pack("<I", typ)
    if typ == 8:
        out += gstr(value)
    elif typ == 4:
        out += struct.pack("<I", value)
    elif typ == 6:
        out += struct.pack("<f", value)
    elif typ == 7:
        out += struct.pack("<?", value)
    elif typ == 9:
        etyp, items = value
        out += struct.pack("<IQ", etyp, len(items))
        for it in items:
            out += gstr(it) if etyp == 8 else struct.pack("<i", it)
    return out

def gguf():
    hidden, ff, heads, vocab = 8, 16, 2, 259
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + bytes_to_unicode()
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
              " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    meta = [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 32),
        ("llama.embedding_length", 4, hidden),
        ("llama.feed_forward_length", 4, ff),
        ("llama.block_count", 4, 1),
        ("llama.attention.head_count", 4, heads),
        ("llama.attention.head_count_kv", 4, heads),
        ("llama.context_length", 4, 64),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        ("llama.rope.freq_base", 6, 10000.0),
        ("tokenizer.ggml.model", 8, "gpt2"),
        ("tokenizer.ggml.pre", 8, "gpt2"),
        ("tokenizer.ggml.tokens", 9, (8, tokens)),
        ("tokenizer.ggml.token_type", 9, (5, [3, 3, 3] + [1] * 256)),
        ("tokenizer.ggml.merges", 9, (8, [])),
        ("tokenizer.ggml.bos_token_id", 4, 1),
        ("tokenizer.ggml.eos_token_id", 4, 2),
        ("tokenizer.ggml.add_bos_token", 7, False),
        ("tokenizer.chat_template", 8, chatml),
    ]
    # ggml dims: innermost first (an HF [out, in] weight is ne = [in, out]).
    tensors = [("token_embd.weight", [hidden, vocab]), ("output_norm.weight", [hidden]),
               ("blk.0.attn_norm.weight", [hidden]), ("blk.0.ffn_norm.weight", [hidden]),
               ("blk.0.attn_q.weight", [hidden, hidden]), ("blk.0.attn_k.weight", [hidden, hidden]),
               ("blk.0.attn_v.weight", [hidden, hidden]), ("blk.0.attn_output.weight", [hidden, hidden]),
               ("blk.0.ffn_gate.weight", [hidden, ff]), ("blk.0.ffn_up.weight", [hidden, ff]),
               ("blk.0.ffn_down.weight", [ff, hidden])]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    head += b"".join(kv(*m) for m in meta)
    data, offset = b"", 0
    for i, (name, dims) in enumerate(tensors):
        n = 1
        for d in dims:
            n *= d
        head += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, offset)
        blob = b"".join(struct.pack("<f", ((j * 7 + i) % 13 - 6) / 50.0) for j in range(n))
        blob += b"\0" * (-len(blob) % 32)
        data += blob
        offset += len(blob)
    head += b"\0" * (-len(head) % 32)
    return head + data

def injection():
    bits = 4
    info = {"features": 1, "bits": bits, "threshold": 0.5, "max_bytes": 16384,
            "training": {"train_rows": 1, "train_sha256": "00" * 32, "validation_rows": 1,
                         "validation_sha256": "00" * 32, "epochs": 1, "lr": 1.0, "l2": 0.0, "seed": 1,
                         "target_fpr": 0.01, "validation_recall": 1.0, "validation_fpr": 0.0,
                         "validation_auroc": 1.0}}
    meta = json.dumps(info, separators=(",", ":")).encode()
    body = b"FTINJECT" + struct.pack("<II", 1, len(meta)) + meta
    body += b"".join(struct.pack("<f", (i - 8) / 4.0) for i in range(1 << bits)) + struct.pack("<f", -0.5)
    return body

def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

write("gguf", "tiny-llama.gguf", gguf())
body = injection()
# The target appends the checksum itself when the first byte is odd.
write("guard_model", "tiny-checked.bin", b"\0" + body + hashlib.sha256(body).digest())
write("guard_model", "tiny-body.bin", b"\1" + body)

# Text seeds: the first byte is the target's mode (see each target's doc comment).
ROOT = ".."

def read(path, limit=None):
    with open(os.path.join(ROOT, path), "rb") as f:
        data = f.read()
    return data if limit is None else data[:limit]

def lines(path, n):
    return b"".join(read(path).splitlines(keepends=True)[:n])

# data_rows: 0 = JSONL, 1 = CSV, 2 = Parquet.
pq = "crates/data/tests/fixtures/parquet"
write("data_rows", "support.jsonl", b"\0" + lines("examples/support/train.jsonl", 2))
for kind in ["alpaca", "chat", "completion", "text"]:
    write("data_rows", f"{kind}.jsonl", b"\0" + lines(f"{pq}/{kind}.jsonl", 3))
    write("data_rows", f"{kind}.parquet", b"\2" + read(f"{pq}/{kind}.parquet"))
write("data_rows", "binary.parquet", b"\2" + read(f"{pq}/binary.parquet"))
write("data_rows", "alpaca.csv", b"\1" + b'instruction,input,output\n"Say hi","","Hi!"\n"Add, please","1 2","3"\n')
write("data_rows", "chat.csv", b"\1" + b'messages\n"[{""role"": ""user"", ""content"": ""Hi""}, {""role"": ""assistant"", ""content"": ""Hello""}]"\n')

# rag_docs: 0 = .txt, 1 = .md, 2 = .html, 3 = .jsonl.
kb = "examples/kb/docs"
write("rag_docs", "answer-format.txt", b"\0" + read(f"{kb}/support/answer-format.txt", 3000))
write("rag_docs", "shipping.md", b"\1" + read(f"{kb}/policies/shipping.md", 3000))
write("rag_docs", "contact.html", b"\2" + read(f"{kb}/support/contact.html", 3000))
write("rag_docs", "payment-security.html", b"\2" + read(f"{kb}/policies/payment-security.html", 3000))
write("rag_docs", "faq.jsonl", b"\3" + lines(f"{kb}/faq.jsonl", 3))

# chat_template: even = fixture template (mode >> 1), odd = template text then messages;
# parts are cut at 0xFF; bit 7 = add_generation_prompt.
fx = json.loads(read("fixtures/chat_templates.json"))
for i, conv in enumerate(fx["conversations"][:4]):
    parts = b"\xff".join(x for m in conv for x in (m["role"].encode(), m["content"].encode()))
    for t in range(len(fx["templates"])):
        write("chat_template", f"conv{i}-t{t}", bytes([0x80 | (t << 1)]) + parts)
for name, src in fx["templates"].items():
    conv = fx["conversations"][1]
    parts = b"\xff".join(x for m in conv for x in (m["role"].encode(), m["content"].encode()))
    write("chat_template", f"source-{name}", b"\x81" + src.encode() + b"\xff" + parts)

# tokenizer: mode % n = which tokenizer; bit 6 = add BOS; bit 7 = decode arbitrary ids.
for i, text in enumerate([b"Hello, world!", "Grüße, 東京 🤖 <|im_start|>user\nHi<|im_end|>".encode(),
                          lines("examples/support/train.jsonl", 1)[:400]]):
    write("tokenizer", f"text{i}-tiny", b"\0" + text)
    write("tokenizer", f"text{i}-real", b"\1" + text)
write("tokenizer", "ids", b"\x80" + bytes(range(0, 200)))

# serve_request: 0 chat, 1 completions, 2 embeddings, 3 tokenize, 4 detokenize.
bodies = [
    (0, {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "max_tokens": 16, "temperature": 0.7, "stream": False}),
    (0, {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
             "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 5}},
             "required": ["a"]}}}}),
    (0, {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
         "logit_bias": {}, "n": 1, "tools": None}),
    (1, {"model": "m", "prompt": ["Hello", "World"], "max_tokens": 4, "stop": ["\n"]}),
    (1, {"model": "m", "prompt": [[1, 2, 3], [4]], "echo": True, "logprobs": 2}),
    (2, {"model": "e", "input": ["a", "b"], "encoding_format": "float"}),
    (2, {"model": "e", "input": "one"}),
    (3, {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": True}),
    (3, {"model": "m", "prompt": "Hello"}),
    (4, {"model": "m", "tokens": [1, 2, 3]}),
]
for i, (mode, body) in enumerate(bodies):
    write("serve_request", f"body{i}.json", bytes([mode]) + json.dumps(body).encode())

# registry: 0 policy.toml, 1 lineage.json, 2 config.json, 3 eval/eval.json, 4 registry.db.
write("registry", "policy.toml", b"\0" + read("examples/support/policy.toml"))
write("registry", "policy-gates.toml", b"\0" + b'[alias.champion]\napprovers = 2\ngates = ["rougeL:0.01", "exact_match:0"]\n\n[alias."*"]\napprovers = 0\n')

# lora: even = adapter_config.json, odd = adapter_model.safetensors.
for name in ["peft_adapter", "ferrotune_adapter"]:
    write("lora", f"{name}-config.json", b"\0" + read(f"fixtures/peft/{name}/adapter_config.json"))

# lora, odd mode: adapter_model.safetensors for the tiny model (hidden 64, rank 4): the q_proj
# and k_proj (64 -> 32) pairs of layer 0.
def safetensors(tensors):
    header, data = {}, b""
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        blob = b"".join(struct.pack("<f", ((i % 11) - 5) / 100.0) for i in range(n))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

pre = "base_model.model.model.layers.0.self_attn"
write("lora", "tiny-adapter.safetensors", b"\1" + safetensors([
    (f"{pre}.q_proj.lora_A.weight", [4, 64]), (f"{pre}.q_proj.lora_B.weight", [64, 4]),
    (f"{pre}.k_proj.lora_A.weight", [4, 64]), (f"{pre}.k_proj.lora_B.weight", [32, 4])]))
write("lora", "tiny-config.json", b"\0" + json.dumps({
    "peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj"],
    "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
    "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}).encode())
