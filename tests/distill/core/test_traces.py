"""Traces come from a generate folder, its traces/ dataset, its samples.jsonl (kept rows only) or
any file with problem / reasoning / answer fields; bad ones are one-line user errors."""

import json

import pytest

from distill.core.errors import UserError
from distill.core.traces import load_traces

from tests.distill.train.helpers import trace_rows, write_generate_folder, write_jsonl


def _dropped(n):
    return [{**r, "id": f"d{i}", "kept": False, "drop_reason": "wrong_answer", "answer": "\\boxed{0}"}
            for i, r in enumerate(trace_rows(n, teacher="hf:moe"))]


def test_a_generate_folder_gives_its_kept_traces_and_teacher(tmp_path):
    folder = write_generate_folder(tmp_path / "gen", trace_rows(5, teacher="openai:deepseek-reasoner"), _dropped(3))
    traces = load_traces(str(folder), "r1")
    assert traces.source.endswith("traces") and len(traces.rows) == 5
    assert traces.teacher == "openai:deepseek-reasoner"
    assert traces.rows[0]["prompt"].endswith("within \\boxed{}.")
    info = traces.describe()
    assert info["kept_traces"] == 5 and info["generate_pass_at_1"] == 0.9
    assert info["generate_dropped"] == {"wrong_answer": 3}
    # its traces/ dataset directly, and its samples.jsonl (kept rows only, a torn last line ignored)
    assert len(load_traces(str(folder / "traces"), "r1").rows) == 5
    samples = folder / "samples.jsonl"
    samples.write_text(samples.read_text() + '{"id": "half-writ', encoding="utf-8")
    from_samples = load_traces(str(samples), "r1")
    assert len(from_samples.rows) == 5 and from_samples.not_kept == 3


def test_a_generate_folder_without_its_dataset_falls_back_to_samples(tmp_path):
    write_jsonl(tmp_path / "gen" / "samples.jsonl", trace_rows(4) + _dropped(2))
    assert len(load_traces(str(tmp_path / "gen"), "r1").rows) == 4


def test_plain_rows_without_a_prompt_get_the_template(tmp_path):
    from distill.core.demo_task import load_split
    rows = [{"question": p["question"], "reasoning": p["reasoning"], "answer": p["answer"]}
            for p in load_split("train")[:3]]
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    traces = load_traces(str(path), "{problem}\nThink first.")
    assert traces.rows[0]["prompt"] == rows[0]["question"] + "\nThink first."
    assert traces.teacher is None


@pytest.mark.parametrize("rows,message", [
    (lambda: _dropped(3), "no kept traces"),
    (lambda: [{"problem": "p", "answer": "1"}], "no reasoning field"),
    (lambda: [{"problem": "p", "reasoning": "r", "answer": "1"}, {"problem": "q", "reasoning": None, "answer": "2"}],
     "row 2: field 'reasoning'"),
])
def test_bad_traces_are_user_errors(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "t.jsonl", rows())
    with pytest.raises(UserError, match=message):
        load_traces(str(path), "r1")


def test_missing_paths_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_traces(str(tmp_path / "nope.jsonl"), "r1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a traces/ dataset nor samples.jsonl"):
        load_traces(str(tmp_path / "empty"), "r1")
