"""`distill run PIPELINE.yaml --out DIR`: the stages a pipeline file lists, in order, into one run
directory (DIR/traces, DIR/student, DIR/export, DIR/eval). A stage whose record shows the same
config and the same input hashes is skipped, so a rerun after a crash or an edit redoes only
what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import DATA_DIR
from distill.core.config import build_config, load_yaml
from distill.core.errors import UserError
from distill.core.io import read_json
from distill.core.progress import info
from distill.core.records import is_up_to_date
from distill.core.stages import STAGES, config_class, run_function


@dataclass
class PipelineConfig:
    pipeline: str
    out: str
    stages: list[str] = field(default_factory=list)  # empty: every stage the file lists
    force: bool = False


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, repl in names.items():
            value = value.replace("{" + key + "}", repl)
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _artifact_models(run_dir: Path) -> list[tuple[str, str]]:
    manifest = run_dir / STAGES["export"]["dir"] / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{manifest}: eval asks for @artifacts but the export stage wrote no manifest")
    rows = []
    for art in read_json(manifest).get("artifacts", []):
        path = manifest.parent / art["path"]
        rows.append((f"{art['format']}:{path}", f"student-{art['format']}-{art['quant']}"))
    return rows


def _expand_eval_models(section: dict, run_dir: Path) -> dict:
    models = section.get("model") or ["@student", "@artifacts"]
    labels = list(section.get("label") or [])
    out_models, out_labels = [], []
    explicit = 0
    for spec in models:
        if spec == "@student":
            out_models.append(f"hf:{run_dir / STAGES['train']['dir']}")
            out_labels.append("student")
        elif spec == "@artifacts":
            for model, label in _artifact_models(run_dir):
                out_models.append(model)
                out_labels.append(label)
        else:
            out_models.append(spec)
            out_labels.append(labels[explicit] if explicit < len(labels) else Path(spec.split(":", 1)[-1]).name)
            explicit += 1
    return {**section, "model": out_models, "label": out_labels}


def _stage_values(stage: str, section: dict, run_dir: Path) -> dict:
    """The pipeline's values for one stage, with the run directory wired in where unset."""
    values = dict(section)
    values.setdefault("out", str(run_dir / STAGES[stage]["dir"]))
    if stage == "train":
        values.setdefault("traces", str(run_dir / STAGES["generate"]["dir"]))
    if stage == "export":
        values.setdefault("model", str(run_dir / STAGES["train"]["dir"]))
        values.setdefault("overwrite", True)
    if stage == "eval":
        values = _expand_eval_models(values, run_dir)
    return values


def run(config: PipelineConfig) -> dict:
    spec = load_yaml(config.pipeline)
    unknown = [k for k in spec if k not in STAGES]
    if unknown:
        raise UserError(f"{config.pipeline}: unknown stage '{unknown[0]}' (stages: {', '.join(STAGES)})")
    run_dir = Path(config.out).resolve()
    names = {"run": str(run_dir), "data": str(DATA_DIR)}
    wanted = [s for s in STAGES if s in spec and (not config.stages or s in config.stages)]
    if not wanted:
        raise UserError(f"{config.pipeline}: lists no stage to run")
    results: dict[str, dict] = {}
    for stage in wanted:
        section = _substitute(spec[stage] or {}, names)
        if not isinstance(section, dict):
            raise UserError(f"{config.pipeline}: stage '{stage}' must be a mapping of config fields")
        values = _stage_values(stage, section, run_dir)
        cfg = build_config(config_class(stage), values, source=f"{config.pipeline}: {stage}")
        if not config.force and is_up_to_date(stage, cfg, cfg.out):
            info(f"[green]✓[/] {stage}: unchanged since the last run, skipped")
            results[stage] = {"status": "skipped", "out": cfg.out}
            continue
        info(f"[bold]▶ {stage}[/] → {cfg.out}")
        result = run_function(stage)(cfg)
        results[stage] = {"status": "ran", "out": cfg.out, "result": result}
    return results
