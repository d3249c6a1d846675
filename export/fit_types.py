"""What the fit search needs to know about llama.cpp's tensor types, read from `llama-quant.cpp`
of the vendored llama.cpp and checked against the files it writes (tests/export/test_fit.py):
which types a tensor can be given, what llama.cpp writes instead when its rows are too narrow
(the fallback), how many bytes each takes, and the exact size of a file before it is written.

Also the user's own tensor-type overrides (`--tensor-type PATTERN=TYPE`, as llama-quantize's
`--tensor-type`): parsed and checked against the model's tensor names before any work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import gguf

from distill.core.errors import UserError

T = gguf.GGMLQuantizationType

# The per-tensor types the search chooses from, cheapest first. iq4_nl is there for the tensors
# whose rows are not a multiple of 256 (on SmolLM2, 180 of 272): their k-quants fall back to the
# legacy types, and iq4_nl is the imatrix-aware 4.5-bit type that fits 32-wide blocks.
LADDER = ("q2_k", "q3_k", "iq4_nl", "q4_k", "q5_k", "q6_k", "q8_0")
# The uniform llama.cpp presets a fitted file is compared with, smallest first, and the ladder
# type each one mostly uses (the search starts two rungs below the smaller neighbour's).
PRESETS = {"q2_k": "q2_k", "q3_k_m": "q3_k", "q4_k_m": "q4_k", "q5_k_m": "q5_k", "q6_k": "q6_k",
           "q8_0": "q8_0"}
# Types a --tensor-type override may name.
OVERRIDE_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0",
                  "iq4_nl", "iq4_xs", "q3_k", "iq3_s", "q2_k")

# llama.cpp's tensor_type_fallback: the type written when a tensor's rows (ne[0]) are not a
# multiple of the chosen type's block; F16 when the fallback's block does not fit either.
_FALLBACK = {T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL,
             T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
             T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


@dataclass
class FitTarget:
    """What the fit search aims at (export/fit.py)."""
    budget: int                      # bytes the file may take
    reason: str                      # where the budget comes from, for the manifest and messages
    overrides: list = field(default_factory=list)  # the user's (pattern, type): pinned, not searched


def qtype(name: str | T) -> T:
    return name if isinstance(name, T) else T[name.upper()]


def written_type(wanted: str | T, ncols: int) -> T:
    """The type llama.cpp writes for a tensor with rows `ncols` wide when `wanted` was chosen."""
    wanted = qtype(wanted)
    if ncols % gguf.GGML_QUANT_SIZES[wanted][0] == 0:
        return wanted
    out = _FALLBACK.get(wanted, wanted)
    return out if ncols % gguf.GGML_QUANT_SIZES[out][0] == 0 else T.F16


def tensor_bytes(shape: list[int], kind: str | T) -> int:
    """Bytes of a tensor of ggml `shape` (ne[0] first) stored as `kind`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype(kind)]
    rows = 1
    for n in shape[1:]:
        rows *= n
    return rows * (shape[0] // block) * size


def padded(n: int, alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


def data_bytes(tensors: list[dict], types: dict[str, str]) -> int:
    """The tensor data of a file: every tensor at its type in `types` (else its own), each padded
    to the alignment as the GGUF writer pads it."""
    return sum(padded(tensor_bytes(t["shape"], types.get(t["name"], t["type"]))) for t in tensors)


def metadata_bytes(path: Path, tensors: list[dict]) -> int:
    """A written file's header (metadata and tensor infos, padded): its size minus its data.
    Every file quantized from one f16 source with one matrix has the same header size, so one
    quantized file gives the exact size of every other assignment (`data_bytes`)."""
    return path.stat().st_size - data_bytes(tensors, {})


def exact(name: str) -> str:
    """An anchored, escaped pattern that matches one tensor: llama.cpp uses std::regex_search and
    the first match wins, so `blk.1.attn_v.weight` unanchored would also match blk.11."""
    return "^" + re.escape(name) + "$"


def quantizable(names_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The matrices llama.cpp quantizes (its tensor_allows_quantization for the dense llama-like
    architectures we write): weights of two or more dimensions that are not norms."""
    return {n: s for n, s in names_shapes.items()
            if len(s) >= 2 and n.endswith(".weight") and not n.endswith("_norm.weight")}


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """`PATTERN=TYPE` items (a regex on GGUF tensor names, as llama-quantize's --tensor-type)."""
    out = []
    for item in items:
        pattern, sep, kind = item.rpartition("=")
        if not sep or not pattern:
            raise UserError(f"field 'tensor_type': '{item}' is not PATTERN=TYPE (e.g. attn_v=q8_0)")
        kind = kind.strip().lower()
        if kind not in OVERRIDE_TYPES:
            raise UserError(f"field 'tensor_type': '{item}': unknown tensor type '{kind}' "
                            f"(valid: {', '.join(OVERRIDE_TYPES)})")
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"field 'tensor_type': '{item}': not a regular expression ({e})") from None
        out.append((pattern, kind))
    return out


def check_overrides(overrides: list[tuple[str, str]], names: list[str]) -> None:
    """Every pattern must name at least one quantized tensor of this model: a typo would otherwise
    be ignored by llama.cpp without a word."""
    for pattern, kind in overrides:
        if not any(re.search(pattern, n) for n in names):
            example = next((n for n in names if n.startswith("blk.0.")), names[0] if names else "")
            raise UserError(f"field 'tensor_type': '{pattern}={kind}' names no tensor of this model "
                            f"(its quantized tensors are named like {example})")


def pinned_types(overrides: list[tuple[str, str]], shapes: dict[str, list[int]]) -> dict[str, str]:
    """The type each tensor a user override names will have (the first matching pattern wins,
    then llama.cpp's fallback)."""
    out = {}
    for name, shape in shapes.items():
        kind = next((k for p, k in overrides if re.search(p, name)), None)
        if kind is not None:
            out[name] = written_type(kind, shape[0]).name
    return out


def smallest_data_bytes(shapes: dict[str, list[int]], others: int, pinned: Optional[dict] = None) -> int:
    """The tensor data of the smallest file the search can make: every quantized tensor at the
    cheapest rung (after fallback), unless pinned; `others` are the bytes of everything else."""
    pinned = pinned or {}
    return others + sum(padded(tensor_bytes(s, pinned.get(n) or written_type(LADDER[0], s[0])))
                        for n, s in shapes.items())
