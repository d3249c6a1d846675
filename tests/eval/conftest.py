"""Fixtures of the eval tests: one tiny Qwen2 model built so that its greedy text is the same on
every runtime, exported once to GGUF f16 and ONNX fp32 by the export stage.

A random model's next-token logits are often nearly tied, and llama.cpp rounds activations to
f16 when it multiplies f16 weights, so greedy decoding may differ from transformers after a tie.
The model is therefore built with weights that f16 holds exactly, with a seed whose greedy paths
on the first demo test problems keep a clear margin between the first and second token, with no
byte tokens that are not printable text on their own (their rows are zero, so they never win),
and with a chat template that opens the think block itself, so that an OpenAI-compatible server
renders exactly the prompt the local backends render."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DEMO_TOKENIZER, build_tiny_model

SEED = 8
THINKING_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")


def build_runtime_stable_model(out: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    build_tiny_model("qwen2", DEMO_TOKENIZER, out, seed=SEED, initializer_range=0.2)
    tokenizer = AutoTokenizer.from_pretrained(out)
    special = set(tokenizer.all_special_ids)
    unprintable = [i for i in range(len(tokenizer)) if i not in special and not (
        tokenizer.decode([i]).isascii() and all(c.isprintable() or c == "\n" for c in tokenizer.decode([i])))]
    weights = {k: v.to(torch.float16).to(torch.float32) for k, v in load_file(out / "model.safetensors").items()}
    weights["model.embed_tokens.weight"][unprintable] = 0  # tied: the output rows are these
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "chat_template.jinja").write_text(THINKING_TEMPLATE, encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def stable_model(tmp_path_factory) -> Path:
    return build_runtime_stable_model(tmp_path_factory.mktemp("eval-model") / "tiny-qwen2")


@pytest.fixture(scope="session")
def exported(stable_model, tmp_path_factory) -> dict[str, Path]:
    """{"gguf": the f16 file, "onnx": the fp32 folder}, written by `distill export`."""
    from distill.core.config import build_config
    from distill.core.io import read_json
    from distill.export.stage import run
    from distill.export.config import ExportConfig

    out = tmp_path_factory.mktemp("eval-export") / "export"
    run(build_config(ExportConfig, dict(model=str(stable_model), out=str(out), gguf=["f16"], onnx=["fp32"],
                                        validate=False)))
    paths = {a["format"]: out / a["path"] for a in read_json(out / "manifest.json")["artifacts"]}
    assert paths["gguf"].is_file() and (paths["onnx"] / "genai_config.json").is_file()
    return paths
