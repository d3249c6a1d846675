"""Pretrain the demo student's starting point: a small dense Qwen2 "base" model that knows
arithmetic but not the demo task.

    python -m data.build.pretrain_student                   # writes data/models/demo-student-base

Like a real base model, it has read generic text. Phase 1: plain equations ("17 + 8 = 25",
"25 * 3 = 75"), arithmetic in words ("8 more than 17 is 25", "triple 12 is 36") and simple
sentences about people and things. Phase 2: small word problems in everyday phrasing, worked out
in plain equations. It has never seen the demo task's problems or phrasing, its worked solutions,
the R1 format or a chat turn: `distill train` teaches those from the teacher's traces. A killed
build resumes from the checkpoints in --work.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from data import asset
from data.build.common import save_model, settings_fingerprint, set_threads, text_examples, train
from distill.core.progress import info

DEFAULT_WORK = Path.home() / ".cache" / "distill-edge-build" / "demo-student-base"

PEOPLE = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jia", "Kai", "Lea",
          "Max", "Nora", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe",
          "Ann", "Leo", "Mia", "Sam"]
THINGS = ["apples", "marbles", "coins", "books", "stamps", "shells", "cards", "pens", "eggs",
          "stickers", "beads", "cookies", "cups", "hats", "boxes", "plums"]
VERBS = ["has", "sees", "finds", "wants", "buys", "counts", "keeps", "needs", "sells", "makes"]
TIMES_WORDS = {2: "double", 3: "triple", 4: "quadruple"}


def operand(rng: random.Random, high: int) -> int:
    """0..high, half the time uniform and half the time log-uniform: small numbers are the most
    common in everyday text, but large ones must be seen often enough to be learnt."""
    if rng.random() < 0.5:
        return rng.randint(0, high)
    return min(high, int(math.exp(rng.uniform(0, math.log(high + 1)))) - 1 + rng.randint(0, 1))


def equation(rng: random.Random) -> str:
    """One true equation of everyday arithmetic: sums and differences of a number up to a few
    hundred and a small one, products with a one-digit factor, and the small tables."""
    kind = rng.choice("+-*")
    if kind == "*":
        if rng.random() < 0.75:
            a, b = operand(rng, 90), rng.randint(2, 5)
        else:
            a, b = rng.randint(0, 12), rng.randint(0, 12)
        return f"{b} * {a} = {a * b}" if rng.random() < 0.2 else f"{a} * {b} = {a * b}"
    if rng.random() < 0.85:
        a, b = operand(rng, 260), rng.randint(0, 15)
    else:
        a, b = rng.randint(0, 60), rng.randint(0, 60)
    if kind == "+":
        return f"{a} + {b} = {a + b}" if rng.random() < 0.8 else f"{b} + {a} = {a + b}"
    a, b = max(a, b), min(a, b)
    return f"{a} - {b} = {a - b}"


def words(rng: random.Random) -> str:
    """Arithmetic said in words."""
    a = rng.randint(1, 80)
    b = rng.randint(1, 15)
    k = rng.randint(2, 4)
    return rng.choice([
        f"{a} plus {b} is {a + b}.",
        f"{b} more than {a} is {a + b}.",
        f"{a} minus {min(a, b)} is {a - min(a, b)}.",
        f"{min(a, b)} less than {a} is {a - min(a, b)}.",
        f"{a} times {k} is {a * k}.",
        f"{TIMES_WORDS[k].capitalize()} {a} is {a * k}.",
        f"Half of {2 * a} is {a}.",
        f"The sum of {a} and {b} is {a + b}.",
    ])


def sentence(rng: random.Random) -> str:
    """A simple sentence about someone and a number of things."""
    who, other = rng.sample(PEOPLE, 2)
    n, thing = rng.randint(1, 40), rng.choice(THINGS)
    return rng.choice([
        f"{who} {rng.choice(VERBS)} {n} {thing}.",
        f"{who} and {other} have {n} {thing}.",
        f"There are {n} {thing} on the table.",
        f"{who} gives {other} a box of {n} {thing}.",
        f"How many {thing} does {who} want? {who} wants {n}.",
    ])


def document(rng: random.Random) -> str:
    """A short text mixing the three kinds, one item per line."""
    makers = [equation] * 10 + [words] + [sentence]
    return "\n".join(rng.choice(makers)(rng) for _ in range(rng.randint(12, 16)))


STARTS = ["{who} had {n} {thing}.", "There were {n} {thing} in a jar.", "{who} started with {n} {thing}.",
          "A shop had {n} {thing}.", "{who} collected {n} {thing}."]
# operator -> (sentences that ask for it, what it does)
STEPS = {
    "+": (["{who} found {k} more.", "{other} brought {k} more.", "{k} more were added.",
           "{who} bought {k} more.", "{who} won {k}."], lambda a, k: a + k),
    "-": (["{who} lost {k}.", "{k} were sold.", "{who} gave {k} to {other}.", "{k} were taken away.",
           "{who} used {k} of them."], lambda a, k: a - k),
    "*": (["The number grew {k} times.", "{who} ended up with {k} times as many.",
           "It was multiplied by {k}."], lambda a, k: a * k),
}
ENDS = ["In the end there were {n} {thing}.", "So the answer is {n}.", "That makes {n} {thing}."]


def story(rng: random.Random) -> str:
    """A small word problem in everyday phrasing, worked out in plain equations: the amounts are
    read from the text and each result is carried to the next line. (The demo task says things
    differently: "Then Ava gets 3 more", "doubles them", and it is answered in the R1 format.)"""
    who, other = rng.sample(PEOPLE, 2)
    thing = rng.choice(THINGS)
    value = rng.randint(2, 60)
    text = [rng.choice(STARTS).format(who=who, n=value, thing=thing)]
    lines = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice("+-*" if value <= 60 else "+-")
        if kind == "-" and value < 2:
            kind = "+"
        if kind == "*":
            k = rng.randint(2, 5)
        else:
            k = rng.randint(1, 15 if kind == "+" else min(15, value - 1))
        sentences, apply = STEPS[kind]
        text.append(rng.choice(sentences).format(who=who, other=other, k=k))
        lines.append(f"{value} {kind} {k} = {apply(value, k)}")
        value = apply(value, k)
    return " ".join(text) + "\n" + "\n".join(lines) + "\n" + rng.choice(ENDS).format(n=value, thing=thing)


def story_document(rng: random.Random) -> str:
    """Phase 2 text: word problems worked out in equations, with some plain equations between."""
    parts = [story(rng) if rng.random() < 0.7 else equation(rng) for _ in range(rng.randint(3, 5))]
    return "\n\n".join(parts)


def student_config(tokenizer, args):
    from transformers import Qwen2Config

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)


def model_card(args, n_params: int, size_mb: float, train_info: dict, sample: str, story_sample: str) -> str:
    return f"""# demo-student-base

