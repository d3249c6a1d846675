"""On-policy distillation (`distill train --method on-policy`): the two loss forms against hand
computations, the reverse KL going down with a local MoE teacher, served teachers on 127.0.0.1
(a real llama-cpp-python server for the text path, a vLLM-style server over llama-cpp-python for
the token-id path) whose log-probs must equal the in-process teacher's, faults, bad inputs and
kill-and-resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from distill import cli
from distill.core.chat import render_prompt
from distill.core.config import build_config
from distill.core.errors import UserError
from distill.train.stage import run
from distill.train.config import TrainConfig
from distill.train.onpolicy import REVERSE_KL
from distill.train.served_teacher import ServedTeacher
from distill.train.trainer import loss_sums
from tests.conftest import build_tiny_model
from tests.distill.generate.servers import llama_server

from .helpers import tokenizer_folder, trace_rows, write_jsonl
from .scoring_server import VLLMStyleScorer

REPO = Path(__file__).resolve().parents[3]
FAST = dict(threads=1, batch_size=2, samples_per_prompt=2, max_new_tokens=20, lr=2e-3, logging_steps=1,
            save_steps=100, eval_fraction=0.0, warmup_ratio=0.0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _config(**values) -> TrainConfig:
    return build_config(TrainConfig, {"method": "on-policy", **FAST, **values})


def _gguf(folder: Path) -> Path:
    from distill.export.gguf_writer import write_gguf
    from distill.export.source import check_model_folder, model_facts
    out = folder / "teacher-f32.gguf"
    if not out.is_file():
        config = check_model_folder(folder)
        write_gguf(folder, config, model_facts(folder, config), out, "f32", "teacher")
    return out


@pytest.fixture(scope="module")
def dense_teacher(tiny_model):
    """A dense teacher (the GGUF writer takes dense architectures) of the demo tokenizer, no BOS."""
    folder = tiny_model("qwen3", seed=5, initializer_range=0.1)
    return folder, _gguf(folder)


@pytest.fixture(scope="module")
def bos_models(tmp_path_factory):
    """Student and teacher whose chat template begins with BOS (Llama 3 style), small vocabulary."""
    tmp = tmp_path_factory.mktemp("bos")
    tokenizer = tokenizer_folder("llama3", tmp)
    student = build_tiny_model("llama", tokenizer, tmp / "student", seed=0)
    teacher = build_tiny_model("llama", tokenizer, tmp / "teacher", seed=6, initializer_range=0.1)
    return student, teacher, _gguf(teacher)


def _in_process_logprobs(folder: Path, ids: list[int]) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [logp[j - 1, ids[j]].item() for j in range(1, len(ids))]


def _trace_sequences(tokenizer, n: int = 4) -> list[dict]:
    """Canonically tokenized prompt + completion sequences (what a trained student samples)."""
    out = []
    for row in trace_rows(n):
        prompt = render_prompt(tokenizer, row["prompt"])
        completion = f"{row['reasoning']}\n</think>\n\n{row['answer']}<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() \
            else f"{row['reasoning']}\n</think>\n\n{row['answer']}<|eot_id|>"
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        assert ids[:len(p_ids)] == p_ids
        out.append({"input_ids": np.asarray(ids, dtype=np.int32), "prompt_len": len(p_ids)})
    return out


def _split_one_token(tokenizer, seq: dict) -> dict:
    """The same text, with one multi-character completion token sampled as its characters: what a
    student may sample, and what the server, tokenizing the text, does not read back."""
    ids = seq["input_ids"].tolist()
    for at in range(seq["prompt_len"], len(ids)):
        piece = tokenizer.convert_ids_to_tokens(ids[at])
        chars = tokenizer.convert_tokens_to_ids(list(piece))
        if len(piece) > 1 and tokenizer.unk_token_id not in chars and None not in chars:
            split = ids[:at] + chars + ids[at + 1:]
            assert tokenizer.decode(split) == tokenizer.decode(ids)
            return {"input_ids": np.asarray(split, dtype=np.int32), "prompt_len": seq["prompt_len"]}
    raise AssertionError("no multi-character token to split")


# --- the two loss forms, by hand -------------------------------------------------------------

class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at each position are given (and trainable): the final hidden state
    at position p is the one-hot vector e_p, and the output head's weight is the table transposed,
    so the loss takes the same path through the head as for a real model."""

    def __init__(self, logits):
        super().__init__()
        from types import SimpleNamespace
        table = torch.tensor(logits, dtype=torch.float32)
        self.head = torch.nn.Linear(table.shape[0], table.shape[1], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(table.T)
        self.config = SimpleNamespace()

    def get_output_embeddings(self):
        return self.head

    @property
    def table_grad(self) -> torch.Tensor:
        return self.head.weight.grad.T

    def forward(self, input_ids=None, logits_to_keep=None, **_):
        from types import SimpleNamespace
        hidden = torch.eye(self.head.in_features)[logits_to_keep[0]].unsqueeze(0)
        return SimpleNamespace(logits=self.head(hidden))


def _handwritten_batch():
    # prompt of 2 tokens, completion [2, 0]: positions 1 and 2 are trained (targets 2 and 0)
    return {"input_ids": torch.tensor([[1, 0, 2, 0]]), "shift_labels": torch.tensor([[-100, 2, 0, -100]])}


STUDENT = [[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 0.0]]
TEACHER = [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_full_distribution_reverse_kl_matches_a_hand_computation():
    expected = 0.0
    for position in (1, 2):
        p, q = _softmax(STUDENT[position]), _softmax(TEACHER[position])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    total, _, divergence, count = loss_sums(FixedLogits(STUDENT), _handwritten_batch(), FixedLogits(TEACHER), REVERSE_KL)
    assert count == 2
    assert total.item() == pytest.approx(expected, rel=1e-6) and divergence.item() == pytest.approx(expected, rel=1e-6)


def _policy_batch(**extra):
    batch = _handwritten_batch()
    batch.update({k: torch.tensor(v) for k, v in extra.items()})
    return batch


def test_sampled_token_policy_gradient_matches_a_hand_computation():
    """The advantage and the loss come from one forward inside the head (no second pass reading
    the head's weight): loss = -sum (log p_t - log p_s) log p_s, gradient -a (onehot - p)."""
    student = FixedLogits(STUDENT)
    sampled = [(1, 2), (2, 0)]  # (position, sampled token)
    log_s = [math.log(_softmax(STUDENT[i])[x]) for i, x in sampled]
    log_t = [math.log(_softmax(TEACHER[i])[x]) for i, x in sampled]
    advantage = [t - s for s, t in zip(log_s, log_t)]
    total, _, divergence, count = loss_sums(student, _policy_batch(teacher=log_t))
    assert count == 2 and total.item() == pytest.approx(sum(-a * s for a, s in zip(advantage, log_s)), rel=1e-6)
    assert divergence.item() == pytest.approx(sum(s - t for s, t in zip(log_s, log_t)), rel=1e-6)
    total.backward()
    for (position, token), a in zip(sampled, advantage):  # d/dz of -a log softmax(z)[x] = -a (onehot - p)
        p = _softmax(STUDENT[position])
        expected = [-a * ((1.0 if v == token else 0.0) - p[v]) for v in range(3)]
        assert student.table_grad[position].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_sampling_at_another_temperature_is_corrected_by_importance_weights():
    """Tokens drawn at temperature 0.5 (and top-p) come from q, not from the learner p: each term is
    weighed by W = p(x) / q(x), for the gradient and for the logged reverse KL (hand-computed)."""
    student = FixedLogits(STUDENT)
    sampled = [(1, 2), (2, 0)]
    log_s = [math.log(_softmax(STUDENT[i])[x]) for i, x in sampled]
    log_t = [math.log(_softmax(TEACHER[i])[x]) for i, x in sampled]
    log_q = [math.log(_softmax([2 * v for v in STUDENT[i]])[x]) for i, x in sampled]  # T = 0.5
    w = [math.exp(s - q) for s, q in zip(log_s, log_q)]
    total, _, divergence, _ = loss_sums(student, _policy_batch(teacher=log_t, sampler=log_q))
    assert total.item() == pytest.approx(sum(-wi * (t - s) * s for wi, s, t in zip(w, log_s, log_t)), rel=1e-6)
    assert divergence.item() == pytest.approx(sum(wi * (s - t) for wi, s, t in zip(w, log_s, log_t)), rel=1e-6)
    total.backward()
    for (position, token), wi, s, t in zip(sampled, w, log_s, log_t):
        p = _softmax(STUDENT[position])
        expected = [-wi * (t - s) * ((1.0 if v == token else 0.0) - p[v]) for v in range(3)]
        assert student.table_grad[position].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_one_span_of_two_tokens_shares_one_advantage():
    """Across tokenizers a span's advantage is log p_t(span) - log p_s(span), given to each of its
    student tokens; with one token per span that is the per-token form above."""
    sampled = [(1, 2), (2, 0)]
    log_s = [math.log(_softmax(STUDENT[i])[x]) for i, x in sampled]
    teacher_span = -1.25  # the teacher's log-prob of the whole span (its own tokens summed)
    advantage = teacher_span - sum(log_s)
    total, _, divergence, _ = loss_sums(FixedLogits(STUDENT), _policy_batch(teacher=[teacher_span] * 2, span=[0, 0]))
    assert total.item() == pytest.approx(-advantage * sum(log_s), rel=1e-6)
    assert divergence.item() == pytest.approx(sum(log_s) - teacher_span, rel=1e-6)
    per_token = loss_sums(FixedLogits(STUDENT), _policy_batch(teacher=[-0.5, -0.75], span=[0, 1]))[0]
    same = loss_sums(FixedLogits(STUDENT), _policy_batch(teacher=[-0.5, -0.75]))[0]
    assert per_token.item() == pytest.approx(same.item(), rel=1e-7)


# --- local teacher ---------------------------------------------------------------------------

def test_reverse_kl_to_a_local_moe_teacher_goes_down(tiny_model, tmp_path):
    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(12))
    out = tmp_path / "student"
    result = run(_config(student=str(student), teacher=f"hf:{teacher}", traces=str(traces), out=str(out),
                         max_steps=10, eval_fraction=0.34, eval_steps=3, lr=3e-3))
    summary = json.loads((out / "train_summary.json").read_text())
    history = summary["loss_history"]
    assert [s for s, _ in history["reverse_kl"]] == list(range(1, 11))
    # the held-out prompts are sampled alike at every evaluation: a fixed prompt set
    heldout = [v for _, v in history["heldout"]]
    assert len(heldout) >= 3 and heldout[-1] < 0.9 * heldout[0], heldout
    assert result["reverse_kl"] == history["reverse_kl"][-1][1]
    assert summary["on_policy"]["samples_per_prompt"] == 2 and summary["method"] == "on-policy"
    assert (out / "loss.png").stat().st_size > 0 and (out / "model.safetensors").is_file()


def test_a_local_teacher_with_another_tokenizer_trains_on_spans(tiny_model, tmp_path, bos_models):
    student = tiny_model("qwen2")
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(4))
    run(_config(student=str(student), teacher=str(bos_models[1]), traces=str(traces), out=str(tmp_path / "o"),
                max_steps=2))
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert summary["on_policy"]["cross_tokenizer"] is True
    assert summary["on_policy"]["sequences_refused"] == 0 and summary["loss_history"]["reverse_kl"]


