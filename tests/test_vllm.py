"""Against a real vLLM (the CPU build, tests/vllm_server.py) serving the demo's MoE teacher on
127.0.0.1: generate stores its log-probs (token ids returned by the server), on-policy training
scores the student's samples on the token-id path with the student's tokenizer and with another
family's (spans across tokenizers), and eval's openai backend scores the served model. The fake
servers of the other tests remain for faults (errors, stalls) that a real server does not make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distill import cli
from distill.core.config import build_config
from distill.core.io import read_jsonl
from distill.data import asset
from tests.vllm_server import vllm_server

TEACHER = asset("models", "demo-teacher")
STUDENT = asset("models", "demo-student-base")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> str:
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_server(TEACHER, served_name="teacher", max_model_len=512, log=log) as url:
        yield url


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _cli(*args: str):
    return CliRunner().invoke(cli.app, [*args, "--quiet"])


def _teacher_logprobs(ids: list[int]) -> np.ndarray:
    """The demo teacher's own log-prob of each token after the first, in this process."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return np.array([logp[j - 1, ids[j]].item() for j in range(1, len(ids))])


@pytest.mark.slow
def test_generate_stores_the_served_teachers_log_probs(served, tmp_path):
    from distill.core.teacher_logprobs import TokenLogprobs
    from distill.generate.config import GenerateConfig
    from distill.generate.stage import run
    out = tmp_path / "g"
    summary = run(build_config(GenerateConfig, dict(teacher=f"openai:{served}", model="teacher", prompts="demo",
                                                    limit=6, n=1, max_new_tokens=96, temperature=0.6,
                                                    logprobs=5, out=str(out))))
    assert summary["kept"] >= 4 and summary["logprobs"]["k"] == 5
    row = next(r for r in read_jsonl(out / "samples.jsonl") if r["kept"])
    stored = TokenLogprobs.unpack(row["teacher_logprobs"])
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    # the served chat template does not open the think block: the model writes <think> itself
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(stored.token_ids.tolist()).startswith("<think>")
    expected = _teacher_logprobs(prompt_ids + stored.token_ids.tolist())[len(prompt_ids) - 1:]
    assert np.allclose(stored.token_logprob.astype(np.float32)[:len(expected)], expected, atol=0.02)
    assert (stored.topk_ids[:, 0] >= 0).all()


@pytest.mark.slow
def test_a_k_above_the_servers_max_logprobs_is_one_line(served, tmp_path):
    result = _cli("generate", "--teacher", f"openai:{served}", "--model", "teacher", "--prompts", "demo",
                  "--limit", "2", "--logprobs", "25", "--out", str(tmp_path / "g"))
    assert result.exit_code == 2, result.output
    assert "allows at most 20 top log-probs per token, not 25" in result.output
    assert not (tmp_path / "g" / "samples.jsonl").exists()


def _on_policy(served: str, student: Path, traces: Path, out: Path, *extra: str) -> dict:
    result = _cli("train", "--method", "on-policy", "--student", str(student), "--teacher", f"openai:{served}",
                  "--model", "teacher", "--traces", str(traces), "--out", str(out), "--max-steps", "2",
                  "--batch-size", "2", "--samples-per-prompt", "2", "--max-new-tokens", "48", "--threads", "1",
                  "--eval-fraction", "0", "--logging-steps", "1", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow
def test_on_policy_token_ids_with_the_students_tokenizer(served, tmp_path):
    from tests.distill.train.helpers import trace_rows, write_jsonl
    traces = write_jsonl(tmp_path / "t.jsonl", trace_rows(4))
    summary = _on_policy(served, STUDENT, traces, tmp_path / "o")
    assert summary["on_policy"]["server_api"] == "token-ids" and summary["on_policy"]["cross_tokenizer"] is False
    assert summary["on_policy"]["sequences_refused"] == 0 and len(summary["loss_history"]["reverse_kl"]) == 2

    from distill.train.served_teacher import ServedTeacher
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    teacher = ServedTeacher(served, "teacher", "EMPTY")
    teacher.check(tokenizer)
    from distill.core.chat import render_prompt
    prompt = tokenizer(render_prompt(tokenizer, "What is 3 + 4?"), add_special_tokens=False)["input_ids"]
    completion = tokenizer("3 + 4 = 7\n</think>\n\n\\boxed{7}<|im_end|>", add_special_tokens=False)["input_ids"]
    (scored,) = teacher.score([{"input_ids": np.asarray(prompt + completion), "prompt_len": len(prompt)}])
    expected = _teacher_logprobs(prompt + completion)[len(prompt) - 1:]
    assert np.allclose(scored["teacher"], expected, atol=2e-3)


@pytest.mark.slow
def test_on_policy_across_tokenizers_from_the_served_teacher(served, tiny_model, tmp_path):
    """A student of SmolLM2's vocabulary learns from the served demo teacher (its own 508-token
    vocabulary): scored in the teacher's tokens, aligned on shared byte boundaries."""
    from tests.distill.train.helpers import trace_rows, write_jsonl
    traces = write_jsonl(tmp_path / "t.jsonl", trace_rows(4))
    student = tiny_model("llama", seed=2)
    summary = _on_policy(served, student, traces, tmp_path / "o", "--teacher-tokenizer", str(TEACHER))
    assert summary["on_policy"]["cross_tokenizer"] is True and summary["on_policy"]["sequences_refused"] == 0
    assert len(summary["loss_history"]["reverse_kl"]) == 2


@pytest.mark.slow
def test_eval_scores_the_served_teacher(served, tmp_path):
    result = _cli("eval", "--model", f"openai:{served}", "--served-model", "teacher", "--label", "served",
                  "--benchmark", "demo", "--limit", "8", "--max-new-tokens", "128", "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "e" / "report.json").read_text())["results"]
    assert row["backend"] == "openai" and row["n_problems"] == 8 and row["pass_at_1"] >= 0.75, row
