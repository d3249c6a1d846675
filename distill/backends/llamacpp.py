"""Opening a GGUF file in llama.cpp (llama-cpp-python), the same way wherever it is opened: the
gguf backend, export validation, eval fidelity, and the llama.cpp servers the tests start.

On CPUs with Intel AMX (`amx_int8` in /proc/cpuinfo), llama.cpp 0.3.36 built from source puts
quantized weights in its AMX buffer type, and its AMX matrix multiplication ended the process
with SIGSEGV on every batch of more than one token, for every model and quantized type we tried
(SmolLM2-135M q8_0, and hidden sizes 64 to 1024 in q4_0, q8_0 and q4_k_m; a single token
worked). So on those CPUs the model is loaded with llama.cpp's extra buffer types off
(`use_extra_bufts = false`, llama-cli's `--no-repack`): weights stay in plain CPU buffers, as
on CPUs without AMX, and the AMX and weight-repacking paths are not used. DISTILL_LLAMA_EXTRA_BUFTS=1
turns them back on (0 turns them off anywhere), for a llama.cpp build whose AMX path works.

`Llama` (llama-cpp-python's class) does not take that setting, so `guard()` wraps the function
it reads its defaults from; `python -m distill.backends.llamacpp server ARGS` runs
llama-cpp-python's server with the same guard (the tests' llama.cpp servers)."""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def extra_buffers_wanted() -> bool:
    """Whether llama.cpp may use its extra buffer types (AMX, repacked weights) here."""
    forced = os.environ.get("DISTILL_LLAMA_EXTRA_BUFTS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return not cpu_has_amx()


@functools.cache
def guard() -> bool:
    """Make every `llama_cpp.Llama` of this process load without extra buffer types when they
    are not wanted (see the module docstring). Returns whether they stay on."""
    import llama_cpp.llama_cpp as C

    if extra_buffers_wanted():
        return True
    defaults = C.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    C.llama_model_default_params = without_extra_buffers
    return False


def open_llama(path, **kwargs):
    """`llama_cpp.Llama(model_path=path, **kwargs)` behind the guard."""
    import llama_cpp

    guard()
    return llama_cpp.Llama(model_path=str(path), **kwargs)


def main(argv: list[str]) -> None:
    if argv[:1] != ["server"]:
        raise SystemExit("usage: python -m distill.backends.llamacpp server [llama_cpp.server arguments]")
    import runpy

    guard()
    sys.argv = ["llama_cpp.server", *argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
