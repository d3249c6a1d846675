"""Asking the teacher: which prompts still need samples, loading the backend the `--teacher` spec
names, and appending each prompt's samples to samples.jsonl the moment they are complete."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from distill.core.chat import prefill_of, user_message
from distill.core.errors import UserError
from distill.core.io import JsonlAppender
from distill.core.progress import progress_bar
from distill.backends import Sampling, load_backend

from .filters import Deduplicator, FilterSettings, decide_prompt
from .samples import build_row, sample_id, sampling_record


@dataclass
class Job:
    """One prompt of this run and the ids its samples will have."""
    problem: dict
    user_text: str
    ids: list[str]


def teacher_name(cfg) -> str:
    """How the teacher is named in ids and rows: the spec, plus the served model for openai."""
    return f"{cfg.teacher}#{cfg.model}" if cfg.teacher.startswith("openai:") else cfg.teacher


def plan(problems: list[dict], cfg, template: str, sampling: dict) -> list[Job]:
    """One job per distinct problem: a problem listed twice is asked for once (its samples would
    have the same ids)."""
    teacher = teacher_name(cfg)
    jobs, seen = [], set()
    for problem in problems:
        if problem["id"] in seen:
            continue
        seen.add(problem["id"])
        text = user_message(problem["question"], template)
        jobs.append(Job(problem, text, [sample_id(teacher, problem["id"], text, sampling, i) for i in range(cfg.n)]))
    return jobs


def select_shard(problems: list[dict], shard: str | None) -> list[dict]:
    if shard is None:
        return problems
    index, count = (int(x) for x in shard.split("/"))
    return problems[index::count]


def shard_dir(out: str, shard: str | None) -> Path:
    if shard is None:
        return Path(out)
    index, count = shard.split("/")
    return Path(out) / f"shard-{index}-of-{count}"


def load_teacher(cfg):
    kind = cfg.teacher.split(":", 1)[0]
    if kind == "hf":
        options = dict(dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                       batch_size=cfg.batch_size, threads=cfg.threads)
    elif kind == "gguf":
        options = dict(n_ctx=cfg.n_ctx, threads=cfg.threads)
    else:
        options = dict(model=cfg.model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                       max_retries=cfg.max_retries, request_timeout=cfg.request_timeout,
                       retry_wait=cfg.retry_wait, teacher_tokenizer=cfg.teacher_tokenizer)
    target = cfg.teacher.split(":", 1)[1]
    if not target:
        raise UserError(f"teacher: '{cfg.teacher}' names no model")
    return load_backend(cfg.teacher, **options)


def missing_runs(jobs: list[Job], existing: dict) -> dict[tuple[int, int], list[int]]:
    """Group the missing samples as (first index, count) -> job numbers. Sample j is seeded
    with seed + j, so a run of missing indices is one `generate` call with n = count and the
    seed shifted to the run's first index; a fresh job is a single run (0, n)."""
    runs: dict[tuple[int, int], list[int]] = {}
    for number, job in enumerate(jobs):
        missing = [j for j, sid in enumerate(job.ids) if sid not in existing]
        while missing:
            end = 0
            while end + 1 < len(missing) and missing[end + 1] == missing[end] + 1:
                end += 1
            runs.setdefault((missing[0], end + 1), []).append(number)
            missing = missing[end + 1:]
    return runs


def sample_teacher(cfg, jobs: list[Job], existing: dict[str, dict], sampling: Sampling,
                   settings: FilterSettings, samples_path: Path) -> list[str]:
    """Generate the missing samples of `jobs`, appending them to `samples_path` prompt by prompt.
    Returns the failures (requests that failed for good); their samples are simply absent, so
    the next run asks for them again."""
    teacher = teacher_name(cfg)
    record = sampling_record(sampling, cfg.think)
    dedup = Deduplicator(settings.near_duplicate)
    for row in existing.values():
        if row.get("kept"):
            dedup.add(row)
    runs = missing_runs(jobs, existing)
    failures: list[str] = []
    backend = load_teacher(cfg)
    try:
        rendered = {n: backend.render(jobs[n].user_text, cfg.think) for group in runs.values() for n in group}
        clock = {"last": time.perf_counter()}
        total = sum(len(group) for group in runs.values())
        with JsonlAppender(samples_path) as out, progress_bar("generate", total) as advance:
            for (first, count), group in runs.items():

                def on_done(i: int, completions: list, first=first, group=group) -> None:
                    job, prefill = jobs[group[i]], prefill_of(rendered[group[i]])
                    now = time.perf_counter()
                    wall, clock["last"] = now - clock["last"], now
                    done = [(first + k, c) for k, c in enumerate(completions)]
                    fresh = [(j, c) for j, c in done if c.error is None and job.ids[j] not in existing]
                    failures.extend(f"{job.problem['id']} sample {j}: {c.error}"
                                    for j, c in done if c.error is not None)
                    rows = [build_row(sid=job.ids[j], problem=job.problem, user_text=job.user_text,
                                      index=j, completion=c, prefill=prefill, teacher=teacher,
                                      sampling=record, wall_s=wall / max(len(fresh), 1), think=cfg.think)
                            for j, c in fresh]
                    have = [existing[sid] for sid in job.ids if sid in existing]
                    decide_prompt(have + rows, settings, dedup)
                    out.write_many(rows)
                    existing.update((r["id"], r) for r in rows)
                    advance()

                run_sampling = replace(sampling, n=count, seed=sampling.seed + first)
                backend.generate([rendered[n] for n in group], run_sampling, on_done=on_done)
    finally:
        backend.close()
    return failures


def prepare_logprobs(cfg, out: Path) -> dict | None:
    """With --logprobs K: check, before any sampling, that the teacher can give its top-K log-probs
    (a server that refuses K or returns none is one line), and record K and the teacher's ids of
    the probe text in OUT/teacher_logprobs.json, which says which vocabulary the stored ids are in."""
    if not cfg.logprobs:
        return None
    from distill.core.io import write_json
    from distill.core.teacher_logprobs import META_FILE, PROBE, bytes_per_token

    kind, target = cfg.teacher.split(":", 1)
    if kind == "openai":
        backend = load_teacher(cfg)
        backend.check_logprobs(cfg.logprobs)
        ids = backend.tokenizer(PROBE, add_special_tokens=False)["input_ids"] if backend.tokenizer else \
            backend.server_tokenize(PROBE)
        if ids is None:
            raise UserError(f"teacher_tokenizer: {cfg.teacher} offers no /tokenize endpoint, so the vocabulary of "
                            "its token ids cannot be named; give --teacher-tokenizer (the served model's tokenizer)")
    elif kind == "hf":
        from distill.core.tokenizers import load_tokenizer
        ids = load_tokenizer(target, "teacher", cfg.trust_remote_code)(PROBE, add_special_tokens=False)["input_ids"]
    else:
        from distill.backends.llamacpp import open_llama
        llm = open_llama(target, vocab_only=True, verbose=False)
        ids = llm.tokenize(PROBE.encode("utf-8"), add_bos=False, special=True)
        llm.close()
    meta = {"k": cfg.logprobs, "teacher": teacher_name(cfg), "probe": PROBE, "probe_ids": [int(i) for i in ids],
            "bytes_per_token": bytes_per_token(cfg.logprobs)}
    write_json(out / META_FILE, meta)
    return meta
