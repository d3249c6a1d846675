"""Atomic writes leave nothing half-written; JSONL tolerates a torn last line."""

import json
import os
import subprocess
import sys

import pytest

from distill.core.errors import UserError
from distill.core.io import (JsonlAppender, atomic_dir, atomic_path, read_jsonl, repair_jsonl_tail,
                             sha256_path, write_json)


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("v2-half")
            raise RuntimeError
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(target, overwrite=False) as tmp:
            (tmp / "weights").write_text("v3")
    assert (target / "weights").read_text() == "v1"


def test_sigkill_during_write_leaves_no_finished_file(tmp_path):
    target = tmp_path / "big.json"
    code = (
        "import os, signal\n"
        "from distill.core.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_text('x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == -9
    assert not target.exists()


def test_jsonl_appender_repairs_a_torn_tail(tmp_path):
    path = tmp_path / "samples.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": 1})
        out.write({"id": 2})
    with open(path, "a") as f:
        f.write('{"id": 3, "te')                        # a write cut short by a kill
    assert [r["id"] for r in read_jsonl(path, tolerate_torn_tail=True)] == [1, 2]
    with pytest.raises(UserError, match="line 3: malformed JSON"):
        read_jsonl(path)
    with JsonlAppender(path) as out:                    # reopening cuts the torn line
        out.write({"id": 3})
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 3]
    assert repair_jsonl_tail(path) == 0


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 2: malformed JSON"):
        read_jsonl(path)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(UserError, match="line 1: not UTF-8"):
        read_jsonl(path)


def test_folder_hash_ignores_temporaries_and_sees_changes(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = sha256_path(tmp_path)
    (tmp_path / ".tmp-a.123").write_text("junk")
    assert sha256_path(tmp_path) == h1
    (tmp_path / "a").write_text("2")
    assert sha256_path(tmp_path) != h1
