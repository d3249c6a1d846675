"""The filter settings of a run, including the n-gram index of the benchmarks named by
`--decontaminate` (local files, hub dataset names, or `demo` for the demo task's test split)."""

from __future__ import annotations

from distill.core.problems import load_problems

from .filters import ContaminationIndex, FilterSettings


def filter_settings(cfg) -> FilterSettings:
    contamination = None
    if cfg.decontaminate:
        texts = []
        for src in cfg.decontaminate:
            texts += [p["question"] for p in load_problems(src, require_answer=False, demo_split="test")]
        contamination = ContaminationIndex(texts, cfg.decontaminate_ngram)
    return FilterSettings(min_tokens=cfg.min_trace_tokens, max_tokens=cfg.max_trace_tokens,
                          near_duplicate=cfg.near_duplicate, min_pass_rate=cfg.min_pass_rate,
                          max_pass_rate=cfg.max_pass_rate, contamination=contamination)