# --- served teachers -------------------------------------------------------------------------

def test_token_id_server_log_probs_equal_the_in_process_teacher(dense_teacher):
    folder, gguf = dense_teacher
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = _trace_sequences(tokenizer)
    with VLLMStyleScorer(gguf) as server:
        teacher = ServedTeacher(server.url, "teacher", "EMPTY")
        teacher.check(tokenizer)
        assert teacher.api == "token-ids"
        scores = teacher.score(sequences)
    for seq, got in zip(sequences, scores):
        ids = seq["input_ids"].tolist()
        expected = _in_process_logprobs(folder, ids)[seq["prompt_len"] - 1:]
        assert got is not None and len(got["teacher"]) == len(ids) - seq["prompt_len"]
        got = got["teacher"]
        assert np.allclose(got, expected, atol=2e-3), np.abs(np.subtract(got, expected)).max()


def test_llama_cpp_text_server_log_probs_equal_the_in_process_teacher(bos_models, tmp_path):
    _, folder, gguf = bos_models
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = _trace_sequences(tokenizer)
    with llama_server(gguf, log=tmp_path / "server.log") as url:
        teacher = ServedTeacher(url, "teacher", "EMPTY")
        teacher.check(tokenizer)
        assert teacher.api == "text"  # it answered the token-id prompt with an error
        scores = teacher.score(sequences + [_split_one_token(tokenizer, sequences[0])])
    assert scores[-1] is None  # the server reads other tokens than those sampled: refused, not trained on
    for seq, got in zip(sequences, scores):
        ids = seq["input_ids"].tolist()
        expected = _in_process_logprobs(folder, ids)[seq["prompt_len"] - 1:]
        assert got is not None and np.allclose(got["teacher"], expected, atol=2e-3), got


