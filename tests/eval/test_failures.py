"""Loops, think blocks never closed and answers inside the think block (eval/failures.py), the
unbiased pass@k, and the --max-loop-rate gate with and without a baseline."""

from __future__ import annotations

import json
import math
import random
from itertools import combinations
from types import SimpleNamespace

import pytest

from distill.eval.failures import LOOP_MIN_CHARS, find_loop, sample_loops
from distill.eval.gates import check_gates
from distill.eval.report import markdown, result_row
from distill.eval.scoring import pass_at_k, pass_at_ks, score_response, summarize

PREFILL = "<think>\n"


def test_a_repeated_line_to_the_limit_is_a_loop_and_its_span_is_kept():
    line = "So we subtract 3 from 12 and get 9.\n"
    text = "Tom has 12 apples.\n" + line * 12 + line[:10]  # cut off mid-copy by the limit
    loop = find_loop(text, "length")
    assert loop["span"] in (line, line[10:] + line[:10]) and len(loop["span"]) == len(line)
    assert loop["repeats"] >= 12 and loop["chars"] >= 12 * len(line)
    assert find_loop(text, "stop") is None  # it stopped by itself: not to the limit


@pytest.mark.parametrize("text", [
    "We add the numbers one by one, carefully, and check each step twice before moving on. " * 2,  # 2 copies
    "".join(f"Step {i}: add 2 to the total.\n" for i in range(60)),     # a counter changes every copy
    "ab" * 20,                                                          # 3+ copies but under LOOP_MIN_CHARS
    " " * 200,                                                          # whitespace only
    "A long answer that simply ran out of tokens without repeating anything at all in the end",
])
def test_what_is_not_a_loop(text):
    assert len("ab" * 20) < LOOP_MIN_CHARS
    assert find_loop(text, "length") is None


def test_degenerate_character_runs_and_word_loops():
    assert find_loop("the answer is " + "!" * 100, "length")["span"] == "!"
    loop = find_loop("thinking " + "wait, " * 40, "length")
    assert loop["span"].strip() in ("wait,", ",wait") and loop["repeats"] >= 39


def test_sample_fields_and_row_rates():
    looping = "Let me check. " + "I need to recheck the sum.\n" * 20
    samples = [
        {"problem_id": "a", "correct": False, "extracted": None, "format_valid": False, "truncated": True,
         "completion_tokens": 9, **{k: v for k, v in score_response(looping, "4", PREFILL, "length").items()
                                   if k in ("loop", "think_unclosed", "answer_in_think")}},
        {"problem_id": "b", "correct": False, "extracted": None, "format_valid": False, "truncated": False,
         "completion_tokens": 9, **{k: v for k, v in score_response("\\boxed{4}\n</think>\n\nhmm", "4", PREFILL).items()
                                   if k in ("loop", "think_unclosed", "answer_in_think")}},
    ]
    assert samples[0]["loop"]["span"] == "I need to recheck the sum.\n" and samples[0]["think_unclosed"]
    assert samples[1]["answer_in_think"] and not samples[1]["think_unclosed"] and samples[1]["loop"] is None
    summary = summarize(samples, 1)
    assert summary["loop_rate"] == 0.5 and summary["think_unclosed_rate"] == 0.5
    assert summary["answer_in_think_rate"] == 0.5 and summary["pass_at_k"] is None
    # a baseline written before the field existed is judged from its text by the same rule
    old = {"response": looping, "finish_reason": "length"}
    assert sample_loops(old) and not sample_loops({"response": "fine", "finish_reason": "length"})


def test_no_think_block_is_neither_unclosed_nor_an_answer_in_think():
    plain = score_response("It is \\boxed{42}.", "42", "")
    assert not plain["think_unclosed"] and not plain["answer_in_think"]


def test_pass_at_k_is_the_unbiased_estimator():
    # against the definition: the share of k-subsets of the n samples that hold a correct one
    rng = random.Random(0)
    for n, c, k in [(4, 1, 2), (8, 3, 4), (5, 0, 2), (6, 6, 3), (10, 2, 8)]:
        outcomes = [True] * c + [False] * (n - c)
        rng.shuffle(outcomes)
        subsets = list(combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_ks(1) == [] and pass_at_ks(4) == [2, 4] and pass_at_ks(6) == [2, 4, 6] and pass_at_ks(8) == [2, 4, 8]
    samples = [{"problem_id": p, "correct": ok, "format_valid": ok, "truncated": False, "completion_tokens": 5}
               for p, outs in (("a", [True, False, False, False]), ("b", [False] * 4)) for ok in outs]
    summary = summarize(samples, 4)
    assert summary["pass_at_k"] == {"2": pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2)) / 2), "4": 0.5}
    assert summary["pass_at_1"] == 0.125


