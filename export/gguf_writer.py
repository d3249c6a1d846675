"""A GGUF writer for dense llama, qwen2 and qwen3 models, built on the gguf package's own
GGUFWriter and tensor name maps.

Tensors are streamed: the header and tensor table are written from the safetensors metadata,
then each tensor is read, converted and written on its own, so memory holds one tensor at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import gguf
import numpy as np

from distill.core.errors import UserError
from distill.core.progress import track

from .gguf_vocab import add_vocab
from .source import ModelFacts, rope_parameters, safetensors_files

FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16}
MATRIX_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "bf16": gguf.GGMLQuantizationType.BF16}
ARCHES = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
logging.getLogger("gguf").setLevel(logging.WARNING)  # it logs every file plan at INFO


@dataclass
class PlannedTensor:
    name: str                                  # GGUF name
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], "np.ndarray"]           # reads and converts the tensor when called


def permute_rotary(w, n_head: int):
    """Reorder q/k rows from Hugging Face's rotate-half layout to the interleaved pairs that
    llama.cpp's `llama` architecture rotates (qwen2/qwen3 use the NeoX layout and need none)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(params: dict, head_dim: int) -> "np.ndarray":
    """Per-frequency divisors equivalent to transformers' llama3 RoPE scaling."""
    base = params["rope_theta"]
    factor = params["factor"]
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_ctx = params.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def add_hparams(writer: gguf.GGUFWriter, config: dict, facts: ModelFacts, ftype: str, name: str) -> Optional["np.ndarray"]:
    """Model keys; returns the llama3 rope factors tensor when the config asks for one."""
    where = "config.json"
    if config.get("use_sliding_window"):
        raise UserError(f"{where}: use_sliding_window is true, which llama.cpp's {facts.arch} does not implement")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(facts.layers)
    writer.add_context_length(facts.max_positions)
    writer.add_embedding_length(facts.hidden)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(facts.heads)
    writer.add_head_count_kv(facts.kv_heads)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim") or facts.head_dim * facts.heads != facts.hidden:
        writer.add_key_length(facts.head_dim)
        writer.add_value_length(facts.head_dim)
    if facts.arch == "llama":
        writer.add_vocab_size(facts.vocab_size)
        writer.add_rope_dimension_count(facts.head_dim)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", "default")
    factors = None
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings", facts.max_positions)))
    elif rope_type == "llama3":
        factors = llama3_rope_factors(rope, facts.head_dim)
    elif rope_type != "default":
        raise UserError(f"{where}: RoPE type '{rope_type}' is not supported (default, linear, yarn, llama3)")
    writer.add_file_type(FILE_TYPES[ftype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return factors


# Tensors are read with the gguf package's own safetensors reader (the one llama.cpp's converter
# uses), a memory map per tensor. Their types are cast by numpy for a small model and by torch for
# a large one: importing torch costs a second, numpy's casts to float16 are 5x slower than
# torch's (2.75 against 0.55 ns an element here), so torch pays from about 400M parameters
# (SmolLM2-135M f16: 1.5 s with numpy; the 1.5B shape: 25 s with numpy, bench/gpu.py --cpu-export).
TORCH_CASTS_FROM = 400_000_000
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read(tensor: "gguf.utility.LocalTensor", where: str) -> "np.ndarray":
    """The tensor as stored: float32 or float16 values, or raw bfloat16 bits as uint16."""
    if tensor.dtype not in _NUMPY_DTYPES:
        raise UserError(f"{where}: dtype {tensor.dtype} is not supported (F32, F16, BF16)")
    return tensor.mmap_bytes().view(_NUMPY_DTYPES[tensor.dtype]).reshape(tensor.shape)


def _convert(data: "np.ndarray", qtype: gguf.GGMLQuantizationType) -> "np.ndarray":
    """numpy: float32/float16 values or raw bfloat16 bits (uint16) -> the file's type; bfloat16
    from a wider type is rounded to nearest even by gguf's own BF16 quantizer, as torch does."""
    if data.dtype == np.uint16:
        if qtype == gguf.GGMLQuantizationType.BF16:
            return data.view(np.int16)  # already bfloat16: copied bit for bit
        data = (data.astype(np.uint32) << 16).view(np.float32)  # exact
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16).view(np.int16) \
        .reshape(data.shape)


def _convert_torch(data: "np.ndarray", qtype: gguf.GGMLQuantizationType) -> "np.ndarray":
    """The same casts as `_convert`, bit for bit, by torch."""
    import torch
    tensor = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16) if data.dtype == np.uint16 \
        else torch.from_numpy(data)
    if qtype == gguf.GGMLQuantizationType.F32:
        return tensor.to(torch.float32).numpy()
    if qtype == gguf.GGMLQuantizationType.F16:
        return tensor.to(torch.float16).numpy()
    return tensor.to(torch.bfloat16).view(torch.int16).numpy()


