#!/usr/bin/env python3
"""Parquet fixtures for the data crate, written once with pyarrow (the writer behind pandas,
Hugging Face `datasets` and most Parquet in the wild) and kept in crates/data/tests/fixtures/parquet/
(checked by crates/data/tests/parquet.rs).

Each `NAME.parquet` has a `NAME.jsonl` twin holding the same rows, so the test can require that
validate and prepare report exactly the same findings on both. The twin is written by the rule the
reader follows: a null column or null struct field is an absent key (a Parquet schema is shared by
every row, so a null is how one row leaves a field out); nulls inside lists and maps are kept.

- chat.parquet: `messages` as list<struct<role, content, weight>>, `metadata` as a struct (with
  `annotations` a list), snappy, one row group.
- chat_json.parquet: `messages` and `metadata` as JSON strings, zstd, row groups of 5 rows.
- alpaca.parquet: string columns, `metadata` as map<string, string>, gzip.
- completion.parquet: string columns plus a mostly-null extra column, lz4.
- text.parquet: one string column, uncompressed, dictionary-encoded.
- binary.parquet: `text` as a binary column, one row not UTF-8 (no JSONL twin).

Run: python3 -m venv /tmp/pqvenv && /tmp/pqvenv/bin/pip install pyarrow   (26.0.1 recorded)
     /tmp/pqvenv/bin/python scripts/parity/parquet_fixtures.py
"""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parents[2] / "crates" / "data" / "tests" / "fixtures" / "parquet"


def strip_struct_nulls(v):
    """The JSON object a Parquet row stands for: None struct fields dropped, recursively."""
    if isinstance(v, dict):
        return {k: strip_struct_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_struct_nulls(x) for x in v]
    return v


def write(name, rows, schema, jsonl=True, **kw):
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, OUT / f"{name}.parquet", **kw)
    if jsonl:
        with open(OUT / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(strip_struct_nulls(r), ensure_ascii=False) + "\n")


def m(role, content, weight=None):
    return {"role": role, "content": content, "weight": weight}


SYS = m("system", "You are the support assistant of Brightwave Energy.")


def chat_rows():
    rows = []
    topics = ["billing", "outage", "meter", "billing", "moving"]
    for i in range(16):
        rows.append({
            "messages": [SYS, m("user", f"Question {i}: how do I read my meter number {i * 7}?"),
                         m("assistant", f"Answer {i}: the number is on the front plate, row {i % 3}.")],
            "metadata": {"topic": topics[i % 5], "annotations": ["ok", "ok", "bad" if i % 4 == 0 else "ok"]},
        })
    rows += [
        # exact duplicate of row 2
        dict(rows[1]),
        # unknown role, null content (absent), no assistant
        {"messages": [m("robot", "beep"), m("user", None)], "metadata": None},
        # empty target and assistant not last
        {"messages": [m("user", "hi"), m("assistant", "   "), m("user", "anyone?")], "metadata": {"topic": "outage", "annotations": None}},
        # weight 0 on the only assistant turn; weight 2
        {"messages": [m("user", "q"), m("assistant", "a", 0)], "metadata": None},
        {"messages": [m("user", "q2"), m("assistant", "a2", 2)], "metadata": None},
        # PII, missing system message, weight 1
        {"messages": [m("user", "Mail me at jane.doe@example.com please"), m("assistant", "Done, Jane.", 1)], "metadata": {"topic": None, "annotations": []}},
        # no messages at all: only metadata, so the format cannot be told
        {"messages": None, "metadata": {"topic": "billing", "annotations": None}},
        # an empty conversation
        {"messages": [], "metadata": None},
        # a null message inside the list
        {"messages": [m("user", "q3"), None, m("assistant", "a3")], "metadata": None},
    ]
    return rows


CHAT_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())]))),
    ("metadata", pa.struct([("topic", pa.string()), ("annotations", pa.list_(pa.string()))])),
])


def chat_json_rows():
    rows = []
    for r in chat_rows():
        msgs = r["messages"]
        meta = r["metadata"]
        rows.append({
            "messages": None if msgs is None else json.dumps(strip_struct_nulls(msgs)),
            "metadata": None if meta is None else json.dumps(strip_struct_nulls(meta)),
        })
    rows += [
        {"messages": '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"', "metadata": None},  # bad JSON
        {"messages": '"just a string"', "metadata": '{"topic": "x"}'},
        {"messages": '[{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": 5}]', "metadata": '[1, 2]'},
    ]
    return rows


def chat_json_twin(rows):
    """The JSON-string columns' JSONL twin: the strings are the JSON values themselves."""
    out = []
    for r in rows:
        line = {}
        for k in ("messages", "metadata"):
            if r[k] is not None:
                line[k] = r[k]
        out.append(line)
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write("chat", chat_rows(), CHAT_SCHEMA, compression="snappy")

    rows = chat_json_rows()
    schema = pa.schema([("messages", pa.string()), ("metadata", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), OUT / "chat_json.parquet", compression="zstd", row_group_size=5)
    with open(OUT / "chat_json.jsonl", "w") as f:
        for r in chat_json_twin(rows):
            # Raw JSON text spliced in, as a JSONL writer would have it (bad JSON stays bad).
            parts = [f'"{k}": {v}' for k, v in r.items()]
            f.write("{" + ", ".join(parts) + "}\n")

    alpaca = []
    for i in range(14):
        alpaca.append({"instruction": f"Summarise ticket {i}", "input": None if i % 3 else f"Ticket {i}: the meter is stuck at {i}.",
                       "output": f"Meter stuck ({i}).", "metadata": [("team", "field" if i % 2 else "office")]})
    alpaca += [
        {"instruction": "Summarise", "input": "x", "output": None, "metadata": None},  # missing output
        {"instruction": None, "input": None, "output": "orphan answer", "metadata": []},  # missing instruction
        {"instruction": "Summarise", "input": "  ", "output": "", "metadata": [("team", None)]},  # empty output; null map value kept
    ]
    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()),
                        ("metadata", pa.map_(pa.string(), pa.string()))])
    table = pa.Table.from_pylist(alpaca, schema=schema)
    pq.write_table(table, OUT / "alpaca.parquet", compression="gzip")
    with open(OUT / "alpaca.jsonl", "w") as f:
        for r in alpaca:
            r = dict(r)
            r["metadata"] = None if r["metadata"] is None else dict(r["metadata"])
            line = {k: v for k, v in r.items() if v is not None}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    completion = [{"prompt": f"Meter {i} reads", "completion": f" {i * 11} kWh", "source": None} for i in range(12)]
    completion += [
        {"prompt": "Meter 99 reads", "completion": " 5 kWh", "source": "import-2023"},  # unknown key
        {"prompt": "Call 555-123-4567 for", "completion": None, "source": None},  # missing completion
    ]
    schema = pa.schema([("prompt", pa.string()), ("completion", pa.string()), ("source", pa.string())])
    write("completion", completion, schema, compression="lz4")

    text = [{"text": f"Brightwave bills are sent on day {i % 28 + 1} of each month."} for i in range(11)]
    text += [{"text": "   "}, {"text": text[0]["text"]}, {"text": None}]
    write("text", text, pa.schema([("text", pa.string())]), compression="none", use_dictionary=True)

    binary = [{"text": "plain words".encode()}, {"text": b"\xff\xfe not text"}]
    pq.write_table(pa.Table.from_pylist(binary, schema=pa.schema([("text", pa.binary())])), OUT / "binary.parquet")
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
