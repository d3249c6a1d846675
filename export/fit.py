"""`--fit SIZE` and profiles with `fit: true`: the GGUF file that fits a byte budget with the
least loss, made by llama.cpp's own quantizer with one type override per tensor.

The search, in four steps, every quantization in a child process (quantize.py):
1. Neighbours: the uniform presets (q2_k ... q8_0) around the budget are quantized in the work
   folder: the largest that fits and the smallest that does not. They are what the fitted file
   is measured against, and the first one gives the exact header size, so that every file size
   below is known to the byte before anything is written (fit_types.py).
2. Sensitivity: the whole model is quantized once per ladder type (from two rungs below the
   smaller neighbour's type up to q8_0, each with the importance matrix, as llama.cpp would
   quantize it), read back and dequantized (gguf-py), and every tensor's error at every type is
   the importance-weighted squared error sum_ij m_j (W_ij - Q_ij)^2, where m_j is the mean
   squared activation of input column j on the calibration traces: the expected squared error
   that the tensor adds to its output per token. The output head (or the tied embedding) has no
   imatrix entry; its input is the final RMS-normed hidden state, whose column j has a second
   moment of about output_norm_j^2, which stands in for m_j.
3. Allocation: every tensor starts at its cheapest type; the upgrade with the largest error
   reduction per byte is taken while it fits (a greedy on the convex hull of each tensor's
   (bytes, error) options: a multiple-choice knapsack, optimal up to the last upgrade).
4. The file: one anchored pattern per tensor (a pattern per tensor keeps llama.cpp's per-layer
   mix from shifting the others) on the smaller neighbour's ftype; its types and size are checked
   against the plan.

Why a proxy rather than measured KL per tensor group: one held-out KL measurement of SmolLM2-135M
costs about as much as a whole sensitivity pass, and a pass gives the error of all 272 tensors
at once. The measured KL of the result against the neighbours is in the manifest."""

from __future__ import annotations

import heapq
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from distill.core.errors import UserError
from distill.core.progress import info

from .fit_types import (LADDER, PRESETS, FitTarget, T, data_bytes, exact, metadata_bytes, padded, pinned_types,
                        quantizable, tensor_bytes, written_type)
from .gguf_info import read_header, tensor_arrays
from .profiles import GGUF_BITS_PER_WEIGHT
from .quantize import quantize

# Rows of a tensor read back per sensitivity pass: the error of a strided sample of rows, scaled
# to the whole tensor (dequantizing the full embedding in numpy costs more than quantizing it).
SAMPLED_ROWS = 512


@dataclass
class FitResult:
    path: Path
    neighbours: dict[str, Path]      # preset -> its file in the work folder (measured, not shipped)
    info: dict


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def fit_gguf(base_f16: Path, dst: Path, target: FitTarget, imatrix: Optional[Path], threads: int,
             work: Path) -> FitResult:
    started, cpu = time.time(), _cpu()
    _, tensors = read_header(base_f16)
    shapes = quantizable({t["name"]: t["shape"] for t in tensors})
    pinned = pinned_types(target.overrides, shapes)

    def quant(preset: str, path: Path, overrides: list) -> None:
        quantize(base_f16, path, preset, threads, work / "quantize.log", imatrix, overrides)

    neighbours, sizes, meta = find_neighbours(tensors, shapes, target, quant, work)
    others = data_bytes([t for t in tensors if t["name"] not in shapes], {})
    lower, upper = neighbours.get("lower"), neighbours.get("upper")
    first = LADDER.index(PRESETS[lower]) - 2 if lower else 0
    rungs = LADDER[max(0, first):]
    errors = sensitivities(base_f16, shapes, [n for n in shapes if n not in pinned], rungs, imatrix, quant, work)
    allow_f16 = upper is None  # past q8_0 the next step up is the float weights themselves
    room = target.budget - meta - others
    types, spent = allocate(shapes, errors, pinned, room, allow_f16)
    overrides = [(exact(name), kind.lower()) for name, kind in types.items()]
    info(f"Quantizing {dst.name}: {_summary(types)}")
    quant(lower or "q8_0", dst, overrides)
    written = {t["name"]: t["type"] for t in read_header(dst)[1]}
    predicted = meta + others + spent
    if any(written[n] != k for n, k in types.items()) or dst.stat().st_size != predicted:
        raise RuntimeError(f"{dst.name}: llama.cpp wrote other types or another size ({dst.stat().st_size} "
                           f"bytes) than planned ({predicted}): its fallback rules changed?")
    files = {name: work / f"neighbour-{name}.gguf" for name in (lower, upper) if name}
    return FitResult(dst, files, {
        "budget": target.budget, "budget_from": target.reason, "bytes": predicted,
        "neighbours": {"lower": lower, "upper": upper, "bytes": {k: sizes[k] for k in files}},
        "sensitivity": "importance-weighted squared error of each tensor at each type (llama.cpp's quantization, "
                       "read back); head: output_norm^2 as the input's second moment",
        "ladder": list(rungs) + (["f16"] if allow_f16 else []),
        "pinned": {n: k for n, k in pinned.items()},
        "tensors": {n: {"type": types[n], "errors": {k: float(f"{e:.4g}") for k, e in errors.get(n, {}).items()}}
                    for n in shapes},
        "by_role": _by_role(types),
        "seconds": round(time.time() - started, 1), "cpu_seconds": round(_cpu() - cpu, 1),
    })


