"""The failures that only show on the shipped file: loops, a think block never closed, and an answer
written inside the think block but not after it. Each is decided per sample from its text, so a
baseline's samples.jsonl written before these fields existed is judged by the same rule.

The loop rule: a sample loops when it ran to the token limit (finish_reason "length") and its text
ends in at least LOOP_MIN_REPEATS back-to-back copies of one span (the last copy may be cut off by
the limit), the repeated stretch is at least LOOP_MIN_CHARS characters long, and the span holds at
least one non-whitespace character. The shortest such span is reported (a line repeated 40 times
is the line, not two copies of it), starting after a line break when it holds one. A response
that is merely long, or repeats itself with a changing counter ("Step 7", "Step 8"), is not a
loop by this rule."""

from __future__ import annotations

import numpy as np

from distill.core.answers import last_boxed
from distill.core.chat import THINK_CLOSE, THINK_OPEN

LOOP_MIN_REPEATS = 3
LOOP_MIN_CHARS = 64
LOOP_MAX_SPAN = 2000      # characters: longer periods are not searched
LOOP_TAIL = 16000         # characters from the end that are searched


def find_loop(text: str, finish_reason: str) -> dict | None:
    """{span, repeats, chars} when the sample ends in a loop by the rule above, else None."""
    if finish_reason != "length" or not text:
        return None
    tail = np.frombuffer(text[-LOOP_TAIL:].encode("utf-32-le"), dtype=np.uint32)[::-1]  # the end first
    n = len(tail)
    for period in range(1, min(LOOP_MAX_SPAN, n // LOOP_MIN_REPEATS) + 1):
        if tail[0] != tail[period]:
            continue  # the last character does not repeat at this distance: no run at all
        # how far back from the end the text equals itself shifted by `period`
        same = tail[period:] == tail[:-period]
        run = int(np.argmin(same)) if not same.all() else len(same)
        length = run + period
        if length >= LOOP_MIN_REPEATS * period and length >= LOOP_MIN_CHARS:
            region = text[len(text) - length:]
            # the copy that starts a line, when a line break is in it (a repeated line reads as itself)
            start = region.find("\n", 0, period) + 1
            span = region[start:start + period] if start + period <= length else region[:period]
            if span.strip():
                return {"span": span, "repeats": round(length / period, 1), "chars": length}
    return None


def think_opened(text: str, prefill: str) -> bool:
    return THINK_OPEN in prefill + text


def think_unclosed(text: str, prefill: str) -> bool:
    """A think block was opened (by the prompt or the model) and never closed."""
    return think_opened(text, prefill) and THINK_CLOSE not in prefill + text


def answer_in_think(text: str, prefill: str, extracted: str | None) -> bool:
    """An answer (a \\boxed{...}) was written inside the think block, but none after `</think>`:
    the grader, reading only after the block, scores it as no answer."""
    full = prefill + text
    if THINK_OPEN not in full or extracted:
        return False
    inside = full.split(THINK_OPEN, 1)[1].rpartition(THINK_CLOSE)[0] if THINK_CLOSE in full else \
        full.split(THINK_OPEN, 1)[1]
    return last_boxed(inside) is not None


def failure_fields(text: str, prefill: str, finish_reason: str, extracted: str | None) -> dict:
    """The failure fields of one sample, as samples.jsonl keeps them."""
    return {"loop": find_loop(text, finish_reason), "think_unclosed": think_unclosed(text, prefill),
            "answer_in_think": answer_in_think(text, prefill, extracted)}


def sample_loops(sample: dict) -> bool:
    """Whether a stored sample loops: its own field, or the rule applied to its text (older files)."""
    if "loop" in sample:
        return sample["loop"] is not None
    return find_loop(sample.get("response") or "", sample.get("finish_reason") or "") is not None
