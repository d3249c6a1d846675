"""The model being exported: check that it is a dense architecture we can write, that its
weights are safetensors and its tokenizer files are there, and merge LoRA adapters first."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from distill.core.errors import UserError
from distill.core.io import read_json, require_path

# Hugging Face model_type -> (GGUF architecture, the class transformers saves in config.json)
SUPPORTED = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    # llama.cpp's converter writes Mistral as llama: the same layers and rotary layout.
    "mistral": ("llama", "MistralForCausalLM"),
}


@dataclass
class ModelFacts:
    arch: str            # GGUF architecture name
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    parameters: int
    tied: bool
    dtype: str


def supported_list() -> str:
    return ", ".join(f"{t} ({cls})" for t, (_, cls) in SUPPORTED.items())


def is_adapter(folder: Path) -> bool:
    """A LoRA adapter folder: adapter_config.json and no full model weights beside it (train
    saves merged models, which may keep their adapter_config.json)."""
    if not (folder / "adapter_config.json").is_file():
        return False
    full = [f for f in folder.glob("*.safetensors") if not f.name.startswith("adapter_model")]
    return not ((folder / "config.json").is_file() and full)


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        files = sorted({folder / f for f in weight_map.values()})
    else:
        files = sorted(f for f in folder.glob("*.safetensors") if not f.name.startswith("adapter_model"))
    if not files:
        bins = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
        hint = " (only pickle .bin weights, which are not loaded for safety: re-save with safetensors)" if bins else ""
        raise UserError(f"{folder}: no safetensors weights found{hint}")
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: listed in model.safetensors.index.json but missing")
    return files


def check_model_folder(folder: Path, field: str = "model") -> dict:
    """The folder's config.json, after checking architecture, weights and tokenizer files."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{field}: {folder}: not a Hugging Face model folder (no config.json)")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        archs = ",".join(config.get("architectures") or []) or "unknown"
        raise UserError(f"{config_path}: model_type '{model_type}' ({archs}) cannot be exported; "
                        f"supported architectures: {supported_list()}")
    bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (folder / "tokenizer.json").is_file() and not bpe_files:
        raise UserError(f"{field}: {folder}: no tokenizer files (expected tokenizer.json, or "
                        "vocab.json and merges.txt)")
    safetensors_files(folder)
    return config


def rope_parameters(config: dict) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older configs in `rope_theta`
    and `rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" not in params and "rope_theta" in config:
        params["rope_theta"] = config["rope_theta"]
    if "rope_type" not in params and "type" in params:
        params["rope_type"] = params["type"]
    return params


def model_facts(folder: Path, config: dict) -> ModelFacts:
    from safetensors import safe_open

    parameters, dtype = 0, "float32"
    for f in safetensors_files(folder):
        with safe_open(f, framework="numpy") as st:  # the header alone: no torch to import
            for key in st.keys():
                sl = st.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                parameters += n
                dtype = str(sl.get_dtype()).lower()
    for key in ("num_attention_heads", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if not isinstance(config.get(key), int):
            raise UserError(f"{folder / 'config.json'}: field '{key}' is missing or not an integer")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return ModelFacts(
        arch=SUPPORTED[config["model_type"]][0], model_type=config["model_type"],
        layers=config["num_hidden_layers"], hidden=hidden, heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads, vocab_size=config["vocab_size"],
        max_positions=config.get("max_position_embeddings") or 2048, parameters=parameters,
        tied=bool(config.get("tie_word_embeddings", False)), dtype=dtype)


def merge_adapter(adapter_dir: Path, work: Path, trust_remote_code: bool) -> Path:
    """Merge a LoRA adapter into its base model and save the result (safetensors) under `work`."""
    adapter_config = read_json(adapter_dir / "adapter_config.json")
    base = adapter_config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir / 'adapter_config.json'}: no base_model_name_or_path")
    base_path = Path(base) if Path(base).is_absolute() else (adapter_dir / base)
    base_ref = str(base_path) if base_path.exists() else base
    if Path(base_ref).is_dir():
        check_model_folder(Path(base_ref), field="adapter base model")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _merge_dtype(base_ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_ref, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"{adapter_dir / 'adapter_config.json'}: base model '{base}' cannot be "
                        f"loaded offline ({str(e).splitlines()[0]})") from None
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    from distill.core.progress import info
    info(f"merged the LoRA adapter into {base} in {dtype}"
         + (" (the base model's dtype; the export is validated against it as usual)" if dtype != "float32" else ""))
    out = work / "merged"
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer.json").is_file() or \
        (adapter_dir / "tokenizer_config.json").is_file() else base_ref
    AutoTokenizer.from_pretrained(tokenizer_src, trust_remote_code=trust_remote_code).save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        for src in (adapter_dir / name, Path(base_ref) / name):
            if src.is_file() and not (out / name).exists():
                shutil.copy2(src, out / name)
    del merged, model
    return out


def _merge_dtype(base_ref: str) -> str:
    """The base model's own dtype: merging there holds one model of that size instead of an fp32
    copy (PEFT computes each adapter delta in fp32 on a CPU and rounds once when adding it, as
    writing an fp32 merge back to 16 bits would); float32 when the base does not say."""
    config = Path(base_ref) / "config.json"
    stored = (read_json(config).get("dtype") or read_json(config).get("torch_dtype")) if config.is_file() else None
    return stored if stored in ("float16", "bfloat16", "float32") else "float32"


def resolve_model(model: str, work: Path, trust_remote_code: bool) -> tuple[Path, dict, bool]:
    """(folder to export, its config.json, whether a LoRA adapter was merged)."""
    folder = require_path(model, "model", kind="dir")
    if is_adapter(folder):
        merged = merge_adapter(folder, work, trust_remote_code)
        return merged, check_model_folder(merged), True
    return folder, check_model_folder(folder), False
