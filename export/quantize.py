"""Quantization by llama.cpp's own quantizer, through llama-cpp-python's `llama_model_quantize`,
in a child process (export/child.py, export/worker.py): an abort inside llama.cpp becomes a one-line error.

llama.cpp chooses the type of each tensor itself (q4_k_m keeps some tensors at q6_k, and rows
that are not a multiple of the k-quant block size fall back to other types); `describe_gguf`
reads back what it actually wrote."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Iterator, Optional


from distill.core.errors import GateFailed, UserError

from .config import NEEDS_IMATRIX
from .child import NativeAbort, absolute, last_words, run_child


@contextlib.contextmanager
def native_output_to(log_path: Path) -> Iterator[None]:
    """Send what C libraries print on stdout/stderr to `log_path` (the ONNX builder's log)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def log_tail(log_path: Path, lines: int = 3) -> str:
    if not log_path.is_file():
        return ""
    text = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


def llama_file_type(quant: str) -> int:
    import gguf
    return int(gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"])


def quantize(src: Path, dst: Path, quant: str, threads: int = 1, log_path: Optional[Path] = None,
             imatrix: Optional[Path] = None, overrides: Optional[list[tuple[str, str]]] = None) -> None:
    """Quantize the f16/f32 GGUF `src` into `dst` with llama.cpp's quantizer, in a child process,
    calibrated by the importance matrix file `imatrix` (llama.cpp's GGUF imatrix format) when one
    is given. `overrides` are llama.cpp's tensor-type overrides, (regex, ggml type name) in order:
    the first pattern that a tensor's name matches (std::regex_search) sets its type, before
    llama.cpp's own fallback for rows its type cannot hold."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError("field 'gguf': quantized types need llama-cpp-python "
                        "(pip install llama-cpp-python)") from None
    if imatrix is None and quant in NEEDS_IMATRIX:
        raise UserError(f"field 'gguf': {quant} needs an importance matrix (--imatrix)")
    log_path = log_path or dst.with_name(dst.name + ".log")
    job = {"src": absolute(src), "dst": absolute(dst), "ftype": llama_file_type(quant), "threads": threads,
           "imatrix": absolute(imatrix), "overrides": [[p, ggml_type(t)] for p, t in overrides or []]}
    try:
        result = run_child("quantize", job, log_path)
    except NativeAbort as e:
        dst.unlink(missing_ok=True)
        raise GateFailed(f"{dst.name}: llama.cpp aborted while quantizing to {quant}: {e}") from None
    if result["status"] != 0 or not dst.is_file():
        dst.unlink(missing_ok=True)
        raise GateFailed(f"{dst.name}: llama.cpp could not quantize to {quant} (status {result['status']}): "
                         f"{last_words(log_path)}")


def ggml_type(name: str) -> int:
    """A ggml tensor type by name ('q4_k', 'Q8_0', 'f16')."""
    import gguf
    return int(gguf.GGMLQuantizationType[name.upper()])


def tensor_overrides(llama_cpp, overrides: list) -> tuple:
    """llama.cpp's NULL-terminated array of {pattern, type}, and the encoded patterns it points
    into (both must outlive the call)."""
    patterns = [p.encode() for p, _ in overrides]
    array = (llama_cpp.llama_model_tensor_override * (len(patterns) + 1))()
    for i, (pattern, (_, qtype)) in enumerate(zip(patterns, overrides)):
        array[i].pattern, array[i].type = pattern, int(qtype)
    array[len(patterns)].pattern = None
    return array, patterns


def quantize_here(job: dict) -> dict:
    """In the child: run llama.cpp's quantizer."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = job["ftype"]
    params.nthread = job["threads"]
    calibration = keep = None
    if job.get("overrides"):
        keep = tensor_overrides(llama_cpp, job["overrides"])
        params.tt_overrides = ctypes.cast(keep[0], ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if job.get("imatrix"):
        from .imatrix import QuantizerImatrix, read_imatrix
        calibration = QuantizerImatrix(read_imatrix(Path(job["imatrix"])))  # must outlive the call
        params.imatrix = ctypes.cast(calibration.array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(calibration.overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    status = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))
    del calibration, keep
    return {"status": int(status)}
