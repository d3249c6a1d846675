"""Budget forcing (s1) and resuming, driven by a scripted backend whose every call is recorded, so
that the prompts the stage builds can be checked exactly. The real runtimes go through the same
code in test_eval.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

from distill.core.chat import load_prompt_template
from distill.backends import Completion
from distill.eval.samples import FORCED_CLOSE, Row, SampleStore, generate_row, row_key

PROBLEMS = [
    {"id": "long", "question": "long thinker", "reference": "7"},     # exceeds any budget
    {"id": "short", "question": "short thinker", "reference": "8"},   # closes and answers in time
    {"id": "slow", "question": "slow answerer", "reference": "9"},    # closes, runs out answering
]


class ScriptedBackend:
    kind = "hf"

    def __init__(self):
        self.calls: list[tuple[list[str], object]] = []

    def render(self, user_text: str, think: bool = True) -> str:
        return f"<user>{user_text}</user><think>\n"

    def generate(self, prompts, sampling, on_done=None):
        self.calls.append((list(prompts), sampling))
        out = []
        for i, prompt in enumerate(prompts):
            out.append([self._complete(prompt, sampling)] * sampling.n)
            if on_done:
                on_done(i, out[-1])
        return out

    @staticmethod
    def _complete(prompt: str, sampling) -> Completion:
        limit = sampling.max_new_tokens
        if prompt.endswith(FORCED_CLOSE):
            return Completion("The answer is \\boxed{7}.", "stop", len(prompt), 6)
        if "slow answerer" in prompt and "</think>" in prompt:
            return Completion(" so \\boxed{9}.", "stop", len(prompt), 4)
        if "long thinker" in prompt:
            return Completion(" ".join(["hmm"] * limit), "length", len(prompt), limit)
        if "short thinker" in prompt:
            return Completion("4 + 4 = 8\n</think>\n\n\\boxed{8}", "stop", len(prompt), 9)
        return Completion("9 it is\n</think>\n\nThe answer, after a long preamble,", "length", len(prompt), limit)


def _config(**kw):
    base = dict(samples=1, temperature=0.0, top_p=1.0, seed=0, max_new_tokens=64, answer_tokens=16,
                batch_size=8, concurrency=1, served_model=None, request_extra=None)
    return SimpleNamespace(**{**base, **kw})


def _row(cfg, budget):
    row = Row("m", "hf:m", "hf", "m", budget)
    row.key = row_key(row, cfg, "bench", "{problem}")
    return row


def test_budget_forcing_closes_the_think_block_and_lets_the_model_answer(tmp_path):
    cfg, backend = _config(), ScriptedBackend()
    row = _row(cfg, budget=5)
    store = SampleStore(tmp_path, {row.key})
    generate_row(backend, row, "bench", PROBLEMS, "{problem}", cfg, store)
    store.finish([row.key])

    (thinking_prompts, thinking), (continued_prompts, answering) = backend.calls
    assert thinking.max_new_tokens == 5 and answering.max_new_tokens == 16 and answering.n == 1
    long_prompt = backend.render("long thinker")
    assert continued_prompts == [
        long_prompt + " ".join(["hmm"] * 5) + "\n</think>\n\n",              # forced to close
        backend.render("slow answerer") + "9 it is\n</think>\n\nThe answer, after a long preamble,",
    ]
    rows = {r["problem_id"]: r for r in map(json.loads, (tmp_path / "samples.jsonl").read_text().splitlines())}
    assert [r["problem_id"] for r in rows.values()] == ["long", "short", "slow"]
    assert rows["long"]["forced_think_close"] and rows["long"]["correct"]
    assert rows["long"]["response"].count("</think>") == 1 and rows["long"]["format_valid"]
    assert rows["long"]["completion_tokens"] == 5 + 6 and rows["long"]["think_budget"] == 5
    assert not rows["short"]["forced_think_close"] and rows["short"]["correct"]
    assert rows["short"]["completion_tokens"] == 9
    assert not rows["slow"]["forced_think_close"] and rows["slow"]["correct"]
    assert not (tmp_path / "samples.jsonl.partial").exists()


def test_without_a_budget_the_think_block_is_left_alone(tmp_path):
    cfg, backend = _config(max_new_tokens=5), ScriptedBackend()
    row = _row(cfg, budget=None)
    store = SampleStore(tmp_path, {row.key})
    generate_row(backend, row, "bench", PROBLEMS, "{problem}", cfg, store)
    assert len(backend.calls) == 1 and backend.calls[0][1].max_new_tokens == 5
    rows = store.of_row(row.key)
    assert [r["correct"] for r in rows] == [False, True, False]
    assert [r["truncated"] for r in rows] == [True, False, True]


def test_a_killed_run_resumes_without_losing_or_repeating_samples(tmp_path):
    cfg = _config()
    row, other = _row(cfg, budget=5), _row(cfg, budget=9)
    first = ScriptedBackend()
    store = SampleStore(tmp_path, {row.key})
    generate_row(first, row, "bench", PROBLEMS[:1], "{problem}", cfg, store)
    store.close()
    partial = tmp_path / "samples.jsonl.partial"
    kept = partial.read_text()
    stale = {**json.loads(kept), "row_key": "from-another-config", "problem_id": "short"}
    with open(partial, "a") as f:  # a stale line of another config and a line torn by the kill
        f.write(json.dumps(stale) + "\n" + '{"row_key": "' + row.key + '", "problem_id": "sh')

    again = ScriptedBackend()
    store = SampleStore(tmp_path, {row.key, other.key})
    generate_row(again, row, "bench", PROBLEMS, "{problem}", cfg, store)
    store.finish([row.key])
    asked = [p for prompts, _ in again.calls for p in prompts]
    assert not any("long thinker" in p for p in asked)  # finished before the kill: not asked again
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["problem_id"] for x in lines] == ["long", "short", "slow"]
    assert lines[0] == kept.strip()
