"""Why a sample is kept or dropped. Each sample gets at most one drop reason, the first that
applies in `REASONS` order; `verified` (the final answer is right) is recorded independently, so
the teacher's pass@1 counts every sample.

Duplicates: exact duplicates (same normalised reasoning and answer) anywhere in the job, and near
duplicates (Jaccard similarity of word 5-grams) among the kept traces of the same prompt, which is
where sampling repeats itself; comparing every pair across prompts would be quadratic.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable

from distill.core.answers import Response, is_correct

REASONS = ("contaminated", "truncated", "bad_format", "no_answer", "wrong_answer", "too_long",
           "too_short", "pass_rate", "duplicate")

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class ContaminationIndex:
    """Word n-grams of benchmark problems; a sample whose problem or trace shares one of them
    with a benchmark is contaminated (the 8-gram rule open-r1 uses to decontaminate)."""

    def __init__(self, benchmark_texts: Iterable[str], n: int):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        for text in benchmark_texts:
            self.grams |= ngrams(words(text), n)

    def hits(self, text: str) -> bool:
        return bool(self.grams) and not self.grams.isdisjoint(ngrams(words(text), self.n))


@dataclass
class FilterSettings:
    min_tokens: int = 0
    max_tokens: int | None = None
    near_duplicate: float = 0.9
    min_pass_rate: float = 0.0
    max_pass_rate: float = 1.0
    contamination: ContaminationIndex | None = None


def verify(response: Response, reference: str) -> bool:
    return bool(response.answer) and is_correct(response.answer, reference)


def sample_reason(row: dict, settings: FilterSettings) -> str | None:
    """The drop reason that depends on this sample alone (None: it passes these checks).
    `row` holds problem, reasoning, answer, extracted, verified, finish_reason, think_closed and
    completion_tokens."""
    contamination = settings.contamination
    if contamination is not None and contamination.hits(
            "\n".join((row["problem"], row["reasoning"], row["answer"]))):
        return "contaminated"
    if row["finish_reason"] == "length":
        return "truncated"
    if row.get("think", True) and (not row["think_closed"] or not row["reasoning"].strip()):
        return "bad_format"  # (a --no-think trace is its answer alone)
    if row["extracted"] is None:
        return "no_answer"
    if not row["verified"]:
        return "wrong_answer"
    if settings.max_tokens is not None and row["completion_tokens"] > settings.max_tokens:
        return "too_long"
    if row["completion_tokens"] < settings.min_tokens:
        return "too_short"
    return None


def _fingerprint(row: dict) -> str:
    text = " ".join(words(row["reasoning"])) + "\0" + " ".join(words(row["answer"]))
    return hashlib.sha256(text.encode()).hexdigest()


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass
class Deduplicator:
    """Remembers kept traces by id: exact fingerprints across the job, 5-gram sets per prompt.
    A trace never duplicates itself, so rows can be decided again after a resume."""
    threshold: float
    exact: dict[str, str] = field(default_factory=dict)
    per_prompt: dict[str, dict[str, set]] = field(default_factory=dict)

    def is_duplicate(self, row: dict) -> bool:
        if self.exact.get(_fingerprint(row), row["id"]) != row["id"]:
            return True
        grams = _grams(row)
        return any(jaccard(grams, other) >= self.threshold
                   for sid, other in self.per_prompt.get(row["prompt_id"], {}).items()
                   if sid != row["id"])

    def add(self, row: dict) -> None:
        self.exact.setdefault(_fingerprint(row), row["id"])
        self.per_prompt.setdefault(row["prompt_id"], {})[row["id"]] = _grams(row)


def _grams(row: dict) -> set:
    return ngrams(words(row["reasoning"] + " " + row["answer"]), 5)


def pass_rate(rows: list[dict]) -> float:
    return sum(bool(r["verified"]) for r in rows) / len(rows) if rows else 0.0


def decide_prompt(rows: list[dict], settings: FilterSettings, dedup: Deduplicator) -> None:
    """Set `kept`, `drop_reason` and `pass_rate` on all samples of one prompt (in sample order),
    remembering the kept ones in `dedup`."""
    rate = pass_rate(rows)
    out_of_range = not settings.min_pass_rate <= rate <= settings.max_pass_rate
    for row in sorted(rows, key=lambda r: r["sample_index"]):
        reason = sample_reason(row, settings)
        if reason is None and out_of_range:
            reason = "pass_rate"
        if reason is None and dedup.is_duplicate(row):
            reason = "duplicate"
        row["pass_rate"] = rate
        row["kept"] = reason is None
        row["drop_reason"] = reason
        if reason is None:
            dedup.add(row)
