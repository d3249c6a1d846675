"""The README and docs/ tell the truth about the CLI: every `distill` command they show uses flags
that command has, every `--flag` they name is a flag of some distill command (or of the other
tool named beside it), every relative link resolves, and the README stays a short guide."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = ("generate", "train", "export", "eval", "chat", "run", "demo")
# Flags of the other tools the docs show beside distill's.
OTHER_TOOLS = {"accelerate": {"--config_file", "--multi_gpu", "--num_processes", "--cpu"},
               "vllm": {"--reasoning-parser", "--max-logprobs", "--max-model-len"},
               "pip": {"--no-deps", "--extra-index-url"},
               "distill.train.estimate": {"--lora", "--lora-r", "--batch-size", "--max-seq-len"}}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def flags_of(command: str) -> set[str]:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0, result.output
    return set(FLAG.findall(result.output)) | {"--help"}


@pytest.fixture(scope="module")
def known() -> dict[str, set[str]]:
    return {command: flags_of(command) for command in COMMANDS}


def commands_in(text: str) -> list[list[str]]:
    """Every `distill ...` command of the code blocks (continuation lines joined) and inline
    code spans, as shell words."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0]
            for part in re.split(r"&&|;|\|", line):
                words = part.split()
                if words[:1] == ["distill"]:
                    found.append(words)
    for span in re.findall(r"`(distill [^`]+)`", text):
        found.append(span.split())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_distill_command_shown_uses_real_flags(doc, known):
    wrong = []
    for words in commands_in(doc.read_text(encoding="utf-8")):
        if len(words) < 2 or words[1] not in COMMANDS:
            if len(words) > 1 and not words[1].startswith("-"):
                wrong.append(f"{' '.join(words)}: no command '{words[1]}'")
            continue
        for flag in FLAG.findall(" ".join(words[2:])):
            if flag.split("=")[0] not in known[words[1]]:
                wrong.append(f"distill {words[1]} {flag}")
    assert not wrong, f"{doc.name}: " + "; ".join(wrong)


def bench_flags(line: str) -> set[str]:
    """The flags of the bench scripts a line names, read from their argparse calls."""
    flags = set()
    for name in re.findall(r"bench/(\w+\.py)", line):
        flags |= set(re.findall(r'add_argument\("(--[a-z0-9-]+)"', (REPO / "bench" / name).read_text()))
    return flags


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "log.md"], ids=lambda p: p.name)
def test_every_flag_named_is_a_flag(doc, known):
    """(The log is history: it may name flags that were renamed since.)"""
    everything = set().union(*known.values())
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # prose and inline code
    wrong = []
    for line in text.splitlines():
        others = set().union(*(f for tool, f in OTHER_TOOLS.items() if tool in line.lower())) | bench_flags(line)
        for flag in FLAG.findall(line):
            if flag not in everything and flag not in others:
                wrong.append(flag)
    assert not wrong, f"{doc.name}: flags no distill command has: {sorted(set(wrong))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def test_the_readme_is_a_short_guide():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for page in ("generate", "train", "export", "eval", "chat", "pipeline", "demo", "benchmarks", "log", "design"):
        assert (REPO / "docs" / f"{page}.md").is_file(), page
        assert f"docs/{page}.md" in text, f"the README does not link docs/{page}.md"
    assert "```bash\npip install" in text


def test_every_bench_script_is_in_the_benchmarks_page():
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    for script in sorted((REPO / "bench").glob("*.py")):
        assert f"bench/{script.name}" in page, f"docs/benchmarks.md does not list bench/{script.name}"


def test_shlex_reads_every_command():  # a quote left open in a code block breaks copy and paste
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            shlex.split(block.replace("\\\n", " "), comments=True)
