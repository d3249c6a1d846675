"""What an export builds and for which context length, decided and checked before any work, so
that a bad request fails in a second with nothing written: one `ExportPlan`, made from the request
(`ExportPlan.of`) and completed once the model's facts are known (`fit_to`). The helpers below
are its steps."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from distill.core.errors import UserError
from distill.core.io import TMP_PREFIX

from .config import DEFAULT_GGUF, DEFAULT_ONNX, GGUF_FLOAT_TYPES, NEEDS_IMATRIX, ExportConfig
from .fit_types import FitTarget, check_overrides, parse_overrides, quantizable, smallest_data_bytes
from .profiles import (Profile, estimated_size, fit_report, gib, kv_cache_bytes, load_profile, parse_bytes,
                       require_fit, runtime_overhead_bytes)
from .source import ModelFacts

DEFAULT_CONTEXT = 4096


@dataclass
class ExportPlan:
    out: Path
    profile: Optional[Profile]
    gguf: list[str]                  # GGUF types to build (candidates that do not fit left out)
    onnx: list[str]                  # ONNX precisions to build
    threads: int                     # for quantization and the importance matrix
    context: int = 0                 # the context length the artifacts are checked to fit
    not_fitting: list[str] = field(default_factory=list)
    check_threads: int = 1           # for the validation checks
    overrides: list = field(default_factory=list)  # --tensor-type (pattern, type) pairs
    fit: Optional[FitTarget] = None  # --fit or a profile's `fit: true`: the budget (set by fit_to)

    @classmethod
    def of(cls, config: ExportConfig) -> "ExportPlan":
        """The request checked: output folder, profile, formats, runtimes."""
        import os
        out = Path(config.out)
        check_out_folder(out, config.overwrite)
        profile = load_profile(config.target) if config.target else None
        if config.fit is not None and config.onnx and not config.gguf:
            raise UserError("field 'fit': --fit makes a GGUF file and --onnx without --gguf asks for ONNX only; "
                            "add the GGUF types to keep beside it with --gguf, or drop --fit")
        gguf, onnx = choose_formats(config, profile)
        wants_fit = config.fit is not None or bool(profile and profile.fit)
        require_runtimes(gguf + (["fit"] if wants_fit else []), onnx, config.validate)
        plan = cls(out, profile, gguf, onnx, config.threads or os.cpu_count() or 1,
                   overrides=parse_overrides(config.tensor_type))
        if config.fit is not None:
            plan.fit = FitTarget(parse_bytes(config.fit, "field 'fit'"), f"--fit {config.fit}", plan.overrides)
        return plan

    def fit_to(self, config: ExportConfig, facts: ModelFacts) -> list[str]:
        """The context, the candidates that fit, and the estimated fit of everything else, for
        this model; returns the candidate types left out."""
        self.context = choose_context(config, self.profile, facts)
        self.gguf, self.not_fitting = drop_unfitting_candidates(config, self.profile, facts, self.gguf,
                                                                self.context)
        precheck_fit(facts, self.gguf, self.onnx, self.profile, self.context)
        self.check_threads = validation_threads(config.threads, self.threads, facts)
        if self.profile and self.profile.fit:
            self.fit = profile_fit_target(self.profile, facts, self.context, self.fit, self.overrides)
        return self.not_fitting

    def check_tensors(self, shapes: dict[str, list[int]], facts: ModelFacts) -> None:
        """With the model's tensors (GGUF names, ggml shapes) known: every --tensor-type pattern
        names one, and the fit's budget holds at least its smallest file (without the header,
        which is known exactly once the first file is written: fit.py checks again then)."""
        matrices = quantizable(shapes)
        check_overrides(self.overrides, sorted(matrices))
        if self.fit is None:
            return
        from .fit_types import padded, pinned_types, tensor_bytes
        others = sum(padded(tensor_bytes(s, "F32")) for n, s in shapes.items() if n not in matrices)
        smallest = smallest_data_bytes(matrices, others, pinned_types(self.overrides, matrices))
        if smallest > self.fit.budget:
            need = (f"at least {smallest:,} bytes ({gib(smallest)})" if not self.profile or not self.profile.fit else
                    f"{gib(smallest)} of weights + KV cache {gib(kv_cache_bytes(facts, self.context, 'gguf'))} at "
                    f"context {self.context} + runtime {gib(runtime_overhead_bytes(facts, self.context))}")
            raise UserError(f"field 'fit': {self.fit.reason}, but the smallest file the fit can make (every "
                            f"tensor at q2_k or its fallback) needs {need}")

    @property
    def needs_base_f16(self) -> bool:
        return needs_base_f16(self.gguf) or self.fit is not None

    def work_folder(self) -> Path:
        """A fresh hidden work folder beside the output, after removing those that stopped
        exports left there."""
        import tempfile

        from distill.core.progress import info
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for name in remove_stale_temporaries(self.out):
            info(f"Removed {name}, left by an export that was stopped")
        return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.out.name}.work.", dir=self.out.parent)).resolve()


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def choose_formats(config: ExportConfig, profile: Optional[Profile]) -> tuple[list[str], list[str]]:
    """Explicit --gguf/--onnx lists plus the target profile's formats; with neither, the default
    set (f16, q8_0, q4_k_m and ONNX int4), unless a fitted file is asked for: then it is the only
    artifact."""
    gguf, onnx = list(config.gguf), list(config.onnx)
    if profile:
        gguf += profile.gguf
        onnx += profile.onnx
    fitted = config.fit is not None or bool(profile and profile.fit)
    if not gguf and not onnx and not fitted:
        gguf, onnx = list(DEFAULT_GGUF), list(DEFAULT_ONNX)
    return _unique(gguf), _unique(onnx)


def choose_context(config: ExportConfig, profile: Optional[Profile], facts: ModelFacts) -> int:
    if config.context_length is not None:
        if config.context_length > facts.max_positions:
            raise UserError(f"field 'context_length': {config.context_length} is more than the model's "
                            f"max_position_embeddings ({facts.max_positions})")
        return config.context_length
    wanted = profile.context_length if profile else DEFAULT_CONTEXT
    # A profile's context is what the device can afford; the model may support less.
    return min(wanted, facts.max_positions)


def drop_unfitting_candidates(config: ExportConfig, profile: Optional[Profile], facts: ModelFacts,
                              gguf: list[str], context: int) -> tuple[list[str], list[str]]:
    """A `choose: lowest_kld` profile lists candidates: those estimated not to fit are left out
    (unless --gguf asks for them); only when none fits is that an error."""
    if not profile or profile.choose != "lowest_kld":
        return gguf, []
    reports = {q: fit_report(facts, "gguf", estimated_size(facts, "gguf", q), profile, context)
               for q in gguf if q in profile.gguf and q not in config.gguf}
    dropped = [q for q, report in reports.items() if not report["fits"]]
    keep = [q for q in gguf if q not in dropped]
    if dropped and not any(q in profile.gguf for q in keep):
        smallest = min(dropped, key=lambda q: reports[q]["total"])
        require_fit(f"GGUF {smallest} (estimated), the smallest of its types,", reports[smallest], profile)
    return keep, dropped


def profile_fit_target(profile: Profile, facts: ModelFacts, context: int, given: Optional[FitTarget],
                       overrides: list) -> FitTarget:
    """A `fit: true` profile's budget for the file: its memory budget less the KV cache at its
    context and the runtime's buffers (the same need every artifact's fit is checked against);
    with --fit too, the smaller of the two."""
    kv, overhead = kv_cache_bytes(facts, context, "gguf"), runtime_overhead_bytes(facts, context)
    room = profile.memory_budget - kv - overhead
    reason = (f"target '{profile.name}': memory budget {gib(profile.memory_budget)} less KV cache {gib(kv)} at "
              f"context {context} and runtime {gib(overhead)} leaves {gib(max(room, 0))} for the file")
    if room < 1:
        raise UserError(f"field 'fit': {reason}: nothing to fit a file in; a shorter --context-length leaves more")
    if given is not None and given.budget <= room:
        return given
    return FitTarget(room, reason, overrides)


def require_imatrix(gguf: list[str], have_matrix: bool, asked: Optional[str]) -> None:
    """llama.cpp refuses the lowest-bit types without an importance matrix: say so before any work."""
    needing = [t for t in gguf if t in NEEDS_IMATRIX]
    if needing and not have_matrix:
        why = "--imatrix none" if asked is not None else "no --imatrix and no traces recorded in the student's train.json"
        raise UserError(f"field 'gguf': {', '.join(needing)} need{'s' if len(needing) == 1 else ''} an importance "
                        f"matrix and there is none ({why}); pass --imatrix with traces, a .txt/.jsonl file or an "
                        "imatrix .gguf file")


def needs_base_f16(gguf: list[str]) -> bool:
    return any(t not in GGUF_FLOAT_TYPES for t in gguf)


def precheck_fit(facts: ModelFacts, gguf: list[str], onnx: list[str], profile: Optional[Profile],
                 context: int) -> None:
    """Estimated sizes against the budget: fail before building what cannot fit."""
    if not profile:
        return
    for quant in gguf:
        report = fit_report(facts, "gguf", estimated_size(facts, "gguf", quant), profile, context)
        require_fit(f"GGUF {quant} (estimated)", report, profile)
    for precision in onnx:
        report = fit_report(facts, "onnx", estimated_size(facts, "onnx", precision), profile, context)
        require_fit(f"ONNX {precision} (estimated)", report, profile)


def require_runtimes(gguf: list[str], onnx: list[str], validate: bool) -> None:
    if needs_base_f16(gguf) or (gguf and validate):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise UserError("field 'gguf': quantizing and validating GGUF files needs llama-cpp-python "
                            "(pip install llama-cpp-python), or pass --no-validate with float types only") from None
    if onnx:
        from .onnx_export import builder_available
        if not builder_available():
            raise UserError("field 'onnx': the onnxruntime-genai model builder is not importable "
                            "(pip install onnxruntime-genai onnx-ir)")


def check_out_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"out: {out}: already exists (pass --overwrite to replace it)")


def validation_threads(asked: int | None, threads: int, facts: ModelFacts) -> int:
    """Threads for the checks, which run one token at a time: below ~50M parameters a token is
    too little work to split, and llama.cpp's spinning thread pool only adds waiting (badly so
    on a busy machine). An explicit --threads is obeyed."""
    if asked is not None:
        return asked
    return 1 if facts.parameters < 50_000_000 else threads


def split_threads(threads: int) -> tuple[int, int]:
    """(reference process, first llama.cpp check): the two run at once, and more busy threads
    than cores starve both (llama.cpp's pool spins while it waits: measured here, an export of
    SmolLM2-135M took 8.8 s with one thread each and 9.3-17 s with two each on two cores)."""
    reference = max(1, threads // 2)
    return reference, max(1, threads - reference)


def remove_stale_temporaries(out: Path) -> list[str]:
    """Hidden build folders an earlier export to the same place left when it was killed (they
    can hold gigabytes); a finished export never leaves one."""
    removed = []
    if out.parent.is_dir():
        for path in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed
