"""Train the demo teacher: a small Qwen3-MoE (16 experts, top-2 routing) that solves the demo task
in the R1 format, trained from scratch on worked solutions of the TRAIN split.

    python -m distill.demo.train_teacher                      # writes data/models/demo-teacher

The user turn is the problem in the bundled r1 template, the assistant turn is
"<think>\\n<worked lines>\\n</think>\\n\\n\\boxed{N}<|im_end|>", and only the assistant turn is
scored. The problems come from the train split's own seeded generator: the first 2000 are the
split `load_split("train")` returns (the prompts the demo's generate stage uses), the rest
continue the same stream, so none of them is a test problem. A killed build resumes from the
checkpoint in --work. The accuracy on the test split (greedy and sampled) goes into the model
card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distill.data import asset
from distill.demo.common import chat_examples, pass_at_1, r1_completion, save_model, set_threads, settings_fingerprint
from distill.demo.fit import fit
from distill.core.demo_task import generate, load_split
from distill.core.progress import info

DEFAULT_WORK = Path.home() / ".cache" / "distill-edge-build" / "demo-teacher"


def teacher_config(tokenizer, args):
    from transformers import Qwen3MoeConfig

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, num_experts=args.experts,
        num_experts_per_tok=args.top_k, moe_intermediate_size=args.moe_intermediate,
        intermediate_size=args.moe_intermediate * args.top_k, decoder_sparse_step=1,
        mlp_only_layers=[], norm_topk_prob=True, router_aux_loss_coef=0.01,
        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)


def model_card(args, n_params: int, size_mb: float, results: dict, train_info: dict) -> str:
    greedy, sampled = results["greedy"], results["sampled"]
    return f"""# demo-teacher

The teacher of `distill demo`: a small mixture-of-experts model in the Qwen3-MoE architecture
({args.experts} experts, top-{args.top_k} routing, {args.layers} layers, hidden size {args.hidden},
{n_params / 1e6:.2f}M parameters, {size_mb:.1f} MB of bf16 safetensors) with the demo tokenizer.
It was trained from scratch by `distill/demo/train_teacher.py` on worked solutions of the demo
task's train split written in the R1 format: the user turn is the problem in the bundled `r1`
prompt template, the assistant turn is `<think>` + the worked lines + `</think>` + `\\boxed{{N}}`,
ended by `<|im_end|>` (the loss covers the assistant turn only).

## Measured on the demo test split ({greedy['n']} problems, never trained on)

| decoding | pass@1 | think block closed |
|---|---|---|
| greedy | {greedy['pass@1']:.3f} | {greedy['think_closed']:.3f} |
| sampled, temperature {sampled['temperature']}, top-p {sampled['top_p']}, {sampled['samples']} samples | {sampled['pass@1']:.3f} | {sampled['think_closed']:.3f} |

Prompt: `render_prompt(tokenizer, user_message(question, load_prompt_template("r1")))` (the chat
template with the assistant turn opened by `<think>\\n`); scoring: `split_response` + `is_correct`.

## Training

- problems: the first {args.problems} of the train split's generator (`distill.core.demo_task.generate("train", n)`;
  the first 2000 are `load_split("train")`; test problems are excluded by construction)
- {args.steps} AdamW steps, batch {args.batch_size}, peak lr {args.lr}, warm-up then cosine decay,
  router load-balancing loss 0.01, seed {args.seed}, fp32 on CPU, saved in bf16
- final training loss {train_info['final_loss']:.4f}

## Rebuild

    python -m distill.demo.train_teacher --threads {args.threads or 'N'}

It took {train_info.get('minutes', '?')} minutes with {args.threads or 'all'} CPU thread(s) on a shared
2-core machine. The build is seeded; a killed build resumes from its checkpoint in
`~/{DEFAULT_WORK.relative_to(Path.home()).as_posix()}`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=asset("models", "demo-teacher"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint folder (resume)")
    parser.add_argument("--problems", type=int, default=20000, help="train-split problems to learn from")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--moe-intermediate", type=int, default=192)
    parser.add_argument("--sampled-evals", type=int, default=2, help="samples per test problem at T=0.6")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(asset("models", "demo-tokenizer"))
    rows = generate("train", n=args.problems)
    assert rows[:5] == load_split("train")[:5], "the train stream must start with the train split"
    examples = chat_examples(tokenizer, [(r["question"], r1_completion(r["reasoning"], r["answer"]))
                                         for r in rows])
    test = load_split("test")

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(teacher_config(tokenizer, args))
    n_params = sum(p.numel() for p in model.parameters())
    info(f"teacher: {n_params / 1e6:.2f}M parameters, {len(examples)} training problems")

    def probe(step: int) -> None:
        quick = pass_at_1(model, tokenizer, test[:50])
        info(f"step {step}: greedy pass@1 on 50 test problems {quick['pass@1']:.2f}")

    started = time.time()
    model.config.output_router_logits = True  # the router's load-balancing loss, as transformers adds it
    train_info = fit(model, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     work_dir=args.work, seed=args.seed, checkpoint_every=250,
                     fingerprint=settings_fingerprint(args),
                     on_checkpoint=lambda s: probe(s) if s % 500 == 0 else None)
    model.config.output_router_logits = False
    train_info["minutes"] = round((time.time() - started) / 60)

    save_model(model, tokenizer, args.out, torch.bfloat16, asset("models", "demo-tokenizer"))
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    results = {"greedy": pass_at_1(shipped, tokenizer, test),
               "sampled": pass_at_1(shipped, tokenizer, test, temperature=0.6, top_p=0.95,
                                    samples=args.sampled_evals)}
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    (args.out / "README.md").write_text(model_card(args, n_params, size_mb, results, train_info))
    summary = {k: {m: v[m] for m in ("pass@1", "think_closed", "n")} for k, v in results.items()}
    info(json.dumps({"params": n_params, "size_mb": round(size_mb, 2), **summary, **train_info}))
    for failure in results["greedy"]["failures"]:
        info(f"wrong: {failure['question']} -> {failure['response']!r} (expected {failure['reference']})")


if __name__ == "__main__":
    main()
