"""Pretrain the demo student's starting point: a small dense Qwen2 "base" model that knows
arithmetic but not the demo task.

    python -m data.build.pretrain_student                   # writes data/models/demo-student-base

Like a real base model, it has read generic text: plain equations ("17 + 8 = 25", "25 * 3 = 75"),
arithmetic in words ("8 more than 17 is 25", "triple 12 is 36") and simple sentences about people
and things. It has never seen the demo task's problems, its worked solutions, the R1 format or a
chat turn: `distill train` teaches those from the teacher's traces. A killed build resumes from
the checkpoint in --work.
"""

from __future__ import annotations

import argparse
import json
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


def equation(rng: random.Random) -> str:
    """One true equation, mostly the small-number arithmetic of everyday text."""
    kind = rng.choice("+-*")
    if kind == "*":
        a, b = rng.randint(0, 99), rng.randint(2, 9) if rng.random() < 0.9 else rng.randint(0, 12)
        return f"{b} * {a} = {a * b}" if rng.random() < 0.2 else f"{a} * {b} = {a * b}"
    if rng.random() < 0.7:
        a, b = rng.randint(0, 300), rng.randint(0, 20)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
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
    makers = [equation] * 8 + [words] + [sentence]
    return "\n".join(rng.choice(makers)(rng) for _ in range(rng.randint(8, 12)))


def student_config(tokenizer, args):
    from transformers import Qwen2Config

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)


def model_card(args, n_params: int, size_mb: float, train_info: dict, sample: str) -> str:
    return f"""# demo-student-base

The starting point of the demo's student: a dense Qwen2 model ({args.layers} layers, hidden size
{args.hidden}, a multiple of 256 so that llama.cpp's k-quants apply; {n_params / 1e6:.2f}M
parameters, {size_mb:.1f} MB of safetensors) with the demo tokenizer and its chat template.

It is a *base* model: `data/build/pretrain_student.py` pretrained it from scratch on generic
arithmetic text (plain equations, arithmetic in words, simple sentences), the way a real base
model knows arithmetic. It has never seen the demo task's problems or worked solutions, the R1
format or a chat turn; `distill train` teaches those from the teacher's traces.

A sample of its pretraining text:

```
{sample}
```

## Training

- {args.documents} generated documents, seed {args.seed}
- {args.steps} AdamW steps, batch {args.batch_size}, peak lr {args.lr}, warm-up then cosine decay,
  fp32 on CPU; final training loss {train_info['final_loss']:.4f}

## Rebuild

    python -m data.build.pretrain_student --threads 2
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=asset("models", "demo-student-base"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder (resume)")
    parser.add_argument("--documents", type=int, default=100000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(asset("models", "demo-tokenizer"))
    rng = random.Random(args.seed)
    texts = [document(rng) for _ in range(args.documents)]
    examples = text_examples(tokenizer, texts)

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(student_config(tokenizer, args))
    n_params = sum(p.numel() for p in model.parameters())
    info(f"student base: {n_params / 1e6:.2f}M parameters, {len(examples)} documents")
    started = time.time()
    train_info = train(model, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       pad_id=tokenizer.pad_token_id, work_dir=args.work, seed=args.seed,
                       checkpoint_every=250, fingerprint=settings_fingerprint(args))
    train_info["minutes"] = round((time.time() - started) / 60)
    save_model(model, tokenizer, args.out, torch.float32, asset("models", "demo-tokenizer"))
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    (args.out / "README.md").write_text(model_card(args, n_params, size_mb, train_info, texts[0]))
    info(json.dumps({"params": n_params, "size_mb": round(size_mb, 2), **train_info}))


if __name__ == "__main__":
    main()