def find_neighbours(tensors: list[dict], shapes: dict, target: FitTarget, quant, work: Path
                    ) -> tuple[dict[str, str], dict[str, int], int]:
    """The largest preset whose file fits the budget and the smallest that does not, quantized in
    the work folder (a guess from bits per weight first, then a step at a time); their sizes and
    the header size every file of this source and matrix has."""
    params = sum(int(np.prod(s)) for s in shapes.values())
    presets = list(PRESETS)
    guess = max([i for i, p in enumerate(presets) if params * GGUF_BITS_PER_WEIGHT[p] / 8 <= target.budget] or [0])
    sizes: dict[str, int] = {}
    meta = None

    def size(i: int) -> int:
        nonlocal meta
        name = presets[i]
        if name not in sizes:
            path = work / f"neighbour-{name}.gguf"
            info(f"Quantizing the uniform {name} file to compare the fitted file with")
            quant(name, path, target.overrides)
            sizes[name] = path.stat().st_size
            meta = meta or metadata_bytes(path, read_header(path)[1])
        return sizes[name]

    i = guess
    while i > 0 and size(i) > target.budget:
        i -= 1
    while i + 1 < len(presets) and size(i) <= target.budget and size(i + 1) <= target.budget:
        i += 1
    lower = presets[i] if size(i) <= target.budget else None
    upper = presets[i + 1] if lower and i + 1 < len(presets) else (presets[0] if not lower else None)
    if upper:
        size(presets.index(upper))
    pinned = pinned_types(target.overrides, shapes)
    smallest = meta + data_bytes([t for t in tensors if t["name"] not in shapes], {}) + sum(
        padded(tensor_bytes(s, pinned.get(n) or written_type(LADDER[0], s[0]).name)) for n, s in shapes.items())
    if smallest > target.budget:
        raise UserError(f"field 'fit': {target.reason}, but the smallest file the fit can make (every tensor at "
                        f"{LADDER[0]} or its fallback) needs {smallest:,} bytes ({smallest / 1024**2:.1f} MiB)")
    for name in list(sizes):  # only the neighbours stay in the work folder
        if name not in (lower, upper):
            (work / f"neighbour-{name}.gguf").unlink(missing_ok=True)
    return {"lower": lower, "upper": upper}, sizes, meta


def _head_weights(f16: dict) -> Optional[np.ndarray]:
    """The second moment of the head's input columns: the final norm's gain squared (the RMS-normed
    state has unit second moment before it)."""
    norm = f16.get("output_norm.weight")
    return None if norm is None else np.asarray(norm[1], dtype=np.float64).reshape(-1) ** 2


