"""Inference backends shared by `generate` (teachers) and `eval` (students and artifacts).

Every backend is a loader function in `BACKENDS` (no class hierarchy, no plugins) that returns an
object with:

    backend.kind                       # "hf" | "gguf" | "onnx" | "openai"
    backend.render(user_text) -> str  # the full prompt text: the model's own chat template,
                                       # assistant turn opened with "<think>\\n" (local backends)
    backend.generate(prompts, sampling, on_done=None) -> list[list[Completion]]
        # prompts: rendered prompt strings (local) or user texts (openai: the server renders);
        # one list of `sampling.n` Completions per prompt, in order; `on_done(i, completions)` is
        # called as soon as prompt i is finished so callers can write results as they arrive.
    backend.close()

For `distill chat` every backend also has:

    backend.render_messages(messages, think_prefill=True) -> prompt
                                       # a whole conversation ({"role", "content"} dicts)
                                       # rendered like `render`; openai: the messages
    backend.stream(prompt, sampling) -> iterator of text pieces as they are decoded, one sample;
                                       # the iterator's return value (StopIteration.value) is
                                       # its Completion

Loaders take the spec's path/URL and keyword options; unknown kinds are user errors.
"""

from __future__ import annotations

from typing import Any, Callable

from distill.core.errors import UserError

from .types import Collector, Completion, Sampling  # noqa: F401 - the backends' shared types, re-exported


def _hf(target: str, **options: Any):
    from .hf import load
    return load(target, **options)


def _gguf(target: str, **options: Any):
    from .gguf import load
    return load(target, **options)


def _onnx(target: str, **options: Any):
    from .onnx import load
    return load(target, **options)


def _openai(target: str, **options: Any):
    from .openai_api import load
    return load(target, **options)


# kind -> loader; each runtime's module is imported on first use, so that llama.cpp, onnxruntime-
# genai and torch load only when a model of theirs is asked for.
BACKENDS: dict[str, Callable[..., Any]] = {"hf": _hf, "gguf": _gguf, "onnx": _onnx, "openai": _openai}


def parse_spec(spec: str) -> tuple[str, str]:
    """`kind:target` -> (kind, target). A bare path is detected by its contents."""
    from pathlib import Path
    kind, sep, target = spec.partition(":")
    if sep and kind in BACKENDS:
        return kind, target
    if sep and kind not in BACKENDS and not Path(spec).exists() and "://" not in spec:
        raise UserError(f"{spec}: unknown model kind '{kind}' (use one of: "
                        + ", ".join(f"{k}:" for k in BACKENDS) + ")")
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", spec
    if path.is_dir() and (path / "genai_config.json").is_file():
        return "onnx", spec
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", spec
    if spec.startswith(("http://", "https://")):
        return "openai", spec
    if not path.exists():
        raise UserError(f"{spec}: no such file or folder (prefix hub ids with hf:)")
    raise UserError(f"{spec}: cannot tell the model format (expected a .gguf file, an ONNX folder "
                    "with genai_config.json, or a Hugging Face folder with config.json)")


def load_backend(spec: str, **options: Any):
    kind, target = parse_spec(spec)
    return BACKENDS[kind](target, **options)


def load_checked(spec: str, **options: Any):
    """`load_backend`, with any failure of the runtime to load the model turned into a user
    error naming it (a corrupt file is the user's input at fault, not an internal error)."""
    from distill.core.errors import GateFailed, one_line
    try:
        return load_backend(spec, **options)
    except (UserError, GateFailed):
        raise
    except Exception as e:  # noqa: BLE001 - see above
        raise UserError(f"model: {spec}: cannot be loaded ({type(e).__name__}: {one_line(e)[:200]})") from None
