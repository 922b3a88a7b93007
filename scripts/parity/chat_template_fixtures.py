#!/usr/bin/env python3
"""Render chat templates with Jinja2 exactly as transformers' apply_chat_template does, and save the
results as fixtures for crates/model/tests/chat_template_parity.rs (minijinja must match byte for byte).

    $VENV/bin/python scripts/parity/chat_template_fixtures.py --gguf PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

Needs jinja2 and transformers (its `_compile_jinja_template` is the environment HF uses), and gguf to
read SmolLM2's own template from the GGUF.
"""
import argparse
import json
import pathlib

from gguf import GGUFReader
from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Templates written for this test to exercise what chat templates in the wild use: loop variables,
# namespace(), slicing, string methods, tojson, tests, filters, raise_exception, whitespace control.
EXTRA = {
    "header_style": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('system must be first') }}{% endif %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "namespace_and_methods": (
        "{%- set ns = namespace(system='', turns=0) -%}\n"
        "{%- for m in messages -%}\n"
        "  {%- if m.role == 'system' -%}{%- set ns.system = m.content.strip() -%}\n"
        "  {%- else -%}{%- set ns.turns = ns.turns + 1 -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{% if ns.system %}[SYS {{ ns.system | length }}] {{ ns.system.upper() }}\n{% endif %}"
        "{% for m in messages if m.role != 'system' %}\n"
        "{{ loop.index }}/{{ loop.length }} {{ m.role.title() }}: {{ m.content.replace('\\n', ' / ') }}"
        "{% if m.content.startswith('#') %} (heading){% endif %}\n"
        "{% endfor %}"
        "turns={{ ns.turns }} last={{ messages[-1].role }} words={{ (messages[-1].content.split() | length) }}\n"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
    "tojson_and_slices": (
        "{% if messages[0].role == 'system' %}{% set rest = messages[1:] %}SYSTEM={{ messages[0] | tojson }}\n"
        "{% else %}{% set rest = messages %}{% endif %}"
        "{% for m in rest %}{{ m | tojson(indent=2) }}{% if not loop.last %},\n{% endif %}{% endfor %}\n"
        "{{ rest | map(attribute='role') | join(',') }}{% if eos_token is defined %}{{ eos_token }}{% endif %}"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Japan?"}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "# Title\nWrite two lines:\n- one\n- two"},
    ],
    [
        {"role": "system", "content": "  Ünïcödé système 👋 with \"quotes\" and <tags> & 'apostrophes'  "},
        {"role": "user", "content": "日本語で答えて。\n\n\tIndented line."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Empty answer above; now code: print('x')\n"},
    ],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    args = ap.parse_args()
    field = GGUFReader(args.gguf).fields["tokenizer.chat_template"]
    templates = {"smollm2": field.contents(), **EXTRA}
    cases = []
    for name, src in templates.items():
        compiled = _compile_jinja_template(src)
        for i, msgs in enumerate(CONVERSATIONS):
            for gen in (False, True):
                out = compiled.render(messages=msgs, add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
                cases.append({"template": name, "conversation": i, "add_generation_prompt": gen, "expected": out})
    fx = {"templates": templates, "conversations": CONVERSATIONS, "bos_token": "<s>", "eos_token": "</s>", "cases": cases}
    path = ROOT / "fixtures/chat_templates.json"
    path.write_text(json.dumps(fx, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} renders of {len(templates)} templates to {path}")


if __name__ == "__main__":
    main()
