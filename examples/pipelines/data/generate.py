#!/usr/bin/env python3
"""Generates the bundled example data (deterministic: seed 7).

orders-eu.jsonl and orders-us.jsonl.gz: orders from two regions, messy on
purpose (amounts as strings with decimal commas, statuses in mixed case,
customer ids as strings, ~2% duplicates) and ~1% malformed (truncated
lines, a missing customer, a negative amount). customers.csv: the
customers, with a few bad rows. jobs.jsonl: 3,000 background jobs for
jobs.yaml (sum, words, collatz; seed 11), 29 of them malformed.

Run from this directory: python3 generate.py
"""
import gzip
import json
import random

rnd = random.Random(7)
STATUSES = ["paid", "PAID", " Paid ", "shipped", "Shipped", "refunded"]
SKUS = ["A-100", "A-200", "B-300", "C-400", "D-500"]
CUSTOMERS = 1500


def order(region, i):
    amount = round(rnd.uniform(2, 400), 2)
    o = {
        "order_id": f"{region}-{i:06d}",
        "customer_id": rnd.randrange(1, CUSTOMERS + 1),
        "amount": amount,
        "currency": "EUR" if region == "EU" else "USD",
        "status": rnd.choice(STATUSES),
        "ts": f"2026-11-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:00Z",
        "items": [{"sku": rnd.choice(SKUS), "qty": rnd.randrange(1, 5)} for _ in range(rnd.randrange(1, 4))],
    }
    r = rnd.random()
    if r < 0.15:
        o["amount"] = f"{amount:.2f}".replace(".", ",")  # decimal comma, as text
    elif r < 0.30:
        o["customer_id"] = str(o["customer_id"])
    return o


def lines(region, n):
    out = []
    for i in range(1, n + 1):
        o = order(region, i)
        r = rnd.random()
        if r < 0.004:
            line = json.dumps(o, separators=(",", ":"))
            line = line[: rnd.randrange(5, len(line) - 5)]  # truncated
        elif r < 0.007:
            del o["customer_id"]
            line = json.dumps(o, separators=(",", ":"))
        elif r < 0.010:
            o["amount"] = -abs(o["amount"] if isinstance(o["amount"], float) else 5.0)
            line = json.dumps(o, separators=(",", ":"))
        else:
            line = json.dumps(o, separators=(",", ":"))
        out.append(line)
        if rnd.random() < 0.02:
            out.append(line)  # a duplicate delivery
    return out


with open("orders-eu.jsonl", "w") as f:
    f.write("\n".join(lines("EU", 8000)) + "\n")
with gzip.GzipFile("orders-us.jsonl.gz", "wb", mtime=0) as f:
    f.write(("\n".join(lines("US", 8000)) + "\n").encode())

with open("customers.csv", "w") as f:
    f.write("id,name,country,since\n")
    countries = ["SE", "DE", "FR", "US", "CA", "NL"]
    for i in range(1, CUSTOMERS + 1):
        if i % 250 == 0:
            f.write(f"{i},Customer {i},{rnd.choice(countries)},not-a-year\n")  # bad type
        else:
            f.write(f"{i},Customer {i},{rnd.choice(countries)},{rnd.randrange(2010, 2026)}\n")


# Background jobs (jobs.yaml): every 101st is malformed (an unknown kind,
# a number that is text, a negative n, text that is a number).
jrnd = random.Random(11)
WORDS = ("the quick brown fox jumps over lazy dog queue worker job result "
         "stream broker table replay").split()
with open("jobs.jsonl", "w") as f:
    for i in range(1, 3001):
        kind = ("sum", "words", "collatz")[i % 3]
        if i % 101 == 0:
            j = [
                {"id": i, "kind": "resize", "image": "cat.png"},
                {"id": i, "kind": "sum", "numbers": [1, "two", 3]},
                {"id": i, "kind": "collatz", "n": -4},
                {"id": i, "kind": "words", "text": 42},
            ][(i // 101) % 4]
        elif kind == "sum":
            j = {"id": i, "kind": kind,
                 "numbers": [jrnd.randint(-1000, 1000) for _ in range(jrnd.randint(0, 12))]}
        elif kind == "words":
            j = {"id": i, "kind": kind,
                 "text": " ".join(jrnd.choice(WORDS) for _ in range(jrnd.randint(0, 15)))}
        else:
            j = {"id": i, "kind": kind, "n": jrnd.randint(1, 100000)}
        f.write(json.dumps(j, separators=(",", ":")) + "\n")
