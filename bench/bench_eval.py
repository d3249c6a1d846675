"""Throughput of `distill eval` on an hf model: batched generation against one problem at a time,
measured in one run on this machine.

Both sides run the whole eval stage (`eval.run`: prompts, generation, scoring, samples.jsonl,
report) on the same model, the same demo test problems and the same greedy settings; only
--batch-size differs (16 against 1). The speed probe is off so that only the accuracy run is
timed. The model is --model DIR, else the demo teacher when data/models/demo-teacher exists, else
a random dense Qwen2 of a student's shape (hidden 256, 4 layers) with the demo tokenizer.
Target: batched >= 3x the problems/s. Runs alternate and the best of --rounds is kept for each
side, since a shared machine's load drifts.

    python bench/bench_eval.py [--model DIR] [--problems 32] [--max-new-tokens 48]
                               [--batch-size 16] [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_TEACHER = REPO / "data" / "models" / "demo-teacher"
DEMO_TOKENIZER = REPO / "data" / "models" / "demo-tokenizer"


def random_student(folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def eval_seconds(model: Path, out: Path, batch_size: int, args) -> tuple[float, dict]:
    from distill.core.config import build_config
    from distill.eval.stage import run
    from distill.eval.config import EvalConfig

    cfg = build_config(EvalConfig, dict(model=[f"hf:{model}"], label=["model"], benchmark="demo",
                                        limit=args.problems, max_new_tokens=args.max_new_tokens,
                                        batch_size=batch_size, threads=args.threads, speed_tokens=0,
                                        out=str(out)))
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's table, printed every run
        result = run(cfg)
    return time.perf_counter() - started, result["results"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hf model folder (default: demo teacher or a random student)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from distill.core.progress import set_quiet
    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model:
            model, name = Path(args.model), args.model
        elif (DEMO_TEACHER / "config.json").is_file():
            model, name = DEMO_TEACHER, "demo teacher"
        else:
            model, name = random_student(tmp / "student"), "random Qwen2 (hidden 256, 4 layers)"
        print(f"eval on hf: {name}, {args.problems} demo problems, {args.max_new_tokens} new tokens, "
              f"greedy, {args.threads} threads")
        eval_seconds(model, tmp / "warm-up", args.batch_size, argparse.Namespace(**{**vars(args), "problems": 2}))
        best = {"batched": float("inf"), "one at a time": float("inf")}
        rows = {}
        for i in range(args.rounds):
            for side, batch in (("batched", args.batch_size), ("one at a time", 1)):
                seconds, rows[side] = eval_seconds(model, tmp / f"{side}-{i}", batch, args)
                best[side] = min(best[side], seconds)
    for side in ("one at a time", "batched"):
        row = rows[side]
        print(f"  {side:<14}: {args.problems / best[side]:7.2f} problems/s  ({best[side]:.1f} s, "
              f"pass@1 {row['pass_at_1']:.3f}, {row['mean_response_tokens']:.0f} tokens/response)")
    same = rows["batched"]["pass_at_1"] == rows["one at a time"]["pass_at_1"]
    ratio = best["one at a time"] / best["batched"]
    print(f"  same pass@1 both ways: {'yes' if same else 'NO'}")
    print(f"  ratio batched / one at a time: {ratio:.2f}x (target >= 3x) {'OK' if ratio >= 3 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
