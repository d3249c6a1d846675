"""The drop gate's statistics against scipy and by simulation, its verdicts on handmade runs
(a noisy 30-problem drop passes with a warning, a real 1,319-problem drop fails), the JUnit
file and the GitHub job summary."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from distill.core.errors import UserError
from distill.eval.gates import check_gates
from distill.eval.paired import (BOOTSTRAP, MCNEMAR, binomial_test, bootstrap_drop, mcnemar_drop, newcombe_paired,
                         paired_drop, wilson)
from distill.eval.report import append_step_summary, junit_xml, markdown, result_row


@pytest.mark.parametrize("k, n", [(0, 1), (3, 3), (2, 7), (5, 7), (10, 30), (34, 134), (600, 1319), (660, 1319)])
def test_exact_binomial_matches_scipy(k, n):
    from scipy.stats import binomtest
    assert binomial_test(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-15)


def test_wilson_matches_scipy():
    from scipy.stats import binomtest
    for k, n in [(0, 10), (7, 30), (30, 30), (912, 1319)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def _paired_runs(rng, n: int, base: float, flip_worse: float, flip_better: float):
    """Two runs on the same problems: the second loses each solved problem with probability
    flip_worse and gains each unsolved one with probability flip_better."""
    first = rng.random(n) < base
    u = rng.random(n)
    second = np.where(first, u >= flip_worse, u < flip_better)
    return list(first), list(second)


def test_newcombe_interval_keeps_its_coverage_at_30_problems():
    rng = np.random.default_rng(0)
    base, worse, better = 0.6, 0.2, 0.1
    truth = base * worse - (1 - base) * better
    trials = 2000
    covered = sum(lo <= truth <= hi for lo, hi in (
        (d.low, d.high) for d in (mcnemar_drop(*_paired_runs(rng, 30, base, worse, better)) for _ in range(trials))))
    assert 0.93 <= covered / trials <= 0.99


def test_equal_models_fail_the_test_at_most_5_percent_and_real_drops_are_found():
    rng = np.random.default_rng(1)
    noise = [mcnemar_drop(*_paired_runs(rng, 30, 0.5, 0.15, 0.15)).p_value < 0.05 for _ in range(1000)]
    assert sum(noise) / 1000 <= 0.05
    # a true drop of 5 points on 1,319 problems, the size Connor's formula says is enough
    found = [mcnemar_drop(*_paired_runs(rng, 1319, 0.75, 0.08, 0.04)).p_value < 0.05 for _ in range(300)]
    assert sum(found) / 300 >= 0.8


def test_the_bootstrap_agrees_with_mcnemar_on_one_sample_and_takes_k():
    rng = np.random.default_rng(2)
    first, second = _paired_runs(rng, 1319, 0.75, 0.1, 0.03)
    exact = mcnemar_drop(first, second)
    boot = bootstrap_drop([float(x) for x in first], [float(x) for x in second])
    assert exact.test == MCNEMAR and boot.test == BOOTSTRAP and boot.drop == pytest.approx(exact.drop)
    assert boot.low == pytest.approx(exact.low, abs=0.006) and boot.high == pytest.approx(exact.high, abs=0.006)
    assert exact.p_value < 1e-6 and boot.p_value < 0.001
    assert bootstrap_drop([0.5] * 10, [0.5] * 10).p_value == 1.0
    again = bootstrap_drop([float(x) for x in first], [float(x) for x in second])
    assert (again.low, again.high, again.p_value) == (boot.low, boot.high, boot.p_value)  # seeded
    k4 = paired_drop({"a": [True] * 4, "b": [True, False, True, False]}, {"a": [True, False] * 2, "b": [False] * 4})
    assert k4.test == BOOTSTRAP and k4.n_problems == 2 and k4.drop == pytest.approx(0.5)
    assert paired_drop({"a": [True]}, {"b": [True]}) is None
    assert newcombe_paired(0, 0, 0, 10) == pytest.approx((-0.2775, 0.2775), abs=1e-3)  # none solved


def _samples(label: str, outcomes: list[bool], k: int = 1) -> list[dict]:
    return [{"label": label, "think_budget": None, "problem_id": f"p{i}", "sample": j, "correct": ok}
            for i, ok in enumerate(outcomes) for j in range(k)]


def _baseline(folder: Path, label: str, outcomes: list[bool], benchmark: str = "gsm8k") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.json"
    report.write_text(json.dumps({"results": [{"label": label, "benchmark": benchmark, "think_budget": None,
                                               "pass_at_1": sum(outcomes) / len(outcomes)}]}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _samples(label, outcomes)))
    return report


def _row(label: str, outcomes: list[bool]) -> dict:
    return result_row(label=label, backend="gguf", benchmark="gsm8k", pass_at_1=sum(outcomes) / len(outcomes),
                      n_problems=len(outcomes), samples_per_problem=1)


def _cfg(**kw):
    return SimpleNamespace(**{**dict(min_accuracy=None, baseline=None, max_drop=None, max_kld=None), **kw})


def test_a_noisy_drop_on_30_problems_passes_with_a_warning(tmp_path):
    old = [True] * 20 + [False] * 10
    new = [False] * 5 + [True] * 15 + [True] * 2 + [False] * 8   # 5 lost, 2 gained: 66.7% -> 56.7%
    gates = check_gates([_row("q4", new)], _cfg(baseline=str(_baseline(tmp_path / "old", "q4", old)), max_drop=0.05),
                        _samples("q4", new))
    assert gates["failed"] == []
    (warning,) = gates["warnings"]
    assert warning.startswith("row 'q4': pass_at_1 dropped 0.1000 (0.6667 -> 0.5667 on 30 shared problems; 95% interval")
    assert "exact McNemar p = 0.453" in warning and "not significant at 5%" in warning
    assert "about 181 problems would find a drop this size (80% power)" in warning
    (drop,) = gates["drop"]
    assert drop["status"] == "passed" and drop["exceeds_max_drop"] and not drop["significant"]
    assert drop["low"] < 0 < drop["high"] and "--max-drop 0.05" in gates["rule"]


def test_a_real_drop_on_1319_problems_fails(tmp_path):
    random.seed(0)
    old = [random.random() < 0.75 for _ in range(1319)]
    new = [random.random() > 0.12 if ok else random.random() < 0.1 for ok in old]  # lose 12%, gain 10%
    gates = check_gates([_row("q4", new)], _cfg(baseline=str(_baseline(tmp_path / "old", "q4", old)), max_drop=0.05),
                        _samples("q4", new))
    (failure,) = gates["failed"]
    assert failure.startswith("row 'q4': pass_at_1 dropped 0.0637 (0.7498 -> 0.6861 on 1319 shared problems; "
                              "95% interval +0.0463 to +0.0812, exact McNemar p = 6.54e-13)")
    assert "on 1319 shared problems" in failure and "more than --max-drop 0.05 and significant at 5%" in failure
    assert gates["drop"][0]["p_value"] < 1e-10 and gates["warnings"] == []
    within = check_gates([_row("q4", new)], _cfg(baseline=str(tmp_path / "old" / "report.json"), max_drop=0.1),
                         _samples("q4", new))
    assert within["failed"] == [] and within["warnings"] == [] and "within --max-drop 0.1" in within["verdicts"][0]["message"]


def test_k_samples_are_judged_by_the_bootstrap(tmp_path):
    old = [True] * 30 + [False] * 10
    report = _baseline(tmp_path / "old", "s", old)
    new = [False] * 25 + [True] * 5 + [False] * 10
    samples = _samples("s", new, k=4)
    gates = check_gates([_row("s", new)], _cfg(baseline=str(report), max_drop=0.05), samples)
    assert gates["drop"][0]["test"] == BOOTSTRAP and "paired bootstrap p = " in gates["failed"][0]


def test_baselines_that_cannot_be_paired_are_user_errors(tmp_path):
    report = _baseline(tmp_path / "old", "q4", [True, False])
    (tmp_path / "old" / "samples.jsonl").unlink()
    with pytest.raises(UserError, match="old/samples.jsonl: no such file .*keep the baseline's samples.jsonl"):
        check_gates([_row("q4", [True])], _cfg(baseline=str(report), max_drop=0.1), _samples("q4", [True]))
    report = _baseline(tmp_path / "other", "q4", [True, False])
    moved = [dict(s, problem_id="x" + s["problem_id"]) for s in _samples("q4", [True, True])]
    with pytest.raises(UserError, match="row 'q4' shares no problem with the baseline"):
        check_gates([_row("q4", [True, True])], _cfg(baseline=str(report), max_drop=0.1), moved)
    (tmp_path / "other" / "samples.jsonl").write_text('{"label": "q4"}\n')
    with pytest.raises(UserError, match="line 1: not a sample of `distill eval`"):
        check_gates([_row("q4", [True])], _cfg(baseline=str(report), max_drop=0.1), _samples("q4", [True]))
    with pytest.raises(UserError, match="no row has a label of this run"):
        check_gates([_row("other", [True])], _cfg(baseline=str(_baseline(tmp_path / "b", "q4", [True])),
                                                  max_drop=0.1), _samples("other", [True]))
    with pytest.raises(UserError, match="measured on 'demo'"):
        check_gates([_row("q4", [True])], _cfg(baseline=str(_baseline(tmp_path / "c", "q4", [True], "demo")),
                                               max_drop=0.1), _samples("q4", [True]))


def _report(tmp_path: Path) -> dict:
    random.seed(0)
    old = [random.random() < 0.75 for _ in range(1319)]
    new = [random.random() > 0.12 if ok else random.random() < 0.1 for ok in old]
    rows = [_row("q4", new), dict(_row("q8", old), mean_kld=0.01), _row("new-row", new)]
    baseline = _baseline(tmp_path / "old", "q4", old)
    gates = check_gates(rows, _cfg(baseline=str(baseline), max_drop=0.05, min_accuracy=0.7, max_kld=0.02),
                        _samples("q4", new) + _samples("q8", old) + _samples("new-row", new))
    return {"benchmark": {"name": "gsm8k", "source": "openai/gsm8k:main@test", "n_problems": 1319},
            "settings": {"samples": 1, "temperature": 0.0, "top_p": 1.0, "prompt_template": "r1", "speed_tokens": 64},
            "reference": None, "memory_method": "m", "results": rows, "comparison": [], "gates": gates, "plots": ["x.png"]}


def test_junit_has_one_case_per_row_and_gate(tmp_path):
    report = _report(tmp_path)
    root = ET.fromstring(junit_xml(report).encode())
    assert root.tag == "testsuites" and [s.tag for s in root] == ["testsuite"]
    suite = root[0]
    cases = suite.findall("testcase")
    assert len(cases) == 9 and suite.get("tests") == "9" == root.get("tests")
    assert all(c.get("classname", "").startswith("distill-eval.gsm8k.") and c.get("name") and c.get("time") for c in cases)
    by = {(c.get("classname").rsplit(".", 1)[1], c.get("name")): c for c in cases}
    failure = by[("q4", "max_drop")].find("failure")
    assert failure is not None and failure.get("type") == "max_drop"
    assert failure.get("message") == failure.text and "\n" not in failure.text
    assert failure.text.startswith("row 'q4': pass_at_1 dropped")
    assert by[("q4", "min_accuracy")].find("failure") is not None  # 68.6% < 70%
    assert by[("q8", "min_accuracy")].find("failure") is None and by[("q8", "max_kld")].find("failure") is None
    assert by[("q4", "max_kld")].find("skipped").get("message").endswith("mean_kld not measured (gguf backend)")
    assert by[("new-row", "max_drop")].find("skipped") is not None
    assert suite.get("failures") == "3" and suite.get("skipped") == "4" and suite.get("errors") == "0"


def test_markdown_and_the_github_step_summary_state_the_drop_and_the_rule(tmp_path, monkeypatch):
    report = _report(tmp_path)
    text = markdown(report)
    assert "Rule: fail when the pass@1 drop" in text and "| q4 | 1319 | " in text and "exact McNemar | failed |" in text
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary(report) is None
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    append_step_summary(report)
    written = summary.read_text()
    assert written.startswith("earlier step\n## distill eval: gsm8k")
    assert "| label | backend | pass@1 |" in written and "**failed**" in written and "- failed: row 'q4'" in written
    assert "![x.png]" not in written  # the summary page cannot show the run's files


def test_a_baseline_measured_with_other_settings_is_flagged(tmp_path):
    report = _baseline(tmp_path / "old", "q4", [True, False])
    data = json.loads(report.read_text())
    report.write_text(json.dumps({**data, "settings": {"max_new_tokens": 256, "temperature": 0.0}}))
    gates = check_gates([_row("q4", [True, False])], _cfg(baseline=str(report), max_drop=0.1, max_new_tokens=128,
                                                          temperature=0.0), _samples("q4", [True, False]))
    assert gates["failed"] == [] and gates["warnings"] == [
        f"baseline: {report} was measured with other settings (max_new_tokens 256 there, 128 here): the drop "
        "compares two protocols, not only two models"]


def test_the_prompt_is_compared_row_by_row(tmp_path):
    """Without --prompt-template each model is asked as it was trained: the run-wide setting is
    None, and each row's template is compared with the baseline row's (or an older baseline's
    run-wide one)."""
    report = _baseline(tmp_path / "old", "q4", [True, False])
    data = json.loads(report.read_text())
    report.write_text(json.dumps({**data, "settings": {"prompt_template": "r1"}}))
    row = {**_row("q4", [True, False]), "prompt_template": "r1"}
    cfg = _cfg(baseline=str(report), max_drop=0.1, prompt_template=None)
    assert check_gates([row], cfg, _samples("q4", [True, False]))["warnings"] == []
    plain = {**row, "prompt_template": "plain"}
    (warning,) = check_gates([plain], cfg, _samples("q4", [True, False]))["warnings"]
    assert "row 'q4': prompt_template 'r1' there, 'plain' here" in warning
    data["results"][0]["prompt_template"] = "plain"  # a newer baseline: its row's own template
    report.write_text(json.dumps({**data, "settings": {"prompt_template": None}}))
    assert check_gates([plain], cfg, _samples("q4", [True, False]))["warnings"] == []
