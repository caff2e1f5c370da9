#!/usr/bin/env python3
"""Arithmetic training data for the math specialist, with exact answers.

    python3 gen_math.py --n 3000 --seed 1 > train.jsonl
    python3 gen_math.py --n 200 --seed 2 --exclude train.jsonl > eval.jsonl

Each line is a chat example `arny tune` reads:

    {"messages": [{"role": "system", ...}, {"role": "user", ...},
                  {"role": "assistant", ...}], "answer": "16"}

The questions are the kinds a user asks a phone's math helper: sums,
differences, products, quotients, percentages, unit conversions and short
word problems, with small operands so that the answer is exact. The answer
style is one short line of working that ends with the result, so the result
is the last number stated (that is what accuracy is scored on).

Standard library only and deterministic for a seed, so the shipped adapter's
data can be made again anywhere. `--exclude` drops questions that appear in
another file (an eval set apart from the training data).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

# The system prompt the built-in math specialist uses: training with the
# prompt the app sends keeps the adapter's behaviour tied to it.
SYSTEM = "You are a precise calculator. Work it out in one short line and end with the result."

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Sam", "Lily", "Omar", "Ivy", "Ben",
         "Nora", "Eli", "Ruby", "Max", "Ella", "Jack", "Aria", "Theo", "Maya", "Finn"]
ITEMS = ["stamps", "apples", "marbles", "stickers", "books", "cards", "shells",
         "pencils", "coins", "cookies", "balloons", "toy cars", "beads", "eggs"]


def fmt(x: float) -> str:
    """A number as a person writes it: 16, 2.5, 0.25 (never 16.0)."""
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def add(r: random.Random):
    a, b = r.randint(2, 99), r.randint(2, 99)
    q = r.choice(["What is {a} + {b}?", "What is {a} plus {b}?", "Calculate {a} + {b}",
                  "Add {a} and {b}", "what's {a}+{b}", "Compute {a} + {b}.",
                  "What do you get when you add {a} to {b}?", "Sum of {a} and {b}?"])
    return q.format(a=a, b=b), f"{a} + {b} = {a + b}", a + b


def sub(r: random.Random):
    a = r.randint(10, 99)
    b = r.randint(1, a)
    q = r.choice(["What is {a} - {b}?", "What is {a} minus {b}?", "Calculate {a} - {b}",
                  "Subtract {b} from {a}", "what's {a}-{b}", "Take {b} away from {a}.",
                  "What is the difference between {a} and {b}?"])
    return q.format(a=a, b=b), f"{a} - {b} = {a - b}", a - b


def mul(r: random.Random):
    a, b = r.randint(2, 12), r.randint(2, 25)
    if r.random() < 0.5:
        a, b = b, a
    q = r.choice(["What is {a} times {b}?", "What is {a} x {b}?", "Calculate {a} * {b}",
                  "Multiply {a} by {b}", "what's {a}*{b}", "What is {a} multiplied by {b}?",
                  "Compute {a} × {b}."])
    return q.format(a=a, b=b), f"{a} × {b} = {a * b}", a * b


def div(r: random.Random):
    b, c = r.randint(2, 12), r.randint(2, 15)
    a = b * c
    q = r.choice(["What is {a} divided by {b}?", "What is {a} / {b}?", "Calculate {a} ÷ {b}",
                  "Divide {a} by {b}", "what's {a}/{b}", "How many times does {b} go into {a}?"])
    return q.format(a=a, b=b), f"{a} ÷ {b} = {c}", c


def percent(r: random.Random):
    p = r.choice([5, 10, 20, 25, 30, 40, 50, 60, 75, 15, 80])
    # A base that makes p% of it a whole number.
    step = {5: 20, 10: 10, 20: 5, 25: 4, 30: 10, 40: 5, 50: 2, 60: 5, 75: 4, 15: 20, 80: 5}[p]
    n = step * r.randint(1, 20)
    ans = p * n // 100
    q = r.choice(["What is {p}% of {n}?", "What's {p} percent of {n}?", "Calculate {p}% of {n}",
                  "Find {p}% of {n}.", "what is {p}% of {n}", "How much is {p}% of {n}?"])
    return q.format(p=p, n=n), f"{p}% of {n} = {n} × {p} / 100 = {ans}", ans


# (unit from, unit to, factor) with whole factors, so answers stay exact.
CONVERSIONS = [
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
    ("weeks", "days", 7), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
    ("feet", "inches", 12), ("yards", "feet", 3), ("dozen", "items", 12),
    ("years", "months", 12),
]


def convert(r: random.Random):
    src, dst, f = r.choice(CONVERSIONS)
    n = r.randint(2, 12)
    if r.random() < 0.3:
        # The other direction: a whole multiple back to the larger unit.
        q = r.choice(["How many {src} are in {m} {dst}?", "Convert {m} {dst} to {src}",
                      "{m} {dst} is how many {src}?"])
        return q.format(src=src, dst=dst, m=n * f), f"{n * f} ÷ {f} = {n}", n
    q = r.choice(["How many {dst} are in {n} {src}?", "Convert {n} {src} to {dst}",
                  "{n} {src} is how many {dst}?", "How many {dst} in {n} {src}?"])
    return q.format(src=src, dst=dst, n=n), f"{n} × {f} = {n * f}", n * f


def word(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(3, 40), r.randint(2, 30)
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return q, f"{a} + {b} = {a + b}", a + b
    if kind == 1:
        a = r.randint(10, 60)
        b = r.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave away {b}. How many {item} are left?"
        return q, f"{a} - {b} = {a - b}", a - b
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 12)
        q = f"{name} buys {a} bags with {b} {item} in each. How many {item} is that in total?"
        return q, f"{a} × {b} = {a * b}", a * b
    b, c = r.randint(2, 8), r.randint(2, 9)
    q = f"{name} shares {b * c} {item} equally among {b} friends. How many does each friend get?"
    return q, f"{b * c} ÷ {b} = {c}", c


def price(r: random.Random):
    n, each = r.randint(2, 9), r.randint(2, 20)
    item = r.choice(["notebooks", "tickets", "sandwiches", "pens", "mugs", "plants"])
    q = r.choice([f"If one of the {item} costs ${each}, how much do {n} cost?",
                  f"{n} {item} at ${each} each: what is the total?",
                  f"What do {n} {item} cost at ${each} apiece?"])
    return q, f"{n} × ${each} = ${n * each}", n * each


KINDS = [(add, 3), (sub, 3), (mul, 3), (div, 2), (percent, 3), (convert, 2), (word, 3), (price, 1)]


def examples(n: int, seed: int, exclude: set[str]):
    r = random.Random(seed)
    makers = [k for k, w in KINDS for _ in range(w)]
    seen = set(exclude)
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > n * 50:
            raise SystemExit(f"only {len(out)} distinct questions could be made")
        question, working, answer = r.choice(makers)(r)
        if question in seen:
            continue
        seen.add(question)
        result = fmt(answer)
        reply = f"{working}. The answer is {result}."
        out.append({
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": reply},
            ],
            "answer": result,
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--exclude", action="append", default=[],
                    help="a JSONL file whose questions must not appear")
    args = ap.parse_args()
    exclude: set[str] = set()
    for path in args.exclude:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    msgs = json.loads(line)["messages"]
                    exclude.update(m["content"] for m in msgs if m["role"] == "user")
    for ex in examples(args.n, args.seed, exclude):
        sys.stdout.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
