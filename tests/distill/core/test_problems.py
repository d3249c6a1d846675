"""Problems from a folder: a `datasets` save_to_disk folder loads; a folder that holds no dataset
is a user error (exit 2, one line naming the folder and what it should hold)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.errors import UserError
from distill.core.problems import load_problems

runner = CliRunner()
TEACHER = ["--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m"]  # never contacted


def _generate(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(cli.app, ["generate", "--quiet", *args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("content", ["empty", "stray-files"])
def test_a_folder_without_a_dataset_exits_2_naming_it(tmp_path, content):
    folder = tmp_path / "prompts"
    folder.mkdir()
    if content == "stray-files":
        (folder / "notes.txt").write_text("1+1?\n")
        (folder / "problems.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    out = tmp_path / "out"
    code, lines = _generate(*TEACHER, "--prompts", str(folder), "--out", str(out))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {folder}: a folder that holds no dataset"), lines
    assert "dataset_dict.json or state.json" in lines[0] and ".jsonl" in lines[0]
    assert not (out / "samples.jsonl").exists()


def test_saved_datasets_load_and_ambiguous_splits_are_named(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"question": ["What is 1 + 1?", "What is 2 + 3?"], "answer": ["#### 2", "#### 5"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "only-test"))
    DatasetDict({"a": Dataset.from_dict(rows), "b": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "two"))
    assert [p["reference"] for p in load_problems(str(tmp_path / "one"))] == ["2", "5"]
    assert [p["reference"] for p in load_problems(str(tmp_path / "only-test"))] == ["2", "5"]
    with pytest.raises(UserError, match="no 'train' split and several others \\(a, b\\)"):
        load_problems(str(tmp_path / "two"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{")
    with pytest.raises(UserError, match="broken: the saved dataset cannot be read"):
        load_problems(str(broken))
