"""Quantization by llama.cpp's own quantizer, through llama-cpp-python's `llama_model_quantize`.

llama.cpp chooses the type of each tensor itself (q4_k_m keeps some tensors at q6_k, and rows
that are not a multiple of the k-quant block size fall back to other types); `describe_gguf`
reads back what it actually wrote."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Iterator

from typing import Optional

import gguf

from distill.core.errors import UserError

from .config import NEEDS_IMATRIX


@contextlib.contextmanager
def native_output_to(log_path: Path) -> Iterator[None]:
    """Send what C libraries print on stdout/stderr to `log_path` (llama.cpp logs every tensor)."""
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
    return int(gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"])


def quantize(src: Path, dst: Path, quant: str, threads: int, log_path: Path,
             imatrix: Optional[Path] = None) -> None:
    """Quantize the f16/f32 GGUF `src` into `dst` with llama.cpp's quantizer, calibrated by the
    importance matrix file `imatrix` when one is given."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError("field 'gguf': quantized types need llama-cpp-python "
                        "(pip install llama-cpp-python)") from None
    if imatrix is None and quant in NEEDS_IMATRIX:
        raise UserError(f"field 'gguf': {quant} needs an importance matrix (--imatrix)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_file_type(quant)
    params.nthread = threads
    calibration = None
    if imatrix is not None:
        from .imatrix import QuantizerImatrix, read_imatrix
        calibration = QuantizerImatrix(read_imatrix(imatrix))  # must outlive the call
        params.imatrix = ctypes.cast(calibration.array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(calibration.overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    with native_output_to(log_path):
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not dst.is_file():
        raise RuntimeError(f"llama.cpp could not quantize to {quant} (status {status}): {log_tail(log_path)}")
