"""The finished products, rebuilt from samples.jsonl at the end of every run: the `traces/`
dataset of kept samples, `pass_rates.jsonl` (one line per prompt), `summary.json` and a PNG of
the pass rates and drop reasons. Each is written atomically, so a kill leaves the previous
version or none, and samples.jsonl stays the single source of truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from distill.core.io import atomic_path, write_json
from distill.core.traces import write_traces

from .filters import REASONS, Deduplicator, FilterSettings, decide_prompt

def decide_all(rows: list[dict], settings: FilterSettings) -> list[dict]:
    """Re-decide every row in canonical order (prompts in first-seen order, samples by index), so
    the verdicts do not depend on the order in which concurrent requests came back."""
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    dedup = Deduplicator(settings.near_duplicate)
    for prompt_rows in by_prompt.values():
        decide_prompt(prompt_rows, settings, dedup)
    return rows


def decide_and_save(samples_path: Path, all_rows: list[dict], rows: list[dict],
                    settings: FilterSettings) -> None:
    """Decide `rows` (the current job's part of `all_rows`) and, when a verdict differs from the
    one written on arrival, rewrite samples.jsonl atomically so that it agrees with traces/."""
    verdict = lambda r: (r.get("kept"), r.get("drop_reason"), r.get("pass_rate"))  # noqa: E731
    before = [verdict(r) for r in rows]
    decide_all(rows, settings)
    if before != [verdict(r) for r in rows] or not samples_path.exists():
        write_jsonl(samples_path, all_rows)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


def prompt_stats(rows: list[dict]) -> list[dict]:
    stats: dict[str, dict] = {}
    for row in rows:
        s = stats.setdefault(row["prompt_id"], {"prompt_id": row["prompt_id"], "samples": 0,
                                                "verified": 0, "kept": 0})
        s["samples"] += 1
        s["verified"] += bool(row["verified"])
        s["kept"] += bool(row["kept"])
    for s in stats.values():
        s["pass_rate"] = s["verified"] / s["samples"]
    return list(stats.values())


def write_pass_rates(stats: list[dict], out_dir: Path) -> Path:
    return write_jsonl(out_dir / "pass_rates.jsonl", stats)


def summarize(rows: list[dict], stats: list[dict], *, prompts: int, teacher: str, sampling: dict,
              failures: list[str], ignored_rows: int) -> dict:
    tokens = sum(r["completion_tokens"] for r in rows)
    seconds = sum(r.get("gen_wall_s") or 0.0 for r in rows)
    dropped = Counter(r["drop_reason"] for r in rows if not r["kept"])
    histogram = Counter(round(s["pass_rate"], 2) for s in stats)
    return {
        "teacher": teacher,
        "sampling": sampling,
        "prompts": prompts,
        "prompts_done": len(stats),
        "samples": len(rows),
        "kept": sum(bool(r["kept"]) for r in rows),
        "dropped": {reason: dropped[reason] for reason in REASONS if dropped[reason]},
        "verified": sum(bool(r["verified"]) for r in rows),
        "pass_at_1": sum(bool(r["verified"]) for r in rows) / len(rows) if rows else 0.0,
        "prompts_solved": sum(s["verified"] > 0 for s in stats),
        "pass_rate_histogram": {f"{k:.2f}": v for k, v in sorted(histogram.items())},
        "finish_reasons": dict(Counter(r["finish_reason"] for r in rows)),
        "tokens_generated": tokens,
        "mean_completion_tokens": tokens / len(rows) if rows else 0.0,
        "generation_seconds": round(seconds, 3),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "failed_requests": len(failures),
        "failures": failures[:20],
        "ignored_rows": ignored_rows,
        "complete": not failures and len(stats) == prompts,
    }


def plot_summary(summary: dict, stats: list[dict], out_dir: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.hist([s["pass_rate"] for s in stats], bins=[i / 10 for i in range(11)], color="#4c72b0",
              edgecolor="white")
    left.set(title=f"Teacher pass rate per prompt (pass@1 {summary['pass_at_1']:.2f})",
             xlabel="fraction of samples verified", ylabel="prompts")
    labels = ["kept", *summary["dropped"]]
    counts = [summary["kept"], *summary["dropped"].values()]
    right.barh(labels[::-1], counts[::-1], color=["#c44e52"] * (len(labels) - 1) + ["#55a868"])
    right.set(title=f"{summary['samples']} samples", xlabel="samples")
    fig.tight_layout()
    target = out_dir / "summary.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target


def logprobs_meta(rows: list[dict], out_dir: Path) -> dict | None:
    """K and the teacher's vocabulary probe of a --logprobs run (OUT/teacher_logprobs.json)."""
    from distill.core.io import read_json
    from distill.core.teacher_logprobs import META_FILE
    if not (out_dir / META_FILE).is_file() or not any(r.get("teacher_logprobs") for r in rows):
        return None
    return read_json(out_dir / META_FILE)


def write_outputs(rows: list[dict], out_dir: Path, extra: dict | None = None,
                  **summary_fields) -> tuple[dict, list[Path]]:
    stats = prompt_stats(rows)
    summary = {**summarize(rows, stats, **summary_fields), **(extra or {})}
    meta = logprobs_meta(rows, out_dir)
    if meta is not None:
        from distill.core.teacher_logprobs import TokenLogprobs
        tokens = sum(len(TokenLogprobs.unpack(r["teacher_logprobs"]).token_ids) for r in rows if r["kept"])
        summary["logprobs"] = {"k": meta["k"], "bytes_per_token": meta["bytes_per_token"], "kept_tokens": tokens}
    paths = [write_traces(rows, out_dir, meta), write_pass_rates(stats, out_dir)]
    paths.append(write_json(out_dir / "summary.json", summary))
    paths.append(plot_summary(summary, stats, out_dir))
    return summary, paths
