"""`distill export` end to end on tiny students: every format of each architecture, the manifest,
model card, Modelfile and tarball, the pipeline's row labels, LoRA adapters, and validation that
fails visibly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from distill import cli
from distill.core.io import sha256_path
from distill.pipeline import _artifact_models

runner = CliRunner()


def export(*args: str):
    return runner.invoke(cli.app, ["export", "--quiet", "--threads", "1", *args])


@pytest.fixture(scope="module")
def qwen2_export(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "export"
    result = export("--model", str(student("qwen2")), "--out", str(out), "--gguf", "f16,q8_0,q4_k_m",
                    "--onnx", "fp32,int4", "--target", "laptop-cpu", "--tarball")
    assert result.exit_code == 0, result.output
    return out


def test_every_artifact_is_listed_hashed_and_validated(qwen2_export, student):
    manifest = json.loads((qwen2_export / "manifest.json").read_text())
    assert [(a["format"], a["quant"]) for a in manifest["artifacts"]] == [
        ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_k_m"), ("onnx", "fp32"), ("onnx", "int4")]
    for art in manifest["artifacts"]:
        path = qwen2_export / art["path"]
        assert path.exists() and art["sha256"] == sha256_path(path)
        assert art["bytes"] == (path.stat().st_size if path.is_file()
                                else sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
        assert art["validation"]["passed"] and art["validation"]["loads"], art
        assert art["validation"]["tokenizer"]["match"]
        assert art["fit"]["fits"] and art["fit"]["context_length"] == 1024  # the model's maximum
    arts = {a["quant"]: a for a in manifest["artifacts"]}
    assert arts["f16"]["path"] == "model-f16.gguf" and arts["int4"]["path"] == "model-onnx-int4"
    assert arts["f16"]["validation"]["greedy"]["match"] and arts["fp32"]["validation"]["greedy"]["match"]
    assert arts["f16"]["validation"]["vs_hf"]["mean_kld"] < 1e-4
    assert 0 <= arts["q4_k_m"]["validation"]["vs_f16"]["mean_kld"] < 0.5
    assert 0 < arts["q4_k_m"]["validation"]["vs_f16"]["top1_agreement"] <= 1
    assert arts["q4_k_m"]["tensor_types"]["F32"] > 0 and arts["q4_k_m"]["file_type"] == "MOSTLY_Q4_K_M"
    assert manifest["validation"] == {"enabled": True, "passed": True, "failures": [], "reference": "made by this export"}
    assert manifest["source"]["sha256"] == sha256_path(student("qwen2"))
    assert manifest["source"]["model_type"] == "qwen2" and manifest["tokenizer"]["pre"] == "qwen2"
    assert {"gguf", "llama_cpp_python", "onnxruntime-genai", "transformers"} <= set(manifest["tools"])
    assert manifest["target"]["name"] == "laptop-cpu"
    record = json.loads((qwen2_export / "export.json").read_text())
    assert {o["path"] for o in record["outputs"]} >= {"manifest.json", "model-f16.gguf", "model-onnx-int4"}


def test_pipeline_labels_rows_from_the_manifest(qwen2_export):
    labels = [label for _, label in _artifact_models(qwen2_export.parent)]
    assert labels == ["student-gguf-f16", "student-gguf-q8_0", "student-gguf-q4_k_m",
                      "student-onnx-fp32", "student-onnx-int4"]


def test_model_card_modelfile_and_tarball(qwen2_export):
    card = (qwen2_export / "README.md").read_text()
    for needle in ("llama-cli -m model-q8_0.gguf", "llama-server", "ollama create", "onnxruntime_genai",
                   "model-onnx-int4", "laptop-cpu"):
        assert needle in card, needle
    modelfile = (qwen2_export / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    with tarfile.open(qwen2_export / "model-laptop-cpu.tar.gz") as tar:
        names = set(tar.getnames())
    assert "model-laptop-cpu/model-q4_k_m.gguf" in names and "model-laptop-cpu/manifest.json" in names
    assert not any("model-f16" in n or "onnx-fp32" in n for n in names)  # not in the profile


def test_onnx_folder_is_complete(qwen2_export):
    import onnxruntime_genai as og
    folder = qwen2_export / "model-onnx-int4"
    assert {"genai_config.json", "tokenizer.json", "chat_template.jinja", "model.onnx"} <= {p.name for p in folder.iterdir()}
    genai = json.loads((folder / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == 1024 and genai["model"]["eos_token_id"] == 2
    tokenizer = og.Tokenizer(og.Model(str(folder)))
    prompt = tokenizer.apply_chat_template('[{"role": "user", "content": "hi"}]', add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_existing_output_needs_overwrite(qwen2_export, student):
    before = sha256_path(qwen2_export / "manifest.json")
    result = export("--model", str(student("qwen2")), "--out", str(qwen2_export), "--gguf", "f16")
    assert result.exit_code == 2 and "already exists (pass --overwrite" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sha256_path(qwen2_export / "manifest.json") == before


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_other_architectures_through_every_format(arch, student, tmp_path):
    out = tmp_path / "export"
    result = export("--model", str(student(arch)), "--out", str(out), "--gguf", "f32,bf16,q4_0",
                    "--onnx", "fp32,int4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["quant"] for a in manifest["artifacts"]] == ["f32", "bf16", "q4_0", "fp32", "int4"]
    assert all(a["validation"]["passed"] for a in manifest["artifacts"])
    # q4_0 was made from an f16 file that is not shipped; it was checked too
    assert manifest["validation"]["base_f16"]["passed"] and not (out / "model-f16.gguf").exists()
    assert manifest["source"]["gguf_architecture"] == arch


def test_lora_adapter_is_merged_first(student, tmp_path):
    from peft import LoraConfig, get_peft_model
    base = student("qwen2")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    merged = peft_model.merge_and_unload()

    out = tmp_path / "export"
    result = export("--model", str(adapter), "--out", str(out), "--gguf", "f32")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["lora_merged"] and manifest["artifacts"][0]["validation"]["passed"]

    import llama_cpp
    ids = AutoTokenizer.from_pretrained(base).encode("12 + 30 = 42, so the answer is", add_special_tokens=False)
    llm = llama_cpp.Llama(str(out / "model-f32.gguf"), n_ctx=64, logits_all=True, verbose=False,
                          n_threads=1, n_threads_batch=1)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    with torch.no_grad():
        want = merged(torch.tensor([ids])).logits[0].numpy()
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - want).max() < 1e-2 < np.abs(plain - want).max()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_failed_validation_exits_3_and_is_recorded(student, tmp_path):
    out = tmp_path / "export"
    result = export("--model", str(student("qwen2")), "--out", str(out), "--gguf", "f16,q4_0",
                    "--max-quant-kld", "1e-12")
    assert result.exit_code == 3, result.output
    assert "validation failed: model-q4_0.gguf: KL divergence from f16" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["passed"] is False
    assert not manifest["artifacts"][1]["validation"]["passed"] and manifest["artifacts"][0]["validation"]["passed"]
    assert not (out / "export.json").exists()  # `distill run` will not skip it next time


def test_wrong_pre_tokenizer_is_caught(student, tmp_path):
    out = tmp_path / "export"
    result = export("--model", str(student("qwen2")), "--out", str(out), "--gguf", "f16", "--gguf-pre", "default")
    assert result.exit_code == 3 and "token ids differ from the HF tokenizer" in result.output
    tokenizer = json.loads((out / "manifest.json").read_text())["artifacts"][0]["validation"]["tokenizer"]
    assert not tokenizer["match"] and tokenizer["mismatches"]


def test_pipeline_skips_an_unchanged_export(student, tmp_path):
    from distill.pipeline import PipelineConfig, run
    shutil.copytree(student("qwen2"), tmp_path / "run" / "student")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("export:\n  gguf: [f16]\n  threads: 1\n")
    first = run(PipelineConfig(str(pipeline), str(tmp_path / "run")))
    assert first["export"]["status"] == "ran" and first["export"]["result"]["validation_passed"]
    again = run(PipelineConfig(str(pipeline), str(tmp_path / "run")))
    assert again["export"]["status"] == "skipped"


def test_killed_export_leaves_nothing_finished_and_reruns(student, tmp_path):
    repo = Path(cli.__file__).resolve().parents[1]
    out = tmp_path / "export"
    args = ["export", "--quiet", "--model", str(student("qwen2")), "--out", str(out), "--gguf", "f16,q8_0",
            "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 120
    while not list(tmp_path.glob(".tmp-export.*/model-f16.gguf")) and time.time() < deadline:
        assert proc.poll() is None, "the export ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and not (out / "model-f16.gguf").exists()

    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