The starting point of the demo's student: a dense Qwen2 model ({args.layers} layers, hidden size
{args.hidden}, a multiple of 256 so that llama.cpp's k-quants apply; {n_params / 1e6:.2f}M
parameters, a quarter of the demo teacher's, {size_mb:.1f} MB of fp32 safetensors) with the demo
tokenizer and its chat template.

It is a *base* model: `data/build/pretrain_student.py` pretrained it from scratch on generic
text, the way a real base model has read arithmetic and school word problems before anyone
distills reasoning into it:

1. phase 1: plain equations, arithmetic in words and simple sentences;
2. phase 2: small word problems in everyday phrasing ("Sam had 14 cups. Sam bought 6 more."),
   each worked out in plain equations.

It has never seen the demo task's problems or phrasing ("Then Ava gets 3 more", "triples them"),
its worked solutions, the R1 format (`<think>`, `\\boxed{{}}`) or a chat turn: `distill train`
teaches those from the teacher's traces.

Measured: it completes {train_info['arithmetic_accuracy']:.1%} of the {train_info['arithmetic_lines']}
worked lines of the demo test split ("19 - 8 =" -> "11") correctly, greedy, each line on its own.
It does not yet reliably take the numbers of a word problem from its text: on phase-2 stories its
loss on the operands stays close to a uniform guess.

Phase 1 text:

```
{sample}
```

Phase 2 text:

```
{story_sample}
```

## Training

- phase 1: {args.documents} generated documents; the first {args.steps} steps of a {args.schedule}-step
  schedule (AdamW, batch {args.batch_size}, peak lr {args.lr}, warm-up then cosine decay); the
  arithmetic is learnt suddenly after about 1200 steps; final loss {train_info['phase1_final_loss']:.4f}
