"""CI gates: --min-accuracy, --baseline OLD_report.json with --max-drop, --max-kld. Each failure
is one sentence naming the row and the figure; the stage raises GateFailed (exit 3) after the
report has been written."""

from __future__ import annotations

from pathlib import Path

from distill.core.errors import UserError
from distill.core.io import read_json


def _name(row: dict) -> str:
    budget = f" at think budget {row['think_budget']}" if row.get("think_budget") else ""
    return f"row '{row['label']}'{budget}"


def load_baseline(path: str) -> dict[tuple, dict]:
    """The rows of an earlier report.json keyed by (label, think_budget)."""
    report = read_json(Path(path))
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) and "label" in r for r in results):
        raise UserError(f"baseline: {path}: not a report.json of `distill eval` (no 'results' rows with labels)")
    return {(r["label"], r.get("think_budget")): r for r in results}


def check_gates(rows: list[dict], cfg) -> tuple[list[str], list[str]]:
    """(gates checked, failures) for the rows of this run."""
    checked, failures = [], []
    if cfg.min_accuracy is not None:
        checked.append(f"min_accuracy {cfg.min_accuracy}")
        for row in rows:
            if row["pass_at_1"] is None or row["pass_at_1"] < cfg.min_accuracy:
                failures.append(f"{_name(row)}: pass_at_1 {_fmt(row['pass_at_1'])} is below "
                                f"--min-accuracy {cfg.min_accuracy}")
    if cfg.baseline is not None:
        baseline = load_baseline(cfg.baseline)
        checked.append(f"max_drop {cfg.max_drop} against {cfg.baseline}")
        matched = 0
        for row in rows:
            old = baseline.get((row["label"], row.get("think_budget")))
            if old is None or old.get("pass_at_1") is None:
                continue
            if old.get("benchmark") not in (None, row["benchmark"]):
                raise UserError(f"baseline: {cfg.baseline}: row '{row['label']}' was measured on "
                                f"'{old.get('benchmark')}', this run on '{row['benchmark']}'")
            matched += 1
            drop = old["pass_at_1"] - (row["pass_at_1"] or 0.0)
            if drop > cfg.max_drop + 1e-12:
                failures.append(f"{_name(row)}: pass_at_1 dropped {drop:.4f} "
                                f"({_fmt(old['pass_at_1'])} -> {_fmt(row['pass_at_1'])}), more than "
                                f"--max-drop {cfg.max_drop}")
        if not matched:
            raise UserError(f"baseline: {cfg.baseline}: no row has a label of this run "
                            f"({', '.join(sorted({r['label'] for r in rows}))})")
    if cfg.max_kld is not None:
        checked.append(f"max_kld {cfg.max_kld}")
        for row in rows:
            if row.get("mean_kld") is not None and row["mean_kld"] > cfg.max_kld:
                failures.append(f"{_name(row)}: mean_kld {row['mean_kld']:.4g} is above "
                                f"--max-kld {cfg.max_kld}")
    return checked, failures


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
