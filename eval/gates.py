"""CI gates: --min-accuracy, --baseline OLD/report.json with --max-drop, --max-kld, --max-loop-rate.

Every (row, gate) gets a verdict (passed, failed or skipped, with a one-sentence message naming
the row and the figure); the report, the JUnit file and the job summary are written from them,
then the stage raises GateFailed (exit 3) when any failed.

The drop gate pairs the two runs over the problems both scored (this run's samples and the
samples.jsonl beside the baseline's report.json) and fails only when the drop exceeds --max-drop
AND a paired test (eval/paired.py) finds it significant at the 5% level: a 30-problem run does
not fail on noise, and a 1,319-problem run does not pass a real drop. A drop beyond --max-drop
that is not significant passes with a warning that says how many problems would tell it from
noise.

--max-loop-rate X: without a baseline, a ceiling on each row's loop rate (eval/failures.py). With
--baseline, the same rule as the drop gate turned around: a row fails when its loop rate rose over
the baseline's same label by more than X and the paired test (on each problem's share of looping
samples) finds the rise significant at 5%."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from distill.core.errors import UserError
from distill.core.io import read_json, read_jsonl

from .failures import sample_loops
from .paired import ALPHA, paired_drop

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# settings that change what a response is, so a baseline measured otherwise is flagged
PROTOCOL = ("samples", "temperature", "top_p", "max_new_tokens", "seed", "answer_tokens", "prompt_template")


def drop_rule(max_drop: float) -> str:
    return (f"fail when the pass@1 drop over the problems both runs share exceeds --max-drop {max_drop} "
            f"and a paired two-sided test finds it significant at the {ALPHA:.0%} level (exact McNemar "
            "with one sample per problem, paired bootstrap over problems with several); a larger drop "
            "that is not significant passes with a warning")


def _name(row: dict) -> str:
    budget = f" at think budget {row['think_budget']}" if row.get("think_budget") else ""
    return f"row '{row['label']}'{budget}"


def _key(row: dict) -> tuple:
    return row["label"], row.get("think_budget")


def _paired(cfg, row: dict, baseline: dict, current: dict):
    """The paired test of one row against the baseline's same label, on the problems both share."""
    paired = paired_drop(baseline.get(_key(row), {}), current.get(_key(row), {}))
    if paired is None:
        raise UserError(f"baseline: {cfg.baseline}: {_name(row)} shares no problem with the baseline's "
                        "samples.jsonl (another benchmark file, or problems of other ids)")
    return paired


def per_problem(samples: list[dict], outcome=lambda s: bool(s.get("correct"))) -> dict[tuple, dict[str, list[bool]]]:
    """(label, think_budget) -> problem id -> the outcome of its samples (by default, correct)."""
    out: dict[tuple, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        out[_key(s)][str(s["problem_id"])].append(outcome(s))
    return out


def no_loop(sample: dict) -> bool:
    """The outcome the loop gate pairs: True for a sample that does not loop, so that a rise in the
    loop rate is a drop of this, as the drop gate measures it."""
    return not sample_loops(sample)


def load_baseline(path: str) -> tuple[dict[tuple, dict], list[dict], dict]:
    """The rows of an earlier report.json keyed by (label, think_budget), its samples
    (samples.jsonl beside it) and its settings."""
    report = read_json(Path(path))
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) and "label" in r for r in results):
        raise UserError(f"baseline: {path}: not a report.json of `distill eval` (no 'results' rows with labels)")
    samples_path = Path(path).parent / "samples.jsonl"
    if not samples_path.is_file():
        raise UserError(f"baseline: {samples_path}: no such file (the drop gate pairs the problems of "
                        "both runs: keep the baseline's samples.jsonl beside its report.json)")
    samples = read_jsonl(samples_path)
    for number, s in enumerate(samples, start=1):
        if not {"label", "problem_id", "correct"} <= s.keys():
            raise UserError(f"baseline: {samples_path}: line {number}: not a sample of `distill eval` "
                            "(needs label, problem_id and correct)")
    settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
    return {_key(r): r for r in results}, samples, settings


