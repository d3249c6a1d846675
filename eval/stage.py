"""`distill eval`: accuracy, fidelity and speed of every model and artifact on the runtime that
will run it, in one comparable table, with CI gates.

For each model: probe its single-stream speed and memory in a fresh process, load it once to
generate the responses of every row (the model at each thinking budget) with the same prompts,
sampling and answer extraction as every other backend, and measure its fidelity to --reference.
Then write samples.jsonl, report.json, report.md and the plots, print the table and apply the
gates (with --junit a JUnit XML file, and a job summary when GITHUB_STEP_SUMMARY is set). A run
killed at any point resumes from samples.jsonl.partial and measurements.partial.json."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from distill.backends.recorded import recorded_prompt
from distill.core import progress
from distill.core.chat import load_prompt_template, template_name, user_message
from distill.core.errors import GateFailed
from distill.core.progress import info
from distill.core.records import StageRecord

from .benchmarks import heldout_text, load_benchmark
from .fidelity import load_reference, measure_fidelity
from .gates import check_gates, load_baseline
from .measurements import MeasurementCache, measurement_key
from .models import backend_options, load_model, quiet_libraries, resolve_models
from .plots import BUDGET_PNG, TRADEOFF_PNG, plot_budget, plot_tradeoff
from .probe import probe_in_subprocess
from .report import (SCHEMA_VERSION, append_step_summary, comparison, print_table, result_row, write_junit,
                     write_reports)
from .samples import Row, SampleStore, generate_row, row_key
from .scoring import summarize
from .speed import MEMORY_METHOD, probe_speed, size_on_disk, threads_used


def run(config) -> dict:
    config.check_complete()
    out = Path(config.out)
    if progress.QUIET:
        quiet_libraries()
    if config.samples > 1 and config.temperature == 0:
        info("[yellow]--samples > 1 with --temperature 0: every sample is the same greedy response "
             "(the R1 protocol samples at 0.6 with top-p 0.95)[/]")
    with StageRecord("eval", config, out) as rec:
        # prepare: the models, the benchmark and the rows (a model at each thinking budget)
        template = load_prompt_template(config.prompt_template or "r1")
        models = resolve_models(config)
        benchmark = load_benchmark(config)
        if config.baseline:
            load_baseline(config.baseline)  # a wrong file fails now, not after the generation
        rows = plan_rows(config, models, benchmark.name, template)
        keys = [r.key for model_rows in rows.values() for r in model_rows]
        store = SampleStore(out, set(keys))
        measured = MeasurementCache(out / "measurements.partial.json")
        # produce: every model's responses and figures (resumable)
        reference: dict = {}
        try:
            results = [row for label, spec, kind, target in models
                       for row in evaluate(config, label, spec, kind, target, rows[label], benchmark, template,
                                           store, measured, reference)]
        finally:
            store.close()
        # save: samples, plots, report, gates
        samples_path = store.finish(keys)
        plots = write_plots(results, out)
        gates = check_gates(results, config, list(store.rows.values()))
        report = build_report(config, benchmark, measured, results, gates, plots)
        written = write_reports(out, report)
        if config.junit:
            written.append(write_junit(Path(config.junit), report))
        append_step_summary(report)
        measured.discard()
        print_table(report)
        for warning in gates["warnings"]:  # shown even with --quiet, on one line: CI logs grep for it
            progress.console.print(f"[yellow]warning: {escape(warning)}[/]", highlight=False, soft_wrap=True)
        rec.outputs = [samples_path, *written, *plots]
        rec.result = {"results": results, "gates_failed": gates["failed"]}
        if gates["failed"]:
            raise GateFailed("; ".join(gates["failed"]))
    return {"report": str(out / "report.json"), "results": results}


def plan_rows(config, models: list[tuple], benchmark: str, template: str) -> dict[str, list[Row]]:
    """label -> the rows of that model, one per thinking budget, each with its resume key and the
    way the model is asked: --prompt-template / --no-think, else what the model was trained with
    (recorded by train, carried by export), else `template` (r1) with a think block."""
    budgets = sorted(config.think_budget) or [None]
    rows = {}
    for label, spec, kind, target in models:
        recorded = recorded_prompt(spec) if config.prompt_template is None or config.think is None else None
        asked = load_prompt_template(config.prompt_template) if config.prompt_template else \
            recorded["prompt_template"] if recorded else template
        think = config.think if config.think is not None else bool(recorded.get("think", True)) if recorded else True
        rows[label] = [Row(label, spec, kind, target, b, template=asked, think=think) for b in budgets]
        for row in rows[label]:
            row.key = row_key(row, config, benchmark, asked)
    return rows


def evaluate(config, label: str, spec: str, kind: str, target: str, rows: list[Row], benchmark, template: str,
             store: SampleStore, measured: MeasurementCache, reference: dict) -> list[dict]:
    """The report rows of one model: its missing responses generated, its figures measured (or
    taken from an interrupted run), its fidelity to --reference (loaded into `reference` once, for
    every model of the run)."""
    info(f"[bold]{label}[/] ({spec})")
    figures = measured.get(label, measurement_key(spec, config))
    missing = [r for r in rows if not row_complete(store, r, benchmark.problems, config)]
    if missing or figures is None:
        figures = evaluate_model(config, rows, missing, benchmark, template, store, figures)
    if config.reference and kind != "openai" and "mean_kld" not in figures:
        if "logits" not in reference:
            info(f"reference {config.reference}: scoring the held-out text")
            reference["logits"] = load_reference(config.reference, heldout_text(config, benchmark), config)
            measured.put_reference(config.reference, reference["logits"].perplexity, reference["logits"].tokens)
        figures.update(measure_fidelity(kind, target, reference["logits"], config))
    measured.put(label, measurement_key(spec, config), figures)
    return [result_row(label=label, model=spec, backend=kind, benchmark=benchmark.name, think_budget=row.budget,
                       samples_per_problem=config.samples, **summarize(store.of_row(row.key), config.samples),
                       prompt_template=template_name(row.template), think=row.think, **figures) for row in rows]


def write_plots(results: list[dict], out: Path) -> list[Path]:
    plots = [p for p in (plot_tradeoff(results, out / TRADEOFF_PNG), plot_budget(results, out / BUDGET_PNG)) if p]
    for stale in {out / TRADEOFF_PNG, out / BUDGET_PNG} - set(plots):
        stale.unlink(missing_ok=True)
    return plots


def build_report(config, benchmark, measured: MeasurementCache, results: list[dict], gates: dict,
                 plots: list[Path]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": {"name": benchmark.name, "source": benchmark.source, "n_problems": len(benchmark.problems)},
        "settings": {k: getattr(config, k) for k in ("samples", "temperature", "top_p", "max_new_tokens", "seed",
                                                     "think_budget", "answer_tokens", "prompt_template",
                                                     "speed_tokens", "batch_size", "concurrency")},
        "reference": measured.reference if config.reference else None,
        "memory_method": MEMORY_METHOD,
        "results": results,
        "comparison": comparison(results),
        "gates": gates,
        "plots": [p.name for p in plots],
    }


def evaluate_model(config, rows: list[Row], missing: list[Row], benchmark, template: str,
                   store: SampleStore, cached: dict | None) -> dict:
    """Speed and memory (a local model in a fresh process; unless cached from an interrupted run),
    then the model loaded here once for the responses of every row still missing some."""
    first = rows[0]
    user_text = user_message(benchmark.problems[0]["question"], first.template or template)
    figures = dict(cached) if cached is not None else {
        "size_bytes": size_on_disk(first.kind, first.target), "peak_rss_bytes": None, "threads": None}
    if cached is None and config.speed_tokens and first.kind != "openai":
        info(f"  speed probe: {config.speed_tokens} tokens, single stream, in a fresh process")
        figures.update(probe_in_subprocess(first.spec, backend_options(first.kind, config), user_text,
                                           config.speed_tokens))
    remote_probe = cached is None and config.speed_tokens and first.kind == "openai"
    if not missing and not remote_probe:  # a finished run asked again: nothing to load
        if figures["threads"] is None:
            figures["threads"] = threads_used(None, first.kind, config.threads)
        return figures
    backend = load_model(first.spec, first.kind, config)
    try:
        if remote_probe:
            figures.update(probe_speed(backend, backend.render(user_text), config.speed_tokens))
        if figures["threads"] is None:
            figures["threads"] = threads_used(backend, first.kind, config.threads)
        for row in missing:
            generate_row(backend, row, benchmark.name, benchmark.problems, row.template or template, config, store)
    finally:
        backend.close()
    return figures


def row_complete(store: SampleStore, row: Row, problems: list[dict], config) -> bool:
    return all(store.have(row.key, p["id"], j) for p in problems for j in range(config.samples))
