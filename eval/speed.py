"""Speed and footprint of one model on its runtime: prompt and decode tokens/s, time to first
token, peak resident memory, size on disk, threads.

Speed comes from a single-stream probe (one prompt, greedy), because that is what a user of a
laptop or a Raspberry Pi sees; the batched accuracy run would flatter the hf backend.

Memory is measured in this process: before a model is loaded, freed heap memory is handed back
to the kernel (malloc_trim) and the kernel's high-water mark of resident memory is reset
(/proc/self/clear_refs); the peak after loading and probing, minus the resident memory before,
is what the model and its runtime took. Where clear_refs is not available a sampling thread
polls the resident size instead."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import threading
import time
from pathlib import Path

from eval.backends import Sampling

MEMORY_METHOD = ("in-process: peak resident memory (VmHWM, reset through /proc/self/clear_refs) "
                 "while loading the model and running the speed probe, minus the resident memory "
                 "before loading")


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _resident_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil
    return psutil.Process().memory_info().rss


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """`with PeakMemory() as mem: ...` then `mem.peak_bytes`: the most resident memory the body
    added on top of what the process held when it started."""

    def __init__(self):
        self.base = 0
        self.peak_bytes: int | None = None
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> "PeakMemory":
        _release_freed_memory()
        self.base = _resident_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._kernel = _status_kib("VmHWM") is not None
        except OSError:
            self._kernel = False
        if not self._kernel:
            self._sampled = self.base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _resident_bytes())

    def read(self) -> int:
        if self._kernel:
            return max(0, (_status_kib("VmHWM") or 0) * 1024 - self.base)
        return max(0, max(self._sampled, _resident_bytes()) - self.base)

    def __exit__(self, *exc) -> None:
        self.peak_bytes = self.read()
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()


def _timed(backend, prompt: str, tokens: int):
    started = time.perf_counter()
    completion = backend.generate([prompt], Sampling(n=1, max_new_tokens=tokens, temperature=0.0))[0][0]
    return completion, time.perf_counter() - started


def probe_speed(backend, prompt: str, tokens: int) -> dict:
    """Single-stream greedy speed on `prompt`. A one-token call warms the runtime up and a second
    one times the prompt (time to first token); a `tokens`-token call then gives the decode rate
    as the extra tokens over the extra time. Wall clock is used for every backend alike."""
    _timed(backend, prompt, 1)
    first, ttft = _timed(backend, prompt, 1)
    full, total = _timed(backend, prompt, tokens)
    if first.error or full.error:
        return {"prompt_tokens_per_s": None, "decode_tokens_per_s": None, "ttft_s": None,
                "speed_error": first.error or full.error}
    decoded = full.completion_tokens - 1
    decode_time = total - ttft
    return {
        "ttft_s": ttft,
        "prompt_tokens_per_s": first.prompt_tokens / ttft if ttft > 0 and first.prompt_tokens else None,
        "decode_tokens_per_s": decoded / decode_time if decoded > 0 and decode_time > 0 else None,
        "speed_prompt_tokens": first.prompt_tokens,
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
    reported = getattr(backend, "threads", None)
    if isinstance(reported, int) and reported > 0:
        return reported
    if kind == "hf":
        import torch
        return torch.get_num_threads()
    if requested:
        return requested
    if kind == "gguf":  # llama-cpp-python's default: half the logical cores
        return max((os.cpu_count() or 2) // 2, 1)
    import psutil  # onnxruntime's default: one intra-op thread per physical core
    return psutil.cpu_count(logical=False) or os.cpu_count()
