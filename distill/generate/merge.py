"""`generate --merge`: combine the shard folders `OUT/shard-I-of-N` written by `--shard I/N` into
one samples.jsonl, traces/ and summary.json in OUT. Every shard must be present and complete, and
all must come from the same teacher and sampling settings; duplicates across shards are found
because the filters run again over the merged rows."""

from __future__ import annotations

import re
from pathlib import Path

from distill.core.errors import UserError
from distill.core.io import read_json, read_jsonl
from distill.core.progress import info
from distill.core.records import StageRecord

from .outputs import decide_all, write_jsonl, write_outputs
from .settings import filter_settings

_SHARD = re.compile(r"shard-(\d+)-of-(\d+)")


def find_shards(out: Path) -> list[Path]:
    found = {}
    for path in out.glob("shard-*-of-*"):
        m = _SHARD.fullmatch(path.name)
        if m and path.is_dir():
            found[(int(m.group(2)), int(m.group(1)))] = path
    if not found:
        raise UserError(f"out: {out}: no shard folders (shard-I-of-N) to merge; run generate "
                        "with --shard I/N first")
    counts = {n for n, _ in found}
    if len(counts) > 1:
        raise UserError(f"out: {out}: shard folders of different splits ({', '.join(f'of-{n}' for n in sorted(counts))})")
    (count,) = counts
    missing = [i for i in range(count) if (count, i) not in found]
    if missing:
        raise UserError(f"out: {out}: shards {', '.join(f'{i}/{count}' for i in missing)} are missing")
    return [found[(count, i)] for i in range(count)]


def shard_rows(shard: Path) -> tuple[dict, list[dict]]:
    """A shard's summary and the rows of its last run (the prompts listed in pass_rates.jsonl,
    with the summary's teacher and sampling)."""
    summary_path = shard / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{shard}: no summary.json; the shard has not finished (rerun it)")
    summary = read_json(summary_path)
    if not summary.get("complete"):
        raise UserError(f"{summary_path}: the shard is incomplete ({summary.get('prompts_done')} "
                        f"of {summary.get('prompts')} prompts, {summary.get('failed_requests')} "
                        "failed requests); rerun it before merging")
    prompts = {row["prompt_id"] for row in read_jsonl(shard / "pass_rates.jsonl")}
    rows = [r for r in read_jsonl(shard / "samples.jsonl")
            if r["prompt_id"] in prompts and r["teacher"] == summary["teacher"]
            and r["sampling"] == summary["sampling"]]
    return summary, rows


def merge_shards(cfg) -> dict:
    out = Path(cfg.out)
    shards = find_shards(out)
    with StageRecord("generate", cfg, out) as rec:
        summaries, rows, seen = [], [], set()
        for shard in shards:
            summary, shard_samples = shard_rows(shard)
            if summaries and (summary["teacher"], summary["sampling"]) != (
                    summaries[0]["teacher"], summaries[0]["sampling"]):
                raise UserError(f"{shard}: made with another teacher or other sampling settings "
                                f"than {shards[0]}")
            summaries.append(summary)
            for row in shard_samples:
                if row["id"] not in seen:
                    seen.add(row["id"])
                    rows.append(row)
        _merge_logprobs_meta(shards, out)
        decide_all(rows, filter_settings(cfg))
        samples_path = write_jsonl(out / "samples.jsonl", rows)
        summary, paths = write_outputs(rows, out, prompts=sum(s["prompts"] for s in summaries),
                                       teacher=summaries[0]["teacher"],
                                       sampling=summaries[0]["sampling"], failures=[],
                                       ignored_rows=0, extra={"shards": len(shards)})
        rec.outputs = [samples_path, *paths]
        rec.result = {k: summary[k] for k in ("prompts", "samples", "kept", "dropped", "pass_at_1",
                                              "tokens_generated", "tokens_per_second")}
        info(f"generate --merge: {len(shards)} shards, kept {summary['kept']} of "
             f"{summary['samples']} samples -> {out / 'traces'}")
    return summary


def _merge_logprobs_meta(shards: list[Path], out: Path) -> None:
    """The shards' stored log-probs must be of one K and one vocabulary; their meta file goes to OUT."""
    from distill.core.io import write_json
    from distill.core.teacher_logprobs import META_FILE
    metas = [read_json(shard / META_FILE) for shard in shards if (shard / META_FILE).is_file()]
    if not metas:
        return
    if len(metas) != len(shards) or any(m != metas[0] for m in metas):
        raise UserError(f"out: {out}: the shards were generated with different --logprobs settings or teachers")
    write_json(out / META_FILE, metas[0])
