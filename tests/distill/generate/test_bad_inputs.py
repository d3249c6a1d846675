"""Bad inputs exit 2 with one line that names what is wrong, before any teacher is asked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill import cli

runner = CliRunner()


def generate(*args: str):
    result = runner.invoke(cli.app, ["generate", "--quiet", *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


@pytest.fixture
def teacher():
    # never contacted: every case fails while reading its inputs
    return ["--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m"]


@pytest.mark.parametrize("name, content, expected", [
    ("empty.jsonl", b"", "no problems in the file"),
    ("bad.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n{"question": "3+3?", "answer": \n',
     "line 3: malformed JSON"),
    ("noq.jsonl", b'{"text": "1+1?", "answer": "2"}\n', "no question field found"),
    ("noa.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n', "row 2: field 'answer' is missing"),
    ("latin1.jsonl", '{"question": "caf\u00e9 1+1?", "answer": "2"}\n'.encode("latin-1"), "line 1: not UTF-8"),
    ("latin1.csv", "question,answer\ncaf\u00e9,2\n".encode("latin-1"), "not UTF-8"),
    ("list.json", b'{"question": "1+1?"', "line 1: malformed JSON"),
    ("problems.txt", b"1+1?\n", "unsupported file type '.txt'"),
])
def test_malformed_prompt_files(tmp_path, teacher, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    code, lines = generate(*teacher, "--prompts", str(path), "--out", str(out))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and name in lines[0] and expected in lines[0], lines
    assert not (out / "samples.jsonl").exists() and not (out / "generate.json").exists()


@pytest.mark.parametrize("args, expected", [
    (["--teacher", "vllm:http://x"], "teacher: unknown kind in 'vllm:http://x'"),
    (["--teacher", "openai:http://127.0.0.1:9/v1"], "model: an openai: teacher needs --model"),
    (["--teacher", "hf:/no/such/model"], "hf:/no/such/model: no such folder"),
    (["--teacher", "gguf:/no/such.gguf"], "gguf:/no/such.gguf: no such file"),
    (["--teacher", "openai:localhost:8000", "--model", "m"], "expected a base URL"),
    (["--teacher", "openai:http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "DISTILL_NO_SUCH_KEY"],
     "api_key_env: the environment variable DISTILL_NO_SUCH_KEY is not set"),
    (["--prompts", "demo"], "teacher: required"),
    (["--teacher", "hf:x", "--shard", "2/2"], "shard: expected I/N"),
    (["--teacher", "hf:x", "--n", "0"], "n: must be at least 1"),
    (["--teacher", "hf:x", "--min-pass-rate", "0.8", "--max-pass-rate", "0.5"], "min_pass_rate"),
    (["--teacher", "hf:x", "--prompt-template", "no placeholder here"], "prompt_template"),
])
def test_bad_teachers_and_settings(tmp_path, args, expected):
    code, lines = generate(*args, "--prompts", "demo", "--limit", "2", "--out", str(tmp_path / "o"))
    assert code == 2 and len(lines) == 1, lines
    assert expected in lines[0], lines


def test_not_a_model_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    for spec, expected in [(f"hf:{tmp_path / 'model'}", "no config.json"),
                           (f"gguf:{tmp_path / 'fake.gguf'}", "not a GGUF file")]:
        code, lines = generate("--teacher", spec, "--prompts", "demo", "--limit", "1",
                               "--out", str(tmp_path / "o"))
        assert code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_missing_decontamination_file(tmp_path, teacher):
    code, lines = generate(*teacher, "--prompts", "demo", "--decontaminate", str(tmp_path / "aime.jsonl"),
                           "--out", str(tmp_path / "o"))
    assert code == 2 and len(lines) == 1 and "aime.jsonl" in lines[0], lines


def test_one_line_on_stderr_from_the_real_command(tmp_path):
    import subprocess
    import sys
    from tests.conftest import REPO
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": oops}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "distill", "generate", "--teacher", "hf:/no/model",
                           "--prompts", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: line 2: malformed JSON (Expecting value)"
    assert "Traceback" not in proc.stdout + proc.stderr
