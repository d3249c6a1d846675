"""`distill generate --logprobs K`: the teacher's log-prob of every sampled token and its top-K,
stored with the traces; they survive a resume, --shard/--merge and the filters; the values are the
teacher's own; a server that refuses K or returns none is one line before any work."""

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
from distill.core.teacher_logprobs import COLUMNS, META_FILE, TokenLogprobs, bytes_per_token
from distill.generate.config import GenerateConfig
from distill.generate.stage import run
from tests.distill.generate.servers import FakeOpenAI

K = 4


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _generate(teacher: Path, out: Path, **values) -> dict:
    settings = dict(teacher=f"hf:{teacher}", prompts="demo", limit=6, n=2, max_new_tokens=96, temperature=1.0,
                    top_p=1.0, logprobs=K, out=str(out), **values)
    return run(build_config(GenerateConfig, settings))


def _traces(out: Path):
    from datasets import load_from_disk
    return load_from_disk(str(out / "traces"))


@pytest.fixture(scope="module")
def teacher():
    """The demo's MoE teacher: it solves the demo problems, so traces are kept."""
    from distill.data import asset
    return asset("models", "demo-teacher")


def test_stored_log_probs_are_the_teachers_own(teacher, tmp_path):
    from transformers import AutoModelForCausalLM
    summary = _generate(teacher, tmp_path / "g", min_pass_rate=0.0)
    rows = [r for r in read_jsonl(tmp_path / "g" / "samples.jsonl")]
    assert summary["logprobs"] == {"k": K, "bytes_per_token": bytes_per_token(K), "kept_tokens": summary["logprobs"]["kept_tokens"]}
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    from distill.core.chat import render_prompt
    row = rows[0]
    stored = TokenLogprobs.unpack(row["teacher_logprobs"])
    prompt = tokenizer(render_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
    ids = prompt + stored.token_ids.tolist()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for j, token in enumerate(stored.token_ids.tolist()):
        at = logp[len(prompt) + j - 1]
        assert float(stored.token_logprob[j]) == pytest.approx(at[token].item(), abs=2e-2)  # float16
        top = torch.topk(at, K)
        assert stored.topk_ids[j].tolist() == top.indices.tolist()
        assert np.allclose(stored.topk_logprobs[j].astype(np.float32), top.values.numpy(), atol=2e-2)


def test_the_traces_carry_the_columns_and_the_vocabulary_probe(teacher, tmp_path):
    _generate(teacher, tmp_path / "g", min_pass_rate=0.0, max_pass_rate=1.0)
    traces = _traces(tmp_path / "g")
    kept = [r for r in read_jsonl(tmp_path / "g" / "samples.jsonl") if r["kept"]]
    assert set(COLUMNS) <= set(traces.column_names) and len(traces) == len(kept) > 0
    for trace in traces:
        assert len(trace["teacher_token_ids"]) == len(trace["teacher_topk_ids"]) > 0
        assert all(len(row) == K for row in trace["teacher_topk_ids"])
    meta = json.loads((tmp_path / "g" / "traces" / META_FILE).read_text())
    from transformers import AutoTokenizer
    from distill.core.teacher_logprobs import PROBE
    assert meta["probe_ids"] == AutoTokenizer.from_pretrained(teacher)(PROBE, add_special_tokens=False)["input_ids"]


def test_they_survive_a_resume_and_a_shard_merge(teacher, tmp_path):
    whole = tmp_path / "whole"
    _generate(teacher, whole)
    # a run cut short: half the samples there, the rest asked for again
    part = tmp_path / "part"
    part.mkdir()
    lines = (whole / "samples.jsonl").read_text().splitlines(keepends=True)
    (part / "samples.jsonl").write_text("".join(lines[: len(lines) // 2]))
    _generate(teacher, part)
    for shard in ("0/2", "1/2"):
        _generate(teacher, tmp_path / "sharded", shard=shard)
    run(build_config(GenerateConfig, dict(teacher=f"hf:{teacher}", merge=True, out=str(tmp_path / "sharded"))))
    want = {t["id"]: t for t in _traces(whole)}
    for other in (part, tmp_path / "sharded"):
        got = {t["id"]: t for t in _traces(other)}
        assert got.keys() == want.keys(), other
        for sid, trace in got.items():  # a batch of other rows changes the logits in the last bits
            assert trace["teacher_token_ids"] == want[sid]["teacher_token_ids"]
            assert np.allclose(trace["teacher_topk_logprobs"], want[sid]["teacher_topk_logprobs"], atol=0.05)


def test_a_server_that_refuses_k_is_one_line_before_any_work(tmp_path):
    with FakeOpenAI(logprobs=True, max_logprobs=20) as server:
        result = CliRunner().invoke(cli.app, ["generate", "--teacher", f"openai:{server.url}", "--model", "m",
                                              "--prompts", "demo", "--limit", "4", "--logprobs", "25",
                                              "--out", str(tmp_path / "g"), "--quiet"])
        asked = len(server.bodies)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "at most 20 top log-probs per token, not 25" in lines[0], lines
    assert asked <= 2 and not (tmp_path / "g" / "samples.jsonl").exists()


def test_a_teacher_tokenizer_that_cannot_be_loaded_is_one_line(tmp_path):
    with FakeOpenAI(logprobs=True) as server:
        result = CliRunner().invoke(cli.app, ["generate", "--teacher", f"openai:{server.url}", "--model", "m",
                                              "--prompts", "demo", "--limit", "4", "--logprobs", "5",
                                              "--teacher-tokenizer", str(tmp_path / "no-such-folder"),
                                              "--out", str(tmp_path / "g"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: teacher_tokenizer:"), lines
    assert not (tmp_path / "g" / "samples.jsonl").exists()


def test_a_server_that_returns_no_log_probs_is_one_line(tmp_path):
    with FakeOpenAI(logprobs=False) as server:
        result = CliRunner().invoke(cli.app, ["generate", "--teacher", f"openai:{server.url}", "--model", "m",
                                              "--prompts", "demo", "--limit", "4", "--logprobs", "5",
                                              "--out", str(tmp_path / "g"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "returns no log-probs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g" / "samples.jsonl").exists()


def test_token_ids_from_a_server_as_vllm_returns_them(tmp_path, monkeypatch):
    """A server that answers `return_tokens_as_token_ids` gives ids; the samples keep them."""
    with FakeOpenAI(logprobs=True) as server:
        out = tmp_path / "g"
        from distill.core.teacher_logprobs import PROBE
        from distill.backends.openai_api import OpenAIBackend
        monkeypatch.setattr(OpenAIBackend, "server_tokenize", lambda self, text: [ord(c) for c in text])
        run(build_config(GenerateConfig, dict(teacher=f"openai:{server.url}", model="m", prompts="demo", limit=2,
                                              n=1, logprobs=3, out=str(out))))
    row = read_jsonl(out / "samples.jsonl")[0]
    stored = TokenLogprobs.unpack(row["teacher_logprobs"])
    assert stored.token_ids.tolist() == [ord(c) for c in row["response"]]
    assert stored.topk_ids[0].tolist() == [ord(row["response"][0]) + i for i in range(3)]
    assert json.loads((out / META_FILE).read_text())["probe_ids"] == [ord(c) for c in PROBE]
