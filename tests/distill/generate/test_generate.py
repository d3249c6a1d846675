"""`distill generate` end to end against a local OpenAI-compatible server that returns handwritten
responses: verification, every drop reason, the outputs, resume without new requests, changed
filters, shards and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.io import read_json, read_jsonl
from tests.distill.generate.servers import FakeOpenAI

runner = CliRunner()

PROBLEMS = [
    {"id": "add", "question": "Ava has 40 apples and gets 2 more. How many apples?", "answer": "40 + 2\n#### 42"},
    {"id": "frac", "question": "What is half of three halves?", "answer": "\\frac{3}{4}"},
    {"id": "root", "question": "Simplify the square root of eight.", "answer": "2\\sqrt{2}"},
    {"id": "bench", "question": "Tom has 7 bags with 6 marbles in each bag. How many marbles in all?", "answer": "42"},
    {"id": "think", "question": "A train goes 60 km per hour for 2 hours. How far does it go?", "answer": "120"},
]
BENCHMARK = [{"question": "Tom has 7 bags with 6 marbles in each bag. How many marbles does he have?", "answer": "42"}]

LONG = " ".join(f"Step {k}: add {k} to get {k * (k + 1) // 2}." for k in range(1, 20))
RESPONSES = {
    # sample index -> (content, finish_reason); reasoning_content for "think"
    "Ava has": [(f"{LONG}\n</think>\n\n\\boxed{{42}}", "stop"), (f"{LONG}\n</think>\n\n\\boxed{{42}}", "stop"),
                ("40 + 2 = 41\n</think>\n\n\\boxed{41}", "stop"), ("40 + 2 = 4", "length")],
    "half of three": [("3/2 divided by 2\n</think>\n\n\\boxed{\\frac{3}{4}}", "stop"),
                      ("Half of 1.5 is 0.75\n</think>\n\nThe answer is $0.75$.", "stop"),
                      ("Not sure\n</think>\n\nI cannot tell.", "stop"),
                      ("3/4 \\boxed{3/4}", "stop")],
    "square root": [("sqrt 8 = 2 sqrt 2\n</think>\n\n\\boxed{2\\sqrt{2}}", "stop"),
                    ("it is 3\n</think>\n\n\\boxed{3}", "stop"), ("it is 4\n</think>\n\n\\boxed{4}", "stop"),
                    ("it is 5\n</think>\n\n\\boxed{5}", "stop")],
    "Tom has": [(f"7 * 6 = 42 try {j}\n</think>\n\n\\boxed{{42}}", "stop") for j in range(4)],
}


def respond(user: str, body: dict) -> dict:
    assert body["messages"] == [{"role": "user", "content": user}]  # no system prompt
    j = body.get("seed", 0)
    if user.startswith("A train"):
        return {"content": "It goes \\boxed{120} km.", "reasoning_content": f"60 * 2 = 120, way {j}"}
    for key, answers in RESPONSES.items():
        if key in user:
            content, finish = answers[j]
            return {"content": content, "finish_reason": finish}
    raise AssertionError(user)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def job(tmp_path):
    prompts = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    bench = write_jsonl(tmp_path / "bench.jsonl", BENCHMARK)
    with FakeOpenAI(respond) as fake:
        def generate(*extra: str, out: Path | None = None):
            args = ["generate", "--teacher", f"openai:{fake.url}", "--model", "fake",
                    "--prompts", str(prompts), "--n", "4", "--concurrency", "3", "--retry-wait", "0.01",
                    "--decontaminate", str(bench), "--out", str(out or tmp_path / "out"), "-q", *extra]
            return runner.invoke(cli.app, args)
        yield fake, generate, tmp_path


def test_every_sample_is_verified_and_kept_or_dropped_with_a_reason(job):
    fake, generate, tmp = job
    result = generate()
    assert result.exit_code == 0, result.output
    out = tmp / "out"
    summary = read_json(out / "summary.json")
    assert summary["prompts"] == 5 and summary["samples"] == 20 and summary["complete"]
    assert summary["dropped"] == {"contaminated": 4, "truncated": 1, "bad_format": 1, "no_answer": 1,
                                  "wrong_answer": 4, "duplicate": 1}
    assert summary["kept"] == 8 == 20 - sum(summary["dropped"].values())
    # right answers: add 2 (one duplicate), frac 3 (one in a bad format), root 1, bench 4
    # (contaminated), think 4
    assert summary["verified"] == 14 and summary["pass_at_1"] == pytest.approx(14 / 20)
    assert summary["tokens_generated"] > 0 and summary["tokens_per_second"] > 0

    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    for key in ("id", "prompt_id", "problem", "reference", "reasoning", "answer", "verified", "kept",
                "drop_reason", "finish_reason", "teacher", "sampling", "prompt_tokens", "completion_tokens"):
        assert all(key in r for r in rows), key
    assert {r["reference"] for r in rows if r["prompt_id"] == "add"} == {"42"}
    rates = {r["prompt_id"]: r["pass_rate"] for r in read_jsonl(out / "pass_rates.jsonl")}
    assert rates == {"add": 0.5, "frac": 0.75, "root": 0.25, "bench": 1.0, "think": 1.0}

    from datasets import load_dataset, load_from_disk
    traces = load_from_disk(str(out / "traces"))
    assert len(traces) == 8
    assert {"id", "prompt_id", "problem", "prompt", "reasoning", "answer", "reference", "teacher",
            "prompt_tokens", "completion_tokens", "messages"} <= set(traces.column_names)
    think = [t for t in traces if t["prompt_id"] == "think"]
    assert len(think) == 4 and think[0]["reasoning"].startswith("60 * 2 = 120")
    assert think[0]["answer"] == "It goes \\boxed{120} km."
    sent = {b["messages"][0]["content"] for b in fake.bodies}
    assert {t["prompt"] for t in traces} <= sent   # the prompt exactly as the teacher saw it
    assert all(t["prompt"].endswith("put your final answer within \\boxed{}.") for t in traces)
    assert traces[0]["messages"][1]["content"].startswith("<think>\n")
    assert len(load_dataset("arrow", data_files=str(out / "traces" / "*.arrow"), split="train")) == 8

    record = read_json(out / "generate.json")
    assert {o["path"] for o in record["outputs"]} >= {"samples.jsonl", "traces", "summary.json"}
    assert record["result"]["kept"] == 8
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_asks_for_nothing_and_new_filters_apply_to_existing_samples(job):
    fake, generate, tmp = job
    assert generate().exit_code == 0
    served = fake.requests
    assert generate().exit_code == 0
    assert fake.requests == served
    result = generate("--min-pass-rate", "0.3", "--max-trace-tokens", "60")
    assert result.exit_code == 0, result.output
    assert fake.requests == served
    summary = read_json(tmp / "out" / "summary.json")
    assert summary["dropped"]["pass_rate"] == 1          # root: 1 of 4 right
    assert summary["dropped"]["too_long"] == 2           # the long "add" trace and its copy
    assert "duplicate" not in summary["dropped"]
    rows = {r["id"]: r for r in read_jsonl(tmp / "out" / "samples.jsonl")}
    assert sum(r["drop_reason"] == "pass_rate" for r in rows.values()) == 1
    # more samples per prompt: only the new sample indices are asked for
    RESPONSES_5 = fake.respond

    def five(user, body):
        if body.get("seed") == 4:
            return {"content": "\\boxed{0}", "reasoning_content": "guess"}
        return RESPONSES_5(user, body)
    fake.respond = five
    assert generate("--n", "5").exit_code == 0
    assert fake.requests == served + 5
    assert read_json(tmp / "out" / "summary.json")["samples"] == 25


def test_shards_merge_to_the_same_result(job):
    fake, generate, tmp = job
    assert generate(out=tmp / "whole").exit_code == 0
    for i in range(2):
        result = generate("--shard", f"{i}/2", out=tmp / "sharded")
        assert result.exit_code == 0, result.output
    first = read_json(tmp / "sharded" / "shard-0-of-2" / "summary.json")
    assert first["prompts"] == 3   # prompts 0, 2, 4
    result = runner.invoke(cli.app, ["generate", "--merge", "--out", str(tmp / "sharded"),
                                     "--decontaminate", str(tmp / "bench.jsonl"), "-q"])
    assert result.exit_code == 0, result.output
    whole, merged = read_json(tmp / "whole" / "summary.json"), read_json(tmp / "sharded" / "summary.json")
    for key in ("prompts", "samples", "kept", "dropped", "verified"):
        assert whole[key] == merged[key], key
    assert merged["shards"] == 2
    assert sorted(r["id"] for r in read_jsonl(tmp / "sharded" / "samples.jsonl")) == \
        sorted(r["id"] for r in read_jsonl(tmp / "whole" / "samples.jsonl"))


def test_merge_refuses_missing_or_unfinished_shards(job):
    fake, generate, tmp = job
    assert generate("--shard", "1/3", out=tmp / "s").exit_code == 0
    result = runner.invoke(cli.app, ["generate", "--merge", "--out", str(tmp / "s")])
    assert result.exit_code == 2 and "shards 0/3, 2/3 are missing" in result.output


def echo_reference(user: str, body: dict) -> dict:
    """A teacher that knows the answers: the number after the last '=' of a GSM8K-style hint."""
    return {"content": f"<think>\nWorking.\n</think>\n\n\\boxed{{{ANSWERS[user.split(chr(10))[0]]}}}"}


ANSWERS: dict[str, str] = {}


def test_real_gsm8k_problems(gsm8k_train, tmp_path):
    rows = [json.loads(line) for line in gsm8k_train.read_text(encoding="utf-8").splitlines()[:6]]
    ANSWERS.update({r["question"].strip().split("\n")[0]: r["answer"].split("####")[-1].strip().replace(",", "")
                    for r in rows})
    with FakeOpenAI(echo_reference) as fake:
        result = runner.invoke(cli.app, ["generate", "--teacher", f"openai:{fake.url}", "--model", "r1",
                                         "--prompts", str(gsm8k_train), "--limit", "6", "--n", "1",
                                         "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    samples = read_jsonl(tmp_path / "out" / "samples.jsonl")
    # Concurrent requests finish in any order; samples.jsonl is written as they arrive.
    assert sorted(s["reference"] for s in samples) == sorted(r["answer"].split("####")[-1].strip().replace(",", "") for r in rows)
    assert all(s["kept"] for s in samples), [(s["reference"], s["answer"]) for s in samples]


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_other_file_formats_and_named_fields(tmp_path, suffix):
    rows = [{"task": f"What is {i} times 2?", "gold": str(2 * i)} for i in range(3)]
    path = tmp_path / f"problems{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"data": rows}), encoding="utf-8")
    elif suffix == ".csv":
        path.write_text("task,gold\n" + "".join(f"{r['task']},{r['gold']}\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)

    def double(user, body):
        return {"content": f"\\boxed{{{2 * int(user.split()[2])}}}", "reasoning_content": "times two"}
    with FakeOpenAI(double) as fake:
        result = runner.invoke(cli.app, ["generate", "--teacher", f"openai:{fake.url}", "--model", "m",
                                         "--prompts", str(path), "--question-field", "task", "--answer-field", "gold",
                                         "--n", "2", "--prompt-template", "plain", "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["samples"] == 6 and summary["verified"] == 6
    assert summary["kept"] == 3 and summary["dropped"] == {"duplicate": 3}   # the same trace twice
    assert {b["messages"][0]["content"] for b in fake.bodies} == {r["task"] for r in rows}   # plain template


def test_a_problem_listed_twice_is_asked_once_and_the_run_is_complete(tiny_model, tmp_path):
    from distill.core.config import build_config
    from distill.generate.config import GenerateConfig
    from distill.generate.stage import run
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    summary = run(build_config(GenerateConfig, dict(teacher=f"hf:{tiny_model('qwen2')}", prompts=str(problems), n=1,
                                                    max_new_tokens=8, out=str(tmp_path / "g"))))
    assert summary["prompts"] == 5 and summary["prompts_done"] == 5 and summary["complete"] is True


def test_no_think_traces_are_the_answer_alone(tmp_path):
    from distill.core.config import build_config
    from distill.core.traces import load_traces, trace_row
    from distill.generate.config import GenerateConfig
    from distill.generate.stage import run
    from tests.distill.generate.servers import FakeOpenAI

    def plain(user, body):
        return {"content": "The answer is \\boxed{1}."}
    with FakeOpenAI(respond=plain) as server:
        rows = [{"question": "What is 0 + 1?", "answer": "1"}]
        problems = tmp_path / "p.jsonl"
        problems.write_text(json.dumps(rows[0]) + "\n")
        thinking = run(build_config(GenerateConfig, dict(teacher=f"openai:{server.url}", model="m", prompts=str(problems),
                                                         n=1, out=str(tmp_path / "think"))))
        plain_run = run(build_config(GenerateConfig, dict(teacher=f"openai:{server.url}", model="m", think=False,
                                                          prompts=str(problems), n=1, out=str(tmp_path / "plain"))))
    assert thinking["kept"] == 0 and thinking["dropped"] == {"bad_format": 1}
    assert plain_run["kept"] == 1
    (trace,) = load_traces(str(tmp_path / "plain"), "r1").rows
    assert trace["reasoning"] == "" and trace["answer"] == "The answer is \\boxed{1}."
    from distill.core.io import read_jsonl
    (row,) = read_jsonl(tmp_path / "plain" / "samples.jsonl")
    assert trace_row(row)["messages"][1]["content"] == "The answer is \\boxed{1}."
