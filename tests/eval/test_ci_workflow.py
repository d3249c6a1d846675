"""examples/ci/eval-gate.yml: its distill commands, run as the workflow runs them (its env, its
benchmark file, its committed baseline). As committed they pass (the baseline is a run of the
same model); with a tiny random GGUF as the artifact the gate fails with exit 3 and one line, and
the JUnit file and the job summary are written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from distill.core.io import read_json, read_jsonl
from tests.conftest import REPO

WORKFLOW = REPO / "examples" / "ci" / "eval-gate.yml"


def _workflow() -> tuple[dict, list[dict]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return workflow["env"], job["steps"]


def _commands(text: str, env: dict) -> list[str]:
    """The shell words of a `run:` line, with $NAME and ${NAME} taken from the workflow env."""
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)
    return shlex.split(expanded)


def _run_distill(words: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    assert words[0] == "distill"
    return subprocess.run([sys.executable, "-m", "distill", *words[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def test_the_workflow_installs_builds_and_gates():
    env, steps = _workflow()
    runs = [s["run"] for s in steps if "run" in s]
    assert any("pip install" in r and "-e ." in r for r in runs)
    gate = next(r for r in runs if r.lstrip().startswith("distill eval"))
    words = _commands(gate, env)
    for flag in ("--baseline", "--max-drop", "--junit", "--benchmark", "--model", "--label"):
        assert flag in words
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("mikepenz/action-junit-report") for u in uses)
    junit = words[words.index("--junit") + 1]
    report_step = next(s for s in steps if s.get("uses", "").startswith("mikepenz/action-junit-report"))
    assert report_step["with"]["report_paths"] == junit and report_step["if"] == "always()"


def test_the_committed_baseline_is_a_real_run_of_the_benchmark_file():
    env, _ = _workflow()
    report = read_json(REPO / env["BASELINE"])
    samples = read_jsonl((REPO / env["BASELINE"]).parent / "samples.jsonl")
    benchmark = read_jsonl(REPO / env["BENCHMARK"])
    (row,) = [r for r in report["results"] if r["label"] == env["LABEL"]]
    assert row["benchmark"] == Path(env["BENCHMARK"]).stem and row["n_problems"] == len(benchmark)
    mine = [s for s in samples if s["label"] == env["LABEL"]]
    assert sorted(s["problem_id"] for s in mine) == sorted(p["id"] for p in benchmark)
    assert row["pass_at_1"] == pytest.approx(sum(s["correct"] for s in mine) / len(mine))
    assert row["pass_at_1"] > 0.5  # a baseline worth gating against


@pytest.mark.slow
def test_the_workflow_commands_gate_a_tiny_gguf(exported, tmp_path):
    env, steps = _workflow()
    work = tmp_path / "checkout"
    work.mkdir()
    for folder in ("data", "examples"):  # the paths of the workflow are relative to the checkout
        (work / folder).symlink_to(REPO / folder)
    summary = tmp_path / "step-summary.md"
    env = {**env, "ARTIFACT": f"gguf:{exported['gguf']}", "GITHUB_STEP_SUMMARY": str(summary)}
    commands = [_commands(s["run"], env) for s in steps if "run" in s and s["run"].lstrip().startswith("distill ")]
    assert commands, "the workflow runs distill"
    for words in commands:
        done = _run_distill(words, work, env)
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("llama")]
        assert done.returncode == 3, done.stderr  # a random tiny model against the demo teacher's baseline
        assert len(lines) == 1 and lines[0].startswith(f"gate failed: row '{env['LABEL']}': pass_at_1 dropped ")
        assert "more than --max-drop 0.05 and significant at 5%" in lines[0]
    gate = next(w for w in commands if w[1] == "eval")
    out = work / gate[gate.index("--out") + 1]
    failure = ET.parse(work / gate[gate.index("--junit") + 1]).getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") in lines[0]
    assert "## distill eval: demo-test" in summary.read_text() and "**failed**" in summary.read_text()

    # the same commands against a baseline of the tiny model itself: no drop, exit 0
    own = tmp_path / "own-baseline"
    own.mkdir()
    for name in ("report.json", "samples.jsonl"):
        shutil.copy(out / name, own / name)
    data = json.loads((own / "report.json").read_text())
    assert data["results"][0]["label"] == env["LABEL"]
    done = _run_distill(_commands(gate_line(steps), {**env, "BASELINE": str(own / "report.json")}), work, env)
    assert done.returncode == 0, done.stderr
    assert read_json(out / "report.json")["gates"]["drop"][0]["drop"] == 0.0


@pytest.mark.slow
def test_the_workflow_as_committed_passes(tmp_path):
    env, steps = _workflow()
    work = tmp_path / "checkout"
    work.mkdir()
    for folder in ("data", "examples"):
        (work / folder).symlink_to(REPO / folder)
    done = _run_distill(_commands(gate_line(steps), env), work, env)
    assert done.returncode == 0, done.stderr
    words = _commands(gate_line(steps), env)
    gates = read_json(work / words[words.index("--out") + 1] / "report.json")["gates"]
    (drop,) = gates["drop"]
    assert drop["n_problems"] == 200 and drop["status"] == "passed" and abs(drop["drop"]) <= 0.02
    assert gates["warnings"] == []


def gate_line(steps: list[dict]) -> str:
    return next(s["run"] for s in steps if "run" in s and s["run"].lstrip().startswith("distill eval"))
