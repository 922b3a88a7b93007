#!/usr/bin/env python3
"""Generate the Brightwave Home customer-support dataset (fictional company) as chat JSONL.

Deterministic (seeded); Python stdlib only. Writes train.jsonl and eval.jsonl beside this file.
Every answer follows the house format the fine-tuned model must learn:

    [Brightwave Care] <one-line summary>
    <body applying the policy to the customer's facts>
    -- Ticket BW-<5 digits> | Brightwave Care Team

and the policy rules below (refund windows depend on the days since delivery and the
membership tier, so the model has to apply a rule, not copy a sentence).
"""
import json
import random
from pathlib import Path

SEED = 20261130
N_ROWS = 440
EVAL_ROWS = 60

SYSTEM = ("You are the customer-support assistant of Brightwave Home, an online electronics shop. "
          "Answer in the Brightwave Care format and apply Brightwave policy exactly.")

POLICY = {
    "refund_days": 30, "plus_refund_days": 60, "free_shipping_over": 49, "express_fee": "9.90",
    "express_cutoff": "14:00", "warranty_years": 2, "carepack_years": 3, "price_match_days": 14,
    "damage_report_hours": 48, "refund_business_days": 5,
}

FIRST = ["Amira", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Lars",
         "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wen", "Yusuf",
         "Zoe", "Aiko", "Bruno", "Carmen", "Dario", "Esther", "Felix", "Gita", "Hana", "Ivan", "Julia", "Karim"]
PRODUCTS = [
    ("Aurora 55-inch 4K TV", "tv"), ("Aurora 65-inch OLED TV", "tv"), ("PulseBuds Pro earbuds", "audio"),
    ("PulseBuds Lite earbuds", "audio"), ("Strata soundbar 3.1", "audio"), ("Nimbus X2 robot vacuum", "home"),
    ("Nimbus mini robot vacuum", "home"), ("Kettlewise smart kettle", "kitchen"), ("Brewline espresso machine", "kitchen"),
    ("Frostline mini fridge", "kitchen"), ("Orbit 14 laptop", "computing"), ("Orbit 16 Pro laptop", "computing"),
    ("Vista 27-inch monitor", "computing"), ("Quill wireless keyboard", "computing"), ("Glide ergonomic mouse", "computing"),
    ("Lumo smart bulb 4-pack", "home"), ("Halo video doorbell", "home"), ("Tempo fitness watch", "wearables"),
    ("Tempo kids watch", "wearables"), ("Snapwave action camera", "camera"), ("Prism mirrorless camera", "camera"),
    ("Drift e-scooter", "mobility"), ("Breeze tower fan", "home"), ("Cirrus air purifier", "home"),
    ("Volt 20000 mAh power bank", "accessories"), ("Arc USB-C charger 65W", "accessories"),
    ("PhotoPro editing suite (download)", "software"), ("Shieldly antivirus 1-year key", "software"),
]
SOFTWARE = {p for p, c in PRODUCTS if c == "software"}
CHANNELS = ["chat", "email"]

def ticket(rng):
    return f"BW-{rng.randint(10000, 99999)}"

def sign_off(rng):
    return f"-- Ticket {ticket(rng)} | Brightwave Care Team"

def pick(rng, xs):
    return xs[rng.randrange(len(xs))]

GREET = ["Hi", "Hello", "Hey there", "Good morning", "Hi team", "Hello Brightwave", "Dear support"]
THANKS = ["", " Thanks!", " Thank you.", " Appreciate the help.", " Cheers.", " Thanks in advance."]
EMPATHY = ["Thanks for reaching out, {name}.", "Thank you for contacting us, {name}.", "Happy to help, {name}.",
           "Thanks for the details, {name}.", "I understand, {name}, and I'm glad you asked."]

