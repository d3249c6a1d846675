"""The models of a run: their specs resolved to (label, kind, target), checked before any work,
and loaded with the options of their kind."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from distill.core.errors import GateFailed, UserError, one_line
from distill.backends import load_backend, parse_spec


def quiet_libraries() -> None:
    """--quiet silences the loading bars of transformers and huggingface_hub too, here and in the
    probe processes."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def backend_options(kind: str, config) -> dict:
    batch = {"batch_size": config.batch_size} if config.batch_size else {}  # else each backend's default
    return {
        "hf": dict(dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                   threads=config.threads, **batch),
        "gguf": dict(n_ctx=config.n_ctx, threads=config.threads, **batch),
        "onnx": dict(threads=config.threads, trust_remote_code=config.trust_remote_code, **batch),
        "openai": dict(model=config.served_model, api_key_env=config.api_key_env,
                       concurrency=config.concurrency, max_retries=config.max_retries,
                       request_timeout=config.request_timeout,
                       extra_body=json.loads(config.request_extra) if config.request_extra else None),
    }[kind]


def load_model(spec: str, kind: str, config):
    """The backend for `spec`. A model that cannot be loaded is a user error naming it."""
    try:
        return load_backend(spec, **backend_options(kind, config))
    except (UserError, GateFailed):
        raise
    except Exception as e:  # noqa: BLE001 - a model that does not load is the user's input at fault
        raise UserError(f"model: {spec}: cannot be loaded ({type(e).__name__}: {one_line(e)[:200]})") from None


def precheck_model(kind: str, target: str) -> None:
    """The checks that need no runtime, so that a wrong path is reported before the first model
    is evaluated rather than after it (the loaders check the same and more)."""
    path = Path(target)
    if kind == "gguf":
        if not path.is_file():
            raise UserError(f"model: gguf:{target}: no such file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise UserError(f"model: gguf:{target}: not a GGUF file")
    elif kind == "onnx" and not (path / "genai_config.json").is_file():
        raise UserError(f"model: onnx:{target}: not an ONNX model folder (no genai_config.json)")
    elif kind == "hf" and path.exists() and not (path / "config.json").is_file():
        raise UserError(f"model: hf:{target}: not a Hugging Face model folder (no config.json)")
    elif kind == "hf" and not path.exists() and (target.startswith((".", "/", "~")) or target.count("/") != 1):
        raise UserError(f"model: hf:{target}: no such folder (nor a hub id like Qwen/Qwen2.5-1.5B-Instruct)")


def resolve_models(config) -> list[tuple[str, str, str, str]]:
    """(label, spec, kind, target) per --model; labels default to the artifact's name."""
    models, taken = [], set(config.label)
    for i, spec in enumerate(config.model):
        kind, target = parse_spec(spec)
        precheck_model(kind, target)
        spec = f"{kind}:{target}"
        if i < len(config.label):
            label = config.label[i]
        else:
            base = config.served_model if kind == "openai" else (Path(target).stem if kind == "gguf"
                                                                  else Path(target.rstrip("/")).name)
            label, n = base or kind, 2
            while label in taken:
                label, n = f"{base}-{n}", n + 1
        taken.add(label)
        models.append((label, spec, kind, target))
    return models
