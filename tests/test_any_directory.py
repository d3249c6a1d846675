"""Every stage from a folder that is not the repository, with relative paths, as a user runs it:
the CLI in a subprocess whose working directory is a temporary folder, every path given relative
to it. (An export with a relative --out once failed from any other folder: llama.cpp's child
processes ran in the repository and could not find the work folder.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DEMO_MODELS = REPO / "data" / "models"


def distill(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "distill", *args, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"distill {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_every_stage_with_relative_paths_from_another_folder(tmp_path):
    work = tmp_path / "user"
    work.mkdir()
    shutil.copytree(DEMO_MODELS / "demo-teacher", work / "teacher")
    shutil.copytree(DEMO_MODELS / "demo-student-base", work / "base")

    distill(work, "generate", "--teacher", "hf:teacher", "--prompts", "demo", "--limit", "12", "--n", "1",
            "--max-new-tokens", "96", "--out", "traces")
    assert (work / "traces" / "traces" / "dataset_info.json").is_file()
    distill(work, "train", "--student", "base", "--traces", "traces", "--out", "student", "--max-steps", "2",
            "--batch-size", "4", "--max-seq-len", "256", "--eval-fraction", "0")
    assert (work / "student" / "model.safetensors").is_file()
    distill(work, "export", "--model", "student", "--out", "ex", "--gguf", "f16,q4_k_m", "--onnx", "int4")
    manifest = json.loads((work / "ex" / "manifest.json").read_text())
    assert {a["quant"] for a in manifest["artifacts"]} == {"f16", "q4_k_m", "int4"}
    assert manifest["validation"]["passed"]
    assert not list(work.glob(".tmp-*")), "the export left its work folder behind"
    distill(work, "eval", "--model", "gguf:ex/model-q4_k_m.gguf", "--benchmark", "demo", "--limit", "4",
            "--max-new-tokens", "64", "--speed-tokens", "8", "--out", "ev")
    assert json.loads((work / "ev" / "report.json").read_text())["results"][0]["n_problems"] == 4
    chat = distill(work, "chat", "ex/model-q4_k_m.gguf", "--prompt", "What is 2 + 3?", "--max-new-tokens", "16")
    assert chat.returncode == 0
