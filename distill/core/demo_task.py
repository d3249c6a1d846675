"""The demo task: seeded, procedurally generated multi-step arithmetic word problems with
integer answers, and worked solutions in the R1 format (reasoning in a think block, the final
answer boxed). The train and test splits are disjoint by construction (different seeds, and any
test question is removed from train)."""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jia", "Kai", "Lea",
         "Max", "Nora", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe"]
ITEMS = ["apples", "marbles", "coins", "books", "stamps", "shells", "cards", "pens", "eggs",
         "stickers", "beads", "cookies"]


@dataclass
class Difficulty:
    min_steps: int = 2
    max_steps: int = 3
    max_start: int = 30      # the starting amount is drawn from 2..max_start
    max_operand: int = 12    # added/removed amounts; multipliers are 2..4


SPLIT_SEEDS = {"train": 1234, "test": 98765}
SPLIT_SIZES = {"train": 2000, "test": 200}


def _step(rng: random.Random, value: int, d: Difficulty) -> tuple[str, str, int]:
    """One operation on the running amount: (sentence, worked line, new value)."""
    ops = ["add", "sub", "mul"] if value <= 60 else ["add", "sub"]
    if value > 2:
        ops.append("sub")
    op = rng.choice(ops)
    if op == "add":
        k = rng.randint(1, d.max_operand)
        return (f"Then WHO gets {k} more.", f"{value} + {k} = {value + k}", value + k)
    if op == "sub" and value > 1:
        k = rng.randint(1, min(d.max_operand, value - 1))
        return (f"Then WHO gives away {k}.", f"{value} - {k} = {value - k}", value - k)
    k = rng.randint(2, 4)
    word = {2: "double", 3: "triple", 4: "quadruple"}[k]
    return (f"Then WHO {word}s them.", f"{value} * {k} = {value * k}", value * k)


def make_problem(rng: random.Random, d: Difficulty) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, d.max_start)
    sentences = [f"{name} has {value} {item}."]
    lines = []
    for _ in range(rng.randint(d.min_steps, d.max_steps)):
        sentence, line, value = _step(rng, value, d)
        sentences.append(sentence.replace("WHO", name))
        lines.append(line)
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    reasoning = "\n".join(lines)
    return {"question": question, "answer": str(value), "reasoning": reasoning,
            "solution": f"{reasoning}\n#### {value}"}


def generate(split: str, n: int | None = None, difficulty: Difficulty | None = None) -> list[dict]:
    d = difficulty or Difficulty()
    n = SPLIT_SIZES[split] if n is None else n
    banned = set()
    if split == "train":
        banned = {p["question"] for p in generate("test", difficulty=d)}
    rng = random.Random(SPLIT_SEEDS[split])
    rows, seen = [], set()
    while len(rows) < n:
        p = make_problem(rng, d)
        if p["question"] in seen or p["question"] in banned:
            continue
        seen.add(p["question"])
        rows.append({"id": f"demo-{split}-{len(rows):05d}", **p})
    return rows


def load_split(split: str) -> list[dict]:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"demo task has splits {sorted(SPLIT_SEEDS)}, not '{split}'")
    return generate(split)
