"""Scoring on handwritten responses: the answer after the last </think> counts, one only inside the
think block does not; pass@1 over K samples, maj@K, format and truncation rates."""

from __future__ import annotations

import pytest

from distill.core.answers import reference_answer
from distill.eval.scoring import answer_key, full_response, majority_correct, score_response, summarize

PREFILL = "<think>\n"


@pytest.mark.parametrize("response, reference, extracted, correct", [
    ("2 + 40 = 42\n</think>\n\nThe answer is \\boxed{42}.", "42", "42", True),
    ("so 41?\n</think>\n\n\\boxed{41}", "42", "41", False),
    ("halves\n</think>\n\nThe share is \\boxed{\\frac{3}{4}}.", "0.75", "\\frac{3}{4}", True),
    ("halves\n</think>\n\n\\boxed{\\dfrac{1}{2}}", "\\frac12", "\\dfrac{1}{2}", True),
    ("expand\n</think>\n\nSo $x^2 + 2x + 1$.", "(x+1)^2", "x^2 + 2x + 1", True),
    ("roots\n</think>\n\n\\boxed{3\\sqrt{2}}", "\\sqrt{18}", "3\\sqrt{2}", True),
    ("count\n</think>\n\nWe get 1,234 marbles.\n#### 1,234", reference_answer("...\n#### 1,234"), "1234", True),
    ("thinking\n</think>\n\nI am not sure.", "42", None, False),
])
def test_answers_after_the_think_block(response, reference, extracted, correct):
    scored = score_response(response, reference, PREFILL)
    assert scored["correct"] is correct
    assert scored["extracted"] == extracted
    assert scored["format_valid"] is (extracted is not None)
    assert scored["truncated"] is False


def test_answers_inside_the_think_block_do_not_count():
    closed = score_response("the answer is \\boxed{42}\n</think>\n\nNo idea.", "42", PREFILL)
    unclosed = score_response("the answer is \\boxed{42} and more thinking", "42", PREFILL, "length")
    assert not closed["correct"] and not unclosed["correct"]
    assert unclosed == {"extracted": None, "correct": False, "format_valid": False, "truncated": True,
                        "loop": None, "think_unclosed": True, "answer_in_think": True}
    assert closed["answer_in_think"] and not closed["think_unclosed"]
    # the last </think> decides: a second think block's answer is what is read
    twice = score_response("a\n</think>\n\\boxed{1}<think>b</think>\n\n\\boxed{42}", "42", PREFILL)
    assert twice["correct"] and not twice["format_valid"]  # two blocks: not the R1 format


def test_servers_that_open_the_think_block_or_split_the_reasoning():
    # the server's template opened the block: the content starts inside it
    assert score_response("7 * 6\n</think>\n\n\\boxed{42}", "42", "")["format_valid"]
    # DeepSeek's reasoning_content channel is put back in front of the answer
    text = full_response("\\boxed{42}", "7 * 6 = 42")
    assert text.startswith("<think>\n7 * 6 = 42\n</think>")
    assert score_response(text, "42", "") == {"extracted": "42", "correct": True, "format_valid": True,
                                               "truncated": False, "loop": None, "think_unclosed": False,
                                               "answer_in_think": False}
    # a plain chat model without a think block: the whole text is the answer, format not valid
    plain = score_response("It is \\boxed{42}.", "42", "")
    assert plain["correct"] and not plain["format_valid"]


def test_answer_keys_group_equivalent_forms():
    assert answer_key("\\dfrac{1}{2}") == answer_key("\\frac{1}{2}") == answer_key("1/2")
    assert answer_key("1,000") == answer_key("1000")
    assert answer_key("12") != answer_key("21")


def _sample(pid, correct, extracted, tokens=10, fmt=True, truncated=False):
    return {"problem_id": pid, "correct": correct, "extracted": extracted, "completion_tokens": tokens,
            "format_valid": fmt, "truncated": truncated}


def test_majority_vote():
    assert majority_correct([_sample("p", True, "\\frac{1}{2}"), _sample("p", True, "1/2"),
                             _sample("p", False, "3")])
    assert not majority_correct([_sample("p", False, "3"), _sample("p", False, "3"),
                                 _sample("p", True, "2"), _sample("p", False, None)])
    assert not majority_correct([_sample("p", False, None)])


def test_summary_of_a_row():
    samples = [  # problem a: 3 of 4 right; problem b: 1 of 4 right, majority wrong
        _sample("a", True, "5", 10), _sample("a", True, "5", 20), _sample("a", False, "6", 30, truncated=True),
        _sample("a", True, "5.0", 40),
        _sample("b", False, "1", 10, fmt=False), _sample("b", False, "1", 10), _sample("b", True, "2", 10),
        _sample("b", False, None, 50, fmt=False, truncated=True),
    ]
    summary = summarize(samples, samples_per_problem=4)
    assert summary["n_problems"] == 2 and summary["n_samples"] == 8
    assert summary["pass_at_1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert summary["maj_at_k"] == pytest.approx(0.5)
    assert summary["format_valid_rate"] == pytest.approx(6 / 8)
    assert summary["truncation_rate"] == pytest.approx(2 / 8)
    assert summary["mean_response_tokens"] == pytest.approx(180 / 8)
    assert summarize(samples[:1], samples_per_problem=1)["maj_at_k"] is None