def refund(rng, name, product, plus):
    days = rng.choice([2, 5, 9, 12, 17, 21, 26, 29, 33, 38, 44, 52, 58, 64, 75, 90])
    opened = rng.random() < 0.5
    asks = [
        "{g}, I got my {p} {d} days ago and want to return it for a refund.{t}",
        "{g}. Can I still send back the {p}? It was delivered {d} days ago.{t}",
        "{g}, the {p} isn't what I expected. Delivered {d} days ago - refund possible?{t}",
        "{g}! I'd like my money back for the {p}, it arrived {d} days ago.{t}",
        "{g}, is it too late to return my {p}? Delivery was {d} days ago.{t}",
        "{g}, I changed my mind about the {p} (delivered {d} days ago). How do I get a refund?{t}",
    ]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, d=days, t=pick(rng, THANKS))
    if plus:
        user += pick(rng, [" I'm a Brightwave Plus member.", " (Plus member)", " I have Brightwave Plus."])
    if product in SOFTWARE and opened:
        user += pick(rng, [" I already activated the key.", " I have downloaded it already."])
    window = POLICY["plus_refund_days"] if plus else POLICY["refund_days"]
    emp = pick(rng, EMPATHY).format(name=name)
    if product in SOFTWARE and opened:
        head = "[Brightwave Care] Activated software cannot be refunded."
        body = (f"{emp} Software keys and downloads are non-refundable once activated or downloaded, "
                f"so I can't refund the {product}. If it does not work as described, I can open a technical case for you.")
    elif days <= window:
        head = f"[Brightwave Care] Your refund for the {product} is approved."
        tier = "Brightwave Plus members have 60 days" if plus else "returns are accepted within 30 days of delivery"
        body = (f"{emp} You are within the window ({days} days since delivery; {tier}). Print the free return label "
                f"from Your Orders and drop the parcel at any ParcelPoint. The refund reaches your original payment "
                f"method within {POLICY['refund_business_days']} business days after we receive it.")
    else:
        head = f"[Brightwave Care] The {product} is outside the refund window."
        tier = "60-day window for Brightwave Plus members" if plus else "30-day refund window"
        body = (f"{emp} It has been {days} days since delivery, which is past our {tier}, so I can't offer a refund. "
                f"Your {POLICY['warranty_years']}-year warranty still covers manufacturing defects, so if something is wrong "
                f"with it, reply and I will start a warranty repair.")
    return "refund", user, f"{head}\n{body}\n{sign_off(rng)}"

def shipping(rng, name, product, plus):
    total = rng.choice([19, 27, 35, 44, 48, 49, 52, 60, 85, 120, 240, 610])
    express = rng.random() < 0.4
    hour = rng.choice(["09:30", "11:15", "13:40", "14:20", "16:05", "19:45"])
    if express:
        asks = ["{g}, if I order the {p} now ({h}) with express, when does it arrive and what does it cost?{t}",
                "{g}. Express delivery for a {p} ordered at {h} today - next day possible?{t}",
                "{g}, what's the express fee for the {p}? It's {h} here.{t}"]
        user = pick(rng, asks).format(g=pick(rng, GREET), p=product, h=hour, t=pick(rng, THANKS))
        emp = pick(rng, EMPATHY).format(name=name)
        if hour < POLICY["express_cutoff"]:
            head = "[Brightwave Care] Express gets it to you tomorrow."
            body = (f"{emp} Express costs EUR {POLICY['express_fee']} and orders placed before {POLICY['express_cutoff']} "
                    f"on a business day arrive the next business day, so an order placed at {hour} qualifies.")
        else:
            head = "[Brightwave Care] Express will arrive the day after tomorrow."
            body = (f"{emp} Express costs EUR {POLICY['express_fee']}; the cut-off is {POLICY['express_cutoff']}, so an order "
                    f"placed at {hour} ships tomorrow and arrives the business day after.")
        return "shipping", user, f"{head}\n{body}\n{sign_off(rng)}"
    asks = ["{g}, is shipping free if my basket is EUR {x}?{t}", "{g}. My order with the {p} comes to EUR {x}. Do I pay for delivery?{t}",
            "{g}, how much is standard delivery on a EUR {x} order?{t}", "{g}! Will I be charged shipping for EUR {x} ({p})?{t}"]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, x=total, t=pick(rng, THANKS))
    emp = pick(rng, EMPATHY).format(name=name)
    if total > POLICY["free_shipping_over"] or plus:
        reason = "Brightwave Plus includes free standard shipping" if plus and total <= POLICY["free_shipping_over"] else \
            f"orders over EUR {POLICY['free_shipping_over']} ship free"
        head = "[Brightwave Care] Standard shipping is free for this order."
        body = f"{emp} Your order of EUR {total} qualifies: {reason}. Standard delivery takes 3-5 business days."
    else:
        head = "[Brightwave Care] This order pays standard shipping."
        body = (f"{emp} Free standard shipping starts above EUR {POLICY['free_shipping_over']}; at EUR {total} standard "
                f"delivery is EUR 4.90 and takes 3-5 business days. Adding EUR {POLICY['free_shipping_over'] - total + 1} "
                f"or more to the basket makes it free.")
    return "shipping", user, f"{head}\n{body}\n{sign_off(rng)}"

