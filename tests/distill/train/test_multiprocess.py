"""`accelerate launch --multi_gpu --num_processes 2 -m distill train` on a CPU (two processes,
gloo): one model folder, one record, one summary, the planned optimizer steps, the loss going
down; then every process of a run killed with SIGKILL after a checkpoint exists, and the same
command resuming from that checkpoint.

The launcher starts torch's elastic agent, which starts the workers in their own sessions, so
killing the launcher (or its process group) alone leaves them training: the test kills every
descendant it finds through psutil, and checks that none is left."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .helpers import trace_rows, write_jsonl

REPO = Path(__file__).resolve().parents[3]
TRACES, BATCH, STEPS = 24, 2, 24   # 2 processes x 2 traces: 6 optimizer steps an epoch, 4 epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(student: Path, traces: Path, out: Path, steps: int, save_steps: int, optimizer: str,
            extra: tuple = (), **popen):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "distill", "train", "--student", str(student), "--traces", str(traces), "--out", str(out),
               "--max-steps", str(steps), "--batch-size", str(BATCH), "--save-steps", str(save_steps),
               "--logging-steps", "2", "--eval-fraction", "0", "--lr", "2e-3", "--optimizer", optimizer,
               "--threads", "1", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _kill_everything(launcher: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher and all its descendants (collected first: killed parents orphan them)."""
    root = psutil.Process(launcher.pid)
    everyone = [root] + root.children(recursive=True)
    for p in everyone:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    launcher.wait()
    gone, alive = psutil.wait_procs(everyone, timeout=10)
    assert not alive, f"still running after SIGKILL: {[p.pid for p in alive]}"
    return [p.pid for p in everyone]


# muon: the two-part optimizer (Muon + AdamW) is checkpointed and restored under DDP as AdamW is
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_cpu_processes_train_and_resume_after_every_process_is_killed(optimizer, tiny_model, tmp_path):
    student = tiny_model("qwen2")
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(TRACES))
    out = tmp_path / "student"

    # A run killed, every process of it, after its first checkpoint.
    proc = _launch(student, traces, out, steps=STEPS, save_steps=2, optimizer=optimizer, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("checkpoint-*/distill-complete.json")):
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "distill" in " ".join(p.cmdline())]
    assert len(workers) >= 2, "expected two training workers"
    assert {os.getsid(p.pid) for p in workers} != {os.getsid(proc.pid)}, \
        "the workers share the launcher's session: the test would not exercise killing them separately"
    _kill_everything(proc)
    assert not (out / "model.safetensors").exists() and not (out / "train.json").exists()
    done = sorted(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/distill-complete.json"))
    assert done[-1] < STEPS, "the run finished before the kill: the test proved nothing"

    # The same command again: it resumes and finishes, as one model with one record and summary.
    proc = _launch(student, traces, out, steps=STEPS, save_steps=2, optimizer=optimizer)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob(".tmp-*")) and not (out / "checkpoints").exists()
    record = json.loads((out / "train.json").read_text())
    assert record["stage"] == "train" and record["result"]["steps"] == STEPS
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from_step"] == done[-1] > 0
    assert summary["device"].startswith("2 processes x CPU")
    assert summary["peak_memory"]["processes"] == 2 and summary["peak_memory"]["mb"] > 100
    losses = [loss for _, loss in summary["loss_history"]["train"]]
    assert losses[-1] < losses[0], losses
    # STEPS x 2 processes x BATCH traces seen: each process trained on its own share
    assert summary["epochs"] == pytest.approx(STEPS * 2 * BATCH / TRACES, abs=0.01)


def test_two_cpu_processes_train_on_policy(tiny_model, tmp_path):
    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(TRACES))
    out = tmp_path / "student"
    proc = _launch(student, traces, out, steps=4, save_steps=2, optimizer="adamw",
                   extra=("--method", "on-policy", "--teacher", str(teacher), "--samples-per-prompt", "2",
                          "--max-new-tokens", "16", "--logging-steps", "1"))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == "on-policy" and summary["steps"] == 4
    assert summary["device"].startswith("2 processes x CPU")
    assert [step for step, _ in summary["loss_history"]["reverse_kl"]] == [1, 2, 3, 4]
    assert all(math.isfinite(value) and value >= 0 for _, value in summary["loss_history"]["reverse_kl"])
