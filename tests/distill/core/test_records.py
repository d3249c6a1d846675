"""Stage records and the pipeline runner's skip-when-unchanged rule, on two cheap fake stages."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from distill.pipeline import stages
from distill.core.config import option
from distill.core.errors import UserError
from distill.core import io
from distill.core.io import write_text
from distill.core.records import StageRecord, is_up_to_date
from distill.pipeline import PipelineConfig, run

CALLS: list[str] = []


@dataclass
class MakeConfig:
    source: str = option("", "input file", input=True)
    out: str = option("out", "output folder")
    factor: int = option(2, "multiplier")
    token: str = option("", "a secret", secret=True)


def make_run(cfg: MakeConfig) -> dict:
    CALLS.append("make")
    with StageRecord("generate", cfg, cfg.out) as rec:
        value = int(Path(cfg.source).read_text()) * cfg.factor
        rec.outputs = [write_text(Path(cfg.out) / "value.txt", str(value))]
        rec.result = {"value": value}
    return rec.result


@dataclass
class UseConfig:
    traces: str = option("", "input folder", input=True)
    out: str = option("out", "output folder")


def use_run(cfg: UseConfig) -> dict:
    CALLS.append("use")
    with StageRecord("train", cfg, cfg.out) as rec:
        value = int((Path(cfg.traces) / "value.txt").read_text()) + 1
        rec.outputs = [write_text(Path(cfg.out) / "value.txt", str(value))]
    return {"value": value}


@pytest.fixture
def fake_stages(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "generate", stages.Stage(MakeConfig, make_run, "traces"))
    monkeypatch.setitem(stages.STAGES, "train", stages.Stage(UseConfig, use_run, "student"))
    CALLS.clear()


def test_record_contents(tmp_path, monkeypatch):
    src = tmp_path / "n.txt"
    src.write_text("21")
    cfg = MakeConfig(source=str(src), out=str(tmp_path / "o"), token="sk-live-123")
    make_run(cfg)
    record = json.loads((tmp_path / "o" / "generate.json").read_text())
    assert record["stage"] == "generate"
    assert record["config"]["factor"] == 2 and "token" not in record["config"]
    assert "sk-live-123" not in (tmp_path / "o" / "generate.json").read_text()
    assert len(record["inputs"]["source"]["sha256"]) == 64
    assert record["outputs"] == [{"path": "value.txt", "bytes": 2, "sha256": record["outputs"][0]["sha256"]}]
    assert record["versions"]["torch"] and record["started"] <= record["finished"]
    assert record["result"] == {"value": 42}
    assert is_up_to_date("generate", cfg, cfg.out)
    src.write_text("22")
    assert not is_up_to_date("generate", cfg, cfg.out)


def test_inputs_hashed_in_the_background_are_the_same(tmp_path):
    src = tmp_path / "n.txt"
    src.write_bytes(b"21" * (1 << 20))  # a few chunks of the hash
    cfg = MakeConfig(source=str(src), out=str(tmp_path / "o"))
    with StageRecord("generate", cfg, tmp_path / "a") as here:
        pass
    io._HASHED.clear()  # hashed again, not remembered
    with StageRecord("generate", cfg, tmp_path / "b", background=True) as beside:
        pass
    assert beside.inputs == here.inputs and len(here.inputs["source"]["sha256"]) == 64
    a, b = (json.loads((tmp_path / d / "generate.json").read_text()) for d in "ab")
    assert a["inputs"] == b["inputs"]


def test_failed_stage_writes_no_record(tmp_path):
    cfg = MakeConfig(source=str(tmp_path / "missing.txt"), out=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError):
        make_run(cfg)
    assert not (tmp_path / "o" / "generate.json").exists()


def test_pipeline_skips_unchanged_stages_and_reruns_dependents(tmp_path, fake_stages):
    src = tmp_path / "n.txt"
    src.write_text("5")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"generate:\n  source: {src}\n  factor: 3\ntrain: {{}}\n")
    out = tmp_path / "run"
    first = run(PipelineConfig(str(pipeline), str(out)))
    assert CALLS == ["make", "use"] and (out / "student" / "value.txt").read_text() == "16"
    assert first["train"]["status"] == "ran"

    run(PipelineConfig(str(pipeline), str(out)))
    assert CALLS == ["make", "use"]                     # nothing changed: both skipped

    pipeline.write_text(f"generate:\n  source: {src}\n  factor: 4\ntrain: {{}}\n")
    run(PipelineConfig(str(pipeline), str(out)))
    assert CALLS[2:] == ["make", "use"]                 # config changed: stage and dependents rerun
    assert (out / "student" / "value.txt").read_text() == "21"

    (out / "student" / "value.txt").write_text("tampered")
    run(PipelineConfig(str(pipeline), str(out)))
    assert CALLS[4:] == ["use"]                         # an output changed: only that stage reruns


def test_pipeline_substitutes_run_and_data_dirs(tmp_path, fake_stages):
    (tmp_path / "n.txt").write_text("1")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"generate:\n  source: {tmp_path}/n.txt\n  out: '{{run}}/custom'\n")
    run(PipelineConfig(str(pipeline), str(tmp_path / "r")))
    assert (tmp_path / "r" / "custom" / "value.txt").is_file()


def test_pipeline_errors_name_the_stage(tmp_path, fake_stages):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("generate:\n  factr: 3\n")
    with pytest.raises(UserError, match=r"p.yaml: generate: unknown field 'factr'"):
        run(PipelineConfig(str(pipeline), str(tmp_path / "r")))
    pipeline.write_text("distil: {}\n")
    with pytest.raises(UserError, match="unknown stage 'distil'"):
        run(PipelineConfig(str(pipeline), str(tmp_path / "r")))


def test_the_demo_source_is_hashed_as_the_bundled_task_not_a_folder_named_demo(tmp_path, monkeypatch):
    """`--prompts demo` means the bundled task even where the working folder holds a `demo/`
    (a demo run directory): the record must not change when that folder appears."""
    from distill.core.records import hash_inputs
    from distill.generate.config import GenerateConfig

    monkeypatch.chdir(tmp_path)
    before = hash_inputs(GenerateConfig(teacher="hf:x", prompts="demo"))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "anything.txt").write_text("run output")
    assert hash_inputs(GenerateConfig(teacher="hf:x", prompts="demo")) == before
    assert before["prompts"]["sha256"]
