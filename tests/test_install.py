"""The package as a user installs it: a wheel (`pip install .`, not editable) holds one import
package, `distill`, with the assets inside, and works from a folder outside the repository whose
own `data/`, `export/`, `eval/` and `cli.py` must change nothing.

The wheel goes into a virtual environment that sees this environment's packages (torch and the
rest are installed already; `--no-deps` keeps the test offline apart from pip's build backend),
and every command runs with that environment's interpreter, from a temporary folder."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

HOSTILE = "raise ImportError('the user\\'s own {name} was imported by distill')\n"


def source_copy(target: Path) -> Path:
    """The repository's tracked files (setuptools builds in the source's own build/ folder, whose
    leftovers from an earlier build would end up in the wheel)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True)
    names = listed.stdout.decode().split("\0") if listed.returncode == 0 else []
    if not names:  # not a git checkout: everything but build outputs
        shutil.copytree(REPO, target, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", ".git"))
        return target
    for name in filter(None, names):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = source_copy(tmp_path_factory.mktemp("source") / "distill-edge")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("distill_edge-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The interpreter of a fresh environment with the wheel installed."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def user_folder(tmp_path: Path) -> Path:
    """A working folder with a user's own modules named like the repository's folders."""
    work = tmp_path / "user"
    for name in ("data", "export", "eval"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(HOSTILE.format(name=name))
    (work / "cli.py").write_text(HOSTILE.format(name="cli.py"))
    return work


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_holds_one_package_with_its_assets(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["distill"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"distill"}, tops
    for member in ("distill/export/worker.py", "distill/eval/probe.py", "distill/core/demo_task.py",
                   "distill/data/pipelines/demo.yaml", "distill/data/pipelines/demo-quick.yaml",
                   "distill/data/models/demo-teacher/model.safetensors",
                   "distill/data/models/demo-student-base/tokenizer.json", "distill/data/prompts/r1.txt",
                   "distill/data/profiles/rpi5-8gb.yaml", "distill/data/accelerate/ddp.yaml"):
        assert member in names, member


@pytest.mark.slow
def test_installed_package_runs_the_quick_demo_and_a_relative_export_outside_the_repository(installed, tmp_path):
    work = user_folder(tmp_path)
    where = run(installed, work, "-c", "import distill, distill.export; print(distill.__file__); "
                                       "print(distill.export.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(str(REPO) not in line for line in where.stdout.splitlines()), where.stdout

    demo = run(installed, work, "-m", "distill", "demo", "--quick", "--quiet", "--out", "demo")
    assert demo.returncode == 0, demo.stderr[-3000:]
    report = json.loads((work / "demo" / "eval" / "report.json").read_text())
    assert report["results"][0]["label"] == "teacher"

    export = run(installed, work, "-m", "distill", "export", "--model", "demo/student", "--out", "ex",
                 "--gguf", "q4_k_m", "--quiet")
    assert export.returncode == 0, export.stderr[-3000:]
    manifest = json.loads((work / "ex" / "manifest.json").read_text())
    assert (work / "ex" / manifest["artifacts"][0]["path"]).is_file()
    assert not list(work.glob(".tmp-*"))