def warranty(rng, name, product, plus):
    months = rng.choice([3, 7, 11, 15, 19, 23, 26, 30, 34, 41])
    carepack = rng.random() < 0.3
    accident = rng.random() < 0.3
    faults = (["I dropped it and the screen cracked", "it fell in water", "my dog chewed the cable"] if accident else
              ["it stopped turning on", "the battery drains in an hour", "it makes a grinding noise", "the display flickers",
               "it won't connect to Wi-Fi anymore", "one side has no sound"])
    asks = ["{g}, my {p} is {m} months old and {f}. Is that covered?{t}",
            "{g}. Bought the {p} {m} months ago; {f}. Warranty?{t}",
            "{g}, {f} - it's a {p} from {m} months ago. What are my options?{t}",
            "{g}! The {p} ({m} months old): {f}. Can you repair it?{t}"]
    fault = pick(rng, faults)
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, m=months, f=fault, t=pick(rng, THANKS))
    if carepack:
        user += pick(rng, [" I bought CarePack with it.", " It has the CarePack extension."])
    years = POLICY["carepack_years"] if carepack else POLICY["warranty_years"]
    emp = pick(rng, EMPATHY).format(name=name)
    if accident:
        head = "[Brightwave Care] Accidental damage is not covered by the warranty."
        body = (f"{emp} The warranty covers manufacturing defects only, not drops, liquid or other accidents, so this "
                f"repair would be paid. I can send you a free repair quote within 2 business days.")
    elif months <= years * 12:
        head = f"[Brightwave Care] Your {product} is covered: free repair or replacement."
        cover = "CarePack extends cover to 3 years" if carepack else "the standard warranty covers 2 years"
        body = (f"{emp} At {months} months it is within cover ({cover}). Book a pickup from Your Orders; we repair it "
                f"or, if repair is not possible, replace it at no cost.")
    else:
        head = f"[Brightwave Care] The {product} is out of warranty."
        body = (f"{emp} At {months} months it is past the {years}-year cover, so the repair would be paid. I can send "
                f"you a repair quote, and we offer 15% off a replacement for out-of-warranty devices.")
    return "warranty", user, f"{head}\n{body}\n{sign_off(rng)}"

def damaged(rng, name, product, plus):
    hours = rng.choice([2, 6, 20, 30, 47, 50, 72, 120])
    asks = ["{g}, the {p} arrived with a dent in it. It was delivered {h} hours ago.{t}",
            "{g}. Box was crushed and the {p} is broken - delivered {h} hours ago.{t}",
            "{g}, my {p} came damaged ({h} hours since delivery). What now?{t}"]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, h=hours, t=pick(rng, THANKS))
    emp = pick(rng, EMPATHY).format(name=name)
    if hours <= POLICY["damage_report_hours"]:
        head = "[Brightwave Care] We'll replace the damaged item for free."
        body = (f"{emp} Damage reported within {POLICY['damage_report_hours']} hours of delivery is replaced free. Please "
                f"upload two photos of the item and the box in Your Orders; the replacement ships as soon as they arrive.")
    else:
        head = "[Brightwave Care] Transport damage must be reported within 48 hours."
        body = (f"{emp} This was reported {hours} hours after delivery, past the {POLICY['damage_report_hours']}-hour "
                f"window for free replacement. If the {product} does not work, your warranty still applies; reply with "
                f"photos and I will check it as a warranty case.")
    return "damage", user, f"{head}\n{body}\n{sign_off(rng)}"

