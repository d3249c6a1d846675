"""Pretrain the demo student's starting point: a small dense Qwen2 "base" model that knows
arithmetic but not the demo task.

    python -m distill.demo.pretrain_student                   # writes data/models/demo-student-base

Like a real base model, it has read generic text: equations, most of them said in words first
("Take 8 from 19: 19 - 8 = 11"), arithmetic in words, simple sentences about people and things,
small word problems in everyday phrasing worked out in plain equations, and (phase 2) everyday
words in sentences of their own. It has never seen the
demo task's problems or phrasing, its worked solutions, the R1 format or a chat turn: `distill
train` teaches those from the teacher's traces. A killed build resumes from the checkpoints in
--work.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from distill.data import asset
from distill.demo.common import save_model, settings_fingerprint, set_threads, text_examples
from distill.demo.fit import fit
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


# Equations that say their operation in words first. Without them the base learns its
# arithmetic from equations whose operator is a coin toss, learns to ignore the context at the
# operator, and a student fine-tuned from it cannot learn to pick the operation a problem asks for.
PHRASES = {"+": ["Add {b} to {a}: ", "{a} plus {b}: ", "Sum of {a} and {b}: ", "Increase {a} by {b}: "],
           "-": ["Take {b} from {a}: ", "{a} minus {b}: ", "Subtract {b} from {a}: ", "Decrease {a} by {b}: "],
           "*": ["Multiply {a} by {b}: ", "{a} times {b}: ", "{b} lots of {a}: ", "Scale {a} by {b}: "]}


def announced(rng: random.Random) -> str:
    """An equation with its operation said in words first: "Add 8 to 19: 19 + 8 = 27"."""
    eq = equation(rng)
    a, op, b = eq.split(" = ")[0].split()
    return rng.choice(PHRASES[op]).format(a=a, b=b) + eq


def document(rng: random.Random) -> str:
    """A short text of arithmetic, one item per line: mostly announced equations, some bare
    ones, arithmetic in words and sentences."""
    makers = [announced] * 8 + [equation] * 2 + [words] + [sentence]
    return "\n".join(rng.choice(makers)(rng) for _ in range(rng.randint(10, 14)))


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
    """Word problems worked out in equations, with some plain equations between."""
    parts = [story(rng) if rng.random() < 0.7 else equation(rng) for _ in range(rng.randint(3, 5))]
    return "\n\n".join(parts)


MULTIPLIES = {2: "doubles", 3: "triples", 4: "quadruples"}


def usage(rng: random.Random) -> str:
    """Everyday words a real base model knows ("gets", "doubles", "Then", "now", "How") in
    sentences of their own. Words a base never read keep the embedding they all drift to together;
    a student fine-tuned from a base without these sentences kept confusing "doubles" and
    "triples" (59% pass@1 against 99% with them, same SFT)."""
    who, other = rng.sample(PEOPLE, 2)
    n, k, thing = rng.randint(1, 40), rng.randint(2, 4), rng.choice(THINGS)
    return rng.choice([
        f"A stack of {n} {thing} {MULTIPLIES[k]} in size: {n} * {k} = {n * k}",
        f"If {n} {MULTIPLIES[k]}, the result is {n * k}.",
        f"The price of {n} coins {MULTIPLIES[k]} to {n * k} coins.",
        f"{who} gets {n} {thing} from {other}.",
        f"Each child gets {n} {thing}: {k} children get {n} * {k} = {n * k}.",
        f"{who} counts {n} {thing}. Then {other} counts them again.",
        f"{who} asked: How many {thing} are there? There are {n}.",
        f"There are {n} {thing} on the shelf now.",
        f"{who} reads {n} pages now and {k} later.",
    ])


def vocabulary_document(rng: random.Random) -> str:
    return "\n".join(usage(rng) if rng.random() < 0.5 else announced(rng) for _ in range(rng.randint(10, 14)))


def student_config(tokenizer, args):
    from transformers import Qwen2Config

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)


def untie_head(model) -> None:
    """Give the output layer its own copy of the trained embeddings (the model stays the same
    function). Why: while fine-tuning a tied model, the rows of words that are never a target
    (prompt-only words such as "doubles" or "gets": prompt tokens are loss-masked) still get a
    small output-side gradient at every step, all in one shared direction, and AdamW scales it to
    full-size steps, so their input embeddings collapse together and the student cannot tell
    "doubles" from "triples". Untied, only the head's rows move that way. Measured on the demo
    (docs/log.md 2026-12-05): SFT students of seeds 1 and 2 went from 44% and 42% to 74% and 81%."""
    embeddings = model.get_input_embeddings().weight
    model.config.tie_word_embeddings = False
    model.get_output_embeddings().weight = torch.nn.Parameter(embeddings.detach().clone())


def model_card(args, n_params: int, size_mb: float, train_info: dict, samples: list[str]) -> str:
    shown = "\n\n".join(f"```\n{text}\n```" for text in samples)
    return f"""# demo-student-base

