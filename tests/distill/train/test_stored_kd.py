"""`distill train --method kd` without --teacher: KD from the teacher log-probs stored with the
traces, no teacher loaded. The sparse loss is the full forward KL when K covers the vocabulary
and matches a hand computation for a small K; bad inputs are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from distill import cli
from distill.core.config import build_config
from distill.generate.config import GenerateConfig
from distill.generate.stage import run as generate
from distill.train.config import TrainConfig
from distill.train.losses import divergence_sum
from distill.train.sparse_losses import StoredKD, stored_kd_sum
from distill.train.stage import run as train


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_the_sparse_loss_is_the_full_forward_kl_when_k_covers_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(7, 50, generator=g, requires_grad=True)
    teacher = torch.randn(7, 50, generator=g) * 2
    top = torch.sort(F.log_softmax(teacher, -1), -1, descending=True)
    stored = StoredKD(top.indices, top.values, torch.ones(7, dtype=torch.bool))
    sparse = stored_kd_sum(student, stored, slice(0, 7))
    full = divergence_sum(student, teacher, "forward_kl", 1.0)
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    (g_sparse,) = torch.autograd.grad(sparse, student)
    (g_full,) = torch.autograd.grad(divergence_sum(student, teacher, "forward_kl", 1.0), student)
    assert torch.allclose(g_sparse, g_full, atol=1e-5)


def test_the_sparse_loss_matches_a_hand_computation_for_small_k():
    student = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    p = [0.6, 0.3]                     # the teacher's top-2: tokens 3 and 0; 0.1 of its mass elsewhere
    stored = StoredKD(torch.tensor([[3, 0]]), torch.tensor([[math.log(0.6), math.log(0.3)]]), torch.tensor([True]))
    q = torch.softmax(student, -1)[0].tolist()
    q_top = [q[3], q[0]]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q_top)) + 0.1 * math.log(0.1 / (1 - sum(q_top)))
    assert stored_kd_sum(student, stored, slice(0, 1)).item() == pytest.approx(expected, rel=1e-5)
    unmatched = StoredKD(stored.ids, stored.logprobs, torch.tensor([False]))
    assert stored_kd_sum(student, unmatched, slice(0, 1)).item() == 0.0  # CE only where the ids do not fit


@pytest.fixture(scope="module")
def stored_traces(tmp_path_factory):
    """A generate folder of the demo teacher with its top-8 log-probs stored."""
    from distill.data import asset
    out = tmp_path_factory.mktemp("stored") / "g"
    generate(build_config(GenerateConfig, dict(teacher=f"hf:{asset('models', 'demo-teacher')}", prompts="demo",
                                               limit=24, n=1, max_new_tokens=96, logprobs=8, out=str(out))))
    return out


def test_kd_from_stored_log_probs_trains_with_no_teacher_loaded(stored_traces, tmp_path, monkeypatch):
    from distill.data import asset
    from distill.train import models
    loaded = []
    real = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda path, field, *a, **k: loaded.append(field) or
                        real(path, field, *a, **k))
    out = tmp_path / "student"
    train(build_config(TrainConfig, dict(student=str(asset("models", "demo-student-base")), traces=str(stored_traces),
                                         method="kd", out=str(out), max_steps=3, batch_size=4, max_seq_len=256,
                                         eval_fraction=0.0, logging_steps=1, threads=1)))
    assert loaded == ["student"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["kd_source"] == "stored" and summary["stored_logprobs"]["k"] == 8
    positions = summary["stored_logprobs"]
    assert positions["positions_matched"] > 0.8 * (positions["positions_matched"] + positions["positions_unmatched"])
    assert [s for s, _ in summary["loss_history"]["kd"]] == [1, 2, 3]


def _refused(args: list[str]) -> str:
    result = CliRunner().invoke(cli.app, ["train", *args, "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_traces_without_stored_log_probs_are_one_line(tiny_model, tmp_path):
    from tests.distill.train.helpers import trace_rows, write_jsonl
    traces = write_jsonl(tmp_path / "t.jsonl", trace_rows(4))
    line = _refused(["--student", str(tiny_model("qwen2")), "--traces", str(traces), "--method", "kd",
                     "--out", str(tmp_path / "o")])
    assert "no trace holds stored teacher log-probs" in line and "--logprobs" in line
    assert not (tmp_path / "o" / "train_summary.json").exists()


def test_stored_log_probs_of_another_vocabulary_are_one_line(stored_traces, tiny_model, tmp_path):
    smollm2_student = tiny_model("llama")  # SmolLM2's tokenizer; the traces are in the demo vocabulary
    line = _refused(["--student", str(smollm2_student), "--traces", str(stored_traces), "--method", "kd",
                     "--out", str(tmp_path / "o")])
    assert "another vocabulary" in line


def test_a_retempered_stored_kd_is_refused(stored_traces, tiny_model, tmp_path):
    line = _refused(["--student", str(tiny_model("qwen2")), "--traces", str(stored_traces), "--method", "kd",
                     "--kd-temperature", "2", "--out", str(tmp_path / "o")])
    assert "temperature 1" in line
