"""Speed and footprint of one model on its runtime: prompt and decode tokens/s, time to first
token, peak resident memory, size on disk, threads.

Speed comes from a single-stream probe (one prompt, greedy), because that is what a user of a
laptop or a Raspberry Pi sees; the batched accuracy run would flatter the hf backend. Local
models are probed in a fresh process (eval/probe.py), so that the peak resident memory is what
that model needs on that runtime, whatever the evaluating process loaded before it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from distill.backends import Sampling

MEMORY_METHOD = ("peak resident set (VmHWM) of a fresh process that loads the model and runs the "
                 "speed probe, minus its resident set after importing the runtime: weights, KV cache "
                 "and runtime buffers, without the Python interpreter and libraries")

# Raw text, not a chat prompt: llama.cpp and servers reuse a cached prompt prefix, and a warm-up
# sharing the measured prompt's prefix would make its time to first token look shorter.
WARMUP_TEXT = "Warm-up."


def _timed(backend, prompt: str, tokens: int):
    started = time.perf_counter()
    completion = backend.generate([prompt], Sampling(n=1, max_new_tokens=tokens, temperature=0.0))[0][0]
    return completion, time.perf_counter() - started


def probe_speed(backend, prompt: str, tokens: int) -> dict:
    """Single-stream greedy speed on `prompt` after a short warm-up. The backends report the time
    to the first token and the decode time of each completion; where one does not, the wall
    clock of a one-token call stands for the first and the rest of a full call for the second."""
    _timed(backend, WARMUP_TEXT, 2)
    full, total = _timed(backend, prompt, tokens)
    if full.error:
        return {"speed_error": full.error}
    ttft, decode_s = full.ttft_s, full.decode_s
    if ttft is None or decode_s is None:
        _timed(backend, WARMUP_TEXT, 2)
        _, ttft = _timed(backend, prompt, 1)
        decode_s = total - ttft
    decoded = full.completion_tokens - 1  # the first token belongs to the prompt's time
    return {
        "ttft_s": ttft,
        "prompt_tokens_per_s": full.prompt_tokens / ttft if ttft and full.prompt_tokens else None,
        "decode_tokens_per_s": decoded / decode_s if decoded > 0 and decode_s and decode_s > 0 else None,
        "speed_prompt_tokens": full.prompt_tokens,
        "speed_decode_tokens": max(decoded, 0),
    }


def size_on_disk(kind: str, target: str) -> int | None:
    """Bytes of the artifact a user would ship: the .gguf file, or every file of a model folder.
    None for remote models and hub ids that are not local folders."""
    if kind == "openai":
        return None
    path = Path(target)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    return None


def threads_used(backend, kind: str, requested: int | None) -> int | None:
    """The CPU threads the local runtime computes with (None for a remote server): what the
    backend reports, else the runtime's own default when none was asked for."""
    if kind == "openai":
        return None
    for owner in (backend, getattr(backend, "llm", None)):  # llama_cpp.Llama keeps n_threads
        reported = getattr(owner, "threads", None) or getattr(owner, "n_threads", None)
        if isinstance(reported, int) and reported > 0:
            return reported
    if kind == "hf":
        import torch
        return torch.get_num_threads()
    return requested or os.cpu_count()