def test_a_text_server_without_bos_is_refused_with_the_reason(dense_teacher, tmp_path):
    folder, gguf = dense_teacher
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with llama_server(gguf, log=tmp_path / "server.log") as url:
        with pytest.raises(UserError, match="without BOS"):
            ServedTeacher(url, "teacher", "EMPTY").check(tokenizer)


def test_a_server_without_log_probs_is_refused(dense_teacher):
    folder, gguf = dense_teacher
    with VLLMStyleScorer(gguf, prompt_logprobs=False) as server:
        with pytest.raises(UserError, match="returns no log-probs.*prompt_logprobs"):
            ServedTeacher(server.url, "teacher", "EMPTY").check(AutoTokenizer.from_pretrained(folder))


def test_bad_on_policy_settings_are_one_line_errors(tiny_model, tmp_path):
    student = tiny_model("qwen2")
    runner = CliRunner()
    base = ["train", "--student", str(student), "--traces", str(tmp_path), "--method", "on-policy"]
    cases = [([], "needs --teacher"), (["--teacher", "openai:http://127.0.0.1:9/v1"], "needs --model"),
             (["--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m", "--temperature", "0"], "temperature"),
             (["--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m", "--prompts", "demo"], "cannot connect")]
    for extra, message in cases:
        result = runner.invoke(cli.app, base + extra + ["--quiet"])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow
