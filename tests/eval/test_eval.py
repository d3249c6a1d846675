"""`distill eval` end to end on a tiny model and its GGUF f16 and ONNX fp32 exports: the four
backends agree, fidelity and speed are measured, budget forcing sweeps, gates exit 3 with the
report written, and bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.config import build_config
from distill.core.io import read_json, read_jsonl
from distill.eval.stage import run
from distill.eval.config import EvalConfig
from distill.eval.report import RESULT_KEYS
from tests.distill.generate.servers import llama_server

runner = CliRunner()


def _config(out: Path, **values) -> EvalConfig:
    base = dict(benchmark="demo", limit=3, max_new_tokens=12, speed_tokens=0, threads=1, n_ctx=512, out=str(out))
    return build_config(EvalConfig, {**base, **values})


@pytest.mark.slow
def test_four_backends_give_the_same_greedy_answers(stable_model, exported, tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    out = tmp_path / "eval"
    labels = ["hf", "gguf-f16", "onnx-fp32", "server"]
    with llama_server(exported["gguf"], alias="tiny", n_ctx=512) as url:
        run(_config(out, model=[f"hf:{stable_model}", f"gguf:{exported['gguf']}", str(exported["onnx"]),
                                f"openai:{url}"], label=labels, served_model="tiny",
                    request_extra='{"repeat_penalty": 1.0}', speed_tokens=6,
                    reference=f"hf:{stable_model}", fidelity_tokens=96, fidelity_window=48))

    samples = read_jsonl(out / "samples.jsonl")
    assert [s["label"] for s in samples] == [label for label in labels for _ in range(3)]
    by_problem: dict[str, dict[str, dict]] = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], {})[s["label"]] = s
    for problem, rows in by_problem.items():
        texts = {label: row["response"] for label, row in rows.items()}
        assert len(set(texts.values())) == 1, (problem, texts)
        assert len({(r["extracted"], r["correct"], r["completion_tokens"]) for r in rows.values()}) == 1
        assert all(r["response"].strip() for r in rows.values())

    report = read_json(out / "report.json")
    rows = {r["label"]: r for r in report["results"]}
    assert list(rows) == labels and all(list(r) == list(RESULT_KEYS) for r in rows.values())
    for label, row in rows.items():
        assert row["benchmark"] == "demo" and row["n_problems"] == 3 and row["samples_per_problem"] == 1
        correct = [s["correct"] for s in samples if s["label"] == label]
        assert row["pass_at_1"] == sum(correct) / 3 and row["maj_at_k"] is None
        assert row["decode_tokens_per_s"] > 0 and row["ttft_s"] > 0
    for label in labels[:3]:  # local runtimes: memory, size, threads and fidelity
        assert rows[label]["peak_rss_bytes"] > 0 and rows[label]["threads"] == 1
        assert rows[label]["prompt_tokens_per_s"] > 0
        assert rows[label]["top1_agreement"] >= 0.95 and rows[label]["perplexity"] > 1
    assert rows["gguf-f16"]["size_bytes"] == exported["gguf"].stat().st_size
    assert rows["onnx-fp32"]["size_bytes"] == sum(f.stat().st_size for f in exported["onnx"].iterdir())
    assert rows["hf"]["mean_kld"] < 1e-6 and rows["onnx-fp32"]["mean_kld"] < 1e-4
    assert 0 < rows["gguf-f16"]["mean_kld"] < 1e-2  # f16 weights and activations: close, not exact
    server = rows["server"]
    assert server["size_bytes"] is None and server["peak_rss_bytes"] is None and server["mean_kld"] is None
    assert report["reference"]["model"] == f"hf:{stable_model}" and report["reference"]["tokens"] > 0
    assert report["plots"] == ["accuracy_size_speed.png"] and (out / "accuracy_size_speed.png").stat().st_size > 0
    assert "| server | openai |" in (out / "report.md").read_text()
    assert (out / "eval.json").is_file()
    assert not [p.name for p in out.iterdir() if "partial" in p.name or p.name.startswith(".tmp")]


@pytest.mark.slow
def test_thinking_budget_sweep(stable_model, tmp_path):
    out = tmp_path / "eval"
    run(_config(out, model=[f"hf:{stable_model}"], label=["tiny"], think_budget=[4, 2], answer_tokens=3, limit=2))
    report = read_json(out / "report.json")
    assert [(r["label"], r["think_budget"]) for r in report["results"]] == [("tiny", 2), ("tiny", 4)]
    assert report["plots"] == ["accuracy_vs_think_budget.png"]  # one model: no trade-off to draw
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 4
    for s in samples:
        assert s["completion_tokens"] <= s["think_budget"] + 3
        if s["forced_think_close"]:
            assert s["response"].count("</think>") == 1


def _eval(*args: str):
    result = runner.invoke(cli.app, ["eval", "-q", *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.exit_code, lines


@pytest.mark.slow
def test_gates_exit_3_and_still_write_the_report(stable_model, tiny_model, tmp_path):
    out = tmp_path / "eval"
    common = ["--model", f"hf:{stable_model}", "--label", "tiny", "--benchmark", "demo", "--limit", "2",
              "--max-new-tokens", "4", "--speed-tokens", "0", "--out", str(out)]
    code, lines = _eval(*common, "--min-accuracy", "0.5")
    assert code == 3 and lines == ["gate failed: row 'tiny': pass_at_1 0.0000 is below --min-accuracy 0.5"]
    assert read_json(out / "report.json")["gates"]["failed"] and not (out / "eval.json").exists()

    junit = tmp_path / "ci" / "junit.xml"
    code, lines = _eval(*common, "--min-accuracy", "0.0", "--junit", str(junit))
    assert code == 0 and lines == [] and (out / "eval.json").is_file()
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case.get("name") == "min_accuracy" and case.find("failure") is None

    other = tiny_model("qwen2", seed=3)  # same tokenizer, other weights: far from the reference
    code, lines = _eval(*common, "--reference", f"hf:{other}", "--max-kld", "0.01",
                        "--fidelity-tokens", "64", "--fidelity-window", "32")
    assert code == 3 and len(lines) == 1 and "row 'tiny': mean_kld" in lines[0] and "--max-kld 0.01" in lines[0]


def _baseline_that_solved(out: Path, folder: Path, k: int) -> Path:
    """This run's report and samples as a baseline that had solved k more problems."""
    folder.mkdir()
    samples = read_jsonl(out / "samples.jsonl")
    flip = [s["problem_id"] for s in samples if not s["correct"]][:k]
    assert len(flip) == k
    _write_jsonl(folder / "samples.jsonl", [dict(s, correct=s["correct"] or s["problem_id"] in flip) for s in samples])
    (folder / "report.json").write_text((out / "report.json").read_text())
    return folder / "report.json"