def plan_tensors(folder: Path, config: dict, facts: ModelFacts, ftype: str,
                 rope_factors: Optional["np.ndarray"]) -> list[PlannedTensor]:
    name_map = gguf.get_tensor_name_map(ARCHES[facts.arch], facts.layers)
    cast = _convert_torch if facts.parameters >= TORCH_CASTS_FROM else _convert
    plan: list[PlannedTensor] = []
    seen = set()
    for path in safetensors_files(folder):
        tensors = gguf.utility.SafetensorsLocal(path).tensors  # the header; data is mapped when written
        for key, tensor in tensors.items():
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and facts.tied):
                continue
            gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UserError(f"{path}: tensor '{key}' has no place in a GGUF {facts.arch} model")
            shape = tuple(tensor.shape)
            heads = None
            if facts.arch == "llama" and key.endswith(("q_proj.weight", "q_proj.bias")):
                heads = facts.heads
            elif facts.arch == "llama" and key.endswith(("k_proj.weight", "k_proj.bias")):
                heads = facts.kv_heads
            # llama.cpp keeps vectors and norms in F32 whatever the file type.
            small = len(shape) <= 1 or gguf_name.endswith("_norm.weight")
            qtype = gguf.GGMLQuantizationType.F32 if small else MATRIX_TYPES[ftype]

            def load(tensor=tensor, where=f"{path}: {key}", heads=heads, qtype=qtype):
                data = _read(tensor, where)
                if heads is not None:  # a permutation moves values (or bfloat16 bits) unchanged
                    data = permute_rotary(data, heads)
                return cast(data, qtype)

            plan.append(PlannedTensor(gguf_name, shape, qtype, load))
            seen.add(gguf_name)
    if "token_embd.weight" not in seen:
        raise UserError(f"{folder}: no token embedding (model.embed_tokens.weight) in the weights")
    if not facts.tied and "output.weight" not in seen:
        raise UserError(f"{folder}: tie_word_embeddings is false but there is no lm_head.weight")
    if rope_factors is not None:
        plan.append(PlannedTensor("rope_freqs.weight", rope_factors.shape, gguf.GGMLQuantizationType.F32,
                                  lambda f=rope_factors: f))
    return sorted(plan, key=_tensor_order)


def _tensor_order(t: PlannedTensor) -> tuple:
    parts = t.name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), t.name)
    return (0 if t.name.startswith(("token_embd", "rope_freqs")) else 2, 0, t.name)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * (4 if qtype == gguf.GGMLQuantizationType.F32 else 2)


def add_prompt_record(writer: "gguf.GGUFWriter", folder: Path) -> None:
    """How the student was taught to be asked (its distill.json, written by train), as metadata
    that `distill chat` and `distill eval` read back (distill/backends/recorded.py)."""
    from distill.backends.recorded import GGUF_TEMPLATE, GGUF_THINK, recorded_prompt
    asked = recorded_prompt(f"hf:{folder}")
    if asked is not None:
        writer.add_string(GGUF_TEMPLATE, asked["prompt_template"])
        writer.add_bool(GGUF_THINK, bool(asked.get("think", True)))


def write_gguf(folder: Path, config: dict, facts: ModelFacts, out_path: Path, ftype: str, name: str,
               pre: Optional[str] = None, trust_remote_code: bool = False) -> dict:
    """Write `folder` as a GGUF file of type f32, f16 or bf16; returns the vocabulary facts."""
    writer = gguf.GGUFWriter(path=None, arch=facts.arch)
    rope_factors = add_hparams(writer, config, facts, ftype, name)
    vocab = add_vocab(writer, folder, facts.vocab_size, pre, trust_remote_code)
    add_prompt_record(writer, folder)
    plan = plan_tensors(folder, config, facts, ftype, rope_factors)
    for t in plan:
        dtype = np.float32 if t.qtype == gguf.GGMLQuantizationType.F32 else np.float16
        raw = t.qtype if t.qtype == gguf.GGMLQuantizationType.BF16 else None
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.int16) if raw else np.dtype(dtype),
                               _nbytes(t.shape, t.qtype), raw_dtype=raw)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
    try:
        writer.write_header_to_file(path=out_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in track(plan, f"Writing {out_path.name}"):
            data = t.load()
            if tuple(data.shape) != tuple(t.shape):
                raise UserError(f"{folder}: tensor {t.name} changed shape while reading")
            writer.write_tensor_data(data)
            del data
    finally:
        writer.close()
    return vocab
