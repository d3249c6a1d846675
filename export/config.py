"""Settings of `distill export` (defaults, YAML and flags all land here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill.core.config import option

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k")
ONNX_PRECISIONS = ("fp32", "fp16", "int4")
DEFAULT_GGUF = ("f16", "q8_0", "q4_k_m")
DEFAULT_ONNX = ("int4",)


@dataclass
class ExportConfig:
    model: str = option("student", "Trained student folder (LoRA adapter folders are merged first)", input=True)
    out: str = option("export", "Output folder")
    gguf: list[str] = option([], f"GGUF types, comma-separated ({', '.join(GGUF_TYPES)})")
    onnx: list[str] = option([], f"ONNX precisions, comma-separated ({', '.join(ONNX_PRECISIONS)})")
    target: Optional[str] = option(None, "Device profile (rpi5-8gb, rpi4-4gb, laptop-cpu, ...) choosing formats and context length")
    context_length: Optional[int] = option(None, "Context length the artifacts are checked to fit (default: the profile's)")
    name: str = option("model", "Base name of the artifacts")
    gguf_pre: Optional[str] = option(None, "Override tokenizer.ggml.pre (default: detected from the tokenizer)")
    validate: bool = option(True, "Check every artifact against the source model")
    overwrite: bool = option(False, "Replace an existing output folder")
    tarball: bool = option(False, "Also write a .tar.gz per target")
    threads: Optional[int] = option(None, "CPU threads for validation (default: all cores)")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")
