"""The CLI surface: six commands, examples in every --help, flags from the config dataclasses,
and the exit codes (2 user error, 3 gate failed, 1 internal) with one-line messages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.errors import GateFailed, UserError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["generate", "train", "export", "eval", "run", "demo"]
runner = CliRunner()


def test_help_lists_the_six_commands():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(command):
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example:" in result.output and "distill " in result.output


def test_stage_flags_come_from_the_config_dataclass():
    from dataclasses import fields
    from distill.pipeline.stages import STAGES
    for stage in ["generate", "train", "export", "eval"]:
        result = runner.invoke(cli.app, [stage, "--help"], env={"COLUMNS": "250"})
        for f in fields(STAGES[stage].config):
            assert "--" + f.name.replace("_", "-") in result.output, (stage, f.name)


def _fake_stage(monkeypatch, exc):
    def boom(cfg):
        raise exc
    from dataclasses import replace

    from distill.pipeline.stages import STAGES
    monkeypatch.setitem(STAGES, "export", replace(STAGES["export"], run=boom))


@pytest.mark.parametrize("exc,code,prefix", [
    (UserError("prompts.jsonl: line 3: malformed JSON"), 2, "error: prompts.jsonl: line 3"),
    (GateFailed("student: pass_at_1 0.41 < 0.5"), 3, "gate failed: student"),
    (RuntimeError("disk on fire"), 1, "internal error: RuntimeError: disk on fire"),
])
def test_exit_codes_and_one_line_messages(monkeypatch, exc, code, prefix):
    _fake_stage(monkeypatch, exc)
    result = runner.invoke(cli.app, ["export", "--model", "x"])
    assert result.exit_code == code
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix)
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(monkeypatch):
    _fake_stage(monkeypatch, UserError("bad field"))
    result = runner.invoke(cli.app, ["export", "--model", "x", "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output


def test_bad_flag_values_are_user_errors(tmp_path):
    result = runner.invoke(cli.app, ["generate", "--teacher", "ollama:foo"])
    assert result.exit_code == 2 and "teacher: unknown kind" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n: [1\n")
    result = runner.invoke(cli.app, ["generate", "--config", str(cfg)])
    assert result.exit_code == 2 and "c.yaml" in result.output


def test_missing_model_exits_2_with_one_line(tmp_path):
    """The issue's own example, through the installed console script path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "distill", "eval", "--model", "hf:/no/such/dir",
                           "--benchmark", "x.jsonl", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "o" / "report.json").exists()
