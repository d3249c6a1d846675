"""Settings of `distill export` (defaults, YAML and flags all land here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from distill.core.config import option
from distill.core.errors import UserError

from .gguf_pre import PRE_TOKENIZERS

# The float types the GGUF writer produces itself; every other type is made from the f16 file by
# llama.cpp's own quantizer.
GGUF_FLOAT_TYPES = ("f32", "f16", "bf16")
GGUF_QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "iq4_xs",
                    "iq4_nl", "q3_k_l", "q3_k_m", "q3_k_s", "iq3_m", "iq3_xxs", "q2_k", "q2_k_s", "iq2_m",
                    "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
# Types whose main tensors llama.cpp refuses to quantize without an importance matrix (its
# tensor_requires_imatrix, and llama-quantize's own refusal of the iq2, iq1 and q2_k_s files).
NEEDS_IMATRIX = ("iq3_xxs", "q2_k_s", "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
GGUF_TYPES = GGUF_FLOAT_TYPES + GGUF_QUANT_TYPES
# int4-int8head: int4 matrices with the output head (and a tied embedding) at 8 bits
ONNX_PRECISIONS = ("fp32", "int4", "int4-int8head")
# onnxruntime-genai's MatMulNBits block sizes and accuracy levels (the minimum precision of the
# activations inside the int4 kernels: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8).
ONNX_BLOCK_SIZES = (16, 32, 64, 128, 256)
ONNX_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_GGUF = ("f16", "q8_0", "q4_k_m")
DEFAULT_ONNX = ("int4",)
# tokenizer.ggml.pre values that llama.cpp implements for byte-level BPE vocabularies.
GGUF_PRE_TOKENIZERS = PRE_TOKENIZERS


@dataclass
class ExportConfig:
    model: str = option("student", "Trained student folder (LoRA adapter folders are merged first)", input=True)
    out: str = option("export", "Output folder")
    gguf: list[str] = option([], f"GGUF types, comma-separated ({', '.join(GGUF_TYPES)}); with neither --gguf nor --onnx (nor a --target): {','.join(DEFAULT_GGUF)} and ONNX {','.join(DEFAULT_ONNX)}")
    onnx: list[str] = option([], f"ONNX precisions, comma-separated ({', '.join(ONNX_PRECISIONS)})")
    fit: Optional[str] = option(None, "Also write <name>-fit.gguf: per-tensor llama.cpp types chosen to fit this size (e.g. 110MB, 1.2GiB; a bare integer is bytes) with the least loss; without --gguf it is the only artifact")
    tensor_type: list[str] = option([], "llama.cpp tensor-type override for the quantized GGUF files, PATTERN=TYPE (a regex on GGUF tensor names, as llama-quantize's --tensor-type; repeatable); --fit keeps these tensors as given")
    onnx_block_size: int = option(32, f"Block size of the int4 ONNX matrices ({', '.join(map(str, ONNX_BLOCK_SIZES))}): smaller blocks, less loss, larger files")
    onnx_accuracy_level: int = option(4, "Accuracy level of the int4 ONNX matmuls: 4 computes with int8 activations (fastest on CPU), 1 in fp32, 0 leaves it to the runtime")
    target: Optional[str] = option(None, "Device profile (rpi5-8gb, rpi4-4gb, laptop-cpu, or a YAML file) adding its formats, context length and memory check")
    context_length: Optional[int] = option(None, "Context length the artifacts are checked to fit (default: the profile's, at most the model's)")
    name: str = option("model", "Base name of the artifacts (<name>-<quant>.gguf, <name>-onnx-<precision>/)")
    gguf_pre: Optional[str] = option(None, "Override tokenizer.ggml.pre (default: detected from the tokenizer)")
    validate: bool = option(True, "Check every artifact against the source model")
    reference_cache: bool = option(True, "Keep the source model's reference outputs for the next export of the same weights, and use a kept one (in $DISTILL_CACHE, default ~/.cache/distill)")
    max_quant_kld: float = option(1.0, "Fail when a quantized GGUF's mean KL divergence from the f16 one exceeds this (nats)")
    overwrite: bool = option(False, "Replace an existing output folder")
    tarball: bool = option(False, "Also write a .tar.gz with the target's artifacts")
    imatrix: Optional[str] = option(None, "Importance matrix for the quantizer: traces as `distill train` reads them, a .txt/.jsonl text file, or an imatrix .gguf file; none: off (default: the traces recorded in the student's train.json, when there are any)", input=True)
    imatrix_compare: bool = option(False, "Also quantize each type without the importance matrix and record both measurements")
    imatrix_texts: int = option(256, "At most this many calibration texts go into the importance matrix")
    imatrix_heldout: float = option(0.1, "Fraction of the calibration texts (whole problems) kept apart to measure each quant on")
    imatrix_heldout_tokens: int = option(4096, "At most this many held-out tokens are measured")
    threads: Optional[int] = option(None, "CPU threads for quantization and validation (default: all cores; the checks of models under 50M parameters use one)")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")

    def check(self) -> None:
        self.gguf = [t.strip().lower() for t in self.gguf]
        self.onnx = [p.strip().lower() for p in self.onnx]
        for kind in self.gguf:
            if kind not in GGUF_TYPES:
                raise UserError(f"field 'gguf': unknown GGUF type '{kind}' (valid: {', '.join(GGUF_TYPES)})")
        for precision in self.onnx:
            if precision not in ONNX_PRECISIONS:
                raise UserError(f"field 'onnx': unknown ONNX precision '{precision}' "
                                f"(valid: {', '.join(ONNX_PRECISIONS)})")
        if self.onnx_block_size not in ONNX_BLOCK_SIZES:
            raise UserError(f"field 'onnx_block_size': {self.onnx_block_size} is not one of "
                            f"{', '.join(map(str, ONNX_BLOCK_SIZES))}")
        if self.onnx_accuracy_level not in ONNX_ACCURACY_LEVELS:
            raise UserError(f"field 'onnx_accuracy_level': {self.onnx_accuracy_level} is not one of "
                            f"{', '.join(map(str, ONNX_ACCURACY_LEVELS))}")
        from .fit_types import parse_overrides
        parse_overrides(self.tensor_type)
        if self.gguf_pre is not None and self.gguf_pre not in GGUF_PRE_TOKENIZERS:
            raise UserError(f"field 'gguf_pre': unknown pre-tokenizer '{self.gguf_pre}' "
                            f"(valid: {', '.join(GGUF_PRE_TOKENIZERS)})")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise UserError(f"field 'name': '{self.name}' must be letters, digits, '.', '_' or '-'")
        if self.context_length is not None and self.context_length < 1:
            raise UserError(f"field 'context_length': must be positive, got {self.context_length}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"field 'threads': must be positive, got {self.threads}")
        for name in ("imatrix_texts", "imatrix_heldout_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"field '{name}': must be positive, got {getattr(self, name)}")
        if not 0 <= self.imatrix_heldout < 1:
            raise UserError(f"field 'imatrix_heldout': must be in [0, 1), got {self.imatrix_heldout}")
        if self.max_quant_kld <= 0:
            raise UserError(f"field 'max_quant_kld': must be positive, got {self.max_quant_kld}")