def test_a_flaky_server_is_retried_and_no_step_is_lost_or_repeated(tiny_model, dense_teacher, tmp_path):
    student = tiny_model("qwen2")
    _, gguf = dense_teacher
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(6))
    outs = {}
    for name, faults in (("clean", {}), ("flaky", {"error500": 0.25, "stall": 0.1})):
        with VLLMStyleScorer(gguf, faults=faults, seed=3, stall_s=1.5) as server:
            outs[name] = tmp_path / name
            run(_config(student=str(student), teacher=f"openai:{server.url}", model="teacher", traces=str(traces),
                        out=str(outs[name]), max_steps=4, request_timeout=0.75, retry_wait=0.01, concurrency=4))
            if faults:
                assert sum(server.faults_served.values()) > 0
    flaky = json.loads((outs["flaky"] / "train_summary.json").read_text())
    assert flaky["steps"] == 4 and [s for s, _ in flaky["loss_history"]["reverse_kl"]] == [1, 2, 3, 4]
    assert flaky["on_policy"]["request_retries"] > 0 and flaky["on_policy"]["sequences_scored"] == 4 * 2 * 2
    clean = json.loads((outs["clean"] / "train_summary.json").read_text())
    assert flaky["loss_history"]["reverse_kl"] == clean["loss_history"]["reverse_kl"]
    assert _same_weights(outs["clean"], outs["flaky"])  # the same steps on the same scores


