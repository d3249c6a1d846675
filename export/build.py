"""The build steps of `distill export`: write the float GGUFs, quantize, run the ONNX builder, and
validate everything (f16 first, since every quantized file is compared with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from distill.core.progress import info

from .child import Child
from .config import GGUF_FLOAT_TYPES, NEEDS_IMATRIX, ExportConfig
from .fit import fit_gguf
from .fit_types import FitTarget
from .gguf_writer import write_gguf
from .onnx_export import build_onnx
from .plan import needs_base_f16, split_threads
from .quantize import quantize
from .reference import ReferenceProcess
from .source import ModelFacts
from .validate import HeldOut, check_gguf, check_onnx, finish_check_gguf, inputs_part, start_check_gguf

Artifact = tuple[Path, str, str]  # (path, format, quant)


def build_ggufs(config: ExportConfig, folder: Path, hf_config: dict, facts: ModelFacts,
                gguf_types: list[str], build: Path, work: Path, threads: int,
                imatrix: Optional[Path] = None, overrides: Optional[list] = None,
                base_needed: bool = False) -> tuple[list[Artifact], dict, Optional[Path]]:
    """The GGUF files, the vocabulary facts, and the f16 file kept aside for quantizing when f16
    itself was not asked for (or `base_needed`: the fit search quantizes it too). With `imatrix`,
    every quantized file is calibrated by it; `overrides` are --tensor-type's."""
    artifacts: list[Artifact] = []
    vocab: dict = {}
    base_f16 = work / "base-f16.gguf" if (needs_base_f16(gguf_types) or base_needed) and "f16" not in gguf_types else None
    for ftype in [t for t in gguf_types if t in GGUF_FLOAT_TYPES]:
        path = build / f"{config.name}-{ftype}.gguf"
        info(f"Writing {path.name}")
        vocab = write_gguf(folder, hf_config, facts, path, ftype, config.name, config.gguf_pre,
                           config.trust_remote_code)
        artifacts.append((path, "gguf", ftype))
    if base_f16 is not None:
        info("Writing the f16 GGUF that the quantized files are made from")
        vocab = write_gguf(folder, hf_config, facts, base_f16, "f16", config.name, config.gguf_pre,
                           config.trust_remote_code)
    source = base_f16 or build / f"{config.name}-f16.gguf"
    for quant in [t for t in gguf_types if t not in GGUF_FLOAT_TYPES]:
        path = build / f"{config.name}-{quant}.gguf"
        info(f"Quantizing {path.name} with llama.cpp" + (" and the importance matrix" if imatrix else ""))
        quantize(source, path, quant, threads, work / "quantize.log", imatrix, overrides)
        artifacts.append((path, "gguf", quant))
    return artifacts, vocab, base_f16


def build_fit(config: ExportConfig, target: FitTarget, build: Path, work: Path, base_f16: Optional[Path],
              threads: int, imatrix: Optional[Path]) -> tuple[Artifact, list[Artifact], dict]:
    """<name>-fit.gguf (export/fit.py), the neighbouring uniform files it is measured against (in
    the work folder), and what the search found."""
    source = base_f16 or build / f"{config.name}-f16.gguf"
    path = build / f"{config.name}-fit.gguf"
    info(f"Fitting {path.name} into {target.budget:,} bytes ({target.reason})")
    result = fit_gguf(source, path, target, imatrix, threads, work)
    neighbours = [(p, "gguf", preset) for preset, p in result.neighbours.items()]
    return (path, "gguf", "fit"), neighbours, result.info


def build_uncalibrated(config: ExportConfig, gguf_types: list[str], build: Path, work: Path,
                       base_f16: Optional[Path], threads: int, overrides: Optional[list] = None) -> list[Artifact]:
    """For --imatrix-compare: each quantized type again without the matrix (where llama.cpp
    allows that), kept out of the export and only measured."""
    source = base_f16 or build / f"{config.name}-f16.gguf"
    artifacts = []
    for quant in [t for t in gguf_types if t not in GGUF_FLOAT_TYPES and t not in NEEDS_IMATRIX]:
        path = work / f"uncalibrated-{quant}.gguf"
        info(f"Quantizing {quant} without the importance matrix, for comparison")
        quantize(source, path, quant, threads, work / "quantize.log", None, overrides)
        artifacts.append((path, "gguf", quant))
    return artifacts


def build_onnx_folders(config: ExportConfig, folder: Path, precisions: list[str], build: Path,
                       work: Path, context: int) -> list[Artifact]:
    artifacts = []
    for precision in precisions:
        path = build / f"{config.name}-onnx-{precision}"
        info(f"Building {path.name} with onnxruntime-genai's model builder")
        build_onnx(folder, path, precision, work, work / f"onnx-{precision}.log", context,
                   config.trust_remote_code, config.onnx_block_size, config.onnx_accuracy_level)
        artifacts.append((path, "onnx", precision))
    return artifacts


def validate_all(artifacts: list[Artifact], reference: ReferenceProcess, base_f16: Optional[Path],
                 threads: int, max_quant_kld: float, work: Path, heldout: Optional[HeldOut] = None,
                 waiting: Optional[Child] = None) -> tuple[dict[Path, dict], Optional[dict]]:
    """Validation result per artifact path, and that of the hidden base f16 file if there is one.
    Each GGUF is checked in a child process (validate.check_gguf); the first one loads and
    decodes while the reference process still loads the HF model, in `waiting` when the export
    started one before writing (it is stopped when there is no float file). The f16 file's held-out
    logits stay in `work` for the quantized files' comparison. With `heldout`, GGUF files are
    also measured against f16 on the held-out calibration texts."""
    results: dict[Path, dict] = {}
    base_result = None
    f16_logits = work / "f16-logits.npy"
    ggufs = sorted([a for a in artifacts if a[1] == "gguf"], key=lambda a: a[2] != "f16")
    first = (base_f16, "f16") if base_f16 is not None else (ggufs[0][0], ggufs[0][2]) if ggufs else None
    child = None
    if first is not None and first[1] in GGUF_FLOAT_TYPES:
        # beside a reference process it gets the other half of the threads; beside a recorded one, all
        child = start_check_gguf(first[0], first[1], threads if reference.cached else split_threads(threads)[1],
                                 None, max_quant_kld,
                                 f16_logits if first[1] == "f16" else None, work / f"check-{first[0].name}.log",
                                 heldout, waiting, guess=None if reference.cached else reference.new_tokens)
        child.send(inputs_part(reference.inputs()))
    elif waiting is not None:
        waiting.stop()
    ref = reference.inputs()
    if base_f16 is not None:
        info("Checking the base f16 GGUF against the source model")
        base_result = finish_check_gguf(child, ref, work, inputs_sent=True)
        child = None
    for path, fmt, quant in ggufs + [a for a in artifacts if a[1] != "gguf"]:
        info(f"Validating {path.name}")
        if fmt == "onnx":
            results[path] = check_onnx(path, quant, ref)
        elif child is not None and path == first[0]:
            results[path] = finish_check_gguf(child, ref, work, inputs_sent=True)
            child = None
        else:
            results[path] = check_gguf(path, quant, ref, work, threads, f16_logits if f16_logits.is_file() else None,
                                       max_quant_kld, f16_logits if quant == "f16" else None,
                                       work / f"check-{path.name}.log", heldout)
    return results, base_result
