"""The bundled pipeline files: every section builds its stage's config (field names, types and
checks), the demo files point at the bundled models and produce the demo's report rows, and the
real-world file names the real teacher, student, target and benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.data import DATA_DIR, asset
from distill.core.config import build_config, load_yaml
from distill.pipeline.stages import STAGES
from distill.core.io import write_json
from distill.pipeline import _expand_eval_models, _stage_of, _stage_values, _substitute, pipeline_sections

PIPELINES = sorted((DATA_DIR / "pipelines").glob("*.yaml"))
DEMO_ROWS = ["teacher", "student-sft", "student", "student-gguf-f16", "student-gguf-q8_0", "student-gguf-q4_k_m",
             "student-onnx-int4"]


def stage_configs(path: Path, run_dir: Path) -> dict:
    """Each section's config as `distill run` builds it (run directory wired in)."""
    spec = load_yaml(path)
    names = {"run": str(run_dir), "data": str(DATA_DIR)}
    keys = pipeline_sections(spec, path.name)
    trains = [k for k in keys if _stage_of(k) == "train"]
    configs = {}
    for key in keys:
        section = _substitute(spec[key] or {}, names)
        # eval's @artifacts reads the export manifest, which does not exist yet: checked apart
        values = section if key == "eval" else _stage_values(key, section, run_dir, trains)
        configs[key] = build_config(STAGES[_stage_of(key)].config, values, source=f"{path.name}: {key}")
    return configs


def test_the_bundled_pipelines_are_there():
    assert {p.name for p in PIPELINES} >= {"demo.yaml", "demo-quick.yaml", "r1-qwen2.5-1.5b-rpi5.yaml"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_section_builds_its_stage_config(path, tmp_path):
    spec = load_yaml(path)
    assert spec and all(_stage_of(k) in STAGES for k in spec), f"{path.name}: unknown sections"
    configs = stage_configs(path, tmp_path)
    assert configs


@pytest.mark.parametrize("name", ["demo.yaml", "demo-quick.yaml"])
def test_demo_pipelines_use_the_bundled_models_offline(name, tmp_path):
    cfg = stage_configs(asset("pipelines", name), tmp_path)
    assert list(cfg) == ["generate", "train.sft", "train", "export", "eval"]
    teacher = cfg["generate"].teacher
    assert teacher.startswith("hf:") and Path(teacher[3:]) == asset("models", "demo-teacher")
    assert (Path(teacher[3:]) / "model.safetensors").is_file()
    assert cfg["generate"].prompts == "demo" and cfg["eval"].benchmark == "demo"
    sft = cfg["train.sft"]
    assert Path(sft.student) == asset("models", "demo-student-base") and sft.method == "sft"
    assert Path(sft.out) == tmp_path / "student-sft" and Path(sft.traces) == tmp_path / "traces"
    # on-policy from the SFT student, with the bundled MoE teacher, into the run's student folder
    on_policy = cfg["train"]
    assert on_policy.method == "on-policy" and Path(on_policy.student) == tmp_path / "student-sft"
    assert on_policy.teacher == teacher and Path(on_policy.out) == tmp_path / "student"
    assert Path(cfg["export"].model) == tmp_path / "student"
    assert not any(getattr(c, "lora", False) for c in cfg.values())
    assert {"f16", "q8_0", "q4_k_m"} <= set(cfg["export"].gguf) and "int4" in cfg["export"].onnx
    assert cfg["export"].target == "laptop-cpu"
    assert not any(c.trust_remote_code for c in cfg.values())


@pytest.mark.parametrize("name", ["demo.yaml", "demo-quick.yaml"])
def test_demo_eval_rows_are_the_teacher_the_student_and_each_artifact(name, tmp_path):
    # The export stage's manifest for the formats the demo asks for.
    artifacts = [{"path": f"demo-student-{q}.gguf", "format": "gguf", "quant": q} for q in ("f16", "q8_0", "q4_k_m")]
    artifacts.append({"path": "demo-student-onnx-int4", "format": "onnx", "quant": "int4"})
    write_json(tmp_path / STAGES["export"].folder / "manifest.json", {"artifacts": artifacts})
    section = _substitute(load_yaml(asset("pipelines", name))["eval"], {"run": str(tmp_path), "data": str(DATA_DIR)})
    expanded = _expand_eval_models(section, tmp_path, ["train.sft", "train"])
    assert expanded["label"] == DEMO_ROWS
    assert expanded["model"][:3] == [f"hf:{asset('models', 'demo-teacher')}", f"hf:{tmp_path / 'student-sft'}",
                                     f"hf:{tmp_path / 'student'}"]


def test_quick_demo_is_smaller_than_the_full_one(tmp_path):
    full = stage_configs(asset("pipelines", "demo.yaml"), tmp_path)
    quick = stage_configs(asset("pipelines", "demo-quick.yaml"), tmp_path)
    assert quick["generate"].limit * quick["generate"].n < full["generate"].limit * full["generate"].n
    assert (quick["eval"].limit or 10**9) < (full["eval"].limit or 10**9)
    for field in ("temperature", "top_p", "prompt_template"):
        assert getattr(quick["generate"], field) == getattr(full["generate"], field)
    # eval asks each model the way it was trained (recorded by train, carried by export), the
    # teacher, which records none, with r1: the generate stage's template
    assert quick["eval"].prompt_template is None and full["eval"].prompt_template is None
    assert full["generate"].prompt_template == "r1"


def test_real_world_pipeline_names_the_real_models(tmp_path):
    cfg = stage_configs(asset("pipelines", "r1-qwen2.5-1.5b-rpi5.yaml"), tmp_path)
    gen = cfg["generate"]
    assert gen.teacher == "openai:https://api.deepseek.com" and gen.model == "deepseek-reasoner"
    assert gen.api_key_env == "DEEPSEEK_API_KEY"
    assert gen.prompts == "openai/gsm8k:main@train"
    assert cfg["train"].student == "Qwen/Qwen2.5-1.5B-Instruct" and cfg["train"].lora
    assert cfg["export"].target == "rpi5-8gb"
    benchmarks = {cfg["eval"].benchmark}
    for extra in PIPELINES:
        if extra.name.startswith("r1-qwen2.5-1.5b-rpi5") and extra.name != "r1-qwen2.5-1.5b-rpi5.yaml":
            benchmarks.add(stage_configs(extra, tmp_path)["eval"].benchmark)
    assert benchmarks >= {"gsm8k", "math500"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_no_secret_is_written_in_a_pipeline(path):
    text = path.read_text()
    assert "sk-" not in text and "api_key:" not in text.replace("api_key_env:", "")
