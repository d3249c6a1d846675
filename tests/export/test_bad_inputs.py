"""Bad requests exit 2 with one line naming what is wrong, and leave nothing behind."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from distill import cli

runner = CliRunner()


def _fails_cleanly(workdir, *args: str) -> str:
    before = sorted(p.name for p in workdir.iterdir())
    result = runner.invoke(cli.app, ["export", "--quiet", "--out", str(workdir / "export"), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == before  # no output, no temporary folder
    return lines[0]


def test_moe_model_lists_the_supported_architectures(tiny_model, tmp_path):
    message = _fails_cleanly(tmp_path, "--model", str(tiny_model("qwen3_moe")), "--gguf", "f16")
    assert "model_type 'qwen3_moe'" in message
    assert "supported architectures: llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM), qwen3" in message


def test_missing_tokenizer_files(student, tmp_path):
    model = tmp_path / "no-tokenizer"
    shutil.copytree(student("qwen2"), model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    message = _fails_cleanly(tmp_path, "--model", str(model), "--gguf", "f16")
    assert "no tokenizer files" in message and str(model) in message


def test_pickle_weights_are_refused(student, tmp_path):
    model = tmp_path / "pickled"
    shutil.copytree(student("qwen2"), model)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    assert "no safetensors weights" in _fails_cleanly(tmp_path, "--model", str(model))


@pytest.mark.parametrize("args,expected", [
    (["--gguf", "q4_k_x"], "field 'gguf': unknown GGUF type 'q4_k_x' (valid: f32, f16, bf16, q8_0, q6_k, q5_k_m"),
    (["--onnx", "int3"], "field 'onnx': unknown ONNX precision 'int3' (valid: fp32, int4, int4-int8head)"),
    (["--target", "rpi9"], "unknown device profile 'rpi9'"),
    (["--gguf-pre", "mystery"], "unknown pre-tokenizer 'mystery'"),
    (["--context-length", "4096", "--gguf", "f16"], "4096 is more than the model's max_position_embeddings (1024)"),
])
def test_bad_options(student, tmp_path, args, expected):
    assert expected in _fails_cleanly(tmp_path, "--model", str(student("qwen2")), *args)


def test_missing_model_folder(tmp_path):
    assert "model: " in _fails_cleanly(tmp_path, "--model", str(tmp_path / "nope"))


def test_model_too_big_for_the_target(student, tmp_path):
    profile = tmp_path / "watch.yaml"
    profile.write_text("memory_budget: 20MB\ncontext_length: 1024\nformats:\n  gguf: [q4_0]\n")
    message = _fails_cleanly(tmp_path, "--model", str(student("qwen2")), "--target", str(profile))
    assert "target 'watch': GGUF q4_0 (estimated) needs" in message and "budget is 0.02 GiB" in message


def test_output_path_that_is_a_file(student, tmp_path):
    (tmp_path / "export").write_text("not a folder")
    assert "exists and is not a folder" in _fails_cleanly(tmp_path, "--model", str(student("qwen2")))