def check_gates(rows: list[dict], cfg, samples: list[dict] | None = None) -> dict:
    """The gates section of the report: checked (the gates, as text), verdicts (one per row and
    gate), failed and warnings (their one-line messages), and with --baseline the rule and the
    paired drop of every row."""
    checked: list[str] = []
    verdicts: list[dict] = []

    def verdict(row: dict, gate: str, status: str, message: str, warning: str | None = None) -> None:
        verdicts.append({"label": row["label"], "think_budget": row.get("think_budget"), "gate": gate,
                         "status": status, "message": message, "warning": warning})

    if cfg.min_accuracy is not None:
        checked.append(f"min_accuracy {cfg.min_accuracy}")
        for row in rows:
            figure = f"{_name(row)}: pass_at_1 {_fmt(row['pass_at_1'])}"
            if row["pass_at_1"] is None or row["pass_at_1"] < cfg.min_accuracy:
                verdict(row, "min_accuracy", FAILED, f"{figure} is below --min-accuracy {cfg.min_accuracy}")
            else:
                verdict(row, "min_accuracy", PASSED, f"{figure} is at least --min-accuracy {cfg.min_accuracy}")
    drops, loops, notes = None, None, []
    if cfg.baseline is not None and cfg.max_drop is not None:
        checked.append(f"max_drop {cfg.max_drop} against {cfg.baseline}")
        drops, notes = _drop_gate(rows, cfg, per_problem(samples or []), verdict)
    max_loop_rate = getattr(cfg, "max_loop_rate", None)
    if max_loop_rate is not None:
        against = f" against {cfg.baseline}" if cfg.baseline else ""
        checked.append(f"max_loop_rate {max_loop_rate}{against}")
        if cfg.baseline:
            loops = _loop_gate(rows, cfg, per_problem(samples or [], no_loop), verdict)
        else:
            for row in rows:
                figure = f"{_name(row)}: loop_rate {_fmt(row.get('loop_rate'))}"
                if row.get("loop_rate") is None:
                    verdict(row, "max_loop_rate", SKIPPED, f"{figure}: no samples")
                elif row["loop_rate"] > max_loop_rate + 1e-12:
                    verdict(row, "max_loop_rate", FAILED, f"{figure} is above --max-loop-rate {max_loop_rate}")
                else:
                    verdict(row, "max_loop_rate", PASSED, f"{figure} is at most --max-loop-rate {max_loop_rate}")
    if cfg.max_kld is not None:
        checked.append(f"max_kld {cfg.max_kld}")
        for row in rows:
            if row.get("mean_kld") is None:
                verdict(row, "max_kld", SKIPPED, f"{_name(row)}: mean_kld not measured "
                        f"({row.get('backend')} backend)")
            elif row["mean_kld"] > cfg.max_kld:
                verdict(row, "max_kld", FAILED, f"{_name(row)}: mean_kld {row['mean_kld']:.4g} is above "
                        f"--max-kld {cfg.max_kld}")
            else:
                verdict(row, "max_kld", PASSED, f"{_name(row)}: mean_kld {row['mean_kld']:.4g} is at most "
                        f"--max-kld {cfg.max_kld}")
    gates = {"checked": checked, "verdicts": verdicts,
             "failed": [v["message"] for v in verdicts if v["status"] == FAILED],
             "warnings": notes + [v["warning"] for v in verdicts if v["warning"]]}
    if drops is not None:
        gates.update(rule=drop_rule(cfg.max_drop), drop=drops)
    if loops is not None:
        gates.update(loop_rule=loop_rule(max_loop_rate), loop_increase=loops)
    return gates


def loop_rule(max_loop_rate: float) -> str:
    return (f"fail when the loop rate over the problems both runs share rose by more than --max-loop-rate "
            f"{max_loop_rate} and a paired two-sided test finds the rise significant at the {ALPHA:.0%} level "
            "(as the drop gate: exact McNemar with one sample per problem, paired bootstrap with several)")