@pytest.mark.slow
@pytest.mark.parametrize("problems, drop", [(30, 3), (1319, 132)])
def test_the_drop_gate_warns_on_noise_and_fails_a_real_drop(problems, drop, stable_model, gsm8k_train, tmp_path):
    out = tmp_path / "eval"
    common = ["--model", f"hf:{stable_model}", "--label", "tiny", "--benchmark", str(gsm8k_train), "--limit",
              str(problems), "--max-new-tokens", "1", "--speed-tokens", "0", "--batch-size", "64", "--threads", "1",
              "--out", str(out)]
    assert _eval(*common) == (0, [])
    baseline = _baseline_that_solved(out, tmp_path / "baseline", drop)  # 10 points better
    code, lines = _eval(*common, "--baseline", str(baseline), "--max-drop", "0.05", "--junit", str(tmp_path / "j.xml"))
    (line,) = lines
    gates = read_json(out / "report.json")["gates"]
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase/failure")
    if problems == 30:  # 3 problems of 30: p = 0.25, not significant
        assert code == 0 and failure is None
        assert line.startswith("warning: row 'tiny': pass_at_1 dropped 0.1000 (0.1000 -> 0.0000 on 30 shared problems;")
        assert "exact McNemar p = 0.25), more than --max-drop 0.05 but not significant at 5%: about" in line
        assert gates["failed"] == [] and gates["drop"][0]["status"] == "passed"
    else:
        assert code == 3 and failure is not None
        assert line.startswith("gate failed: row 'tiny': pass_at_1 dropped 0.1001 (0.1001 -> 0.0000 on 1319 shared")
        assert "more than --max-drop 0.05 and significant at 5%" in line and failure.get("message") in line
    assert gates["drop"][0]["n_problems"] == problems and gates["drop"][0]["test"] == "exact McNemar"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["hub-offline", "unknown-name", "no-answers", "no-model-dir", "not-gguf", "broken-gguf",
                                  "hf-without-weights", "labels", "drop-without-baseline", "budget-openai",
                                  "reference-of-another-tokenizer"])
def test_bad_inputs_exit_2_with_one_line(case, stable_model, tmp_path, monkeypatch, request):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, bench, extra = f"hf:{stable_model}", "demo", ["--limit", "1", "--max-new-tokens", "2"]
    expected = {"hub-offline": "benchmark: 'gsm8k' is the hub dataset openai/gsm8k, which could not be loaded",
                "unknown-name": "unknown benchmark 'nope'",
                "no-answers": "no answer field found",
                "no-model-dir": "hf:/no/such/dir: no such folder",
                "not-gguf": "not a GGUF file",
                "broken-gguf": "llama.cpp cannot load it",
                "hf-without-weights": "cannot",
                "labels": "label: 2 labels for 1 models",
                "drop-without-baseline": "the drop gate needs both --baseline and --max-drop",
                "budget-openai": "think_budget: budget forcing",
                "reference-of-another-tokenizer": "--reference must share the model's tokenizer"}[case]
    if case == "hub-offline":
        bench = "gsm8k"
    elif case == "unknown-name":
        bench = "nope"
    elif case == "no-answers":
        bench = str(_write_jsonl(tmp_path / "questions.jsonl", [{"question": "What is 1 + 1?"}]))
    elif case == "no-model-dir":
        model = "hf:/no/such/dir"
    elif case == "not-gguf":
        (tmp_path / "fake.gguf").write_bytes(b"GGML" + bytes(64))
        model = str(tmp_path / "fake.gguf")
    elif case == "broken-gguf":  # the right magic, then garbage: found by the speed probe's process
        (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(64))
        model, extra = str(tmp_path / "broken.gguf"), ["--limit", "1", "--speed-tokens", "2"]
    elif case == "hf-without-weights":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text((stable_model / "config.json").read_text())
        model = f"hf:{tmp_path / 'empty'}"
    elif case == "labels":
        extra += ["--label", "a", "--label", "b"]
    elif case == "drop-without-baseline":
        extra += ["--max-drop", "0.1"]
    elif case == "budget-openai":
        model, extra = "openai:http://127.0.0.1:9/v1", ["--served-model", "m", "--think-budget", "8"]
    elif case == "reference-of-another-tokenizer":  # SmolLM2's 49152 tokens against the demo's 508
        other = request.getfixturevalue("tiny_model")("llama")
        extra += ["--reference", f"hf:{other}", "--fidelity-tokens", "32", "--fidelity-window", "16"]
    out = tmp_path / "out"
    code, lines = _eval("--model", model, "--benchmark", bench, "--speed-tokens", "0", *extra, "--out", str(out))
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (out / "report.json").exists() and not (out / "eval.json").exists()
