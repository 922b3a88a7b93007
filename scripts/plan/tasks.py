#!/usr/bin/env python3
"""Generate the held-out tasks behind `ferrotune plan`'s hyperparameter rules (docs/plan.md).

Three small supervised tasks of different kinds, deterministic (seeded), Python stdlib only, as
chat JSONL with a train and a test split each, written under OUT_DIR/<task>/{train,test}.jsonl:

- classify: a support ticket -> {"category": ..., "urgency": ...} (4 categories x 2 urgencies,
  decided by cue words hidden among distractor sentences); scored with json_match.
- extract: an invoice sentence in varied wording -> {"invoice", "vendor", "amount", "currency",
  "due"} with the amount as a number and the date in ISO form; scored with json_match.
- dates: a date written in one of nine styles -> YYYY-MM-DD; scored with exact_match.

Usage: tasks.py OUT_DIR [--train N] [--test N]  (defaults: 300 train, 60 test rows per task)
"""
import json
import random
import sys
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NAMES = ["Amira", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi",
         "Lars", "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara"]

CUES = {
    "billing": ["I was charged twice for my order", "the invoice shows the wrong amount",
                "my refund has not arrived on my card", "there is a fee on my statement I don't recognise",
                "please correct the VAT on my receipt"],
    "shipping": ["my parcel has not arrived yet", "the tracking number shows no movement",
                 "the courier left the box at the wrong address", "the delivery date keeps moving",
                 "the package arrived crushed"],
    "technical": ["the app crashes when I open settings", "the device will not pair over Bluetooth",
                  "the firmware update failed halfway", "the screen flickers after it warms up",
                  "it keeps disconnecting from Wi-Fi"],
    "account": ["I cannot log in to my account", "the password reset e-mail never comes",
                "I want to change the e-mail on my profile", "please delete my account and data",
                "my two-factor code is rejected"],
}
URGENT = ["This is urgent.", "I need this fixed today.", "Please help ASAP.", "It is blocking my work right now."]
FILLER = ["Thanks in advance.", "I have been a customer for years.", "Hope you are well.", "Kind regards.",
          "I already tried turning it off and on.", "My order was placed last week.", "No rush otherwise."]

VENDORS = ["Nordlicht GmbH", "Acme Supplies Ltd", "Blue Harbor Inc", "Kestrel & Sons", "Orchid Systems",
           "Tallinn Timber OU", "Verde Foods SA", "Polaris Print Co"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF"]


def date_styles(rng, y, m, d):
    mon = MONTHS[m - 1]
    return rng.choice([
        f"{mon} {d}, {y}", f"{d} {mon} {y}", f"{mon[:3]} {d} {y}", f"{d:02d}.{m:02d}.{y}",
        f"{y}/{m:02d}/{d:02d}", f"the {d}{'th' if 10 <= d % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')} of {mon} {y}",
        f"{mon.upper()} {d} {y}", f"{d}-{mon[:3]}-{y}", f"{y}, {mon} {d}",
    ])


def rand_date(rng):
    y, m = rng.randint(2019, 2027), rng.randint(1, 12)
    d = rng.randint(1, 28)
    return y, m, d


def chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def classify(rng):
    cat = rng.choice(sorted(CUES))
    urgent = rng.random() < 0.4
    parts = [f"Hi, this is {rng.choice(NAMES)}.", rng.choice(CUES[cat]) + "."] + rng.sample(FILLER, 2)
    if urgent:
        parts.append(rng.choice(URGENT))
    head, rest = parts[0], parts[1:]
    rng.shuffle(rest)
    text = " ".join([head] + rest)
    answer = json.dumps({"category": cat, "urgency": "high" if urgent else "low"})
    return chat(f"Classify this support ticket as JSON with category (billing, shipping, technical, account) and urgency (low, high).\nTicket: {text}", answer)


def extract(rng):
    inv, vendor, cur = str(rng.randint(1000, 99999)), rng.choice(VENDORS), rng.choice(CURRENCIES)
    cents = rng.randint(1000, 999999)
    amount = cents / 100
    shown = rng.choice([f"{amount:,.2f}", f"{amount:.2f}"])
    y, m, d = rand_date(rng)
    when = date_styles(rng, y, m, d)
    text = rng.choice([
        f"Invoice {inv} from {vendor} for {shown} {cur} is due on {when}.",
        f"{vendor} sent invoice no. {inv}: {cur} {shown}, payable by {when}.",
        f"Please pay {shown} {cur} to {vendor} (invoice #{inv}) before {when}.",
        f"Due {when}: {vendor}, invoice {inv}, total {shown} {cur}.",
    ])
    answer = json.dumps({"invoice": inv, "vendor": vendor, "amount": amount, "currency": cur,
                         "due": f"{y:04d}-{m:02d}-{d:02d}"})
    return chat(f"Extract invoice, vendor, amount, currency and due date (YYYY-MM-DD) as JSON.\n{text}", answer)


def dates(rng):
    y, m, d = rand_date(rng)
    return chat(f"Write this date as YYYY-MM-DD: {date_styles(rng, y, m, d)}", f"{y:04d}-{m:02d}-{d:02d}")


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    out = Path(args[0])
    n_train = int(args[args.index("--train") + 1]) if "--train" in args else 300
    n_test = int(args[args.index("--test") + 1]) if "--test" in args else 60
    for seed, (name, make) in enumerate([("classify", classify), ("extract", extract), ("dates", dates)]):
        rng = random.Random(20261207 + seed)
        seen, rows = set(), []
        while len(rows) < n_train + n_test:
            r = make(rng)
            key = r["messages"][0]["content"]
            if key not in seen:  # the test split never repeats a training prompt
                seen.add(key)
                rows.append(r)
        (out / name).mkdir(parents=True, exist_ok=True)
        for split, part in [("train", rows[:n_train]), ("test", rows[n_train:])]:
            with open(out / name / f"{split}.jsonl", "w") as f:
                for r in part:
                    f.write(json.dumps(r) + "\n")
    print(f"wrote classify, extract, dates ({n_train} train / {n_test} test rows each) under {out}")


if __name__ == "__main__":
    main()
