"""The problems a run is scored on, and the held-out text its fidelity is measured on.

Named benchmarks are Hugging Face datasets (they load when online or cached); anything else is a
local file read with the same question/answer detection that `generate` uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distill.core.errors import UserError
from distill.core.problems import load_problems

# name -> the `load_problems` hub spec: dataset[:config]@split
HUB_BENCHMARKS = {
    "gsm8k": "openai/gsm8k:main@test",
    "math500": "HuggingFaceH4/MATH-500@test",
    "aime24": "HuggingFaceH4/aime_2024@train",
}


@dataclass
class Benchmark:
    name: str             # what the report calls it: gsm8k, demo, or the file's name
    source: str           # where the problems came from (hub spec or path)
    problems: list[dict]  # {id, question, reference, raw_answer}, after --limit
    heldout: list[str]    # documents of held-out text (question + worked solution) for fidelity


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def load_benchmark(cfg) -> Benchmark:
    name = cfg.benchmark
    if name == "demo":
        from distill.core.demo_task import load_split
        problems = load_problems("demo", demo_split="test")
        heldout = [f"{row['question']}\n{row['solution']}" for row in load_split("test")]
        source = "demo:test"
    elif name in HUB_BENCHMARKS:
        source = HUB_BENCHMARKS[name]
        try:
            problems = load_problems(source, cfg.question_field, cfg.answer_field)
        except UserError as e:
            if "could not be loaded" not in str(e):
                raise
            hint = " (HF_HUB_OFFLINE is set)" if _offline() else ""
            raise UserError(f"benchmark: '{name}' is the hub dataset {source.split(':')[0].split('@')[0]}, "
                            f"which could not be loaded{hint}; download it once online, or give a "
                            "local .jsonl/.json/.parquet/.csv file") from None
        heldout = [f"{p['question']}\n{p['raw_answer']}" for p in problems]
    else:
        path = Path(name)
        if not path.exists() and "/" not in name and not path.suffix:
            raise UserError(f"benchmark: unknown benchmark '{name}' (use gsm8k, math500, aime24, "
                            "demo, or a local .jsonl/.json/.parquet/.csv file)")
        source = name
        problems = load_problems(name, cfg.question_field, cfg.answer_field)
        heldout = [f"{p['question']}\n{p['raw_answer']}" for p in problems]
        name = path.stem if path.exists() else name
    if cfg.limit is not None:
        problems = problems[:cfg.limit]
    return Benchmark(name, source, problems, heldout)


def heldout_text(cfg, benchmark: Benchmark) -> str:
    """The text fidelity and perplexity are measured on: --fidelity-text, or the benchmark's
    questions with their reference solutions."""
    if cfg.fidelity_text:
        path = Path(cfg.fidelity_text)
        if not path.is_file():
            raise UserError(f"fidelity_text: {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"fidelity_text: {path}: not UTF-8 text") from None
        if not text.strip():
            raise UserError(f"fidelity_text: {path}: the file is empty")
        return text
    return "\n\n".join(benchmark.heldout)
