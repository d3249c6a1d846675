"""The speed probe of a local model in a fresh process (`python -m distill.eval.probe`, request as JSON on
stdin, result as JSON on the last line of stdout).

Peak memory is the process's peak resident set (VmHWM) minus its resident set once the runtime
was imported and before the model was loaded: the weights, the KV cache and the runtime's
buffers, counted the same for every runtime and untouched by whatever the evaluating process
loaded earlier (the Python interpreter and the libraries themselves are left out)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from distill.core.errors import UserError, one_line


def probe_in_subprocess(spec: str, options: dict, user_text: str, tokens: int) -> dict:
    """Speed figures, `peak_rss_bytes` and `threads` of `spec`, measured in a child process. A
    model the child cannot load is a user error with the child's message."""
    request = json.dumps({"spec": spec, "options": options, "user_text": user_text, "tokens": tokens})
    proc = subprocess.run([sys.executable, "-m", "distill.eval.probe"], input=request, capture_output=True,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = one_line(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"the speed probe of {spec} failed: {tail[:300]}")
    if "user_error" in result:
        raise UserError(result["user_error"])
    return result


# What each runtime imports, loaded before the baseline is taken so that the figure is the model's.
RUNTIME_MODULES = {"hf": ("torch", "transformers.AutoModelForCausalLM", "transformers.AutoTokenizer"),
                   "gguf": ("llama_cpp", "llama_cpp.llama_chat_format"),
                   "onnx": ("onnxruntime_genai", "transformers.AutoTokenizer")}


def _import_runtime(kind: str) -> None:
    import importlib
    for name in RUNTIME_MODULES.get(kind, ()):
        module, _, attr = name.partition(".") if name.startswith("transformers.") else (name, "", "")
        loaded = importlib.import_module(module)
        if attr:
            getattr(loaded, attr)  # transformers loads its classes lazily


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _resident_bytes() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def main() -> None:
    from distill.backends import load_backend, parse_spec
    from distill.eval.speed import probe_speed, threads_used

    request = json.loads(sys.stdin.read())
    spec = request["spec"]
    try:
        kind, _ = parse_spec(spec)
        _import_runtime(kind)
        baseline = _resident_bytes()
        backend = load_backend(spec, **request["options"])
        prompt = backend.render(request["user_text"])
    except UserError as e:
        print(json.dumps({"user_error": one_line(e)}))
        return
    except Exception as e:  # noqa: BLE001 - a model that does not load is the user's input at fault
        print(json.dumps({"user_error": f"model: {spec}: cannot be loaded ({type(e).__name__}: {one_line(e)[:200]})"}))
        return
    try:
        figures = probe_speed(backend, prompt, request["tokens"])
        figures["threads"] = threads_used(backend, kind, request["options"].get("threads"))
    finally:
        backend.close()
    figures["peak_rss_bytes"] = max(0, _peak_rss_bytes() - baseline)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
