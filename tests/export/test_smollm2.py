"""The real SmolLM2-135M-Instruct (real weights, its 49k-token tokenizer, llama.cpp's `smollm`
pre-tokenizer) exported to f16 and compared with the Hugging Face model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from distill import cli

pytestmark = pytest.mark.slow


def test_smollm2_f16_matches_the_hf_model(smollm2_dir, tmp_path):
    out = tmp_path / "export"
    result = CliRunner().invoke(cli.app, ["export", "--quiet", "--model", str(smollm2_dir), "--out", str(out),
                                          "--gguf", "f16", "--name", "smollm2-135m", "--threads", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    assert artifact["path"] == "smollm2-135m-f16.gguf" and artifact["tensor_types"] == {"F16": 211, "F32": 61}
    assert manifest["tokenizer"]["pre"] == "smollm" and manifest["tokenizer"]["add_bos"] is False
    validation = artifact["validation"]
    assert validation["passed"] and validation["tokenizer"]["match"] and validation["tokenizer"]["strings"] >= 10
    assert validation["greedy"]["match"] and validation["vs_hf"]["mean_kld"] < 1e-3
    assert validation["vs_hf"]["top1_agreement"] > 0.98

    # Independently of the validation code: llama-cpp-python's own completion API, greedy,
    # against transformers' generate.
    import llama_cpp
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(str(out / artifact["path"]), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        assert llm.tokenize(prompt.encode(), special=True) == ids
        completion = llm.create_completion(prompt, max_tokens=20, temperature=0.0, top_k=1)
    finally:
        llm.close()
    hf_text = tokenizer.decode(hf, skip_special_tokens=True)
    assert completion["choices"][0]["text"].strip() == hf_text.strip() and "Paris" in hf_text
