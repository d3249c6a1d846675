"""The four stages by name: where each one's config class and `run` entry live, and the folder it
gets inside a run directory. Imports are lazy so that `distill --help` does not load torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable

STAGES: dict[str, dict[str, str]] = {
    "generate": {"config": "distill.generate.config:GenerateConfig", "run": "distill.generate:run", "dir": "traces"},
    "train": {"config": "distill.train.config:TrainConfig", "run": "distill.train:run", "dir": "student"},
    "export": {"config": "distill.export.config:ExportConfig", "run": "distill.export:run", "dir": "export"},
    "eval": {"config": "distill.eval.config:EvalConfig", "run": "distill.eval:run", "dir": "eval"},
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def config_class(stage: str) -> type:
    return _load(STAGES[stage]["config"])


def run_function(stage: str) -> Callable[[Any], dict]:
    return _load(STAGES[stage]["run"])
