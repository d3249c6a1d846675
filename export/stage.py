"""`distill export`: turn a trained student into GGUF and ONNX files that edge runtimes load,
check each against the source model, and package them for a target device.

Everything is built in a hidden temporary folder beside `--out` and renamed into place at the
end: a bad request or a crash leaves nothing that looks finished. llama.cpp runs in child
processes (export/native.py), so even an abort inside it ends the export with a clear error."""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import ExportConfig


def run(config: ExportConfig) -> dict:
    # Imported here: llama.cpp's child processes (export/native.py) import this package and need
    # none of it.
    from distill.core.errors import GateFailed
    from distill.core.io import TMP_PREFIX, atomic_dir, sha256_path, write_json
    from distill.core.progress import info
    from distill.core.records import StageRecord

    from .build import build_ggufs, build_onnx_folders, build_uncalibrated, validate_all
    from .calibration import resolve_calibration
    from .imatrix import check_names, model_matrices, prepare_imatrix, read_imatrix
    from .package import (chat_template_of, now, plot_kld_vs_size, tool_versions, usual_permissions,
                          write_card_files, write_tarball)
    from .plan import (check_out_folder, choose_context, choose_formats, drop_unfitting_candidates,
                       needs_base_f16, precheck_fit, remove_stale_temporaries, require_imatrix,
                       require_runtimes, split_threads, validation_threads)
    from .profiles import choose_gguf, load_profile, profile_summary
    from .reference import ReferenceProcess
    from .source import model_facts, resolve_model
    from .validate import HeldOut

    # Everything that can be wrong with the request is found before any work starts.
    out = Path(config.out)
    check_out_folder(out, config.overwrite)
    profile = load_profile(config.target) if config.target else None
    gguf_types, onnx_precisions = choose_formats(config, profile)
    require_runtimes(gguf_types, onnx_precisions, config.validate)
    threads = config.threads or os.cpu_count() or 1
    out_existed = out.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in remove_stale_temporaries(out):
        info(f"Removed {name}, left by an export that was stopped")
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.work.", dir=out.parent))
    pending = None
    try:
        folder, hf_config, merged = resolve_model(config.model, work, config.trust_remote_code)
        facts = model_facts(folder, hf_config)
        context = choose_context(config, profile, facts)
        gguf_types, not_fitting = drop_unfitting_candidates(config, profile, facts, gguf_types, context)
        for quant in not_fitting:
            info(f"Target '{profile.name}': {quant} would not fit, left out")
        precheck_fit(facts, gguf_types, onnx_precisions, profile, context)
        check_threads = validation_threads(config.threads, threads, facts)
        calibration = None
        if needs_base_f16(gguf_types):
            calibration = resolve_calibration(config.imatrix, config.model, folder, context, config.imatrix_texts,
                                              config.imatrix_heldout, config.imatrix_heldout_tokens,
                                              config.trust_remote_code)
        require_imatrix(gguf_types, calibration is not None, config.imatrix)
        if calibration is not None and calibration.imatrix_file is not None:
            check_names(read_imatrix(calibration.imatrix_file), model_matrices(folder, hf_config, facts),
                        str(calibration.imatrix_file))

        # The HF reference is made in a child process while the inputs are hashed and the GGUF
        # files written.
        pending = ReferenceProcess(folder, new_tokens=16, threads=split_threads(check_threads)[0],
                                   trust_remote_code=config.trust_remote_code,
                                   work=work / "reference") if config.validate else None
        if pending is not None:
            info("Computing the reference outputs of the source model")
        with StageRecord("export", config, out) as rec:
            with atomic_dir(out, overwrite=True) as build:
                if calibration is not None and pending is not None:
                    # One copy of the model at a time: the reference's is freed while the matrix
                    # is computed (it loads again to judge greedy runs).
                    pending.release()
                imatrix, imatrix_info = (None, None) if calibration is None else prepare_imatrix(
                    calibration, folder, hf_config, facts, build / f"{config.name}.imatrix.gguf", threads,
                    config.trust_remote_code)
                artifacts, vocab, base_f16 = build_ggufs(config, folder, hf_config, facts, gguf_types, build,
                                                         work, threads, imatrix)
                uncalibrated = build_uncalibrated(config, gguf_types, build, work, base_f16, threads) \
                    if imatrix is not None and config.imatrix_compare else []
                if onnx_precisions and pending is not None:
                    pending.release()  # the ONNX builder loads the model once more
                artifacts += build_onnx_folders(config, folder, onnx_precisions, build, work, context)

                heldout = None
                if calibration is not None and calibration.heldout:
                    heldout = HeldOut([t.tolist() for t in calibration.heldout], work / "f16-heldout-logits.npy")
                results, base_result = ({}, None) if pending is None else validate_all(
                    artifacts + uncalibrated, pending, base_f16, check_threads, config.max_quant_kld, work, heldout)
                if pending is not None:
                    pending.stop()  # its model is not needed any more
                failures = [f"base f16: {f}" for f in (base_result or {}).get("failures", [])]
                entries = _entries(artifacts, uncalibrated, results, build, facts, profile, context,
                                   config, imatrix is not None, failures)
                chosen = choose_gguf(entries, profile) if profile and profile.choose == "lowest_kld" else None
                if chosen:
                    info(f"Target '{profile.name}': {chosen['quant']} recommended, {chosen['reason']}")
                plot = plot_kld_vs_size(entries, build / "kld_vs_size.png", config.name)

                manifest = {
                    "name": config.name,
                    "created": now(),
                    "source": {"path": str(config.model),
                               "sha256": (rec.inputs.get("model") or {}).get("sha256") or sha256_path(config.model),
                               "model_type": facts.model_type, "gguf_architecture": facts.arch,
                               "parameters": facts.parameters, "dtype": facts.dtype, "lora_merged": merged},
                    "tokenizer": vocab,
                    "context_length": context,
                    "target": profile_summary(profile) and {**profile_summary(profile), "chosen": chosen,
                                                            "left_out": not_fitting},
                    "calibration": imatrix_info,
                    "plot": plot.name if plot else None,
                    "tools": tool_versions(),
                    "artifacts": entries,
                    "validation": {"enabled": config.validate, "passed": not failures, "failures": failures,
                                   **({"base_f16": base_result} if base_result else {})},
                }
                card_files = write_card_files(build, manifest, profile, chat_template_of(folder))
                card_files += [p.name for p in (plot,) if p is not None]
                beside = [imatrix.name] if imatrix is not None else []  # for llama-quantize, not the device
                write_json(build / "manifest.json", manifest)
                usual_permissions(build)
                if config.tarball:
                    members = [e["path"] for e in entries
                               if profile is None or e["quant"] in getattr(profile, e["format"])
                               and (chosen is None or e["format"] != "gguf" or e["quant"] == chosen["quant"])]
                    tar_name = f"{config.name}-{profile.name}.tar.gz" if profile else f"{config.name}.tar.gz"
                    info(f"Packing {tar_name}")
                    manifest["packages"] = [write_tarball(build, build / tar_name,
                                                          members + card_files + ["manifest.json"])]
                    write_json(build / "manifest.json", manifest)
                    usual_permissions(build)

            rec.outputs = [out / e["path"] for e in entries] + [out / "manifest.json"] + \
                [out / f for f in card_files + beside] + [out / p["path"] for p in manifest.get("packages", [])]
            rec.result = {"artifacts": [{k: e[k] for k in ("path", "format", "quant", "bytes")} for e in entries],
                          "validation_passed": not failures}
            if failures:
                # The folder and its manifest stay for inspection; raising here keeps the stage
                # record from being written, so `distill run` does not take this export as done.
                raise GateFailed(f"{out / 'manifest.json'}: validation failed: {failures[0]}"
                                 + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        info(f"[green]✓[/] {len(entries)} artifacts in {out}")
        return {"out": str(out), **rec.result}
    except BaseException:
        if not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        if pending is not None:
            pending.stop()
        shutil.rmtree(work, ignore_errors=True)


def _entries(artifacts, uncalibrated, results, build: Path, facts, profile, context: int,
             config: ExportConfig, calibrated: bool, failures: list[str]) -> list[dict]:
    """The manifest entry of every artifact: files, tensor types, validation, fit; with
    --imatrix-compare, what the same type measured without the matrix. Validation failures are
    appended to `failures`."""
    from .config import GGUF_FLOAT_TYPES
    from .gguf_info import describe_gguf
    from .package import artifact_entry
    from .profiles import fit_report, memory_need, require_fit

    without = {quant: path for path, _, quant in uncalibrated}
    entries = []
    for path, fmt, quant in artifacts:
        entry = artifact_entry(build, path, fmt, quant)
        if fmt == "gguf":
            entry.update(describe_gguf(path))
            if quant not in GGUF_FLOAT_TYPES:
                entry["imatrix"] = calibrated
            if quant in without:
                entry["uncalibrated"] = {"bytes": without[quant].stat().st_size, **describe_gguf(without[quant]),
                                         "validation": results.get(without[quant])}
        if path in results:
            entry["validation"] = results[path]
            failures += [f"{entry['path']}: {f}" for f in results[path]["failures"]]
        if profile:
            entry["fit"] = fit_report(facts, fmt, entry["bytes"], profile, context)
            candidate = profile.choose == "lowest_kld" and quant in profile.gguf and quant not in config.gguf
            if not candidate:  # a candidate that does not fit is simply not chosen
                require_fit(entry["path"], entry["fit"], profile)
        else:
            entry["memory"] = memory_need(facts, fmt, entry["bytes"], context)
        entries.append(entry)
    return entries
