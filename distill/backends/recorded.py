"""How a student was trained to be asked: the user-turn template of its traces and whether it
thinks first. `distill train` records it in the student folder (`distill.json`), `distill export`
carries it into every artifact (GGUF metadata `distill.prompt_template` / `distill.think`, and the
ONNX folder's own `distill.json`), and `distill chat` and `distill eval` apply it by default, so
that a question typed as it is gets the wrapping the student learned (the demo student answers
the demo's questions only when they carry the r1 instruction)."""

from __future__ import annotations

import json
from pathlib import Path

RECORD = "distill.json"
GGUF_TEMPLATE, GGUF_THINK = "distill.prompt_template", "distill.think"


def record(prompt_template: str, think: bool) -> dict:
    return {"prompt_template": prompt_template, "think": think}


def recorded_prompt(spec: str) -> dict | None:
    """{prompt_template, think} as recorded with the model `spec` names, or None."""
    from . import parse_spec

    kind, target = parse_spec(spec)
    if kind in ("hf", "onnx"):
        path = Path(target) / RECORD
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return None
            return data if isinstance(data, dict) and isinstance(data.get("prompt_template"), str) else None
        return None
    if kind == "gguf":
        return _gguf_record(target)
    return None


def _gguf_record(path: str) -> dict | None:
    """The two metadata values, read with the vocabulary only (no weights, no context) and
    llama.cpp's log quiet."""
    import ctypes

    import llama_cpp
    import llama_cpp._logger as log

    from .llamacpp import guard
    guard()
    level = log.logger.level
    log.set_verbose(False)
    try:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            return None
        try:
            values = {}
            for key in (GGUF_TEMPLATE, GGUF_THINK):
                buf = ctypes.create_string_buffer(1 << 16)
                if llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) >= 0:
                    values[key] = buf.value.decode("utf-8", errors="replace")
        finally:
            llama_cpp.llama_model_free(model)
    finally:
        log.logger.setLevel(level)
    template = values.get(GGUF_TEMPLATE)
    return record(template, values.get(GGUF_THINK, "true").lower() not in ("false", "0")) if template else None
