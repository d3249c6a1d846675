"""A `distill train` killed with SIGKILL resumes from its last complete checkpoint when the same
command runs again, and neither loses nor repeats a batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from distill import cli
from distill.core.traces import encode_traces, end_of_turn
from distill.core.traces import load_traces

from .helpers import trace_rows, write_jsonl

REPO = Path(__file__).resolve().parents[3]
STEPS, BATCH, TRACES = 100, 2, 20  # 10 steps an epoch, 10 epochs


def _wait_for_checkpoint(proc, checkpoints: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(checkpoints.glob("checkpoint-*/distill-complete.json")):
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before it could be killed")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint appeared")


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path):
    student = tiny_model("qwen2")
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(TRACES))
    out = tmp_path / "student"
    args = ["train", "--student", str(student), "--traces", str(traces), "--out", str(out), "--max-steps", str(STEPS),
            "--batch-size", str(BATCH), "--save-steps", "20", "--logging-steps", "10", "--eval-fraction", "0",
            "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_checkpoint(proc, out / "checkpoints")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train.json").exists() and not (out / "model.safetensors").exists()

    result = CliRunner().invoke(cli.app, args)  # the same command again
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from_step"] >= 20
    logged = [step for step, _ in summary["loss_history"]["train"]]
    assert logged == [1] + list(range(10, STEPS + 1, 10))  # the history from before the kill is kept
    assert not (out / "checkpoints").exists()

    # Every epoch saw every trace exactly once: no batch lost or repeated across the kill.
    tok = AutoTokenizer.from_pretrained(student)
    samples, _ = encode_traces(tok, load_traces(str(traces), "r1").rows, end_of_turn(tok, "s"), 4096, "s")
    assert summary["tokens_seen"] == STEPS * BATCH // TRACES * sum(len(s["input_ids"]) for s in samples)