def sensitivities(base_f16: Path, shapes: dict, names: list[str], rungs: tuple, imatrix: Optional[Path],
                  quant, work: Path) -> dict[str, dict[str, float]]:
    """name -> written type -> importance-weighted squared error, one llama.cpp pass per rung."""
    from gguf.quants import dequantize

    from .imatrix import read_imatrix
    means = {k: v.astype(np.float64) for k, v in read_imatrix(imatrix).means().items()} if imatrix else {}
    f16 = tensor_arrays(base_f16)
    head = _head_weights(f16)
    errors: dict[str, dict[str, float]] = {n: {} for n in names}
    for rung in rungs:
        wanted = {n: written_type(rung, shapes[n][0]).name for n in names}
        todo = [n for n in names if wanted[n] not in errors[n]]
        if not todo:
            continue
        path = work / f"sensitivity-{rung}.gguf"
        info(f"Sensitivity pass: {len(todo)} tensors at {rung}")
        # only the tensors this rung gives a new type; the rest take the ftype's q8_0, which is fast
        quant("q8_0", path, [(exact(n), rung) for n in todo])
        quantized = tensor_arrays(path)
        for n in todo:
            kind, data = quantized[n]
            rows = data.shape[0]
            step = max(1, rows // SAMPLED_ROWS)
            sample = np.asarray(dequantize(np.asarray(data[::step]), T[kind]), dtype=np.float64)
            diff = np.asarray(f16[n][1][::step], dtype=np.float64) - sample.reshape(-1, shapes[n][0])
            per_column = (diff * diff).sum(axis=0) * (rows / diff.shape[0])
            if n in means:
                error = float(per_column @ means[n])
            elif n in ("output.weight", "token_embd.weight") and head is not None:
                # the head's logits error; a tied embedding adds its lookup error (per token)
                error = float(per_column @ head) + (float(per_column.sum()) / rows if n == "token_embd.weight" else 0.0)
            else:
                error = float(per_column.sum()) / (rows if n == "token_embd.weight" else 1)
            errors[n][kind] = error
        del quantized
        path.unlink(missing_ok=True)
    return errors


def allocate(shapes: dict, errors: dict, pinned: dict, room: int, allow_f16: bool
             ) -> tuple[dict[str, str], int]:
    """A type per tensor whose data fits `room` bytes with the least total error: from the
    cheapest option of each, the upgrade with the largest error reduction per byte while it fits."""
    options: dict[str, list[tuple[int, float, str]]] = {}
    for name, shape in shapes.items():
        if name in pinned:
            options[name] = [(padded(tensor_bytes(shape, pinned[name])), 0.0, pinned[name])]
            continue
        found = {k: e for k, e in errors[name].items()}
        if allow_f16:
            found["F16"] = 0.0
        options[name] = sorted((padded(tensor_bytes(shape, k)), e, k) for k, e in found.items())
    current = {n: opts[0] for n, opts in options.items()}
    spent = sum(o[0] for o in current.values())
    if spent > room:
        raise UserError(f"field 'fit': the budget leaves {room:,} bytes for the tensors, the cheapest types need "
                        f"{spent:,}")

    def best(name: str):
        b0, e0, _ = current[name]
        steps = [((e0 - e) / (b - b0), (b, e, k)) for b, e, k in options[name]
                 if b > b0 and e < e0 and b - b0 <= room - spent]
        return max(steps, default=None)

    # entries: (-error saved per byte, name, the option it upgrades from, the option it upgrades to)
    heap = [(-s[0], n, current[n], s[1]) for n in options if (s := best(n))]
    heapq.heapify(heap)
    while heap:
        _, name, base, option = heapq.heappop(heap)
        if base != current[name]:
            continue  # this tensor moved since; its next upgrade was queued when it did
        if option[0] - base[0] <= room - spent:
            spent += option[0] - base[0]
            current[name] = option
        step = best(name)  # its next upgrade, or a smaller one that still fits
        if step:
            heapq.heappush(heap, (-step[0], name, current[name], step[1]))
    return {n: o[2] for n, o in current.items()}, spent


def _role(name: str) -> str:
    return name.split(".")[-2] if name.startswith("blk.") else name.rsplit(".", 1)[0]


def _by_role(types: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, kind in types.items():
        role = out.setdefault(_role(name), {})
        role[kind.lower()] = role.get(kind.lower(), 0) + 1
    return {r: dict(sorted(c.items())) for r, c in sorted(out.items())}


def _summary(types: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind.lower()] = counts.get(kind.lower(), 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def neighbour_figures(result: dict, validations: dict) -> dict:
    """The fit's manifest section with the measured figures of the neighbours (validation results
    by preset) beside the fitted file's."""
    out = dict(result)
    measured = {}
    for preset, validation in validations.items():
        validation = validation or {}
        held = validation.get("vs_f16_heldout") or validation.get("vs_f16") or {}
        measured[preset] = {"bytes": result["neighbours"]["bytes"].get(preset), "mean_kld": held.get("mean_kld"),
                            "top1_agreement": held.get("top1_agreement"),
                            "measured_on": "held-out traces" if "vs_f16_heldout" in validation else
                            ("the fixed held-out text" if held else None)}
    out["neighbours"] = {**result["neighbours"], "measured": measured}
    return out
