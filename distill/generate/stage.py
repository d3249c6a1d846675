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
  split="train")`. Columns, the input of `distill train`:
    id                 str    the sample id (also in samples.jsonl)
    prompt_id          str    the problem's id
    sample_index       int32  which of the n samples of the problem
    problem            str    the problem text as given
    prompt             str    the user message exactly as the teacher saw it (template applied)
    reasoning          str    the thinking, without the <think> tags
    answer             str    the text after </think> (the final answer, usually boxed)
    extracted          str    the final answer pulled out of `answer`
    reference          str    the reference final answer
    teacher            str    the teacher spec
    prompt_tokens      int32  teacher tokens in the prompt
    completion_tokens  int32  teacher tokens generated
    pass_rate          float  fraction of the problem's samples that were right
    messages           list   [{role: user, content: prompt},
                               {role: assistant, content: "<think>\\n{reasoning}\\n</think>\\n\\n{answer}"}]
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

from .config import GenerateConfig


def run(cfg: GenerateConfig) -> dict:
    # imported here so that `distill --help`, which imports the config, stays fast
    from distill.core.chat import load_prompt_template
    from distill.core.errors import UserError
    from distill.core.io import read_jsonl, repair_jsonl_tail
    from distill.core.problems import load_problems
    from distill.core.progress import info
    from distill.core.records import StageRecord
    from distill.backends import Sampling

    from .merge import merge_shards
    from .outputs import decide_and_save, write_outputs
    from .samples import sampling_record
    from .settings import filter_settings
    from .teacher import plan, sample_teacher, select_shard, shard_dir, teacher_name

    if cfg.merge:
        return merge_shards(cfg)
    if not cfg.teacher:
        raise UserError("teacher: required (hf:PATH_OR_ID, openai:BASE_URL with --model, or gguf:FILE)")
    out = shard_dir(cfg.out, cfg.shard)
    with StageRecord("generate", cfg, out) as rec:
        problems = load_problems(cfg.prompts, cfg.question_field, cfg.answer_field, cfg.limit,
                                 require_answer=True, demo_split="train")
        problems = select_shard(problems, cfg.shard)
        template = load_prompt_template(cfg.prompt_template)
        settings = filter_settings(cfg)
        sampling = Sampling(n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed)
        recorded = sampling_record(sampling)
        jobs = plan(problems, cfg, template, recorded)

        samples_path = out / "samples.jsonl"
        if repair_jsonl_tail(samples_path):
            info(f"{samples_path}: cut a half-written last line")
        existing = {r["id"]: r for r in read_jsonl(samples_path)} if samples_path.exists() else {}
        wanted = {sid for job in jobs for sid in job.ids}
        pending = [job for job in jobs if any(sid not in existing for sid in job.ids)]
        info(f"generate: {len(problems)} prompts x {cfg.n} samples; "
             f"{len(wanted & existing.keys())} already in {samples_path}, {len(pending)} prompts to go")

        failures = []
        if pending:
            failures = sample_teacher(cfg, pending, existing, sampling, settings, samples_path)

        all_rows = read_jsonl(samples_path) if samples_path.exists() else []
        rows, seen = [], set()
        order = {job.problem["id"]: i for i, job in enumerate(jobs)}
        for row in sorted((r for r in all_rows if r["id"] in wanted),
                          key=lambda r: (order[r["prompt_id"]], r["sample_index"])):
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
        decide_and_save(samples_path, all_rows, rows, settings)
        summary, paths = write_outputs(rows, out, prompts=len(jobs), teacher=teacher_name(cfg),
                                       sampling=recorded, failures=failures,
                                       ignored_rows=len(all_rows) - len(rows))
        rec.outputs = [samples_path, *paths]
        rec.result = {k: summary[k] for k in ("prompts", "samples", "kept", "dropped", "pass_at_1",
                                              "tokens_generated", "tokens_per_second")}
        info(f"generate: kept {summary['kept']} of {summary['samples']} samples "
             f"(teacher pass@1 {summary['pass_at_1']:.3f}) -> {out / 'traces'}")
        if failures:
            raise UserError(f"{cfg.teacher}: {len(failures)} requests failed after {cfg.max_retries} "
                            f"retries (first: {failures[0]}); the other samples are saved in "
                            f"{samples_path}: rerun the same command to retry the failed ones")
    return summary
