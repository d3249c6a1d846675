"""Verification and filtering on handwritten teacher responses."""

from __future__ import annotations

import pytest

from distill.core.answers import reference_answer
from distill.generate.filters import ContaminationIndex, Deduplicator, FilterSettings, decide_prompt
from distill.generate.samples import build_row, sample_id
from distill.backends import Completion

PREFILL = "<think>\n"


def row(text, reference="42", *, index=0, finish="stop", tokens=50, reasoning=None,
        problem="Ava has 40 apples and gets 2 more. How many now?", prompt_id="p0"):
    completion = Completion(text=text, finish_reason=finish, prompt_tokens=10,
                            completion_tokens=tokens, reasoning=reasoning)
    pb = {"id": prompt_id, "question": problem, "reference": reference}
    return build_row(sid=f"{prompt_id}-{index}", problem=pb, user_text=problem, index=index,
                     completion=completion, prefill=PREFILL, teacher="t", sampling={}, wall_s=0.1)


def decide(rows, **settings):
    decide_prompt(rows, FilterSettings(**settings), Deduplicator(settings.get("near_duplicate", 0.9)))
    return [r["drop_reason"] for r in rows]


@pytest.mark.parametrize("text, reference", [
    ("40 + 2 = 42\n</think>\n\nThe answer is \\boxed{42}.", "42"),
    ("Half of 3/2.\n</think>\n\n\\boxed{\\frac{3}{4}}", "3/4"),
    ("Split it.\n</think>\n\nSo $x = \\boxed{\\dfrac{1}{2}}$", "0.5"),
    ("sqrt 8.\n</think>\n\n\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("Sum.\n</think>\n\nThe total is 1234.", reference_answer("She pays 1,000 + 234 = 1,234.\n#### 1,234")),
    ("Sum.\n</think>\n\n**Final answer:** \\boxed{1234}", reference_answer("... #### 1234")),
])
def test_correct_answers_are_kept(text, reference):
    r = row(text, reference)
    assert decide([r]) == [None]
    assert r["verified"] and r["kept"] and r["think_closed"]
    assert r["reasoning"] and "</think>" not in r["reasoning"] and r["answer"]


@pytest.mark.parametrize("text, finish, reason", [
    ("40 + 2 is\n</think>\n\n\\boxed{41}", "stop", "wrong_answer"),
    ("40 + 2 = 42\n</think>\n\nI am not sure.", "stop", "no_answer"),
    ("40 + 2 = 42 so \\boxed{42}", "stop", "bad_format"),                 # never closed the think block
    ("\n</think>\n\n\\boxed{42}", "stop", "bad_format"),                    # empty thinking
    ("A</think>B</think>\n\\boxed{42}", "stop", "bad_format"),             # closed twice
    ("40 + 2 = 42 and then I keep thinking about", "length", "truncated"),
    ("40 + 2 = 42\n</think>\n\n\\boxed{42", "length", "truncated"),
])
def test_drop_reasons(text, finish, reason):
    r = row(text, finish=finish)
    assert decide([r]) == [reason]
    assert r["kept"] is False


def test_answer_only_inside_think_block_is_not_an_answer():
    r = row("The answer is \\boxed{42}.\n</think>\n\n")
    assert decide([r]) == ["no_answer"]
    assert not r["verified"]


def test_token_bounds():
    ok = "40 + 2 = 42\n</think>\n\n\\boxed{42}"
    assert decide([row(ok, tokens=900)], max_tokens=800) == ["too_long"]
    assert decide([row(ok, tokens=5)], min_tokens=10) == ["too_short"]
    assert decide([row(ok, tokens=50)], min_tokens=10, max_tokens=800) == [None]


def test_exact_and_near_duplicates():
    base = " ".join(f"Step {k}: the running total after adding {k} is {k * (k + 1) // 2}." for k in range(1, 25))
    same = row(f"{base}\n</think>\n\n\\boxed{{42}}", index=0)
    copy = row(f"{base}\n</think>\n\n\\boxed{{42}}", index=1)
    near = row(f"{base.replace('Step 12:', 'Then step 12:')}\n</think>\n\n\\boxed{{42}}", index=2)
    other = row("Forty and two: I count up from 40, 41, 42.\n</think>\n\n\\boxed{42}", index=3)
    assert decide([same, copy, near, other]) == [None, "duplicate", "duplicate", None]
    # exact duplicates are found across prompts too
    dedup = Deduplicator(0.9)
    decide_prompt([row(f"{base}\n</think>\n\n\\boxed{{42}}", prompt_id="a")], FilterSettings(), dedup)
    elsewhere = row(f"{base}\n</think>\n\n\\boxed{{42}}", prompt_id="b")
    decide_prompt([elsewhere], FilterSettings(), dedup)
    assert elsewhere["drop_reason"] == "duplicate"


def test_duplicates_of_dropped_traces_are_not_duplicates():
    wrong = row("forty plus two\n</think>\n\n\\boxed{41}", index=0)
    right = row("forty plus two\n</think>\n\n\\boxed{42}", index=1)
    assert decide([wrong, right]) == ["wrong_answer", None]


def test_contamination_by_ngram_overlap():
    index = ContaminationIndex(["Ava has 40 apples and gets 2 more. How many apples does she have now?"], 8)
    assert index.hits("Ava has 40 apples and gets 2 more. How many apples does she have?")
    assert not index.hits("Ben has 40 pears and loses 2 of them. How many pears are left?")
    r = row("40 + 2 = 42\n</think>\n\n\\boxed{42}",
            problem="Ava has 40 apples and gets 2 more. How many apples does she have now, exactly?")
    assert decide([r], contamination=index) == ["contaminated"]
    assert r["verified"]  # still counts for the teacher's pass rate


def test_pass_rate_filter_per_prompt():
    rows = [row(f"try {i}\n</think>\n\n\\boxed{{{42 if i == 0 else 50 + i}}}", index=i) for i in range(4)]
    assert decide(rows, min_pass_rate=0.5) == ["pass_rate", "wrong_answer", "wrong_answer", "wrong_answer"]
    assert all(r["pass_rate"] == 0.25 for r in rows)
    rows = [row(f"way {i}: 40+2\n</think>\n\n\\boxed{{42}}", index=i) for i in range(4)]
    assert decide(rows, max_pass_rate=0.75) == ["pass_rate"] * 4
    rows = [row(f"way {i}: 40+2\n</think>\n\n\\boxed{{42}}", index=i) for i in range(4)]
    assert decide(rows) == [None] * 4


def test_separate_reasoning_channel():
    r = row("The answer is \\boxed{42}.", reasoning="40 plus 2 is 42.")
    assert decide([r]) == [None]
    assert r["reasoning"] == "40 plus 2 is 42." and r["answer"] == "The answer is \\boxed{42}."
    empty = row("\\boxed{42}", reasoning="")   # no thinking at all: not an R1 trace
    assert decide([empty]) == ["bad_format"]


def test_sample_ids_are_stable_and_distinct():
    a = sample_id("hf:m", "p1", "question", {"temperature": 0.6}, 0)
    assert a == sample_id("hf:m", "p1", "question", {"temperature": 0.6}, 0)
    others = {sample_id("hf:n", "p1", "question", {"temperature": 0.6}, 0),
              sample_id("hf:m", "p2", "question", {"temperature": 0.6}, 0),
              sample_id("hf:m", "p1", "question!", {"temperature": 0.6}, 0),
              sample_id("hf:m", "p1", "question", {"temperature": 0.7}, 0),
              sample_id("hf:m", "p1", "question", {"temperature": 0.6}, 1)}
    assert a not in others and len(others) == 5
