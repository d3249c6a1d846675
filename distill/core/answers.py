"""Answer handling shared by generate (verification) and eval (scoring): split a response into
its think block and final answer, pull the final answer out, and compare it with the reference
through math-verify."""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

from .chat import THINK_CLOSE, THINK_OPEN

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


@dataclass
class Response:
    reasoning: str          # text inside the think block ("" when there is none)
    answer: str             # text after the last </think> (the whole text when unclosed/absent)
    think_closed: bool      # a think block was opened and closed exactly once
    extracted: str | None   # the final answer math-verify found in `answer`, as a string


def _in_signal_thread() -> bool:
    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    return 5 if _in_signal_thread() else None


def split_response(text: str, prefill: str = "") -> Response:
    """`text` is what the model generated after `prefill` (usually "<think>\\n")."""
    full = prefill + text
    opened = THINK_OPEN in full
    closes = full.count(THINK_CLOSE)
    if opened and closes >= 1:
        head, _, answer = full.rpartition(THINK_CLOSE)
        reasoning = head.split(THINK_OPEN, 1)[1]
        closed_once = closes == 1 and full.count(THINK_OPEN) == 1
    else:
        reasoning = full.split(THINK_OPEN, 1)[1] if opened else ""
        answer = "" if opened else full
        closed_once = False
    reasoning, answer = reasoning.strip(), answer.strip()
    return Response(reasoning, answer, closed_once, extract_answer(answer))


def reference_answer(raw: object) -> str:
    """The final answer of a reference solution: GSM8K's `... #### 42` gives `42`, a solution
    with `\\boxed{..}` gives the boxed content, anything else is taken as it is."""
    text = str(raw).strip()
    m = _GSM8K_FINAL.search(text)
    if m:
        return m.group(1).replace(",", "").strip()
    boxed = last_boxed(text)
    return boxed if boxed is not None else text


def last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


@functools.cache
def _math_verify():
    """math-verify, imported on first use: it loads sympy (half a second), which every CLI
    command would otherwise pay at startup, `distill --help` included."""
    import math_verify
    return math_verify


@functools.cache
def _target_config() -> list:
    mv = _math_verify()
    return [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]


def _parse_target(text: str) -> list:
    return _math_verify().parse(text, extraction_config=_target_config(), parsing_timeout=_timeout())


def _parse_gold(reference: str) -> list:
    ref = reference.strip()
    candidates = [f"${ref}$", ref] if "$" not in ref and "\\boxed" not in ref else [ref]
    for cand in candidates:
        gold = _math_verify().parse(cand, parsing_timeout=_timeout())
        if gold:
            return gold
    return []


def extract_answer(answer_text: str) -> str | None:
    """The final answer in the text after the think block: the last \\boxed{} wins, else the
    last number or expression math-verify can find."""
    if not answer_text.strip():
        return None
    boxed = last_boxed(answer_text)
    if boxed is not None:
        return boxed
    parsed = _parse_target(answer_text)
    return str(parsed[-1]) if parsed else None


def is_correct(answer_text: str, reference: str) -> bool:
    """True when the final answer in `answer_text` equals `reference` (a final-answer string)."""
    if not answer_text.strip():
        return False
    gold = _parse_gold(reference)
    target = _parse_target(answer_text)
    if not gold or not target:
        return False
    return bool(_math_verify().verify(gold, target, timeout_seconds=_timeout()))