def _loop_gate(rows: list[dict], cfg, current: dict, verdict) -> list[dict]:
    """The loop rate against the baseline's same label: the drop gate's pairing and test on each
    problem's non-looping samples (a drop of those is a rise of the loop rate)."""
    baseline_rows, samples, _ = load_baseline(cfg.baseline)
    baseline = per_problem(samples, no_loop)
    limit, out = cfg.max_loop_rate, []
    for row in rows:
        if _key(row) not in baseline_rows:
            verdict(row, "max_loop_rate", SKIPPED, f"{_name(row)}: no row of this label in the baseline")
            continue
        paired = _paired(cfg, row, baseline, current)
        figures = (f"loop_rate rose {paired.drop:+.4f} ({1 - paired.baseline:.4f} -> {1 - paired.current:.4f} on "
                   f"{paired.n_problems} shared problems; 95% interval {paired.low:+.4f} to {paired.high:+.4f}, "
                   f"{paired.test} p = {paired.p_value:.3g})")
        exceeds, significant = paired.drop > limit + 1e-12, paired.p_value < ALPHA
        status = FAILED if exceeds and significant else PASSED
        how = ("more than --max-loop-rate and significant at 5%" if status == FAILED else
               "more than --max-loop-rate but not significant at 5%" if exceeds else "within --max-loop-rate")
        message = f"{_name(row)}: {figures}, {how} {limit}" if status == FAILED or not exceeds else \
            f"{_name(row)}: {figures}, {how}"
        verdict(row, "max_loop_rate", status, message,
                f"{message}: about {paired.needed_problems} problems would find a rise this size (80% power); passed"
                if exceeds and not significant else None)
        out.append({"label": row["label"], "think_budget": row.get("think_budget"), **paired.as_dict(),
                    "baseline_loop_rate": 1 - paired.baseline, "loop_rate": 1 - paired.current,
                    "exceeds_max_loop_rate": exceeds, "significant": significant, "status": status})
    return out


def _drop_gate(rows: list[dict], cfg, current: dict, verdict) -> tuple[list[dict], list[str]]:
    baseline_rows, samples, settings = load_baseline(cfg.baseline)
    baseline = per_problem(samples)
    # The prompt is compared row by row: without --prompt-template each model is asked as it was
    # trained (recorded), so the run-wide setting is None (an older report's rows lack the field:
    # its run-wide setting was every row's template).
    differ = [f"{k} {settings[k]!r} there, {getattr(cfg, k)!r} here" for k in PROTOCOL
              if k in settings and hasattr(cfg, k) and settings[k] != getattr(cfg, k)
              and not (k == "prompt_template" and getattr(cfg, k) is None)]
    for row in rows:
        old = baseline_rows.get(_key(row)) or {}
        there = old.get("prompt_template", settings.get("prompt_template"))
        if getattr(cfg, "prompt_template", None) is None and there is not None \
                and row.get("prompt_template") not in (None, there):
            differ.append(f"{_name(row)}: prompt_template {there!r} there, {row['prompt_template']!r} here")
    notes = [f"baseline: {cfg.baseline} was measured with other settings ({'; '.join(differ)}): the drop "
             "compares two protocols, not only two models"] if differ else []
    drops, matched = [], 0
    for row in rows:
        old = baseline_rows.get(_key(row))
        if old is None:
            verdict(row, "max_drop", SKIPPED, f"{_name(row)}: no row of this label in the baseline")
            continue
        if old.get("benchmark") not in (None, row["benchmark"]):
            raise UserError(f"baseline: {cfg.baseline}: row '{row['label']}' was measured on "
                            f"'{old.get('benchmark')}', this run on '{row['benchmark']}'")
        matched += 1
        paired = _paired(cfg, row, baseline, current)
        figures = (f"pass_at_1 dropped {paired.drop:.4f} ({paired.baseline:.4f} -> {paired.current:.4f} on "
                   f"{paired.n_problems} shared problems; 95% interval {paired.low:+.4f} to {paired.high:+.4f}, "
                   f"{paired.test} p = {paired.p_value:.3g})")
        exceeds = paired.drop > cfg.max_drop + 1e-12
        significant = paired.p_value < ALPHA
        if exceeds and significant:
            status, warning = FAILED, None
            message = f"{_name(row)}: {figures}, more than --max-drop {cfg.max_drop} and significant at 5%"
        elif exceeds:
            status = PASSED
            message = (f"{_name(row)}: {figures}, more than --max-drop {cfg.max_drop} but not significant "
                       f"at 5%")
            warning = (f"{message}: about {paired.needed_problems} problems would find a drop this size "
                       "(80% power); passed")
        else:
            status, warning = PASSED, None
            message = f"{_name(row)}: {figures}, within --max-drop {cfg.max_drop}"
        verdict(row, "max_drop", status, message, warning)
        drops.append({"label": row["label"], "think_budget": row.get("think_budget"), **paired.as_dict(),
                      "exceeds_max_drop": exceeds, "significant": significant, "status": status})
    if not matched:
        raise UserError(f"baseline: {cfg.baseline}: no row has a label of this run "
                        f"({', '.join(sorted({r['label'] for r in rows}))})")
    return drops, notes


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
