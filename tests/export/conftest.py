"""Fixtures for the export tests: tiny random llama/qwen2/qwen3 students that all use the demo
tokenizer (reading a GGUF with SmolLM2's 49k-token vocabulary back into transformers takes half
a minute; the real SmolLM2 test covers that tokenizer), and GGUF files of every type made once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DEMO_TOKENIZER, build_tiny_model

ARCHS = ("qwen2", "qwen3", "llama")
# Real Qwen3 models have head_dim 128 with hidden_size != heads * head_dim; transformers' GGUF
# loader also assumes 128, so the tiny one is built that way.
ARCH_OVERRIDES = {"qwen3": {"head_dim": 128}}
FLOAT_TYPES = ("f32", "f16", "bf16")
QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def perturb_constant_tensors(folder: Path, untie: bool = False) -> Path:
    """Fresh models have zero biases and unit norms, which would hide a misplaced bias or norm:
    give them random values (still saved as safetensors). `untie` gives the model its own
    output matrix."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(7)
    for name, t in tensors.items():
        if t.ndim == 1:
            base = 1.0 if name.endswith("norm.weight") else 0.0
            tensors[name] = base + 0.1 * torch.randn(t.shape, generator=generator)
    if untie:
        embed = tensors["model.embed_tokens.weight"]
        tensors["lm_head.weight"] = 0.1 * torch.randn(embed.shape, generator=generator)
        config = json.loads((folder / "config.json").read_text())
        config["tie_word_embeddings"] = False
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def student(tmp_path_factory):
    """Factory: `student("qwen2", tie_word_embeddings=False)` -> folder of a tiny random model."""
    made: dict[tuple, Path] = {}

    def make(arch: str, tied: bool = True, **overrides) -> Path:
        key = (arch, tied, repr(sorted(overrides.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"student-{arch}")
            build_tiny_model(arch, DEMO_TOKENIZER, out, seed=1, initializer_range=0.1,
                             **{**ARCH_OVERRIDES.get(arch, {}), **overrides})
            made[key] = perturb_constant_tensors(out, untie=not tied)
        return made[key]

    return make


@pytest.fixture(scope="session")
def gguf_files(student, tmp_path_factory):
    """Factory: `gguf_files("llama")` -> {type: path} for every float and quantized type."""
    from distill.export.gguf_writer import write_gguf
    from distill.export.quantize import quantize
    from distill.export.source import check_model_folder, model_facts

    made: dict[str, dict[str, Path]] = {}

    def make(arch: str) -> dict[str, Path]:
        if arch not in made:
            folder = student(arch)
            config = check_model_folder(folder)
            facts = model_facts(folder, config)
            out = tmp_path_factory.mktemp(f"gguf-{arch}")
            files = {}
            for ftype in FLOAT_TYPES:
                files[ftype] = out / f"m-{ftype}.gguf"
                write_gguf(folder, config, facts, files[ftype], ftype, "m")
            for quant in QUANT_TYPES:
                files[quant] = out / f"m-{quant}.gguf"
                quantize(files["f16"], files[quant], quant, 2, out / "quantize.log")
            made[arch] = files
        return made[arch]

    return make