@pytest.mark.slow
def test_a_killed_on_policy_run_resumes_to_the_same_student(tiny_model, tmp_path):
    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(8))

    def args(out):
        return ["train", "--method", "on-policy", "--student", str(student), "--teacher", str(teacher),
                "--traces", str(traces), "--out", str(out), "--max-steps", "8", "--batch-size", "2",
                "--samples-per-prompt", "2", "--max-new-tokens", "16", "--save-steps", "2", "--logging-steps", "1",
                "--eval-fraction", "0", "--lr", "2e-3", "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((killed / "checkpoints").glob("checkpoint-*/distill-complete.json")):
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()

    for out in (killed, tmp_path / "whole"):
        result = CliRunner().invoke(cli.app, args(out))
        assert result.exit_code == 0, result.output
    resumed = json.loads((killed / "train_summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "train_summary.json").read_text())
    assert resumed["resumed_from_step"] >= 2 and resumed["steps"] == 8
    assert [s for s, _ in resumed["loss_history"]["reverse_kl"]] == list(range(1, 9))
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    assert resumed["loss_history"]["reverse_kl"] == whole["loss_history"]["reverse_kl"]
    assert _same_weights(killed, tmp_path / "whole")


def test_a_pipeline_trains_twice_each_stage_with_its_own_folder_and_record(tiny_model, tmp_path):
    from distill.pipeline import PipelineConfig
    from distill.pipeline import run as run_pipeline
    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(6))
    common = "threads: 1\n  batch_size: 2\n  logging_steps: 1\n  eval_fraction: 0.0\n  max_steps: 2\n  lr: 1.0e-3"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""
train.sft:
  student: {student}
  traces: {traces}
  {common}
train:
  method: on-policy
  teacher: hf:{teacher}
  traces: {traces}
  samples_per_prompt: 2
  max_new_tokens: 12
  {common}
""")
    out = tmp_path / "run"
    first = run_pipeline(PipelineConfig(str(pipeline), str(out), seed=7))
    assert [first[k]["status"] for k in ("train.sft", "train")] == ["ran", "ran"]
    sft = json.loads((out / "student-sft" / "train.json").read_text())
    final = json.loads((out / "student" / "train.json").read_text())
    assert sft["config"]["method"] == "sft" and final["config"]["method"] == "on-policy"
    assert final["config"]["student"] == str(out / "student-sft")  # from the SFT model
    assert sft["config"]["seed"] == final["config"]["seed"] == 7
    again = run_pipeline(PipelineConfig(str(pipeline), str(out), seed=7))
    assert [again[k]["status"] for k in ("train.sft", "train")] == ["skipped", "skipped"]
    reseeded = run_pipeline(PipelineConfig(str(pipeline), str(out), seed=8))
    assert [reseeded[k]["status"] for k in ("train.sft", "train")] == ["ran", "ran"]


# --- the served path's defects, each fixed ---------------------------------------------------

def test_a_server_context_too_short_is_refused_before_training(tiny_model, dense_teacher, tmp_path):
    student = tiny_model("qwen2")
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(4))
    with VLLMStyleScorer(dense_teacher[1], max_model_len=100) as server:
        result = CliRunner().invoke(cli.app, ["train", "--method", "on-policy", "--student", str(student),
                                              "--teacher", f"openai:{server.url}", "--model", "teacher",
                                              "--traces", str(traces), "--out", str(tmp_path / "o"),
                                              "--max-new-tokens", "200", "--max-steps", "1", "--quiet"])
        assert server.scored == {} or sum(server.scored.values()) <= 1  # the probe only: no step was scored
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit the server's context of 100 tokens" in lines[0]
    assert not (tmp_path / "o" / "train_summary.json").exists()


def test_a_sequence_the_server_refuses_mid_run_is_one_line_naming_lengths(dense_teacher):
    folder, gguf = dense_teacher
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = _trace_sequences(tokenizer, 2)
    with VLLMStyleScorer(gguf) as server:
        teacher = ServedTeacher(server.url, "teacher", "EMPTY")
        teacher.check(tokenizer)
        server.max_model_len = 20  # the server's limit, which it did not announce
        with pytest.raises(UserError, match=r"refused a sequence of up to \d+ tokens .*HTTP 400.*maximum context"):
            teacher.score(sequences)


def test_a_token_id_server_without_tokenize_is_checked_through_its_echoed_tokens(tiny_model, dense_teacher):
    student_tokenizer = AutoTokenizer.from_pretrained(tiny_model("qwen2"))
    smollm2_teacher = _gguf(tiny_model("llama", seed=7))  # SmolLM2's vocabulary, no /tokenize
    with VLLMStyleScorer(smollm2_teacher, tokenize=False) as server:
        with pytest.raises(UserError, match="tokenizer differs"):
            ServedTeacher(server.url, "teacher", "EMPTY").check(student_tokenizer)
    with VLLMStyleScorer(dense_teacher[1], tokenize=False) as server:  # the student's vocabulary
        teacher = ServedTeacher(server.url, "teacher", "EMPTY")
        teacher.check(student_tokenizer)
        assert teacher.api == "token-ids"


def _fixed_rollouts(monkeypatch):
    """Every prompt's rollout is its own trace, whatever the seed: completions of different
    lengths, the same in every run."""
    from distill.train import onpolicy

    def sample(self, model, items, seed):
        out = []
        for item in items:
            trace = item["trace"]
            out.append({"input_ids": trace["input_ids"], "prompt_len": trace["prompt_len"],
                        "prompt_index": item["index"], "user_text": item["user_text"], "stopped": True,
                        "sampler": np.zeros(len(trace["input_ids"]) - trace["prompt_len"], dtype=np.float32)})
        return out
    monkeypatch.setattr(onpolicy.OnPolicyTrainer, "sample", sample)


def _first_step_gradient(student, teacher, traces, out, monkeypatch, **values) -> dict:
    from transformers import TrainerCallback

    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not grads:
                grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    from distill.train import setup
    real = setup.build_trainer

    def with_grab(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.add_callback(Grab())
        return trainer
    monkeypatch.setattr(setup, "build_trainer", with_grab)
    from distill.train import stage
    monkeypatch.setattr(stage, "build_trainer", with_grab)
    run(_config(student=str(student), teacher=str(teacher), traces=str(traces), out=str(out), max_steps=1,
                lr=1e-9, max_grad_norm=0.0, **values))
    return grads


def test_the_loss_is_normalized_by_the_sampled_tokens_of_the_whole_accumulated_batch(tiny_model, tmp_path,
                                                                                        monkeypatch):
    """Two micro-batches of one prompt each give the gradient of one batch of both prompts: each
    sampled token weighs the same, however the tokens fall into micro-batches (a per-micro-batch
    mean would weigh the tokens of the shorter completion more)."""
    _fixed_rollouts(monkeypatch)
    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    rows = trace_rows(2)
    rows[1]["reasoning"] = rows[1]["reasoning"] + "\n" + rows[1]["reasoning"]  # a longer completion
    traces = write_jsonl(tmp_path / "traces.jsonl", rows)
    one = _first_step_gradient(student, teacher, traces, tmp_path / "one", monkeypatch, batch_size=2, grad_accum=1,
                               samples_per_prompt=1)
    two = _first_step_gradient(student, teacher, traces, tmp_path / "two", monkeypatch, batch_size=1, grad_accum=2,
                               samples_per_prompt=1)
    assert one and one.keys() == two.keys()
    worst = max((one[n] - two[n]).abs().max().item() / (one[n].abs().max().item() + 1e-12) for n in one)
    assert worst < 1e-4, worst


def test_the_on_policy_forward_has_no_dropout(tiny_model, tmp_path):
    """LoRA's dropout (0.05) would make the advantage of a sample depend on the dropout mask: the
    same rollouts give the same loss twice in training mode."""
    from distill.train.setup import TrainData
    from distill.train.stage import prepare, device_settings, build_trainer
    from distill.train.trainer import StepClock

    student, teacher = tiny_model("qwen2"), tiny_model("qwen3_moe", seed=1, initializer_range=0.1)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(4))
    config = _config(student=str(student), teacher=str(teacher), traces=str(traces), out=str(tmp_path / "o"),
                     lora=True, lora_dropout=0.5, max_steps=1)
    data: TrainData = prepare(config)
    trainer = build_trainer(config, data, device_settings(config), tmp_path / "ck", "x", StepClock())
    model = trainer.model
    model.train()
    batch = trainer.rollout_batch(model, {"prompt_index": torch.tensor([0, 1])}, seed=1)
    losses = [trainer.compute_loss(model, dict(batch), num_items_in_batch=None).item() for _ in range(3)]
    assert losses[0] == losses[1] == losses[2]
    assert any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))  # restored after


def test_across_tokenizers_the_span_form_with_one_tokenizer_is_the_per_token_form(dense_teacher):
    """The cross-tokenizer scorer, given the student's own tokenizer, cuts every token into a span
    of its own and gives it the teacher's log-prob of that token: the advantages are today's."""
    from distill.train.cross_tokenizer import CrossTokenizerScorer, local_logprobs

    folder, _ = dense_teacher
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sequences = _trace_sequences(tokenizer, 3)
    rollouts = [{**seq, "stopped": True, "user_text": row["prompt"]}
                for seq, row in zip(sequences, trace_rows(3))]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    scored = CrossTokenizerScorer(tokenizer, tokenizer, eot, local_logprobs(model), "t").score(rollouts)
    for seq, got in zip(sequences, scored):
        ids = seq["input_ids"].tolist()
        per_token = _in_process_logprobs(folder, ids)[seq["prompt_len"] - 1:]
        assert got["span"].tolist() == list(range(len(per_token)))
        assert np.allclose(got["teacher"], per_token, atol=1e-4)


def test_spans_cut_only_where_both_tokenizations_have_a_boundary():
    from distill.train.cross_tokenizer import span_logprobs, spans
    student = [0, 2, 5, 7, 9]  # byte offsets after 0..4 student tokens: tokens [0,2) [2,5) [5,7) [7,9)
    teacher = [0, 3, 5, 9]     # teacher tokens [0,3) [3,5) [5,9)
    s_span, t_span = spans(student, teacher)
    assert s_span.tolist() == [0, 0, 1, 1] and t_span.tolist() == [0, 0, 1]
    assert span_logprobs(s_span, t_span, [-1.0, -2.0, -0.5]).tolist() == [-3.0, -3.0, -0.5, -0.5]
    # a boundary inside a character (None) is no boundary
    assert spans([0, None, 4], [0, 2, 4])[0].tolist() == [0, 0]
