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

import importlib
from dataclasses import dataclass, field
from typing import Any

from distill.core.errors import UserError


@dataclass
class Sampling:
    n: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    text: str                          # generated text after the prompt (after the "<think>\n" prefill)
    finish_reason: str                 # "stop" (end-of-turn or stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None       # a separate reasoning channel (DeepSeek API `reasoning_content`)
    ttft_s: float | None = None        # time to first token
    decode_s: float | None = None      # time from the first token to the last
    error: str | None = None           # set when the request failed for good (openai)
    token_ids: list[int] | None = None # the generated ids, end-of-turn excluded (hf, gguf)
    stop_token: int | None = None      # the end-of-turn id the sample stopped on (hf; on-policy
                                       # training scores it too)


class Collector:
    """Gathers the completions of `n_prompts` prompts as they finish, in any order, and calls
    `on_done(i, completions)` as soon as prompt i has all of them. Greedy decoding asks for one
    copy per prompt and repeats it `n` times (every sample would be the same)."""

    def __init__(self, n_prompts: int, sampling: Sampling, on_done=None):
        self.copies = 1 if sampling.temperature == 0 else sampling.n
        self.n, self.on_done = sampling.n, on_done
        self.results: list[list] = [[None] * sampling.n for _ in range(n_prompts)]
        self._missing = [self.copies] * n_prompts

    def jobs(self) -> list[tuple[int, int]]:
        """(prompt index, copy index) for every generation to run."""
        return [(i, j) for i in range(len(self.results)) for j in range(self.copies)]

    def add(self, i: int, j: int, completion: Completion) -> None:
        if self.copies == 1:
            self.results[i] = [completion] * self.n
        else:
            self.results[i][j] = completion
        self._missing[i] -= 1
        if self._missing[i] == 0 and self.on_done is not None:
            self.on_done(i, self.results[i])


# name -> "module:function"; modules are imported on first use so that optional runtimes
# (llama.cpp, onnxruntime-genai) are only loaded when asked for.
BACKENDS: dict[str, str] = {
    "hf": "distill.backends.hf:load",
    "gguf": "distill.backends.gguf:load",
    "onnx": "distill.backends.onnx:load",
    "openai": "distill.backends.openai_api:load",
}


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
    module, _, func = BACKENDS[kind].partition(":")
    return getattr(importlib.import_module(module), func)(target, **options)


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
