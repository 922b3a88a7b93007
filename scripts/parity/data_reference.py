#!/usr/bin/env python3
"""Reference values for the data crate, computed once with the standard Python packages and kept
in fixtures/data/reference.json (checked by crates/data/tests/parity.rs):

- Krippendorff's alpha (nominal): `krippendorff` 0.9 (`alpha(..., level_of_measurement="nominal")`)
- Luhn check digits and IBAN mod-97 checksums: `python-stdnum` (`stdnum.luhn`, `stdnum.iso7064.mod_97_10`)
- MinHash Jaccard estimates (128 permutations) and LSH band/row choice: `datasketch` 2.0
  (`MinHash`, `datasketch.lsh._optimal_param`), next to the exact Jaccard of the shingle sets.

Run: python3 -m venv /work/datavenv && /work/datavenv/bin/pip install krippendorff datasketch python-stdnum
     /work/datavenv/bin/python scripts/parity/data_reference.py
"""
import json
import random
import re
from pathlib import Path

import krippendorff
import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from stdnum import luhn
from stdnum.iso7064 import mod_97_10

rng = random.Random(1234)
OUT = Path(__file__).resolve().parents[2] / "fixtures" / "data" / "reference.json"


def alpha_cases():
    cases = []
    for n_units, n_coders, n_labels, agree, missing in [
        (12, 4, 5, 0.7, 0.15), (40, 3, 2, 0.9, 0.0), (100, 5, 4, 0.6, 0.2), (60, 2, 3, 0.95, 0.1),
        (200, 4, 6, 0.4, 0.25), (30, 3, 3, 0.8, 0.3), (80, 6, 2, 0.5, 0.1),
    ]:
        units = []
        for _ in range(n_units):
            truth = rng.randrange(n_labels)
            row = []
            for _ in range(n_coders):
                if rng.random() < missing:
                    row.append(None)
                elif rng.random() < agree:
                    row.append(f"L{truth}")
                else:
                    row.append(f"L{rng.randrange(n_labels)}")
            units.append(row)
        labels = sorted({v for u in units for v in u if v is not None})
        code = {l: i for i, l in enumerate(labels)}
        data = np.array([[np.nan if u[c] is None else code[u[c]] for u in units] for c in range(n_coders)], dtype=float)
        a = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
        cases.append({"units": units, "alpha": float(a)})
    return cases


def luhn_cases():
    cases = []
    for _ in range(60):
        n = rng.choice([13, 15, 16, 19])
        body = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(n - 2))
        number = body + luhn.calc_check_digit(body)
        if rng.random() < 0.5:  # corrupt one digit
            i = rng.randrange(len(number))
            number = number[:i] + str((int(number[i]) + rng.randrange(1, 10)) % 10) + number[i + 1:]
        cases.append({"number": number, "valid": bool(luhn.is_valid(number))})
    return cases


def iban_cases():
    cases = []
    for country, length in [("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24), ("IT", 27), ("BE", 16), ("CH", 21)]:
        for _ in range(6):
            alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            bban = "".join(rng.choice("0123456789") if rng.random() < 0.8 else rng.choice(alnum[10:]) for _ in range(length - 4))
            check = mod_97_10.calc_check_digits(bban + country)
            iban = country + check + bban
            if rng.random() < 0.5:
                i = rng.randrange(4, len(iban))
                iban = iban[:i] + ("7" if iban[i] != "7" else "3") + iban[i + 1:]
            cases.append({"iban": iban, "valid": bool(mod_97_10.is_valid(iban[4:] + iban[:4]))})
    return cases


WORDS = ("refund order delivery shipping warranty repair screen battery kettle laptop camera account "
         "payment label parcel customer support policy window days price express return replace item box "
         "photo email phone store brightwave care ticket team member plus standard fee cost week").split()


def shingles(text):
    # Same rule as crates/data/src/minhash.rs `shingle_strings`: lowercase alphanumeric words, 3-grams.
    words = [w.lower() for w in re.split(r"[^0-9A-Za-z]+", text) if w]
    if len(words) < 3:
        return sorted(set(words))
    return sorted({" ".join(words[i:i + 3]) for i in range(len(words) - 2)})


def minhash_cases():
    cases = []
    for _ in range(40):
        n = rng.randrange(20, 120)
        a = [rng.choice(WORDS) for _ in range(n)]
        b = list(a)
        for _ in range(rng.randrange(0, n // 2 + 1)):  # edit a random number of positions
            b[rng.randrange(len(b))] = rng.choice(WORDS) + str(rng.randrange(3))
        ta, tb = " ".join(a), " ".join(b)
        sa, sb = set(shingles(ta)), set(shingles(tb))
        m1, m2 = MinHash(num_perm=128), MinHash(num_perm=128)
        for s in sa:
            m1.update(s.encode("utf8"))
        for s in sb:
            m2.update(s.encode("utf8"))
        cases.append({"a": ta, "b": tb, "shingles_a": len(sa), "shingles_b": len(sb),
                      "jaccard": len(sa & sb) / len(sa | sb), "datasketch_estimate": float(m1.jaccard(m2))})
    return cases


def main():
    ref = {
        "krippendorff_alpha_nominal": alpha_cases(),
        "luhn": luhn_cases(),
        "iban": iban_cases(),
        "minhash_128": minhash_cases(),
        # datasketch's default weights and the recall-oriented ones the index uses (LSH_WEIGHTS).
        "lsh_params_128": [{"threshold": t, "weights": list(w), "bands_rows": list(_optimal_param(t, 128, *w))}
                           for w in [(0.5, 0.5), (0.05, 0.95)] for t in [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
