"""report.json (parsed by CI jobs: its keys are stable), report.md (the same table for people) and
the rich table printed at the end of a run."""

from __future__ import annotations

import os
from pathlib import Path

from distill.core.io import write_json, write_text

SCHEMA_VERSION = 1

# Every row carries every key, in this order; figures that were not measured are null.
RESULT_KEYS = (
    "label", "model", "backend", "benchmark", "think_budget", "n_problems", "samples_per_problem",
    "n_samples", "pass_at_1", "pass_at_k", "maj_at_k", "format_valid_rate", "truncation_rate", "loop_rate",
    "think_unclosed_rate", "answer_in_think_rate", "mean_response_tokens", "n_errors", "prompt_tokens_per_s",
    "decode_tokens_per_s", "ttft_s", "peak_rss_bytes", "size_bytes", "threads", "mean_kld", "top1_agreement",
    "perplexity", "prompt_template", "think",
)

# (header, key, format) of the table; columns whose figures are all missing are left out.
COLUMNS = (
    ("label", "label", "{}"), ("backend", "backend", "{}"), ("budget", "think_budget", "{}"),
    ("pass@1", "pass_at_1", "{:.1%}"), ("pass@k", "pass_at_k", "passk"), ("maj@k", "maj_at_k", "{:.1%}"),
    ("format ok", "format_valid_rate", "{:.0%}"), ("truncated", "truncation_rate", "{:.0%}"),
    ("loops", "loop_rate", "{:.0%}"), ("think unclosed", "think_unclosed_rate", "{:.0%}"),
    ("answer in think", "answer_in_think_rate", "{:.0%}"),
    ("tokens", "mean_response_tokens", "{:.0f}"), ("decode tok/s", "decode_tokens_per_s", "{:.1f}"),
    ("prompt tok/s", "prompt_tokens_per_s", "{:.0f}"), ("TTFT s", "ttft_s", "{:.2f}"),
    ("peak RSS MB", "peak_rss_bytes", "mb"), ("size MB", "size_bytes", "mb"), ("threads", "threads", "{}"),
    ("KL", "mean_kld", "{:.4f}"), ("top-1", "top1_agreement", "{:.1%}"), ("ppl", "perplexity", "{:.2f}"),
)


def result_row(**figures) -> dict:
    return {key: figures.get(key) for key in RESULT_KEYS}


def _cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "mb":
        return f"{value / 1e6:.1f}"
    if fmt == "passk":  # the largest k measured
        k = max(value, key=int)
        return "–" if value[k] is None else f"@{k} {value[k]:.1%}"
    return fmt.format(value)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in COLUMNS if c[0] == "label" or any(r.get(c[1]) is not None for r in rows)]
    return [c[0] for c in columns], [[_cell(r.get(key), fmt) for _, key, fmt in columns] for r in rows]


def comparison(results: list[dict]) -> list[dict]:
    """Every row against the first one (in the demo: the student and its exports against the
    teacher): pass@1 as a ratio and in points, size and single-stream decode speed as ratios.
    Budget-forced rows are left out; a figure missing on either side gives null."""
    rows = [r for r in results if r.get("think_budget") is None]
    if len(rows) < 2:
        return []

    def ratio(row: dict, base: dict, key: str):
        a, b = row.get(key), base.get(key)
        return round(a / b, 3) if a is not None and b else None

    base = rows[0]
    out = []
    for row in rows[1:]:
        points = None
        if row.get("pass_at_1") is not None and base.get("pass_at_1") is not None:
            points = round(100 * (row["pass_at_1"] - base["pass_at_1"]), 1)
        out.append({"label": row["label"], "against": base["label"],
                    "pass_at_1_ratio": ratio(row, base, "pass_at_1"), "pass_at_1_points": points,
                    "size_ratio": ratio(row, base, "size_bytes"),
                    "decode_speed_ratio": ratio(row, base, "decode_tokens_per_s")})
    return out


def comparison_lines(report: dict) -> list[str]:
    lines = []
    for c in report.get("comparison") or []:
        parts = []
        if c["pass_at_1_ratio"] is not None:
            parts.append(f"pass@1 {c['pass_at_1_ratio']:.2f}x ({c['pass_at_1_points']:+.1f} points)")
        if c["size_ratio"] is not None:
            parts.append(f"size {c['size_ratio']:.2f}x")
        if c["decode_speed_ratio"] is not None:
            parts.append(f"decode speed {c['decode_speed_ratio']:.2f}x")
        if parts:
            lines.append(f"{c['label']} against {c['against']}: " + ", ".join(parts))
    return lines


def write_reports(out: Path, report: dict) -> list[Path]:
    json_path = write_json(out / "report.json", report)
    md_path = write_text(out / "report.md", markdown(report))
    return [json_path, md_path]


