"""A teacher server that fails: 500s, 429s, dropped connections, stalls and cut streams are
retried with backoff and never produce a lost or duplicated sample; requests that still fail
are reported (exit 2, no stage record) and asked for again by the next run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from distill import cli
from distill.core.io import read_json, read_jsonl
from tests.distill.generate.servers import FakeOpenAI

runner = CliRunner()
PROBLEMS = [{"id": f"p{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(12)]


def respond(user: str, body: dict) -> dict:
    i = int(user.split()[2])
    return {"content": f"\\boxed{{{2 * i}}}", "reasoning_content": f"{i} + {i} = {2 * i}, way {body.get('seed')}"}


def run(url: str, prompts, out, *extra: str):
    return runner.invoke(cli.app, [
        "generate", "--teacher", f"openai:{url}", "--model", "fake", "--prompts", str(prompts),
        "--n", "3", "--out", str(out), "--concurrency", "4", "--retry-wait", "0.01", "-q", *extra])


def write_problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


def test_flaky_server_loses_and_duplicates_nothing(tmp_path):
    prompts = write_problems(tmp_path)
    faults = dict(error500=0.12, error429=0.12, drop=0.08, stall=0.04, cut_stream=0.08)
    with FakeOpenAI(respond, faults=faults, seed=3, stall_s=2.0) as fake:
        result = run(fake.url, prompts, tmp_path / "out", "--request-timeout", "0.5", "--max-retries", "12")
        assert result.exit_code == 0, result.output
        assert all(fake.faults_served[name] > 0 for name in faults), fake.faults_served
    rows = read_jsonl(tmp_path / "out" / "samples.jsonl")
    assert len(rows) == 36 and len({r["id"] for r in rows}) == 36
    assert sorted((r["prompt_id"], r["sample_index"]) for r in rows) == \
        sorted((p["id"], j) for p in PROBLEMS for j in range(3))
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["kept"] == 36 and summary["failed_requests"] == 0 and summary["complete"]


def test_requests_that_still_fail_are_reported_and_retried_next_run(tmp_path):
    prompts = write_problems(tmp_path)
    broken = {"What is 3 plus", "What is 7 plus"}
    with FakeOpenAI(respond, fail_when=lambda user: any(user.startswith(b) for b in broken)) as fake:
        result = run(fake.url, prompts, tmp_path / "out", "--max-retries", "2")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "6 requests failed after 2 retries" in lines[0] and "rerun the same command" in lines[0]
        out = tmp_path / "out"
        summary = read_json(out / "summary.json")
        assert summary["failed_requests"] == 6 and not summary["complete"]
        assert summary["samples"] == 30 and summary["prompts_done"] == 10
        assert any("HTTP 500" in f for f in summary["failures"])
        assert not (out / "generate.json").exists()   # `distill run` must not skip this stage
        assert {r["prompt_id"] for r in read_jsonl(out / "samples.jsonl")} == {p["id"] for p in PROBLEMS} - {"p3", "p7"}

        fake.fail_when = None   # the server recovers
        before = fake.requests
        result = run(fake.url, prompts, out, "--max-retries", "2")
        assert result.exit_code == 0, result.output
        assert fake.requests - before == 6   # only the failed samples were asked for again
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 36 and len({r["id"] for r in rows}) == 36
    assert read_json(out / "summary.json")["complete"]
    assert (out / "generate.json").exists()


def test_rejected_seed_field_and_api_key(tmp_path, monkeypatch):
    prompts = write_problems(tmp_path)
    monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-secret-123")
    with FakeOpenAI(respond, reject_seed=True, api_key="sk-secret-123") as fake:
        result = run(fake.url, prompts, tmp_path / "out", "--limit", "2", "--api-key-env", "FAKE_TEACHER_KEY")
        assert result.exit_code == 0, result.output
        assert any("seed" in b for b in fake.bodies) and "seed" not in fake.bodies[-1]
    out = tmp_path / "out"
    assert len(read_jsonl(out / "samples.jsonl")) == 6
    for path in out.rglob("*"):
        if path.is_file():
            assert b"sk-secret-123" not in path.read_bytes(), path
    with FakeOpenAI(respond, api_key="another-key") as fake:
        result = run(fake.url, prompts, tmp_path / "out2", "--limit", "2", "--api-key-env", "FAKE_TEACHER_KEY")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "HTTP 401" in lines[0], result.output
        assert "sk-secret-123" not in result.output