def price_match(rng, name, product, plus):
    days = rng.choice([1, 4, 8, 11, 13, 14, 16, 21, 30])
    other = rng.random() < 0.3
    where = pick(rng, ["on another website", "at a shop in town", "at MegaElectro"]) if other else "on your site"
    asks = ["{g}, I bought the {p} {d} days ago and it's now cheaper {w}. Can I get the difference?{t}",
            "{g}. Price of the {p} dropped {w} - I paid full price {d} days ago.{t}",
            "{g}, do you price-match? The {p} is cheaper {w} now; I ordered {d} days ago.{t}"]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, d=days, w=where, t=pick(rng, THANKS))
    emp = pick(rng, EMPATHY).format(name=name)
    if other:
        head = "[Brightwave Care] We only match our own prices."
        body = f"{emp} Our price promise covers price drops on brightwave.example within {POLICY['price_match_days']} days of purchase; we don't match other retailers."
    elif days <= POLICY["price_match_days"]:
        head = "[Brightwave Care] We'll refund the price difference."
        body = f"{emp} Your purchase was {days} days ago, within our {POLICY['price_match_days']}-day price promise. The difference goes back to your original payment method within 5 business days."
    else:
        head = "[Brightwave Care] The price promise has expired for this order."
        body = f"{emp} Price drops are refunded within {POLICY['price_match_days']} days of purchase; at {days} days this order is no longer eligible."
    return "price_match", user, f"{head}\n{body}\n{sign_off(rng)}"

def payment_safety(rng, name, product, plus):
    asks = ["{g}, can I just send you my card number here to pay for the {p}?{t}",
            "{g}. My card was declined for the {p}. Should I give you the card details in this chat?{t}",
            "{g}, I'll type my full card number and CVC so you can fix my {p} order, ok?{t}"]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, t=pick(rng, THANKS))
    emp = pick(rng, EMPATHY).format(name=name)
    head = "[Brightwave Care] Please never share card details in chat or email."
    body = (f"{emp} For your security we never ask for card numbers or CVC codes here. Update your payment method in "
            f"Your Account > Payments (a secure page), then retry the order for the {product}.")
    return "payment", user, f"{head}\n{body}\n{sign_off(rng)}"

def cancel(rng, name, product, plus):
    status = rng.choice(["Received", "Processing", "Packed", "Shipped", "Delivered"])
    asks = ["{g}, please cancel my order for the {p}. The status says {s}.{t}",
            "{g}. Can I still cancel the {p}? Order status: {s}.{t}",
            "{g}, I ordered a {p} by mistake. Status is {s} - cancel?{t}"]
    user = pick(rng, asks).format(g=pick(rng, GREET), p=product, s=status, t=pick(rng, THANKS))
    emp = pick(rng, EMPATHY).format(name=name)
    if status in ("Received", "Processing"):
        head = "[Brightwave Care] Your order is cancelled."
        body = f"{emp} Orders can be cancelled until they are Packed, and yours is {status}, so I've cancelled it. The full amount is refunded within 5 business days."
    else:
        head = "[Brightwave Care] This order can no longer be cancelled."
        body = (f"{emp} Orders can only be cancelled before they are Packed, and this one is {status}. Once it is "
                f"delivered you can return it within the refund window with the free label from Your Orders.")
    return "cancel", user, f"{head}\n{body}\n{sign_off(rng)}"

TOPICS = [(refund, 0.28), (shipping, 0.16), (warranty, 0.18), (damaged, 0.1), (price_match, 0.1), (payment_safety, 0.06), (cancel, 0.12)]

def main():
    rng = random.Random(SEED)
    rows, seen = [], set()
    while len(rows) < N_ROWS:
        r = rng.random()
        for fn, w in TOPICS:
            r -= w
            if r <= 0:
                break
        name, (product, category) = pick(rng, FIRST), pick(rng, PRODUCTS)
        plus = rng.random() < 0.3
        topic, user, answer = fn(rng, name, product, plus)
        if rng.random() < 0.5:
            user = f"This is {name}. " + user
        if user in seen:  # one answer per prompt: the ticket number and name vary, the prompt must too
            continue
        seen.add(user)
        rows.append({
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}],
            "metadata": {"topic": topic, "category": category, "channel": pick(rng, CHANNELS), "tier": "plus" if plus else "standard"},
        })
    rng.shuffle(rows)
    here = Path(__file__).resolve().parent
    for name, part in [("eval.jsonl", rows[:EVAL_ROWS]), ("train.jsonl", rows[EVAL_ROWS:])]:
        with open(here / name, "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {N_ROWS - EVAL_ROWS} train and {EVAL_ROWS} eval rows to {here}")

if __name__ == "__main__":
    main()
