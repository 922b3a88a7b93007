#!/usr/bin/env python3
"""Drive a running `ferrotune serve` with the official `openai` package, as a user would.

    python3 -m venv .venv-openai && .venv-openai/bin/pip install openai
    .venv-openai/bin/python scripts/serve/openai_check.py --base-url http://127.0.0.1:8000/v1 \
        --key ft-... [--limited-key ft-... (a key created with --rpm 2)]

Checks: chat, streaming chat, completions with logprobs (and echo + max_tokens 0 prompt
scoring, as lm-evaluation-harness does), embeddings (when served), a bad request (400 naming
the field), a missing key (401), an unknown model (404) and a rate limit (429, with the limited
key). Exits non-zero on the first failed check.
"""

import argparse
import sys
import time

import openai
from openai import OpenAI


def check(name, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--key", required=True)
    ap.add_argument("--limited-key", help="a key with --rpm 2, for the 429 check")
    ap.add_argument("--model", default=None, help="default: the first model /v1/models lists")
    a = ap.parse_args()

    client = OpenAI(base_url=a.base_url, api_key=a.key, max_retries=0)
    models = client.models.list().data
    ids = [m.id for m in models]
    check("models.list", len(ids) >= 1, ", ".join(ids))
    model = a.model or ids[0]

    t = time.time()
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are a concise assistant."},
                  {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    check("chat", bool(text) and r.usage.total_tokens > 0,
          f"{text!r} ({r.usage.prompt_tokens}+{r.usage.completion_tokens} tokens, {time.time() - t:.2f}s)")

    r2 = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    check("chat again (deterministic, cached)", r2.choices[0].message.content ==
          client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                         max_tokens=24, temperature=0).choices[0].message.content)

    t = time.time()
    first = None
    pieces = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=32, temperature=0, stream=True, stream_options={"include_usage": True})
    usage = None
    finish = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                if first is None:
                    first = time.time() - t
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("streaming chat", len(pieces) > 1 and finish in ("stop", "length") and usage is not None,
          f"{len(pieces)} chunks, first after {first or 0:.3f}s, finish {finish}, text {''.join(pieces)!r}")

    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    check("completions with logprobs", len(lp.tokens) == len(lp.token_logprobs) > 0 and all(x <= 0 for x in lp.token_logprobs),
          f"{r.choices[0].text!r}; tokens {lp.tokens[:4]}, logprobs {[round(x, 3) for x in lp.token_logprobs[:4]]}, "
          f"top {lp.top_logprobs[0]}")

    r = client.completions.create(model=model, prompt="The capital of France is Paris", max_tokens=0,
                                  temperature=0, logprobs=1, echo=True)
    lp = r.choices[0].logprobs
    check("echo + max_tokens 0 (prompt log-likelihood)", lp.token_logprobs[0] is None and
          all(x is not None for x in lp.token_logprobs[1:]),
          f"tokens {lp.tokens}, sum logprob {sum(lp.token_logprobs[1:]):.3f}")

    emb_models = [i for i in ids if "minilm" in i.lower()]
    if emb_models:
        e = client.embeddings.create(model=emb_models[0], input=["The cat sat.", "A cat was sitting."])
        v0, v1 = e.data[0].embedding, e.data[1].embedding
        cos = sum(x * y for x, y in zip(v0, v1))
        check("embeddings", len(v0) == 384 and cos > 0.5, f"{len(e.data)} x {len(v0)}, cosine {cos:.3f}")
    else:
        print("skip embeddings: no embedding model served")

    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=8, temperature=7)
        check("bad request", False, "no error")
    except openai.BadRequestError as e:
        check("bad request -> 400", e.status_code == 400 and e.body.get("param") == "temperature", str(e.body))

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        check("unknown model", False, "no error")
    except openai.NotFoundError as e:
        check("unknown model -> 404", e.status_code == 404, str(e.body))

    try:
        OpenAI(base_url=a.base_url, api_key="ft-not-a-key", max_retries=0).models.list()
        check("bad key", False, "no error")
    except openai.AuthenticationError as e:
        check("bad key -> 401", e.status_code == 401, str(e.body))

    if a.limited_key:
        lim = OpenAI(base_url=a.base_url, api_key=a.limited_key, max_retries=0)
        got = None
        for i in range(10):
            try:
                lim.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            except openai.RateLimitError as e:
                got = (i, e.response.headers.get("retry-after"), e.body)
                break
        check("rate limit -> 429", got is not None, f"after {got[0]} requests, Retry-After {got[1]}s: {got[2]}" if got else "")
    else:
        print("skip 429: no --limited-key")
    print("all checks passed")


if __name__ == "__main__":
    main()
