"""Does a demo model tell "doubles", "triples" and "quadruples" apart? The demo student's errors
are the multiplier; this prints where such a model stands.

    python -m distill.demo.probe_multiplier data/models/demo-student-base
    python -m distill.demo.probe_multiplier demo-run/student

Three measurements: the cosine similarity of the three words' input embeddings (and of their
output-layer rows, where the head is untied); the factor
the model continues unseen generic sentences with ("A stack of 47 cups triples in size: 47 *",
right share, greedy); and, on the demo test split rendered with the chat template as eval
renders it, the mean probabilities of 2, 3 and 4 at every worked line's "x *" (a row per true
factor: a model that has learnt the task has the diagonal near 1, one that cannot tell the words
apart has 1/3 everywhere)."""

from __future__ import annotations

import argparse
import random

import torch

WORDS = {2: "doubles", 3: "triples", 4: "quadruples"}
THINGS = ["apples", "marbles", "coins", "books", "stamps", "shells", "cards", "pens", "cups", "hats"]


def next_token_probs(model, tokenizer, text: str, options: list[str]) -> torch.Tensor:
    """P(option | text) of each option's first token after the text's shared prefix."""
    full = [tokenizer(text + o, add_special_tokens=False)["input_ids"] for o in options]
    i = 0
    while all(f[i] == full[0][i] for f in full):
        i += 1
    with torch.no_grad():
        probs = model(torch.tensor([full[0][:i]])).logits[0, -1].softmax(-1)
    return probs[[f[i] for f in full]]


def demo_factor_table(model, tokenizer, problems: int) -> torch.Tensor:
    """[3, 3]: row k-2 is the mean (P(2), P(3), P(4)) at the "x *" of lines whose factor is k."""
    from distill.core.demo_task import load_split
    from distill.core.chat import load_prompt_template, render_prompt, user_message

    template, table = load_prompt_template("r1"), torch.zeros(3, 3)
    for problem in load_split("test")[:problems]:
        prompt, done = render_prompt(tokenizer, user_message(problem["question"], template)), ""
        for line in problem["reasoning"].split("\n"):
            if " * " in line:
                left, rest = line.split(" * ")
                probs = next_token_probs(model, tokenizer, prompt + done + left + " * ", ["2", "3", "4"])
                table[int(rest.split()[0]) - 2] += probs / probs.sum()
            done += line + "\n"
    return table / table.sum(1, keepdim=True).clamp(min=1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--problems", type=int, default=200)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS.values()]
    sides = [("embedding", model.get_input_embeddings())]
    if not model.config.tie_word_embeddings:  # tied, the output rows are these same vectors
        sides.append(("output-row", model.get_output_embeddings()))
    for side, layer in sides:
        vectors = torch.nn.functional.normalize(layer.weight[ids].detach(), dim=-1)
        print(f"{side} cosine (doubles, triples, quadruples):")
        print((vectors @ vectors.T).numpy().round(2))

    rng, right = random.Random(10**7), 0
    for _ in range(300):
        m, k = rng.randint(41, 90), rng.randint(2, 4)
        probs = next_token_probs(model, tokenizer, f"A stack of {m} {rng.choice(THINGS)} {WORDS[k]} in size: {m} * ",
                                 ["2", "3", "4"])
        right += int(probs.argmax()) == k - 2
    print(f"generic sentences: right factor {right / 300:.0%} (chance 33%)")

    print("demo test split, mean P(2, 3, 4) at 'x *' (rows: the true factor 2, 3, 4):")
    print(demo_factor_table(model, tokenizer, args.problems).numpy().round(2))

if __name__ == "__main__":
    main()