def markdown(report: dict, plots: bool = True) -> str:
    headers, cells = table(report["results"])
    bench = report["benchmark"]
    settings = report["settings"]
    lines = [
        f"# distill eval: {bench['name']}", "",
        f"{bench['n_problems']} problems from `{bench['source']}`, {settings['samples']} sample(s) each, "
        f"temperature {settings['temperature']}, top-p {settings['top_p']}, "
        f"prompt template `{settings['prompt_template']}`.", "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
        *("| " + " | ".join(row) + " |" for row in cells), "",
    ]
    against = comparison_lines(report)
    if against:
        lines += [f"- {line}" for line in against] + [""]
    if report.get("reference"):
        ref = report["reference"]
        lines += [f"Fidelity against `{ref['model']}` (perplexity {ref['perplexity']:.2f}) on "
                  f"{ref['tokens']} held-out tokens: mean KL(reference || model) per token and top-1 "
                  "agreement of the next-token distributions.", ""]
    lines += [f"Speed: single-stream greedy probe of {settings['speed_tokens']} tokens. "
              f"Memory: {report['memory_method']}.", ""]
    lines += gate_lines(report.get("gates") or {})
    for plot in report.get("plots", []) if plots else []:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def gate_lines(gates: dict) -> list[str]:
    """The verdicts in Markdown: the overall status, every failure and warning, and the paired
    drop of each row against the baseline with the rule it was judged by."""
    if not gates.get("checked"):
        return []
    status = "failed" if gates["failed"] else "passed"
    lines = [f"Gates ({', '.join(gates['checked'])}): **{status}**", ""]
    notes = [f"- failed: {f}" for f in gates["failed"]] + [f"- warning: {w}" for w in gates.get("warnings", [])]
    lines += notes + ([""] if notes else [])
    if gates.get("drop"):
        lines += [f"Drop against the baseline. Rule: {gates['rule']}.", "",
                  "| row | shared problems | baseline | now | drop | 95% interval | p | test | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in gates["drop"]:
            row = d["label"] + (f" @{d['think_budget']}" if d.get("think_budget") else "")
            verdict = d["status"] + (" (warning)" if d["exceeds_max_drop"] and not d["significant"] else "")
            lines.append(f"| {row} | {d['n_problems']} | {d['baseline']:.1%} | {d['current']:.1%} | "
                         f"{d['drop']:+.1%} | {d['low']:+.1%} to {d['high']:+.1%} | {d['p_value']:.3g} | "
                         f"{d['test']} | {verdict} |")
        lines.append("")
    if gates.get("loop_increase"):
        lines += [f"Loop rate against the baseline. Rule: {gates['loop_rule']}.", "",
                  "| row | shared problems | baseline | now | rise | 95% interval | p | test | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in gates["loop_increase"]:
            row = d["label"] + (f" @{d['think_budget']}" if d.get("think_budget") else "")
            lines.append(f"| {row} | {d['n_problems']} | {d['baseline_loop_rate']:.1%} | {d['loop_rate']:.1%} | "
                         f"{d['drop']:+.1%} | {d['low']:+.1%} to {d['high']:+.1%} | {d['p_value']:.3g} | "
                         f"{d['test']} | {d['status']} |")
        lines.append("")
    return lines


def junit_xml(report: dict) -> str:
    """One test case per (row, gate): a failure carries the gate's one-line reason, a skipped
    gate (a figure the row has no value for) says why, a warning goes to system-out. The
    <testsuites>/<testsuite>/<testcase> layout is the one GitHub Actions reporters, GitLab and
    Jenkins read."""
    import xml.etree.ElementTree as ET

    verdicts = (report.get("gates") or {}).get("verdicts", [])
    name = f"distill eval {report['benchmark']['name']}"
    counts = dict(tests=str(len(verdicts)), failures=str(sum(v["status"] == "failed" for v in verdicts)),
                  errors="0", skipped=str(sum(v["status"] == "skipped" for v in verdicts)), time="0")
    root = ET.Element("testsuites", name=name, **counts)
    suite = ET.SubElement(root, "testsuite", name=name, **counts)
    for v in verdicts:
        row = v["label"] + (f"@{v['think_budget']}" if v.get("think_budget") else "")
        case = ET.SubElement(suite, "testcase", classname=f"distill-eval.{report['benchmark']['name']}.{row}",
                             name=v["gate"], time="0")
        if v["status"] == "failed":
            ET.SubElement(case, "failure", message=v["message"], type=v["gate"]).text = v["message"]
        elif v["status"] == "skipped":
            ET.SubElement(case, "skipped", message=v["message"])
        ET.SubElement(case, "system-out").text = f"warning: {v['warning']}" if v["warning"] else v["message"]
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, report: dict) -> Path:
    return write_text(path, junit_xml(report))


def append_step_summary(report: dict) -> Path | None:
    """GitHub Actions shows the Markdown a step appends to $GITHUB_STEP_SUMMARY on the run's page:
    the table and the gate verdicts (plots are files of the run, which the page cannot show)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(markdown(report, plots=False).replace("# distill eval", "## distill eval", 1) + "\n")
    return Path(target)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    headers, cells = table(report["results"])
    t = Table(title=f"distill eval: {report['benchmark']['name']} "
                    f"({report['benchmark']['n_problems']} problems)")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in cells:
        t.add_row(*row)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough that no figure gets cut
        console = Console(width=max(120, 16 * len(headers)))
    console.print(t)
    for line in comparison_lines(report):
        console.print(line, highlight=False)