def _loop_samples(label: str, loops: list[bool]) -> list[dict]:
    return [{"label": label, "think_budget": None, "problem_id": f"p{i}", "sample": 0, "correct": not bad,
             "loop": {"span": "x\n", "repeats": 40, "chars": 80} if bad else None}
            for i, bad in enumerate(loops)]


def _row(label: str, loops: list[bool]) -> dict:
    return result_row(label=label, backend="gguf", benchmark="gsm8k", loop_rate=sum(loops) / len(loops),
                      pass_at_1=1 - sum(loops) / len(loops), n_problems=len(loops), samples_per_problem=1)


def _cfg(**kw):
    return SimpleNamespace(**{**dict(min_accuracy=None, baseline=None, max_drop=None, max_kld=None,
                                     max_loop_rate=None), **kw})


def test_loop_ceiling_without_a_baseline():
    gates = check_gates([_row("q3", [True] * 3 + [False] * 7), _row("q8", [False] * 10)], _cfg(max_loop_rate=0.2))
    assert gates["failed"] == ["row 'q3': loop_rate 0.3000 is above --max-loop-rate 0.2"]
    assert [v["status"] for v in gates["verdicts"]] == ["failed", "passed"]


def _baseline(folder, label, loops):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"results": [{"label": label, "benchmark": "gsm8k",
                                                                 "think_budget": None}]}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _loop_samples(label, loops)))
    return str(folder / "report.json")


def test_loop_rise_against_the_baseline_needs_significance(tmp_path):
    rng = random.Random(3)
    # 400 problems: 2% looped before, 12% now, a real rise
    old = [rng.random() < 0.02 for _ in range(400)]
    new = [o or rng.random() < 0.1 for o in old]
    gates = check_gates([_row("q4", new)], _cfg(baseline=_baseline(tmp_path / "a", "q4", old), max_loop_rate=0.05),
                        _loop_samples("q4", new))
    assert gates["failed"] and "loop_rate rose" in gates["failed"][0] and "significant at 5%" in gates["failed"][0]
    (rise,) = gates["loop_increase"]
    assert rise["status"] == "failed" and rise["drop"] == pytest.approx(sum(new) / 400 - sum(old) / 400)
    assert "Loop rate against the baseline" in markdown({"benchmark": {"name": "gsm8k", "n_problems": 400,
                                                                       "source": "x"},
                                                         "settings": {"samples": 1, "temperature": 0, "top_p": 1,
                                                                      "prompt_template": "r1", "speed_tokens": 0},
                                                         "results": [_row("q4", new)], "memory_method": "-",
                                                         "gates": gates})
    # 10 problems, one more loop: above the limit but noise; passes with a warning
    small_old, small_new = [False] * 10, [True] + [False] * 9
    gates = check_gates([_row("q4", small_new)], _cfg(baseline=_baseline(tmp_path / "b", "q4", small_old),
                                                      max_loop_rate=0.05), _loop_samples("q4", small_new))
    assert not gates["failed"] and "not significant" in gates["warnings"][0]


def test_eval_reports_the_rates_and_gates_on_loops(exported, tmp_path):
    """Through the CLI on the tiny GGUF (a random model whose chat template opens the think block:
    it never closes it, and it rambles without repeating): the rates in report.json, the loop field
    in samples.jsonl, pass@k beside pass@1, and --max-loop-rate as a ceiling and against a
    baseline (the loop detection itself is tested on handwritten texts above)."""
    from typer.testing import CliRunner

    from distill import cli
    from distill.core.io import read_json, read_jsonl

    base = ["eval", "--quiet", "--model", f"gguf:{exported['gguf']}", "--label", "tiny", "--benchmark", "demo",
            "--limit", "4", "--max-new-tokens", "48", "--speed-tokens", "0", "--threads", "1", "--n-ctx", "512",
            "--samples", "2", "--temperature", "0.6", "--max-loop-rate", "0"]
    first = tmp_path / "first"
    result = CliRunner().invoke(cli.app, [*base, "--out", str(first)])
    assert result.exit_code == 0, result.output
    (row,) = read_json(first / "report.json")["results"]
    samples = read_jsonl(first / "samples.jsonl")
    assert all("loop" in s and s["loop"] is None for s in samples) and row["loop_rate"] == 0.0
    assert row["think_unclosed_rate"] == 1.0 and row["answer_in_think_rate"] == 0.0
    assert set(row["pass_at_k"]) == {"2"} and row["pass_at_k"]["2"] >= row["pass_at_1"]
    assert "loops" in (first / "report.md").read_text()
    again = CliRunner().invoke(cli.app, [*base, "--out", str(tmp_path / "b"), "--baseline", str(first / "report.json")])
    assert again.exit_code == 0, again.output
    gates = read_json(tmp_path / "b" / "report.json")["gates"]
    assert gates["loop_increase"][0]["drop"] == 0 and gates["checked"][0].startswith("max_loop_rate 0.0 against")
