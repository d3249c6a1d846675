"""Peak memory of `distill train` against the trained tokens per step, with the chunked loss and
with the full loss it replaced, measured in one run.

The student is Qwen2.5-0.5B's width cut to 2 layers (hidden 896, intermediate 4864, 14 heads /
2 KV heads, tied embeddings, random weights) with Qwen2's real 151,936-token vocabulary: the
tokenizer is rebuilt from llama.cpp's ggml-vocab-qwen2.gguf, the chat template is llama.cpp's copy
of Qwen2.5-Instruct's. Each size trains `distill train --batch-size 1 --max-steps 2` (one trace
per step) in a fresh `python -m distill` process, which records its peak RSS in
train_summary.json. The baseline ("full loss") is the same command in a process where
`distill.train.trainer.loss_sums` is replaced by the pre-chunking computation, reimplemented
below (every trained position projected onto the whole vocabulary by the model's own forward).
The full loss needs ~16 GB at 6.5k tokens, so on this shared machine it runs only up to 3.3k and
its 6.5k point is extrapolated from its slope (said so in the output).

Target: <= 0.3 MB per trained token (marginal, between the smallest and the largest size), and
steps no slower than the full loss (CPU seconds per step, steadier than wall time on a shared
machine).

    python bench/bench_train_memory.py [--sizes 1600 3300 6500] [--baseline-sizes 1600 3300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WIDTH = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14,
             num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936)
TARGET_MB_PER_TOKEN = 0.3


def make_student(folder: Path) -> Path:
    """Built once and cached (rebuilding the tokenizer from the GGUF takes minutes)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch

    from distill.core.io import atomic_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from tests.llama_vendor import vendor_models, vocab_file
    gguf = vocab_file("qwen2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.chat_template = (vendor_models() / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(**WIDTH, max_position_embeddings=32768, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return folder


def write_traces(path: Path, student: Path, trained_tokens: int) -> int:
    """Two traces whose assistant turns are about `trained_tokens` tokens; returns the count."""
    from transformers import AutoTokenizer

    from distill.core.demo_task import load_split
    tok = AutoTokenizer.from_pretrained(student)
    problems = load_split("train")
    steps = [p["reasoning"] for p in problems]
    rows, counts = [], []
    for t in range(2):
        text, i = [], t * 97
        while len(tok("\n".join(text)).input_ids) < trained_tokens - 40:
            text.extend(steps[i % len(steps)] for i in range(i, i + 20))
            i += 20
        while len(tok("\n".join(text)).input_ids) > trained_tokens - 20:
            text.pop()
        p = problems[t]
        rows.append({"problem": p["question"], "prompt": p["question"], "reasoning": "\n".join(text),
                     "answer": f"The answer is \\boxed{{{p['answer']}}}.", "kept": True})
        counts.append(len(tok("\n".join(text)).input_ids))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return round(sum(counts) / len(counts)) + 20  # think tags, answer, end of turn


def full_loss_sums(model, batch, teacher=None, kd=(0.5, 1.0, "forward_kl")):
    """The loss before chunking: the model's logits for every trained position at once."""
    import torch

    from distill.core.traces import IGNORE
    from distill.train.losses import cross_entropy_sum, distillation_sum
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}
    trained = batch["shift_labels"].ne(IGNORE)
    wanted = batch["shift_labels"][trained]
    logits = model(**inputs, use_cache=False, logits_to_keep=trained).logits
    logits = logits.reshape(-1, logits.shape[-1])
    if teacher is None:
        return cross_entropy_sum(logits, wanted), None, None, int(wanted.numel())
    with torch.no_grad():
        teacher_logits = teacher(**inputs, use_cache=False, logits_to_keep=trained).logits
    total, ce, kd_sum = distillation_sum(logits, teacher_logits.reshape(-1, teacher_logits.shape[-1]), wanted, *kd)
    return total, ce, kd_sum, int(wanted.numel())


