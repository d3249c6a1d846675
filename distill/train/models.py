"""Load the student and the KD teacher with clear errors, check that they share a tokenizer, add
LoRA, and turn the trained weights into a plain model folder (LoRA merged, the end-of-turn token
as EOS)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.core.errors import UserError
from distill.core.io import write_json
from distill.core.tokenizers import first_line, require_model_path

from distill.core.traces import EndOfTurn

def load_model_config(path: str, field: str, trust_remote_code: bool):
    """The model's config, checked to be a causal language model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    require_model_path(path, field)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{field}: {path}: not a model folder ({first_line(e)})") from None
    custom_causal = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not custom_causal:
        raise UserError(f"{field}: {path}: a '{config.model_type}' model is not a causal language model")
    return config


def load_causal_lm(path: str, field: str, dtype: torch.dtype, trust_remote_code: bool,
                   attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM
    config = load_model_config(path, field, trust_remote_code)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{field}: {path}: cannot load the model weights (safetensors only): "
                        f"{first_line(e)}") from None


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]):
    from peft import LoraConfig, get_peft_model
    targets = "all-linear" if target_modules == ["all-linear"] else list(target_modules)
    try:
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as e:
        raise UserError(f"lora_target_modules: {first_line(e)}") from None


def merge_lora(student: str, adapter_dir: Path, dtype: torch.dtype, trust_remote_code: bool):
    """The base model with the trained adapter folded into its weights, loaded afresh so that it
    also works when the training process only held a shard of the weights (FSDP, ZeRO-3)."""
    from peft import PeftModel
    base = load_causal_lm(student, "student", dtype, trust_remote_code)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def finish_model_folder(folder: Path, tokenizer, eot: EndOfTurn) -> None:
    """Make the end-of-turn token the EOS everywhere a runtime looks for it (generation config,
    model config, tokenizer), keeping the model's other stop tokens, and restore inference
    settings. The JSON files are edited in place rather than rebuilt, so nothing else changes."""
    config_path, generation_path = folder / "config.json", folder / "generation_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    generation = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}
    previous = generation.get("eos_token_id", config.get("eos_token_id"))
    previous = previous if isinstance(previous, list) else [previous] if previous is not None else []
    stops = [eot.token_id] + [i for i in previous if i != eot.token_id]
    generation["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    if generation.get("pad_token_id") is None:
        generation["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot.token_id
    if generation.get("bos_token_id") is None and tokenizer.bos_token_id is not None:
        generation["bos_token_id"] = tokenizer.bos_token_id
    config.update(eos_token_id=eot.token_id, use_cache=True)
    write_json(generation_path, generation)
    write_json(config_path, config)
    tokenizer.eos_token = eot.text
    tokenizer.save_pretrained(folder)
