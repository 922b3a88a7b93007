"""schemathesis hooks for scripts/serve/fuzz_api.sh.

- Keep generation short on a CPU: a generated `max_tokens` / `max_completion_tokens` between 5
  and u32::MAX becomes 4, so a valid request asks for at most 4 new tokens per choice. Values
  outside that range (negative, not an integer, past u32) are left as generated: they are the
  invalid data negative testing sends.
- Reach past the model lookup: a random `model` string is a 404 before anything else is read,
  so 9 times in 10 a string `model` becomes a served model's name (FUZZ_GEN_MODEL for the
  generating endpoints, FUZZ_EMBED_MODEL for embeddings). A string for a string changes no
  request from valid to invalid or back.
"""

import os
import random

import schemathesis

LIMIT = 4
U32_MAX = 2**32 - 1
GEN_MODEL = os.environ.get("FUZZ_GEN_MODEL")
EMBED_MODEL = os.environ.get("FUZZ_EMBED_MODEL")


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict):
        return body
    for field in ("max_tokens", "max_completion_tokens"):
        v = body.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and LIMIT < v <= U32_MAX:
            body[field] = LIMIT
    path = context.operation.path if context.operation is not None else ""
    served = EMBED_MODEL if path == "/v1/embeddings" else GEN_MODEL
    if served and isinstance(body.get("model"), str) and random.random() < 0.9:
        body["model"] = served
    return body
