"""Check the demo's distillation recipe end to end with plain Hugging Face code, independently of
the pipeline's stages: the teacher samples traces for train-split problems, rejection sampling
keeps the correct ones, the student base is fine-tuned on them with the HF Trainer (loss on the
assistant turn only), and the student's pass@1 on the test split is compared with the teacher's.

    python -m distill.demo.check_demo_recipe --prompts 1000 --n 2 --epochs 2 --lr 1e-3

Prints (and writes with --report) the trace count, the training time and both pass@1 values; the
settings that pass go into data/pipelines/demo.yaml.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distill.data import asset
from distill.demo.common import chat_examples, complete, grade, pass_at_1, set_threads
from distill.core.demo_task import load_split
from distill.core.io import write_json
from distill.core.progress import info


def sample_traces(teacher, tokenizer, rows: list[dict], n: int, args) -> tuple[list[tuple[str, str]], int]:
    """(question, completion) for every correct sample with a closed think block."""
    kept, total = [], 0
    for k in range(n):
        texts = complete(teacher, tokenizer, [r["question"] for r in rows], temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed + k, batch_size=args.gen_batch_size,
                         max_new_tokens=args.max_new_tokens, description=f"teacher samples {k + 1}/{n}")
        for row, text in zip(rows, texts):
            total += 1
            correct, closed = grade(text, row["answer"])
            if correct and closed:
                kept.append((row["question"], text))
    return kept, total


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded rows, the loss on the tokens after `prompt_len` (this check's own plain HF path)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, e["prompt_len"]:n] = ids[row, e["prompt_len"]:n]
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def fine_tune(student_dir: Path, tokenizer, examples: list[dict], args, out: Path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    training = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup_ratio,
        weight_decay=0.0, logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
        seed=args.seed, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=examples,
                      data_collator=lambda batch: collate(batch, tokenizer.pad_token_id))
    started = time.time()
    result = trainer.train()
    return model, time.time() - started, result.training_loss, trainer.state.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=asset("models", "demo-teacher"))
    parser.add_argument("--student", type=Path, default=asset("models", "demo-student-base"))
    parser.add_argument("--prompts", type=int, default=1000, help="first N train-split problems")
    parser.add_argument("--n", type=int, default=2, help="teacher samples per problem")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--gen-batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--traces-cache", type=Path, default=None,
                        help="JSON file to keep the sampled traces in (reused when it exists)")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    test = load_split("test")[:args.test_limit]
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)

    started = time.time()
    if args.traces_cache and args.traces_cache.is_file():
        cached = json.loads(args.traces_cache.read_text())
        kept, total, generate_s = [tuple(t) for t in cached["kept"]], cached["total"], cached["seconds"]
    else:
        kept, total = sample_traces(teacher, tokenizer, load_split("train")[:args.prompts], args.n, args)
        generate_s = time.time() - started
        if args.traces_cache:
            write_json(args.traces_cache, {"kept": kept, "total": total, "seconds": generate_s})
    info(f"kept {len(kept)} of {total} teacher samples ({generate_s:.0f} s)")

    teacher_result = pass_at_1(teacher, tokenizer, test)
    examples = chat_examples(tokenizer, kept)
    base = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    base_result = pass_at_1(base, tokenizer, test[:50])
    with tempfile.TemporaryDirectory() as tmp:
        student, train_s, loss, steps = fine_tune(args.student, tokenizer, examples, args, Path(tmp))
    student_result = pass_at_1(student, tokenizer, test)
    report = {
        "traces_kept": len(kept), "samples": total, "generate_seconds": round(generate_s, 1),
        "train_seconds": round(train_s, 1), "train_steps": steps, "train_loss": round(loss, 4),
        "settings": {k: getattr(args, k) for k in ("prompts", "n", "epochs", "lr", "batch_size",
                                                    "warmup_ratio", "threads")},
        "teacher_pass@1": teacher_result["pass@1"], "student_base_pass@1": base_result["pass@1"],
        "student_pass@1": student_result["pass@1"],
        "student_over_teacher": round(student_result["pass@1"] / max(teacher_result["pass@1"], 1e-9), 3),
        "student_failures": student_result["failures"][:3],
    }
    info(json.dumps(report, indent=2))
    if args.report:
        write_json(args.report, report)


if __name__ == "__main__":
    main()