- phase 2: {args.story_documents} generated documents; {args.story_steps} steps (batch {args.batch_size},
  peak lr {args.story_lr}, cosine); final loss {train_info['phase2_final_loss']:.4f}
- fp32 on CPU, seed {args.seed}

## Rebuild

    python -m data.build.pretrain_student --threads 2

About 40 minutes on an idle 2-core machine. A killed build resumes from its checkpoints in
`~/.cache/distill-edge-build/demo-student-base`.
"""


@torch.no_grad()
def arithmetic_accuracy(model, tokenizer) -> tuple[float, int]:
    """Share of the demo test split's worked lines ("19 - 8 =") the base completes correctly,
    greedy, each line on its own: the arithmetic the task needs, without the task."""
    from data.demo_task import load_split
    items = [line.split(" = ") for row in load_split("test") for line in row["reasoning"].split("\n")]
    tokenizer.padding_side = "left"
    right = 0
    for start in range(0, len(items), 128):
        chunk = items[start:start + 128]
        enc = tokenizer([f"{left} =" for left, _ in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum(text.split("\n")[0].strip() == value for (_, value), text in zip(chunk, texts))
    return right / len(items), len(items)


PHASE1_SETTINGS = ("batch_size", "documents", "heads", "hidden", "intermediate", "kv_heads", "layers", "lr", "seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=asset("models", "demo-student-base"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder (resume)")
    parser.add_argument("--documents", type=int, default=100000, help="phase 1: equation documents")
    parser.add_argument("--schedule", type=int, default=4000, help="phase 1: length of the lr schedule")
    parser.add_argument("--steps", type=int, default=1500, help="phase 1: steps taken of that schedule")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="phase 1: peak lr")
    parser.add_argument("--story-documents", type=int, default=30000, help="phase 2: word-problem documents")
    parser.add_argument("--story-steps", type=int, default=600, help="phase 2: steps")
    parser.add_argument("--story-lr", type=float, default=1e-3, help="phase 2: peak lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(asset("models", "demo-tokenizer"))
    rng = random.Random(args.seed)
    texts = [document(rng) for _ in range(args.documents)]
    stories = [story_document(rng) for _ in range(args.story_documents)]

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(student_config(tokenizer, args))
    n_params = sum(p.numel() for p in model.parameters())
    info(f"student base: {n_params / 1e6:.2f}M parameters; phase 1: {len(texts)} equation documents")
    started = time.time()
    # Phase 1 learns the arithmetic itself, which comes suddenly after about 1200 steps; phase 2
    # then reads word problems, where numbers are taken from the text and carried along.
    phase1 = argparse.Namespace(**{k: getattr(args, k) for k in PHASE1_SETTINGS})
    first = train(model, text_examples(tokenizer, texts), steps=args.schedule, stop_at=args.steps,
                  batch_size=args.batch_size, lr=args.lr, pad_id=tokenizer.pad_token_id,
                  work_dir=args.work, seed=args.seed, checkpoint_every=250,
                  fingerprint=settings_fingerprint(phase1))
    info(f"phase 2: {len(stories)} word-problem documents")
    second = train(model, text_examples(tokenizer, stories), steps=args.story_steps,
                   batch_size=args.batch_size, lr=args.story_lr, warmup=50, pad_id=tokenizer.pad_token_id,
                   work_dir=args.work / "phase2", seed=args.seed, checkpoint_every=100,
                   fingerprint=settings_fingerprint(args))
    accuracy, lines = arithmetic_accuracy(model, tokenizer)
    train_info = {"phase1_final_loss": first["final_loss"], "phase2_final_loss": second["final_loss"],
                  "arithmetic_accuracy": round(accuracy, 3), "arithmetic_lines": lines,
                  "minutes_this_run": round((time.time() - started) / 60)}
    save_model(model, tokenizer, args.out, torch.float32, asset("models", "demo-tokenizer"))
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    (args.out / "README.md").write_text(model_card(args, n_params, size_mb, train_info, texts[0], stories[0]))
    info(json.dumps({"params": n_params, "size_mb": round(size_mb, 2), **train_info}))


if __name__ == "__main__":
    main()