The starting point of the demo's student: a dense Qwen2 model ({args.layers} layers, hidden size
{args.hidden}, a multiple of 256 so that llama.cpp's k-quants apply; {n_params / 1e6:.2f}M
parameters, about a quarter of the demo teacher's, {size_mb:.1f} MB of fp32 safetensors) with the demo
tokenizer and its chat template. It was pretrained with tied embeddings and saved with an untied
output layer (a copy of them), as Llama-3.1-8B and Qwen2.5-7B are: fine-tuned tied, the
embeddings of prompt-only words ("doubles", "triples") collapsed together and the student's
accuracy depended on its seed (`untie_head` in the build script says why).

It is a *base* model: `distill/demo/pretrain_student.py` pretrained it from scratch on generic
text, the way a real base model has read arithmetic and school word problems before anyone
distills reasoning into it. Its documents are of two kinds, mixed from the first step:

1. ({args.equation_share:.0%}) lines of arithmetic: equations, most of them said in words first
   ("Take 8 from 19: 19 - 8 = 11"), arithmetic in words and simple sentences;
2. small word problems in everyday phrasing ("Sam had 14 cups. Sam bought 6 more."), each
   worked out in plain equations.

Phase 2 adds sentences with everyday words the rest lacks ("gets", "doubles", "triples",
"quadruples", "Then", "now", "How"), as a real base model has read them. Words a base never read
keep the embedding that all unread words drift to together (cosine similarity 0.99 between any two
of these without phase 2's sentences). Measured on the demo: a 10-epoch SFT student from this base
without those sentences scored 59% pass@1, nearly all its errors the multiplier of "doubles",
"triples" or "quadruples"; with them, 99%. The base itself does not map "triples" to 3 (that the
student learns from the traces).

It has never seen the demo task's problems or phrasing ("Then Ava gets 3 more", "triples them"),
its worked solutions, the R1 format (`<think>`, `\\boxed{{}}`) or a chat turn: `distill train`
teaches those from the teacher's traces.

Measured, greedy:

- it completes {train_info['arithmetic_accuracy']:.1%} of the {train_info['arithmetic_lines']} worked
  lines of the demo test split ("19 - 8 =" -> "11"), each line on its own;
- it completes {train_info['announced_accuracy']:.1%} of {train_info['announced_lines']} unseen
  announced equations from the words alone ("Take 8 from 19:" -> " 19 - 8 = 11"): its operator
  follows the words before it. A base whose operators were never predictable from context
  ignores the context there, and the student fine-tuned from it could not learn which operation a
  problem asks for (1% pass@1 on the demo task).

Text it was trained on:

{shown}

## Training

- {args.documents} generated documents ({args.equation_share:.0%} lines of arithmetic), AdamW,
  batch {args.batch_size}, fp32 on CPU, seed {args.seed}
- phase 1: the first {args.steps} steps of a {args.schedule}-step schedule (peak lr {args.lr},
  warm-up then cosine decay); arithmetic {train_info['phase1_arithmetic_accuracy']:.1%} at its end
- phase 2: {args.cooldown_steps} steps on the same text plus {args.vocabulary_documents} documents of
  everyday words, from peak lr {args.cooldown_lr} down to a tenth of it; final loss
  {train_info['final_loss']:.4f}

## Rebuild

    python -m distill.demo.pretrain_student --threads 2

About 70 minutes on an idle 2-core machine (about 1.8 s a step). A killed build resumes from its
checkpoints in `~/.cache/distill-edge-build/demo-student-base`.
"""


@torch.no_grad()
def completion_accuracy(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int) -> float:
    """Share of (prompt, expected) pairs whose greedy completion's first line is `expected`."""
    tokenizer.padding_side = "left"
    right = 0
    for start in range(0, len(pairs), 128):
        chunk = pairs[start:start + 128]
        enc = tokenizer([prompt for prompt, _ in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum(text.split("\n")[0].strip() == want for (_, want), text in zip(chunk, texts))
    return right / max(1, len(pairs))


def arithmetic_accuracy(model, tokenizer) -> tuple[float, int]:
    """The demo test split's worked lines ("19 - 8 =" -> "11"), each on its own: the arithmetic
    the task needs, without the task."""
    from distill.core.demo_task import load_split
    pairs = [(f"{left} =", value) for row in load_split("test")
             for left, value in (line.split(" = ") for line in row["reasoning"].split("\n"))]
    return completion_accuracy(model, tokenizer, pairs, max_new_tokens=5), len(pairs)


def announced_accuracy(model, tokenizer, seen: set[str], n: int = 500) -> tuple[float, int]:
    """Announced equations not in the training text, completed from the words alone ("Take 8
    from 19:" -> "19 - 8 = 11"): the operator must be read from the context."""
    rng, pairs = random.Random(10**6), []
    while len(pairs) < n:
        line = announced(rng)
        if line not in seen:
            words_part, eq = line.split(": ")
            pairs.append((f"{words_part}:", eq))
    return completion_accuracy(model, tokenizer, pairs, max_new_tokens=20), len(pairs)


PHASE1_SETTINGS = ("batch_size", "documents", "equation_share", "heads", "hidden", "intermediate",
                   "kv_heads", "layers", "lr", "schedule", "seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=asset("models", "demo-student-base"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder (resume)")
    parser.add_argument("--documents", type=int, default=100000)
    parser.add_argument("--equation-share", type=float, default=0.6,
                        help="share of documents that are lines of arithmetic; the rest are word problems")
    parser.add_argument("--schedule", type=int, default=4000, help="phase 1: length of the lr schedule")
    parser.add_argument("--steps", type=int, default=1750, help="phase 1: steps taken of that schedule")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="phase 1: peak lr")
    parser.add_argument("--cooldown-steps", type=int, default=500, help="phase 2: steps")
    parser.add_argument("--cooldown-lr", type=float, default=1e-3, help="phase 2: peak lr")
    parser.add_argument("--vocabulary-documents", type=int, default=10000,
                        help="phase 2: documents of everyday words in their own sentences, added to phase 1's")
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
    texts = [document(rng) if rng.random() < args.equation_share else story_document(rng)
             for _ in range(args.documents)]

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(student_config(tokenizer, args))
    n_params = sum(p.numel() for p in model.parameters())
    info(f"student base: {n_params / 1e6:.2f}M parameters; {len(texts)} documents")
    started = time.time()

    def measure(step: int, phase: int = 1) -> float:
        model.eval()
        accuracy = arithmetic_accuracy(model, tokenizer)[0]
        info(json.dumps({"phase": phase, "step": step, "arithmetic_accuracy": round(accuracy, 3)}))
        return accuracy

    examples = text_examples(tokenizer, texts)
    # Phase 1 stops mid-schedule, at a high learning rate; phase 2 decays it on the same text,
    # which is where the arithmetic becomes reliable, plus sentences with words phase 1 lacks.
    phase1 = argparse.Namespace(**{k: getattr(args, k) for k in PHASE1_SETTINGS})
    fit(model, examples, steps=args.schedule, stop_at=args.steps, batch_size=args.batch_size,
        lr=args.lr, work_dir=args.work, seed=args.seed,
        checkpoint_every=250, on_checkpoint=measure, fingerprint=settings_fingerprint(phase1))
    phase1_arithmetic = measure(args.steps)
    vocabulary_rng = random.Random(args.seed + 1)
    vocabulary = [vocabulary_document(vocabulary_rng) for _ in range(args.vocabulary_documents)]
    examples = examples + text_examples(tokenizer, vocabulary)
    result = fit(model, examples, steps=args.cooldown_steps, batch_size=args.batch_size,
                 lr=args.cooldown_lr, warmup=50, work_dir=args.work / "cooldown", seed=args.seed + 1,
                 checkpoint_every=100, on_checkpoint=lambda step: measure(step, phase=2),
                 fingerprint=settings_fingerprint(args))
    arithmetic, lines = arithmetic_accuracy(model, tokenizer)
    seen = {line for text in texts for line in text.split("\n")}
    announced_share, announced_lines = announced_accuracy(model, tokenizer, seen)
    train_info = {"final_loss": result["final_loss"], "phase1_arithmetic_accuracy": phase1_arithmetic,
                  "arithmetic_accuracy": round(arithmetic, 3), "arithmetic_lines": lines,
                  "announced_accuracy": round(announced_share, 3), "announced_lines": announced_lines,
                  "minutes_this_run": round((time.time() - started) / 60)}
    untie_head(model)
    n_params = sum(p.numel() for p in model.parameters())
    save_model(model, tokenizer, args.out, torch.float32, asset("models", "demo-tokenizer"))
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    samples = [next(t for t in texts if "\n\n" not in t), next(t for t in texts if "\n\n" in t)]
    (args.out / "README.md").write_text(model_card(args, n_params, size_mb, train_info, samples))
    info(json.dumps({"params": n_params, "size_mb": round(size_mb, 2), **train_info}))


if __name__ == "__main__":
    main()
