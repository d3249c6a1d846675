"""bench/gpu.py, the training bench for a lent GPU, run here at tiny sizes on a CPU (--smoke): the
same code as on the GPU, so that it cannot rot while no GPU is at hand; and its one-line refusal
without a GPU."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

GPU_BENCH = REPO / "bench" / "gpu.py"


def test_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(GPU_BENCH), "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_smoke_runs_every_part_and_compares_like_with_like(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(GPU_BENCH), "--smoke", "--out", str(out), "--budget", "1200"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["environment"]["smoke"] and r["build"]["traces"] >= 4
    for kind in ("full", "lora"):
        ours, trl = r[f"ours-{kind}"], r[f"trl-{kind}"]
        for side in (ours, trl):
            assert side["tokens_per_second"] > 0 and side["steps_counted"] >= 1
            # the GPU image has none of these: the measured code must not need them
            assert side["imported_absent_modules"] == []
        # both trainers see the same work: the same tokens a step and the same trained parameters
        assert abs(ours["tokens_per_step"] - trl["tokens_per_step"]) <= 0.02 * trl["tokens_per_step"]
        assert ours["trainable_parameters"] == trl["trainable_parameters"]
        assert ours["estimate_bytes"] > 0 and trl["padding_free"]
    assert r["ours-lora"]["trainable_parameters"] < r["ours-full"]["trainable_parameters"]
    onpolicy = r["onpolicy"]
    assert onpolicy["imported_absent_modules"] == []
    for part in ("sampling_seconds", "scoring_seconds", "update_seconds"):
        assert onpolicy["last_step"][part] > 0, part  # each span is found where the trainer does it
    assert onpolicy["sampled_tokens_per_sequence"] > 0
    assert r["trl-full-liger"]["skipped"]  # Triton kernels: never on a CPU
    assert "| ours-full |" in proc.stdout and "on-policy step" in proc.stdout