def train(student: Path, traces: Path, out: Path, threads: int, full_loss: bool, max_seq_len: int) -> dict:
    # max_seq_len just above the traces, so that the estimate (made for max_seq_len) is comparable
    args = ["train", "--student", str(student), "--traces", str(traces), "--out", str(out), "--batch-size", "1",
            "--max-steps", "2", "--eval-fraction", "0", "--max-seq-len", str(max_seq_len), "--logging-steps", "1",
            "--save-steps", "1000", "--threads", str(threads), "--quiet"]
    if full_loss:
        code = ("import sys; sys.argv = ['distill'] + sys.argv[1:]; import bench.bench_train_memory as b; "
                "import distill.train.trainer as t; t.loss_sums = b.full_loss_sums; "
                "from distill.cli import main; main()")
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", "distill", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    summary = json.loads((out / "train_summary.json").read_text())
    return {"peak_mb": summary["peak_memory"]["mb"], "estimated_mb": summary["peak_memory"]["estimated_mb"],
            "step_s": summary["train_seconds"] / summary["steps"],
            "step_cpu_s": summary["train_cpu_seconds"] / summary["steps"]}


def slope(points: dict) -> float:
    sizes = sorted(points)
    return (points[sizes[-1]]["peak_mb"] - points[sizes[0]]["peak_mb"]) / (sizes[-1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1600, 3300, 6500])
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[1600, 3300],
                        help="full-loss sizes (keep <= 3300 on a shared 24 GB machine)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-memory-") as tmp:
        tmp = Path(tmp)
        from tests.conftest import CACHE
        student = make_student(CACHE / "bench-train-memory-student")
        new, old, tokens = {}, {}, {}
        for size in sorted(set(args.sizes) | set(args.baseline_sizes)):
            traces = tmp / f"traces-{size}.jsonl"
            n = write_traces(traces, student, size)
            tokens[size] = n
            if size in args.baseline_sizes:
                old[n] = train(student, traces, tmp / f"old-{size}", args.threads, full_loss=True, max_seq_len=n + 200)
                print(f"full loss    {n:6d} trained tokens: peak {old[n]['peak_mb'] / 1024:5.2f} GB, "
                      f"step {old[n]['step_s']:6.1f} s ({old[n]['step_cpu_s']:6.1f} CPU s)", flush=True)
            if size in args.sizes:
                new[n] = train(student, traces, tmp / f"new-{size}", args.threads, full_loss=False, max_seq_len=n + 200)
                print(f"chunked loss {n:6d} trained tokens: peak {new[n]['peak_mb'] / 1024:5.2f} GB "
                      f"(estimated {new[n]['estimated_mb'] / 1024:5.2f} GB), step {new[n]['step_s']:6.1f} s "
                      f"({new[n]['step_cpu_s']:6.1f} CPU s)", flush=True)
    print()
    print(f"student: Qwen2.5-0.5B width, 2 layers, vocabulary {WIDTH['vocab_size']}, fp32 on CPU, {args.threads} threads")
    print("| trained tokens | chunked loss peak RSS | full loss peak RSS | step CPU s chunked / full |")
    print("|---|---|---|---|")
    old_slope = slope(old) if len(old) > 1 else None
    for n in sorted(set(new) | set(old)):
        if n in old:
            old_cell = f"{old[n]['peak_mb'] / 1024:.2f} GB"
        elif old_slope is not None:
            base = max(old)
            old_cell = f"~{(old[base]['peak_mb'] + old_slope * (n - base)) / 1024:.1f} GB (extrapolated from its slope, not run)"
        else:
            old_cell = "-"
        times = f"{new[n]['step_cpu_s']:.1f} / {old[n]['step_cpu_s']:.1f}" if n in new and n in old else "-"
        new_cell = f"{new[n]['peak_mb'] / 1024:.2f} GB" if n in new else "-"
        print(f"| {n} | {new_cell} | {old_cell} | {times} |")
    new_slope = slope(new)
    print(f"\nmarginal memory per trained token: chunked loss {new_slope:.3f} MB"
          + (f", full loss {old_slope:.3f} MB ({old_slope / new_slope:.1f}x)" if old_slope else "")
          + f"; target <= {TARGET_MB_PER_TOKEN} MB: {'met' if new_slope <= TARGET_MB_PER_TOKEN else 'NOT met'}")
    shared = sorted(set(new) & set(old))
    if shared:
        ratio = sum(new[n]["step_cpu_s"] for n in shared) / sum(old[n]["step_cpu_s"] for n in shared)
        wall = sum(new[n]["step_s"] for n in shared) / sum(old[n]["step_s"] for n in shared)
        print(f"step time chunked / full at {', '.join(map(str, shared))} tokens: {ratio:.2f}x CPU seconds, "
              f"{wall:.2f}x wall seconds; target <= 1.0x: {'met' if ratio <= 1.05 else 'NOT met'} (5% noise allowed)")


if __name__ == "__main__":
    main()
