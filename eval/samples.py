"""Generating and keeping the responses of each row (one model at one thinking budget).

Responses are appended to `samples.jsonl.partial` problem by problem (flushed and fsynced), so a
killed run resumes where it stopped: a sample is reused when its row key (model, benchmark,
prompt template, sampling settings, budget) and problem match. The finished file is renamed to
`samples.jsonl` at the end."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from distill.core.chat import THINK_CLOSE, prefill_of, user_message
from distill.core.io import JsonlAppender, read_jsonl, write_text
from distill.core.progress import progress_bar
from distill.backends import Completion, Sampling

from .scoring import full_response, score_response

FORCED_CLOSE = f"\n{THINK_CLOSE}\n\n"


@dataclass
class Row:
    """One line of the report: a model at one thinking budget (None: no budget forcing)."""
    label: str
    spec: str
    kind: str
    target: str
    budget: int | None
    key: str = ""
    template: str = ""   # the user-turn template (the model's recorded one, or --prompt-template)
    think: bool = True   # the response opens with <think> (--no-think: it is the answer alone)


def row_key(row: Row, cfg, benchmark: str, template: str) -> str:
    settings = {
        "model": row.spec, "served_model": cfg.served_model if row.kind == "openai" else None,
        "request_extra": cfg.request_extra if row.kind == "openai" else None,
        "benchmark": benchmark, "template": template, "samples": cfg.samples,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens if row.budget is None else None,
        "think_budget": row.budget, "answer_tokens": cfg.answer_tokens if row.budget else None,
        **({} if row.think else {"think": False}),  # keys of earlier runs stay as they were
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class SampleStore:
    """The samples of this run, old (resumed) and new."""

    def __init__(self, out: Path, keys: set[str]):
        self.final = out / "samples.jsonl"
        self.partial = out / "samples.jsonl.partial"
        source = self.partial if self.partial.exists() else self.final
        old = read_jsonl(source, tolerate_torn_tail=True) if source.exists() else []
        self.rows: dict[tuple, dict] = {}
        for r in old:  # failed requests are not kept: the rerun asks again
            if r.get("row_key") in keys and not r.get("error"):
                self.rows[(r["row_key"], r["problem_id"], r["sample"])] = r
        write_text(self.partial, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values()))
        self._out = JsonlAppender(self.partial)

    def have(self, key: str, problem_id: str, sample: int) -> bool:
        return (key, problem_id, sample) in self.rows

    def add(self, rows: list[dict]) -> None:
        self._out.write_many(rows)
        for r in rows:
            self.rows[(r["row_key"], r["problem_id"], r["sample"])] = r

    def of_row(self, key: str) -> list[dict]:
        return [r for (k, _, _), r in self.rows.items() if k == key]

    def finish(self, order: list[str]) -> Path:
        """Write samples.jsonl in report order (rows, then problems, then samples) and drop the
        partial file."""
        self._out.close()
        rank = {k: i for i, k in enumerate(order)}
        rows = sorted(self.rows.values(), key=lambda r: (rank.get(r["row_key"], len(rank)), r["problem_index"], r["sample"]))
        write_text(self.final, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        os.unlink(self.partial)
        return self.final

    def close(self) -> None:
        self._out.close()


def _sample_line(row: Row, benchmark: str, problem: dict, order: int, index: int, prompt: str,
                 completion: Completion, forced: bool, extra_tokens: int = 0) -> dict:
    text = full_response(completion.text, completion.reasoning)
    scored = score_response(text, problem["reference"], prefill_of(prompt), completion.finish_reason, row.think)
    if completion.error:
        scored.update(correct=False, format_valid=False)
    return {
        "label": row.label, "model": row.spec, "backend": row.kind, "benchmark": benchmark,
        "think_budget": row.budget, "row_key": row.key, "problem_id": problem["id"], "problem_index": order,
        "sample": index, "response": text, "reference": problem["reference"], **scored,
        "forced_think_close": forced, "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens + extra_tokens,
        "error": completion.error,
    }


def generate_row(backend, row: Row, benchmark: str, problems: list[dict], template: str, cfg,
                 store: SampleStore) -> None:
    """Generate every missing sample of `row`, writing each problem's samples as they finish."""
    todo = [(n, p) for n, p in enumerate(problems)
            if not all(store.have(row.key, p["id"], j) for j in range(cfg.samples))]
    if not todo:
        return
    prompts = [backend.render(user_message(p["question"], template), row.think) for _, p in todo]
    sampling = Sampling(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                        max_new_tokens=cfg.max_new_tokens if row.budget is None else row.budget)
    title = f"{row.label}" + (f" @{row.budget}" if row.budget else "")
    with progress_bar(title, len(todo)) as advance:

        def keep(i: int, completions: list[Completion], forced: list[bool], extra: list[int]) -> None:
            order, problem = todo[i]
            lines = [_sample_line(row, benchmark, problem, order, j, prompts[i], c, forced[j], extra[j])
                     for j, c in enumerate(completions) if not store.have(row.key, problem["id"], j)]
            store.add(lines)
            advance()

        if row.budget is None:
            backend.generate(prompts, sampling,
                             on_done=lambda i, cs: keep(i, cs, [False] * len(cs), [0] * len(cs)))
            return
        chunk = max(cfg.batch_size or 16, cfg.concurrency)
        for start in range(0, len(prompts), chunk):
            thinking = backend.generate(prompts[start:start + chunk], sampling)
            for i, completions in _force_answers(backend, prompts[start:start + chunk], thinking,
                                                 sampling, cfg.answer_tokens):
                keep(start + i, *completions)


def _force_answers(backend, prompts: list[str], thinking: list[list[Completion]], sampling: Sampling,
                   answer_tokens: int):
    """Budget forcing as in s1: a response that used its whole thinking budget without closing the
    think block gets `</think>` appended and continues with the answer; one that closed it but ran
    out while answering simply continues. Yields (prompt index, (completions, forced, extra))."""
    cont_prompts, where = [], []
    for i, completions in enumerate(thinking):
        for j, c in enumerate(completions):
            if c.error or c.finish_reason != "length":
                continue
            closed = THINK_CLOSE in c.text
            cont_prompts.append(prompts[i] + c.text + ("" if closed else FORCED_CLOSE))
            where.append((i, j, not closed))
    answer = Sampling(n=1, max_new_tokens=answer_tokens, temperature=sampling.temperature,
                      top_p=sampling.top_p, seed=sampling.seed)
    continued = backend.generate(cont_prompts, answer) if cont_prompts else []
    merged: dict[int, dict[int, tuple]] = defaultdict(dict)
    for (i, j, forced), (c2,) in zip(where, continued):
        c1 = thinking[i][j]
        text = c1.text + (FORCED_CLOSE if forced else "") + c2.text
        merged[i][j] = (Completion(text, c2.finish_reason, c1.prompt_tokens, c1.completion_tokens,
                                   error=c2.error), forced, c2.completion_tokens)
    for i, completions in enumerate(thinking):
        out = [merged[i].get(j, (c, False, 0)) for j, c in enumerate(completions)]
        yield i, ([c for c, _, _ in out], [f for _, f, _ in out], [e for _, _, e in out])
