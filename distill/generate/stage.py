"""`distill generate`: a teacher reasoning model solves each problem `n` times; every sample is
verified against the reference answer and kept or dropped with a reason.

Outputs in `--out` (with `--shard I/N`: in `--out/shard-I-of-N`; `--merge` combines those):

- `samples.jsonl`: one line per sample, appended and fsynced as each prompt's samples arrive.
  Fields: id, prompt_id, sample_index, problem, prompt, reference, response (the raw completion),
  reasoning_channel (a server's `reasoning_content`, else null), prefill, reasoning, answer,
  extracted, think_closed, verified, kept, drop_reason, pass_rate, finish_reason, prompt_tokens,
  completion_tokens, ttft_s, decode_s, gen_wall_s, teacher, sampling.
- `traces/`: the kept samples, a `datasets.save_to_disk` folder with one arrow file:
  `load_from_disk("OUT/traces")`, or `load_dataset("arrow", data_files="OUT/traces/*.arrow",
  split="train")`, the input of `distill train`. Its columns are the trace format's
  (distill/core/traces.py, `TRACE_COLUMNS`).
- `pass_rates.jsonl` (per prompt: samples, verified, kept, pass_rate), `summary.json` (prompts,
  samples, kept, dropped by reason, pass_at_1, tokens generated, tokens per second, failed
  requests, complete), `summary.png`, and the stage record `generate.json`.

Resume: the id of a sample hashes the teacher, the user message, the sampling settings and the
sample index, so rerunning the same command skips every sample already in samples.jsonl (a torn
last line is cut first) and asks only for the rest. Requests that fail for good are reported and
leave their samples absent, to be asked for again by the next run; the stage then exits 2 without
writing its record, so `distill run` does not take it as finished.
"""

from __future__ import annotations

from pathlib import Path

from distill.backends import Sampling
from distill.core.chat import load_prompt_template
from distill.core.errors import UserError
from distill.core.io import read_jsonl, repair_jsonl_tail
from distill.core.problems import load_problems
from distill.core.progress import info
from distill.core.records import StageRecord

from .config import GenerateConfig
from .merge import merge_shards
from .outputs import decide_and_save, write_outputs
from .samples import sampling_record
from .settings import filter_settings
from .teacher import Job, plan, prepare_logprobs, sample_teacher, select_shard, shard_dir, teacher_name

SUMMARY_FIELDS = ("prompts", "samples", "kept", "dropped", "pass_at_1", "tokens_generated", "tokens_per_second")


def run(cfg: GenerateConfig) -> dict:
    if cfg.merge:
        return merge_shards(cfg)
    if not cfg.teacher:
        raise UserError("teacher: required (hf:PATH_OR_ID, openai:BASE_URL with --model, or gguf:FILE)")
    out = shard_dir(cfg.out, cfg.shard)
    with StageRecord("generate", cfg, out) as rec:
        # prepare: the problems of this run and the ids their samples will have
        problems = select_shard(load_problems(cfg.prompts, cfg.question_field, cfg.answer_field, cfg.limit,
                                              require_answer=True, demo_split="train"), cfg.shard)
        settings = filter_settings(cfg)
        sampling = Sampling(n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed, logprobs=cfg.logprobs)
        prepare_logprobs(cfg, out)  # a teacher that cannot give them fails now, before any sampling
        jobs = plan(problems, cfg, load_prompt_template(cfg.prompt_template), sampling_record(sampling, cfg.think))
        samples_path = out / "samples.jsonl"
        existing = _existing_samples(samples_path)
        # produce: ask the teacher for what is missing, appending as each prompt completes
        pending = [job for job in jobs if any(sid not in existing for sid in job.ids)]
        info(f"generate: {len(problems)} prompts x {cfg.n} samples; "
             f"{sum(sid in existing for job in jobs for sid in job.ids)} already in {samples_path}, "
             f"{len(pending)} prompts to go")
        failures = sample_teacher(cfg, pending, existing, sampling, settings, samples_path) if pending else []
        # save: decide every row in canonical order, then the traces, pass rates and summary
        all_rows = read_jsonl(samples_path) if samples_path.exists() else []
        rows = _rows_of(jobs, all_rows)
        decide_and_save(samples_path, all_rows, rows, settings)
        summary, paths = write_outputs(rows, out, prompts=len(jobs), teacher=teacher_name(cfg),
                                       sampling=sampling_record(sampling, cfg.think), failures=failures,
                                       ignored_rows=len(all_rows) - len(rows))
        rec.outputs = [samples_path, *paths]
        rec.result = {k: summary[k] for k in SUMMARY_FIELDS}
        info(f"generate: kept {summary['kept']} of {summary['samples']} samples "
             f"(teacher pass@1 {summary['pass_at_1']:.3f}) -> {out / 'traces'}")
        if failures:
            raise UserError(f"{cfg.teacher}: {len(failures)} requests failed after {cfg.max_retries} "
                            f"retries (first: {failures[0]}); the other samples are saved in "
                            f"{samples_path}: rerun the same command to retry the failed ones")
    return summary


def _existing_samples(samples_path: Path) -> dict[str, dict]:
    """The samples an earlier run of this command wrote (a torn last line cut first)."""
    if repair_jsonl_tail(samples_path):
        info(f"{samples_path}: cut a half-written last line")
    return {r["id"]: r for r in read_jsonl(samples_path)} if samples_path.exists() else {}


def _rows_of(jobs: list[Job], all_rows: list[dict]) -> list[dict]:
    """This run's rows of samples.jsonl, once each, in prompt then sample order."""
    wanted = {sid for job in jobs for sid in job.ids}
    order = {job.problem["id"]: i for i, job in enumerate(jobs)}
    rows, seen = [], set()
    for row in sorted((r for r in all_rows if r["id"] in wanted),
                      key=lambda r: (order[r["prompt_id"]], r["sample_index"])):
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows
