"""The four stages, by name: each one's config dataclass, its `run`, and its folder in a run
directory. The CLI and the pipeline runner reach the stages through this one dict.

The configs are imported here (the CLI builds its flags from them); each `run` is imported when
the stage runs, so that `distill --help` does not load torch and transformers: with the stage
modules imported up front, `distill --help` took 5.2 s instead of 0.24 s on a 2-core machine
(`python bench/bench_cli.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from distill.eval.config import EvalConfig
from distill.export.config import ExportConfig
from distill.generate.config import GenerateConfig
from distill.train.config import TrainConfig


def run_generate(config: GenerateConfig) -> dict:
    from distill.generate.stage import run
    return run(config)


def run_train(config: TrainConfig) -> dict:
    from distill.train.stage import run
    return run(config)


def run_export(config: ExportConfig) -> dict:
    from distill.export.stage import run
    return run(config)


def run_eval(config: EvalConfig) -> dict:
    from distill.eval.stage import run
    return run(config)


@dataclass(frozen=True)
class Stage:
    config: type
    run: Callable[[Any], dict]
    folder: str  # inside a run directory


STAGES: dict[str, Stage] = {
    "generate": Stage(GenerateConfig, run_generate, "traces"),
    "train": Stage(TrainConfig, run_train, "student"),
    "export": Stage(ExportConfig, run_export, "export"),
    "eval": Stage(EvalConfig, run_eval, "eval"),
}
