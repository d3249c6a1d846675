"""Scoring: one response against its reference, and the figures of a row (pass@1 averaged over K
samples, the unbiased pass@k for k > 1, maj@K, format-valid rate, truncation rate, mean response
tokens, and the failure rates of eval/failures.py: loops, think never closed, answer in think).

The answer is whatever follows the last `</think>`: an answer written only inside the think
block does not count, which is how R1-style evaluations read a response."""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, defaultdict

from distill.core.answers import is_correct, split_response
from distill.core.chat import THINK_CLOSE, THINK_OPEN

from .failures import failure_fields, sample_loops


def response_prefill(prompt_prefill: str, text: str) -> str:
    """The opened think block the response continues. Local backends know it from the prompt;
    a chat server whose template opens the think block itself returns text with a closing tag
    and no opening one."""
    if prompt_prefill:
        return prompt_prefill
    if THINK_CLOSE in text and THINK_OPEN not in text:
        return f"{THINK_OPEN}\n"
    return ""


def full_response(text: str, reasoning: str | None) -> str:
    """A server that returns the reasoning on its own channel (DeepSeek's `reasoning_content`)
    gets it put back in front of the answer, so every backend is scored on the same layout."""
    if reasoning:
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{text.lstrip()}"
    return text


def score_response(text: str, reference: str, prefill: str = "", finish_reason: str = "stop",
                   think: bool = True) -> dict:
    """The scored fields of one sample: extracted answer, correct, format_valid, truncated, and
    its failures (loop, think_unclosed, answer_in_think). Without `think` (a model that does not
    reason, --no-think) the whole response is the answer and a think block is not asked for."""
    prefill = response_prefill(prefill, text)
    response = split_response(text, prefill)
    correct = bool(response.answer) and is_correct(response.answer, reference)
    return {
        "extracted": response.extracted,
        "correct": correct,
        "format_valid": (response.think_closed or not think) and response.extracted is not None,
        "truncated": finish_reason == "length",
        **failure_fields(text, prefill, finish_reason, response.extracted),
    }


_LATEX_NOISE = re.compile(r"\\[!,;: ]|\\left|\\right|\s+|\$")


def answer_key(extracted: str) -> str:
    """A canonical form of an extracted answer for majority voting: `\\dfrac{1}{2}`, `\\frac12`
    and `1/2` vote together, as do `1,000` and `1000`."""
    text = _LATEX_NOISE.sub("", extracted).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    try:
        from math_verify import parse
        in_main = threading.current_thread() is threading.main_thread()  # SIGALRM timeouts
        parsed = parse(f"${text}$", parsing_timeout=5 if in_main else None)
        if parsed:
            return str(parsed[0])
    except Exception:  # noqa: BLE001 - an unparsable answer still votes as its text
        pass
    return text


def majority_correct(samples: list[dict]) -> bool:
    """maj@K of one problem: the most frequent extracted answer (first seen wins a tie) decides;
    samples without an answer do not vote."""
    votes = [(answer_key(s["extracted"]), s["correct"]) for s in samples if s.get("extracted")]
    if not votes:
        return False
    counts = Counter(key for key, _ in votes)
    best = max(counts.values())
    winner = next(key for key, _ in votes if counts[key] == best)
    return any(correct for key, correct in votes if key == winner)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021), as lm-eval and lighteval compute it: the
    chance that at least one of k samples drawn without replacement from n, c of them correct, is
    correct, 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_ks(samples_per_problem: int) -> list[int]:
    """The k reported beside pass@1: the powers of two up to the samples per problem, and that
    number itself."""
    ks = [2 ** i for i in range(1, samples_per_problem.bit_length()) if 2 ** i <= samples_per_problem]
    return ks + ([samples_per_problem] if samples_per_problem > 1 and samples_per_problem not in ks else [])


def summarize(samples: list[dict], samples_per_problem: int) -> dict:
    """The accuracy figures of one row from its samples."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_problem[s["problem_id"]].append(s)
    per_problem = [_mean([float(s["correct"]) for s in group]) for group in by_problem.values()]
    counts = [(len(g), sum(bool(s["correct"]) for s in g)) for g in by_problem.values()]
    return {
        "n_problems": len(by_problem),
        "n_samples": len(samples),
        "pass_at_1": _mean(per_problem),
        # problems with fewer samples than k (an interrupted row) are left out of that k
        "pass_at_k": {str(k): _mean([pass_at_k(n, c, k) for n, c in counts if n >= k])
                      for k in pass_at_ks(samples_per_problem)} or None,
        "maj_at_k": (_mean([float(majority_correct(g)) for g in by_problem.values()])
                     if samples_per_problem > 1 else None),
        "format_valid_rate": _mean([float(s["format_valid"]) for s in samples]),
        "truncation_rate": _mean([float(s["truncated"]) for s in samples]),
        "loop_rate": _mean([float(sample_loops(s)) for s in samples]),
        "think_unclosed_rate": _mean([float(bool(s.get("think_unclosed"))) for s in samples]),
        "answer_in_think_rate": _mean([float(bool(s.get("answer_in_think"))) for s in samples]),
        "mean_response_tokens": _mean([float(s["completion_tokens"]) for s in samples]),
        "n_errors": sum(1 for s in samples if s.get("error")),
    }
