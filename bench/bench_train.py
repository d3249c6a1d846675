"""Training throughput of `distill train` against a plain TRL SFTTrainer, in one run, on the same
traces and the same small Qwen2 model (the demo student's shape by default).

Both train the same assistant-only loss for the same number of steps with the same batch size;
tokens/s counts the real (non-padding) input tokens over the time spent in optimizer steps, in
wall seconds and in this process's CPU seconds (steadier when other jobs share the cores). Runs
alternate (TRL, distill, distill packed, TRL, ...) and the best of each is kept, since a shared
machine's load drifts. Targets: distill (packing, its default) >= 1.0x TRL; padding <= 5%.

    python bench/bench_train.py [--traces 512] [--steps 20] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "models" / "demo-tokenizer"


def make_student(folder: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), tie_word_embeddings=True,
                         max_position_embeddings=2048, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_traces(path: Path, n: int) -> list[dict]:
    from distill.core.demo_task import load_split
    rows = []
    for p in load_split("train")[:n]:
        prompt = f"{p['question']}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        rows.append({"problem": p["question"], "prompt": prompt, "reasoning": p["reasoning"],
                     "answer": f"The answer is \\boxed{{{p['answer']}}}.", "kept": True})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def run_trl(student: Path, rows: list[dict], args, out: Path) -> dict:
    """A plain SFTTrainer: conversational prompt-completion data, its default collator (pads to the
    longest in the batch), completion-only loss. Precision and gradient checkpointing are set as
    distill sets them on a CPU (fp32, off): TRL's own defaults (bf16 autocast, checkpointing) are
    over ten times slower on a CPU and would flatter the ratio."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from distill.core.chat import assistant_message
    from distill.train.trainer import StepClock
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": assistant_message(r["reasoning"], r["answer"])}]}
                              for r in rows])
    clock = StepClock()
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(student), train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(student), callbacks=[clock],
        args=SFTConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=5,
                       save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=42,
                       include_num_input_tokens_seen="non_padding", max_length=args.max_seq_len,
                       bf16=False, gradient_checkpointing=False))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    batches = [trainer.data_collator([trainer.train_dataset[i] for i in range(s, min(s + args.batch_size, len(trainer.train_dataset)))])
               for s in range(0, len(trainer.train_dataset), args.batch_size)]
    pad = trainer.processing_class.pad_token_id
    real = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int((b["input_ids"] != pad).sum())
               for b in batches)
    positions = sum(b["input_ids"].numel() for b in batches)
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "tokens_per_second": tokens / clock.seconds,
            "tokens_per_cpu_second": tokens / clock.cpu_seconds, "padding_fraction": 1 - real / positions}


def run_distill(student: Path, traces: Path, args, out: Path, packing: bool) -> dict:
    from distill.core.config import build_config
    from distill.core.progress import set_quiet
    from distill.train.stage import run
    from distill.train.config import TrainConfig
    set_quiet(True)
    run(build_config(TrainConfig, {"student": str(student), "traces": str(traces), "out": str(out),
                                   "max_steps": args.steps, "batch_size": args.batch_size, "lr": 1e-3,
                                   "eval_fraction": 0, "packing": packing, "save_steps": 10 ** 6,
                                   "max_seq_len": args.max_seq_len, "threads": args.threads}))
    summary = json.loads((out / "train_summary.json").read_text())
    return {"tokens": summary["tokens_seen"], "tokens_per_second": summary["tokens_per_second"],
            "tokens_per_cpu_second": summary["tokens_seen"] / summary["train_cpu_seconds"],
            "padding_fraction": summary["padding_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for every run")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets
    datasets.disable_progress_bars()
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = make_student(tmp / "student", args.hidden, args.layers)
        params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(student).parameters())
        rows = write_traces(tmp / "traces.jsonl", args.traces)
        runs = {"trl": [], "distill": [], "distill_packed": []}
        for r in range(args.repeats):
            started = time.perf_counter()
            runs["trl"].append(run_trl(student, rows, args, tmp / f"trl{r}"))
            runs["distill"].append(run_distill(student, tmp / "traces.jsonl", args, tmp / f"d{r}", packing=False))
            runs["distill_packed"].append(run_distill(student, tmp / "traces.jsonl", args, tmp / f"p{r}", packing=True))
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]['tokens_per_second']:.0f} tok/s"
                                                              for k, v in runs.items())
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    best = {k: {m: max(r[m] for r in v) for m in ("tokens_per_second", "tokens_per_cpu_second")}
            | {"padding_fraction": v[0]["padding_fraction"], "tokens": v[0]["tokens"]} for k, v in runs.items()}
    base, base_cpu = best["trl"]["tokens_per_second"], best["trl"]["tokens_per_cpu_second"]
    print(f"\nQwen2 student {params / 1e6:.2f}M params, {args.traces} demo traces, {args.steps} steps of "
          f"{args.batch_size}, {torch.get_num_threads()} CPU threads, best of {args.repeats}")
    print(f"{'run':<16}{'tokens/s':>10}{'ratio':>8}{'tok/CPU-s':>11}{'ratio':>8}{'padding':>9}{'tokens':>9}")
    for name, res in best.items():
        print(f"{name:<16}{res['tokens_per_second']:>10.0f}{res['tokens_per_second'] / base:>7.2f}x"
              f"{res['tokens_per_cpu_second']:>11.0f}{res['tokens_per_cpu_second'] / base_cpu:>7.2f}x"
              f"{100 * res['padding_fraction']:>8.1f}%{res['tokens']:>9}")
    ok_padding = best["distill_packed"]["padding_fraction"] <= 0.05
    load, cores = os.getloadavg()[0], os.cpu_count()
    print(f"\ntarget distill (packed, its default) >= 1.0x TRL: wall "
          f"{'met' if best['distill_packed']['tokens_per_second'] >= base else 'NOT met'}, CPU time "
          f"{'met' if best['distill_packed']['tokens_per_cpu_second'] >= base_cpu else 'NOT met'}; "
          f"padding with packing <= 5%: {'met' if ok_padding else 'NOT met'}")
    if load > cores:
        print(f"load average {load:.1f} on {cores} cores: other jobs share the CPU, so the wall-clock ratios "
              "are noisy; the CPU-time ratios are the steadier comparison")


if __name__ == "__main__":
    main()
