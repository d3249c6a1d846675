"""`distill export`: turn a trained student into GGUF and ONNX files that edge runtimes load,
check each against the source model, and package them for a target device.

prepare (the plan: what to build, for which context, whether it fits; the source model, merged
if it is a LoRA adapter, and its calibration texts), build (the importance matrix, the GGUF and
ONNX artifacts, each validated against the HF reference), save (manifest, card, Modelfile,
tarball). Everything is built in a hidden temporary folder beside `--out` and renamed into place
at the end: a bad request or a crash leaves nothing that looks finished. llama.cpp runs in child
processes (child.py, worker.py), so even an abort inside it ends the export with a clear error."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from distill.backends.recorded import recorded_prompt
from distill.core.errors import GateFailed
from distill.core.io import atomic_dir, sha256_path, write_json
from distill.core.progress import info
from distill.core.records import StageRecord

from .build import build_fit, build_ggufs, build_onnx_folders, build_uncalibrated, validate_all
from .calibration import Calibration, resolve_calibration
from .child import Child
from .config import GGUF_FLOAT_TYPES, ExportConfig
from .fit import neighbour_figures
from .gguf_info import describe_gguf
from .gguf_writer import plan_tensors
from .imatrix import check_names, model_matrices, prepare_imatrix, read_imatrix
from .onnx_export import builder_options
from .package import (artifact_entry, chat_template_of, now, plot_kld_vs_size, tool_versions, usual_permissions,
                      write_card_files, write_tarball)
from .plan import ExportPlan, require_imatrix, split_threads
from .profiles import choose_gguf, fit_report, memory_need, profile_summary, require_fit
from .reference import ReferenceProcess
from .reference_cache import ReferenceCache
from .source import ModelFacts, is_adapter, model_facts, resolve_model
from .validate import HeldOut


REFERENCE_TOKENS = 16  # the greedy continuations compared with the HF model's


@dataclass
class Source:
    folder: Path                      # the model folder exported (a merged copy for an adapter)
    hf_config: dict
    merged: bool                      # a LoRA adapter was merged first
    facts: ModelFacts
    calibration: Optional[Calibration]


def run(config: ExportConfig) -> dict:
    plan = ExportPlan.of(config)  # everything wrong with the request is found before any work
    out_existed = plan.out.exists()
    work = plan.work_folder()
    reference = checker = None
    # The HF reference is read from an earlier export of the same weights, or made in a child
    # process while the inputs are hashed and the files written, and the first GGUF's checker
    # starts beside it: importing torch and transformers there is the longest part of validating
    # a small model, so that child starts first of all, before the source is even read.
    early = early_reference(config, work)
    try:
        source = prepare_source(config, plan, work)
        cache = ReferenceCache(source.folder, REFERENCE_TOKENS, config.trust_remote_code,
                               enabled=config.validate and config.reference_cache and not source.merged)
        make_reference = lambda: ReferenceProcess(  # noqa: E731
            source.folder, new_tokens=REFERENCE_TOKENS, threads=split_threads(plan.check_threads)[0],
            trust_remote_code=config.trust_remote_code, work=work / "reference", all_threads=plan.check_threads,
            waiting=early)
        checker = Child.waiting("check_gguf", work / "check-first.log") if config.validate and plan.gguf else None
        # the inputs are hashed while the files are written; a recorded reference waits for them
        with StageRecord("export", config, plan.out, background=True) as rec:
            source_sha256 = lambda: (rec.inputs.get("model") or {}).get("sha256")  # noqa: E731
            reference = cache.open(source_sha256, make_reference) if config.validate else None
            with atomic_dir(plan.out, overwrite=True) as build:
                entries, extra, failures = build_artifacts(config, plan, source, reference, checker, build, work)
                if reference is not None:
                    cache.save(reference, source_sha256())
                    extra["reference_cached"] = reference.cached
                manifest, files = save_package(config, plan, source, entries, extra, failures, build,
                                               source_sha256())
            rec.outputs = [plan.out / name for name in files]
            rec.result = {"artifacts": [{k: e[k] for k in ("path", "format", "quant", "bytes")} for e in entries],
                          "validation_passed": not failures}
            if failures:
                # The folder and its manifest stay for inspection; raising here keeps the stage
                # record from being written, so `distill run` does not take this export as done.
                raise GateFailed(f"{plan.out / 'manifest.json'}: validation failed: {failures[0]}"
                                 + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        info(f"[green]✓[/] {len(entries)} artifacts in {plan.out}")
        return {"out": str(plan.out), **rec.result}
    except BaseException:
        if not out_existed and plan.out.is_dir() and not any(plan.out.iterdir()):
            plan.out.rmdir()
        raise
    finally:
        for helper in (reference, checker, early):  # `early` again: when a record was used instead
            if helper is not None:
                helper.stop()
        shutil.rmtree(work, ignore_errors=True)


def early_reference(config: ExportConfig, work: Path) -> Optional[Child]:
    """A reference child, importing torch and transformers while its job is not known yet, when
    this export will make the reference: it validates, and no record of the folder is there (an
    adapter's merged copy is never recorded). None otherwise, or for a model path that
    prepare_source will refuse."""
    folder = Path(config.model)
    if not config.validate or not folder.is_dir():
        return None
    if config.reference_cache and not is_adapter(folder) and \
            ReferenceCache(folder, REFERENCE_TOKENS, config.trust_remote_code).recorded():
        return None
    (work / "reference").mkdir(parents=True, exist_ok=True)
    return Child.waiting("reference", work / "reference" / "reference.log")


def prepare_source(config: ExportConfig, plan: ExportPlan, work: Path) -> Source:
    """The model (an adapter merged first), fitted into the plan, and the calibration texts of
    the quantized types, checked against the model's matrices."""
    folder, hf_config, merged = resolve_model(config.model, work, config.trust_remote_code)
    facts = model_facts(folder, hf_config)
    for quant in plan.fit_to(config, facts):
        info(f"Target '{plan.profile.name}': {quant} would not fit, left out")
    if plan.overrides or plan.fit is not None:  # GGUF names and ggml shapes (ne[0] first)
        planned = plan_tensors(folder, hf_config, facts, "f16", None)
        plan.check_tensors({t.name: list(reversed(t.shape)) for t in planned}, facts)
    calibration = None
    if plan.needs_base_f16:
        calibration = resolve_calibration(config.imatrix, config.model, folder, plan.context, config.imatrix_texts,
                                          config.imatrix_heldout, config.imatrix_heldout_tokens,
                                          config.trust_remote_code)
    require_imatrix(plan.gguf, calibration is not None, config.imatrix)
    if calibration is not None and calibration.imatrix_file is not None:
        check_names(read_imatrix(calibration.imatrix_file), model_matrices(folder, hf_config, facts),
                    str(calibration.imatrix_file))
    if config.validate:
        info("Computing the reference outputs of the source model")
    return Source(folder, hf_config, merged, facts, calibration)


def build_artifacts(config: ExportConfig, plan: ExportPlan, source: Source, reference: Optional[ReferenceProcess],
                    checker: Optional[Child], build: Path, work: Path) -> tuple[list[dict], dict, list[str]]:
    """The artifacts in `build`, validated: (manifest entries, extra manifest sections, failures).
    `checker` is a check_gguf child started early, for the first GGUF validated."""
    if source.calibration is not None and reference is not None:
        reference.release()  # one copy of the model at a time: the matrix pass loads it again
    imatrix, imatrix_info = (None, None) if source.calibration is None else prepare_imatrix(
        source.calibration, source.folder, source.hf_config, source.facts, build / f"{config.name}.imatrix.gguf",
        plan.threads, config.trust_remote_code)
    artifacts, vocab, base_f16 = build_ggufs(config, source.folder, source.hf_config, source.facts, plan.gguf,
                                             build, work, plan.threads, imatrix, plan.overrides, plan.fit is not None)
    uncalibrated = build_uncalibrated(config, plan.gguf, build, work, base_f16, plan.threads, plan.overrides) \
        if imatrix is not None and config.imatrix_compare else []
    neighbours, fit_info = [], None
    if plan.fit is not None:
        fitted, neighbours, fit_info = build_fit(config, plan.fit, build, work, base_f16, plan.threads, imatrix)
        artifacts.append(fitted)
    if plan.onnx and reference is not None:
        reference.release()  # the ONNX builder loads the model once more
    artifacts += build_onnx_folders(config, source.folder, plan.onnx, build, work, plan.context)
    heldout = None
    if source.calibration is not None and source.calibration.heldout:
        heldout = HeldOut([t.tolist() for t in source.calibration.heldout], work / "f16-heldout-logits.npy")
    # The artifacts are final: their hashes are read in a thread while they are validated
    # (hashlib lets go of the GIL), not after (0.2 s for a 270 MB file, the last thing waited for).
    with ThreadPoolExecutor(max_workers=1) as pool:
        digests = {path: pool.submit(sha256_path, path) for path, _, _ in artifacts}
        results, base_result = ({}, None) if reference is None else validate_all(
            artifacts + uncalibrated + neighbours, reference, base_f16, plan.check_threads, config.max_quant_kld,
            work, heldout, checker)
        if reference is not None:
            reference.stop()  # its model is not needed any more
        failures = [f"base f16: {f}" for f in (base_result or {}).get("failures", [])]
        entries = manifest_entries(artifacts, uncalibrated, results, build, source.facts, plan, config,
                                   imatrix is not None, failures, {path: d.result() for path, d in digests.items()})
    for entry in (e for e in entries if e["quant"] == "fit"):
        entry["search"] = neighbour_figures(fit_info, {q: results.get(p) for p, _, q in neighbours})
    extra = {"tokenizer": vocab, "calibration": imatrix_info, "imatrix": imatrix, "base_f16": base_result}
    return entries, extra, failures


def manifest_entries(artifacts, uncalibrated, results, build: Path, facts: ModelFacts, plan: ExportPlan,
                     config: ExportConfig, calibrated: bool, failures: list[str], digests: dict) -> list[dict]:
    """The manifest entry of every artifact: files, tensor types, validation, fit; with
    --imatrix-compare, what the same type measured without the matrix. Validation failures are
    appended to `failures`."""
    without = {quant: path for path, _, quant in uncalibrated}
    profile, entries = plan.profile, []
    for path, fmt, quant in artifacts:
        entry = artifact_entry(build, path, fmt, quant, digests[path])
        if fmt == "gguf":
            entry.update(describe_gguf(path))
            if quant not in GGUF_FLOAT_TYPES:
                entry["imatrix"] = calibrated
            if quant in without:
                entry["uncalibrated"] = {"bytes": without[quant].stat().st_size, **describe_gguf(without[quant]),
                                         "validation": results.get(without[quant])}
        if fmt == "onnx":  # what we asked the builder for, and what its graph holds
            from .onnx_graph import describe_graph  # onnx takes 0.6 s to import: not for GGUF-only exports
            entry["onnx_options"] = builder_options(quant, config.onnx_block_size, config.onnx_accuracy_level)[1]
            entry["graph"] = describe_graph(path)
        if path in results:
            entry["validation"] = results[path]
            failures += [f"{entry['path']}: {f}" for f in results[path]["failures"]]
        if profile:
            entry["fit"] = fit_report(facts, fmt, entry["bytes"], profile, plan.context)
            candidate = profile.choose == "lowest_kld" and quant in profile.gguf and quant not in config.gguf
            if not candidate:  # a candidate that does not fit is simply not chosen
                require_fit(entry["path"], entry["fit"], profile)
        else:
            entry["memory"] = memory_need(facts, fmt, entry["bytes"], plan.context)
        entries.append(entry)
    return entries


def save_package(config: ExportConfig, plan: ExportPlan, source: Source, entries: list[dict], extra: dict,
                 failures: list[str], build: Path, model_sha256: Optional[str]) -> tuple[dict, list[str]]:
    """manifest.json, the card files, the plot and the tarball in `build`: (manifest, the names of
    everything the export wrote, relative to the output folder)."""
    profile = plan.profile
    chosen = choose_gguf(entries, profile) if profile and profile.choose == "lowest_kld" else None
    if chosen:
        info(f"Target '{profile.name}': {chosen['quant']} recommended, {chosen['reason']}")
    plot = plot_kld_vs_size(entries, build / "kld_vs_size.png", config.name)
    facts = source.facts
    manifest = {
        "name": config.name,
        "created": now(),
        "source": {"path": str(config.model), "sha256": model_sha256 or sha256_path(config.model),
                   "model_type": facts.model_type, "gguf_architecture": facts.arch, "parameters": facts.parameters,
                   "dtype": facts.dtype, "lora_merged": source.merged},
        "tokenizer": extra["tokenizer"],
        "context_length": plan.context,
        "prompt": recorded_prompt(f"hf:{source.folder}"),  # how the student was taught to be asked
        "target": profile_summary(profile) and {**profile_summary(profile), "chosen": chosen,
                                                "left_out": plan.not_fitting},
        "calibration": extra["calibration"],
        "plot": plot.name if plot else None,
        "tools": tool_versions(),
        "artifacts": entries,
        "validation": {"enabled": config.validate, "passed": not failures, "failures": failures,
                       "reference": None if "reference_cached" not in extra else
                       "recorded by an earlier export of these weights" if extra["reference_cached"] else
                       "made by this export",
                       **({"base_f16": extra["base_f16"]} if extra["base_f16"] else {})},
    }
    card_files = write_card_files(build, manifest, profile, chat_template_of(source.folder))
    card_files += [p.name for p in (plot,) if p is not None]
    beside = [extra["imatrix"].name] if extra["imatrix"] is not None else []  # for llama-quantize, not the device
    write_json(build / "manifest.json", manifest)
    usual_permissions(build)
    if config.tarball:
        members = [e["path"] for e in entries
                   if profile is None or e["quant"] in getattr(profile, e["format"]) or e["quant"] == "fit"
                   and (chosen is None or e["format"] != "gguf" or e["quant"] == chosen["quant"])]
        tar_name = f"{config.name}-{profile.name}.tar.gz" if profile else f"{config.name}.tar.gz"
        info(f"Packing {tar_name}")
        manifest["packages"] = [write_tarball(build, build / tar_name, members + card_files + ["manifest.json"])]
        write_json(build / "manifest.json", manifest)
        usual_permissions(build)
    files = [e["path"] for e in entries] + ["manifest.json"] + card_files + beside
    return manifest, files + [p["path"] for p in manifest.get("packages", [])]
