"""A `distill generate` process SIGKILLed mid-run, then rerun: nothing lost, nothing twice, and a
half-written last line is cut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.io import read_json, read_jsonl
from tests.conftest import REPO
from tests.distill.generate.servers import FakeOpenAI

PROMPTS = 30
SAMPLES = 2


def respond(user: str, body: dict) -> dict:
    i = int(user.split()[2])
    return {"content": f"So \\boxed{{{i + 1}}}", "reasoning_content": f"{i} plus one, take {body.get('seed')}"}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tmp_path):
    prompts = tmp_path / "problems.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} plus one?", "answer": str(i + 1)}) + "\n"
                               for i in range(PROMPTS)), encoding="utf-8")
    out = tmp_path / "out"
    with FakeOpenAI(respond, delay=0.08) as fake:
        args = ["generate", "--teacher", f"openai:{fake.url}", "--model", "fake", "--prompts", str(prompts),
                "--n", str(SAMPLES), "--concurrency", "2", "--out", str(out), "-q"]
        proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples = out / "samples.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if samples.exists() and samples.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = read_jsonl(samples, tolerate_torn_tail=True)
        assert 10 <= len(done) < PROMPTS * SAMPLES
        assert not (out / "summary.json").exists() and not (out / "generate.json").exists()
        assert not (out / "traces").exists()
        with open(samples, "ab") as f:   # what a kill in the middle of a write leaves
            f.write(b'{"id": "half-written", "prompt_id": "q2')
        # A request the killed process had already sent can still reach the server's threads: count
        # it as served before the rerun starts, or it would look like a request asked for again.
        served, quiet_since = fake.requests, time.time()
        while time.time() - quiet_since < 0.5:
            time.sleep(0.05)
            if fake.requests != served:
                served, quiet_since = fake.requests, time.time()

        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        asked_again = fake.requests - served
    rows = read_jsonl(samples)
    ids = [r["id"] for r in rows]
    assert len(rows) == PROMPTS * SAMPLES and len(set(ids)) == len(ids)
    assert ids[:len(done)] == [r["id"] for r in done]          # the earlier samples are kept as they were
    assert asked_again == PROMPTS * SAMPLES - len(done)         # and not asked for again
    assert sorted((r["prompt_id"], r["sample_index"]) for r in rows) == \
        sorted((f"q{i}", j) for i in range(PROMPTS) for j in range(SAMPLES))
    summary = read_json(out / "summary.json")
    assert summary["complete"] and summary["kept"] == PROMPTS * SAMPLES
