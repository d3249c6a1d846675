"""Device profiles (data/profiles/*.yaml) and the memory check: do the weights plus the KV cache
at the profile's context length fit the device's budget?"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill.data import asset
from distill.core.config import load_yaml
from distill.core.errors import UserError

from .source import ModelFacts

UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
         "gib": 1024**3}
# Bytes per weight of each type as llama.cpp stores it (block scales included); used only to
# estimate sizes before anything is written, the real file sizes are checked afterwards.
GGUF_BITS_PER_WEIGHT = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.5625,
                        "q5_k_m": 5.7, "q5_k_s": 5.5, "q5_0": 5.5, "q4_k_m": 4.9, "q4_k_s": 4.6,
                        "q4_0": 4.5, "iq4_xs": 4.6, "iq4_nl": 4.8, "q3_k_l": 4.3, "q3_k_m": 3.9,
                        "q3_k_s": 3.5, "iq3_m": 4.0, "iq3_xxs": 3.4, "q2_k": 3.4, "q2_k_s": 3.2,
                        "iq2_m": 3.0, "iq2_s": 2.8, "iq2_xs": 2.6, "iq2_xxs": 2.4, "iq1_m": 2.1, "iq1_s": 1.9}
# How a profile chooses the GGUF type it recommends: the first listed type (and every listed type
# must fit), or among the listed types that fit, the one whose KL divergence from f16 measured
# lowest.
CHOICES = ("first", "lowest_kld")
ONNX_BITS_PER_WEIGHT = {"fp32": 32, "int4": 4.6, "int4-int8head": 5.0}
# Runtime KV cache element sizes: llama.cpp defaults to an f16 cache; onnxruntime-genai on CPU
# keeps it in the model's io dtype, which is fp32 for both fp32 and int4 CPU models.
KV_BYTES = {"gguf": 2, "onnx": 4}
UBATCH = 512  # llama.cpp's default micro-batch: sets the size of its attention score buffer


@dataclass
class Profile:
    name: str
    description: str
    memory_budget: int
    context_length: int
    threads: int
    gguf: list[str] = field(default_factory=list)
    onnx: list[str] = field(default_factory=list)
    source: str = ""
    choose: str = "first"
    fit: bool = False                # also a GGUF with per-tensor types that fits the budget (export/fit.py)


def parse_bytes(value, where: str) -> int:
    """A size: a number of bytes, or a number with a unit (6GiB, 2500MB, 1.5 GB, 512kib)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in UNITS or int(float(m.group(1)) * UNITS[m.group(2).lower()]) < 1:
        raise UserError(f"{where}: expected a size like 6GiB or 2500MB, got {value!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def available_profiles() -> list[str]:
    return sorted(p.stem for p in asset("profiles").glob("*.yaml"))


def load_profile(spec: str) -> Profile:
    """`spec` is a bundled profile name or a path to a profile YAML file."""
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) and path.is_file()):
        path = asset("profiles", f"{spec}.yaml")
        if not re.fullmatch(r"[\w.-]+", spec) or not path.is_file():
            raise UserError(f"field 'target': unknown device profile '{spec}' (bundled: "
                            f"{', '.join(available_profiles())}; or give a profile .yaml file)")
    data = load_yaml(path)
    from .config import GGUF_TYPES, ONNX_PRECISIONS
    known = {"description", "memory_budget", "context_length", "threads", "formats", "choose", "fit"}
    for key in data:
        if key not in known:
            raise UserError(f"{path}: unknown profile field '{key}' (known: {', '.join(sorted(known))})")
    for key in ("memory_budget", "context_length"):
        if key not in data:
            raise UserError(f"{path}: profile field '{key}' is required")
    formats = data.get("formats") or {}
    if not isinstance(formats, dict) or set(formats) - {"gguf", "onnx"}:
        raise UserError(f"{path}: 'formats' must map gguf and/or onnx to lists of types")
    gguf = [str(t).lower() for t in formats.get("gguf") or []]
    onnx = [str(p).lower() for p in formats.get("onnx") or []]
    for t in gguf:
        if t not in GGUF_TYPES:
            raise UserError(f"{path}: formats.gguf: unknown GGUF type '{t}' (valid: {', '.join(GGUF_TYPES)})")
    for p in onnx:
        if p not in ONNX_PRECISIONS:
            raise UserError(f"{path}: formats.onnx: unknown ONNX precision '{p}' (valid: {', '.join(ONNX_PRECISIONS)})")
    choose = str(data.get("choose", "first"))
    if choose not in CHOICES:
        raise UserError(f"{path}: 'choose' must be one of {', '.join(CHOICES)}, got {choose!r}")
    fit = data.get("fit", False)
    if not isinstance(fit, bool):
        raise UserError(f"{path}: 'fit' must be true or false, got {fit!r}")
    context, threads = data["context_length"], data.get("threads", 4)
    for key, value in (("context_length", context), ("threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return Profile(name=path.stem, description=str(data.get("description", "")),
                   memory_budget=parse_bytes(data["memory_budget"], f"{path}: memory_budget"),
                   context_length=context, threads=threads, gguf=gguf, onnx=onnx, source=str(path),
                   choose=choose, fit=fit)


def kv_cache_bytes(facts: ModelFacts, context: int, fmt: str) -> int:
    return 2 * facts.layers * facts.kv_heads * facts.head_dim * context * KV_BYTES[fmt]


def runtime_overhead_bytes(facts: ModelFacts, context: int) -> int:
    """Buffers beside weights and cache: attention scores for one micro-batch, the logits of one
    micro-batch, and a fixed allowance for the runtime itself."""
    scores = UBATCH * context * facts.heads * 4
    logits = UBATCH * facts.vocab_size * 4
    return scores + logits + 64 * 1024**2


def estimated_size(facts: ModelFacts, fmt: str, quant: str) -> int:
    bits = (GGUF_BITS_PER_WEIGHT if fmt == "gguf" else ONNX_BITS_PER_WEIGHT)[quant]
    return int(facts.parameters * bits / 8)


def memory_need(facts: ModelFacts, fmt: str, weights_bytes: int, context: int) -> dict:
    kv = kv_cache_bytes(facts, context, fmt)
    overhead = runtime_overhead_bytes(facts, context)
    return {"weights": weights_bytes, "kv_cache": kv, "overhead": overhead,
            "total": weights_bytes + kv + overhead, "context_length": context}


def fit_report(facts: ModelFacts, fmt: str, weights_bytes: int, profile: Profile, context: int) -> dict:
    need = memory_need(facts, fmt, weights_bytes, context)
    return {**need, "budget": profile.memory_budget, "fits": need["total"] <= profile.memory_budget}


def gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def require_fit(label: str, report: dict, profile: Profile) -> None:
    if not report["fits"]:
        raise UserError(
            f"target '{profile.name}': {label} needs {gib(report['total'])} (weights "
            f"{gib(report['weights'])} + KV cache {gib(report['kv_cache'])} at context "
            f"{report['context_length']} + runtime {gib(report['overhead'])}) but the memory budget is "
            f"{gib(profile.memory_budget)}; choose a smaller quant type or a shorter --context-length")


def profile_summary(profile: Profile | None) -> dict | None:
    if profile is None:
        return None
    return {"name": profile.name, "description": profile.description,
            "memory_budget": profile.memory_budget, "context_length": profile.context_length,
            "threads": profile.threads, "formats": {"gguf": profile.gguf, "onnx": profile.onnx},
            "choose": profile.choose, "fit": profile.fit}


def measured_kld(entry: dict) -> tuple[Optional[float], Optional[str]]:
    """The KL divergence from f16 an artifact was measured at: on the held-out calibration texts
    when there were any (more tokens, and the student's own kind of text), else on the fixed
    held-out text."""
    validation = entry.get("validation") or {}
    for key in ("vs_f16_heldout", "vs_f16"):
        if key in validation:
            return validation[key]["mean_kld"], key
    return None, None


def choose_gguf(entries: list[dict], profile: Profile) -> Optional[dict]:
    """The profile's recommended GGUF type and why. With `choose: lowest_kld`, among its types
    that fit, the one with the lowest measured KL divergence (the smaller file on a tie); without
    measurements, the first listed type that fits."""
    ggufs = {e["quant"]: e for e in entries if e["format"] == "gguf" and e["quant"] in profile.gguf}
    fitting = [q for q in profile.gguf if q in ggufs and ggufs[q].get("fit", {}).get("fits", True)]
    if not fitting:
        return None
    candidates = [{"quant": q, "bytes": ggufs[q]["bytes"], "fits": ggufs[q].get("fit", {}).get("fits", True),
                   "mean_kld": measured_kld(ggufs[q])[0]} for q in profile.gguf if q in ggufs]
    measured = [q for q in fitting if measured_kld(ggufs[q])[0] is not None]
    if profile.choose == "lowest_kld" and measured:
        best = min(measured, key=lambda q: (measured_kld(ggufs[q])[0], ggufs[q]["bytes"]))
        kld, key = measured_kld(ggufs[best])
        where = "the held-out calibration texts" if key == "vs_f16_heldout" else "the fixed held-out text"
        reason = (f"lowest KL divergence from f16 ({kld:.4f} on {where}) among the types that fit "
                  f"({', '.join(fitting)})")
    else:
        best = fitting[0]
        reason = ("first listed type that fits (not validated, so no KL divergence to compare)"
                  if profile.choose == "lowest_kld" else "the profile's first type")
    return {"quant": best, "path": ggufs[best]["path"], "reason": reason, "candidates": candidates}
