"""`distill run PIPELINE.yaml --out DIR`: the stages a pipeline file lists, in order, into one run
directory (DIR/traces, DIR/student, DIR/export, DIR/eval). A stage whose record shows the same
config and the same input hashes is skipped, so a rerun after a crash or an edit redoes only
what changed.

A pipeline may train more than once: besides `train` (DIR/student), sections `train.NAME`
(DIR/student-NAME) run in file order, each with its own folder and record; a train stage after
another starts from the previous one's model unless it names a student (SFT, then on-policy).
`@student` is the last one trained (export's model, eval's "student" row); eval's
`@student-NAME` is section train.NAME, labelled student-NAME."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.data import DATA_DIR
from distill.core.config import build_config, load_yaml
from distill.core.errors import UserError
from distill.core.io import read_json
from distill.core.progress import info
from distill.core.records import is_up_to_date

from .stages import STAGES


@dataclass
class PipelineConfig:
    pipeline: str
    out: str
    stages: list[str] = field(default_factory=list)  # empty: every stage the file lists
    force: bool = False
    seed: int | None = None  # set: the seed of every stage that has one (`distill demo --seed`)


_TRAIN_NAME = re.compile(r"train\.([A-Za-z0-9_-]+)")


def _stage_of(key: str) -> str | None:
    """The stage a section runs: its key, or `train` for `train.NAME`."""
    if key in STAGES:
        return key
    return "train" if _TRAIN_NAME.fullmatch(key) else None


def _folder(run_dir: Path, key: str) -> Path:
    stage = _stage_of(key)
    return run_dir / (STAGES[stage].folder if key == stage else f"{STAGES[stage].folder}-{key.split('.', 1)[1]}")


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
    manifest = run_dir / STAGES["export"].folder / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{manifest}: eval asks for @artifacts but the export stage wrote no manifest")
    rows = []
    for art in read_json(manifest).get("artifacts", []):
        path = manifest.parent / art["path"]
        rows.append((f"{art['format']}:{path}", f"student-{art['format']}-{art['quant']}"))
    return rows


def _expand_eval_models(section: dict, run_dir: Path, trains: list[str] | None = None) -> dict:
    """`trains`: the pipeline's train sections in run order (default: just `train`)."""
    trains = trains or ["train"]
    models = section.get("model") or ["@student", "@artifacts"]
    labels = list(section.get("label") or [])
    out_models, out_labels = [], []
    explicit = 0
    named = {f"@student-{key.split('.', 1)[1]}": key for key in trains if key != "train"}
    for spec in models:
        if spec == "@student":
            out_models.append(f"hf:{_folder(run_dir, trains[-1])}")
            out_labels.append("student")
        elif spec in named:
            out_models.append(f"hf:{_folder(run_dir, named[spec])}")
            out_labels.append(spec[1:])
        elif spec.startswith("@student-"):
            raise UserError(f"eval: model {spec}: no section train.{spec[len('@student-'):]} in the pipeline")
        elif spec == "@artifacts":
            for model, label in _artifact_models(run_dir):
                out_models.append(model)
                out_labels.append(label)
        else:
            out_models.append(spec)
            out_labels.append(labels[explicit] if explicit < len(labels) else Path(spec.split(":", 1)[-1]).name)
            explicit += 1
    return {**section, "model": out_models, "label": out_labels}


def _stage_values(key: str, section: dict, run_dir: Path, trains: list[str]) -> dict:
    """The pipeline's values for one section, with the run directory wired in where unset.
    `trains`: every train section of the pipeline, in run order."""
    stage = _stage_of(key)
    values = dict(section)
    values.setdefault("out", str(_folder(run_dir, key)))
    if stage == "train":
        values.setdefault("traces", str(run_dir / STAGES["generate"].folder))
        earlier = trains[:trains.index(key)]
        if earlier:  # SFT, then on-policy from the SFT model
            values.setdefault("student", str(_folder(run_dir, earlier[-1])))
    if stage == "export":
        values.setdefault("model", str(_folder(run_dir, trains[-1]) if trains else run_dir / STAGES["train"].folder))
        values.setdefault("overwrite", True)
    if stage == "eval":
        values = _expand_eval_models(values, run_dir, trains)
    return values


def pipeline_sections(spec: dict, source: str) -> list[str]:
    """The sections to run, in stage order; train sections in file order."""
    unknown = [k for k in spec if _stage_of(k) is None]
    if unknown:
        raise UserError(f"{source}: unknown stage '{unknown[0]}' (stages: {', '.join(STAGES)}, "
                        "and train.NAME for a further training stage)")
    order = list(STAGES)
    return sorted(spec, key=lambda k: order.index(_stage_of(k)))  # stable: train sections keep file order


def run(config: PipelineConfig) -> dict:
    spec = load_yaml(config.pipeline)
    sections = pipeline_sections(spec, config.pipeline)
    trains = [k for k in sections if _stage_of(k) == "train"]
    run_dir = Path(config.out).resolve()
    names = {"run": str(run_dir), "data": str(DATA_DIR)}
    wanted = [k for k in sections if not config.stages or k in config.stages or _stage_of(k) in config.stages]
    if not wanted:
        raise UserError(f"{config.pipeline}: lists no stage to run")
    results: dict[str, dict] = {}
    for key in wanted:
        stage = _stage_of(key)
        section = _substitute(spec[key] or {}, names)
        if not isinstance(section, dict):
            raise UserError(f"{config.pipeline}: stage '{key}' must be a mapping of config fields")
        values = _stage_values(key, section, run_dir, trains)
        cls = STAGES[stage].config
        if config.seed is not None and "seed" in {f.name for f in dataclasses.fields(cls)}:
            values["seed"] = config.seed
        cfg = build_config(cls, values, source=f"{config.pipeline}: {key}")
        if not config.force and is_up_to_date(stage, cfg, cfg.out):
            info(f"[green]✓[/] {key}: unchanged since the last run, skipped")
            results[key] = {"status": "skipped", "out": cfg.out}
            continue
        info(f"[bold]▶ {key}[/] → {cfg.out}")
        result = STAGES[stage].run(cfg)
        results[key] = {"status": "ran", "out": cfg.out, "result": result}
    return results
