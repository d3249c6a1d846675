"""On-policy distillation on the demo task, two measurements in one run:

1. `cross`: the cross-tokenizer span form against the per-token form where both can apply. The
   demo teacher scores rollouts of a demo student once token by token (what a teacher of the
   student's tokenizer gives) and once through cross_tokenizer.py with its tokenizer given as a
   teacher's of another family (re-tokenized: the completion decoded to text, rendered into the
   teacher's chat template, tokenized again, aligned on byte boundaries). With one tokenizer both
   must give the same advantages: the bench prints the largest difference and the share of spans
   that are one token. It also prints how the demo tokenizer and SmolLM2's cut the same
   completions (mean span length across the two families).
2. `served`: one on-policy step's seconds split into sampling, scoring and the update, with the
   MoE teacher local (full distributions, scored inside the update) and served by a real vLLM
   (tests/vllm_server.py; sampled-token log-probs over HTTP), same student, same settings.

    python bench/bench_onpolicy.py [--part cross|served|both] [--steps 4] [--student DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rollouts_of(student: Path, n: int, seed: int = 0) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.backends import Sampling
    from distill.backends.hf import HFBackend
    from distill.core.chat import load_prompt_template, render_prompt, user_message
    from distill.core.demo_task import load_split
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    backend = HFBackend("student", model, tokenizer, n)
    template = load_prompt_template("r1")
    users = [user_message(p["question"], template) for p in load_split("test")[:n]]
    prompts = [render_prompt(tokenizer, u) for u in users]
    done = backend.generate(prompts, Sampling(n=1, max_new_tokens=96, temperature=1.0, seed=seed))
    out = []
    for user, prompt, (c,) in zip(users, prompts, done):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = p_ids + list(c.token_ids) + ([c.stop_token] if c.stop_token is not None else [])
        out.append({"input_ids": __import__("numpy").asarray(ids), "prompt_len": len(p_ids), "user_text": user,
                    "stopped": c.stop_token is not None})
    return out


def cross(args) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.data import asset
    from distill.train.cross_tokenizer import (CrossTokenizerScorer, clean_offsets, local_logprobs, spans,
                                               teacher_end_of_turn)
    teacher_dir = asset("models", "demo-teacher")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    rollouts = rollouts_of(args.student, args.rollouts)
    logprobs = local_logprobs(teacher)
    per_token = [np.asarray(v[r["prompt_len"] - 1:]) for r, v in
                 zip(rollouts, logprobs([r["input_ids"].tolist() for r in rollouts]))]
    scorer = CrossTokenizerScorer(tokenizer, AutoTokenizer.from_pretrained(teacher_dir),
                                  teacher_end_of_turn(tokenizer, "teacher"), logprobs, "teacher")
    scored = scorer.score(rollouts)
    worst = max(float(np.abs(s["teacher"] - t).max()) for s, t in zip(scored, per_token))
    single = np.mean([len(np.unique(s["span"])) == len(s["span"]) for s in scored])
    result = {"rollouts": len(rollouts), "largest_advantage_difference": worst,
              "rollouts_all_single_token_spans": float(single)}
    smollm2 = Path(os.environ.get("DISTILL_TEST_CACHE", Path.home() / ".cache" / "distill-edge-tests")) / \
        "smollm2-135m-instruct"
    if smollm2.is_dir():  # another family's tokenizer: how long the shared spans get
        other = AutoTokenizer.from_pretrained(smollm2)
        lengths = []
        for r in rollouts:
            ids = r["input_ids"][r["prompt_len"]:].tolist()[:-1 if r["stopped"] else None]
            text = tokenizer.decode(ids)
            theirs = other(text, add_special_tokens=False)["input_ids"]
            s_span, _ = spans(clean_offsets(tokenizer, ids, text), clean_offsets(other, theirs, text))
            if len(s_span):
                lengths.append(len(s_span) / (int(s_span.max()) + 1))
        result["demo_vs_smollm2_student_tokens_per_span"] = round(float(np.mean(lengths)), 3)
    return result


def served(args) -> dict:
    from distill.core.config import build_config
    from distill.data import asset
    from distill.train.config import TrainConfig
    from distill.train.stage import run
    from tests.distill.train.helpers import trace_rows, write_jsonl
    from tests.vllm_server import vllm_server

    teacher = asset("models", "demo-teacher")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        traces = write_jsonl(Path(tmp) / "t.jsonl", trace_rows(16))
        common = dict(method="on-policy", student=str(args.student), traces=str(traces), max_steps=args.steps,
                      batch_size=8, samples_per_prompt=4, max_new_tokens=96, eval_fraction=0.0, logging_steps=1,
                      save_steps=1000)
        run(build_config(TrainConfig, dict(common, teacher=f"hf:{teacher}", out=f"{tmp}/local")))
        with vllm_server(teacher, max_model_len=512) as url:
            run(build_config(TrainConfig, dict(common, teacher=f"openai:{url}", model="teacher", out=f"{tmp}/served")))
        for name in ("local", "served"):
            summary = json.loads((Path(tmp) / name / "train_summary.json").read_text())
            seconds = summary["on_policy"]["seconds"]
            out[name] = {k: round(v / args.steps, 3) for k, v in seconds.items()}
            out[name]["step"] = round(sum(seconds.values()) / args.steps, 3)
    out["served_vs_local_step"] = round(out["served"]["step"] / out["local"]["step"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("cross", "served", "both"), default="both")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--student", type=Path, default=None, help="a demo student (default: the demo's base)")
    args = parser.parse_args()
    if args.student is None:
        from distill.data import asset
        args.student = asset("models", "demo-student-base")
    results = {}
    if args.part in ("cross", "both"):
        results["cross"] = cross(args)
    if args.part in ("served", "both"):
        results["served"] = served(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
