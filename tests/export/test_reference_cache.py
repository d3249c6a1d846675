"""The recorded HF reference: a second export of the same weights is validated from the record
(no reference process) with the same results; the record judges greedy runs as teacher forcing
does; other bytes behind the same file names, sizes and times are checked against a new
reference; --no-reference-cache records nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from distill import cli
from distill.export import stage
from distill.export.reference import HFModel, judge_against, judge_greedy, reference_inputs
from distill.export.reference_cache import cache_root

runner = CliRunner()


def export(*args: str):
    return runner.invoke(cli.app, ["export", "--quiet", "--threads", "1", *args])


def validations(out: Path) -> tuple[str, list[dict]]:
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["validation"]["reference"], [a["validation"] for a in manifest["artifacts"]]


def test_a_second_export_is_validated_from_the_record(student, tmp_path, monkeypatch):
    model = student("qwen2")
    first = export("--model", str(model), "--out", str(tmp_path / "a"), "--gguf", "f16,q8_0")
    assert first.exit_code == 0, first.output
    assert len(list(cache_root().iterdir())) == 1

    def no_process(*args, **kwargs):
        raise AssertionError("a recorded reference was there: no reference process")
    monkeypatch.setattr(stage, "ReferenceProcess", no_process)
    second = export("--model", str(model), "--out", str(tmp_path / "b"), "--gguf", "f16,q8_0")
    assert second.exit_code == 0, second.output
    made, before = validations(tmp_path / "a")
    recorded, after = validations(tmp_path / "b")
    assert made == "made by this export" and recorded == "recorded by an earlier export of these weights"
    assert after == before and all(v["passed"] for v in after) and after[0]["greedy"]["match"]  # f16


def test_the_record_judges_as_teacher_forcing_does(student):
    model = student("qwen2")
    hf, inputs = HFModel(model), reference_inputs(model, False, 8)
    eos = set(inputs["eos_ids"])
    with torch.inference_mode():  # the HF model's greedy continuation, step by step
        ids = list(inputs["prompts"][0])
        for _ in range(8):
            ids.append(int(hf.loaded()(torch.tensor([ids])).logits[0, -1].argmax()))
    own = ids[len(inputs["prompts"][0]):]
    verdict, rows = judge_greedy(hf, inputs, 0, own, 5e-3)
    assert verdict == {"match": True, "exact": True}
    recorded = judge_against(lambda: [(own, rows)], eos, 8)
    vocab = rows.shape[1]
    runs = [own, own[:3] + [(own[3] + 1) % vocab] + own[4:], own[:5], own + [own[0]]]
    for tokens in runs:
        assert recorded(0, tokens, 5e-3)() == judge_greedy(hf, inputs, 0, tokens[:8], 5e-3)[0], tokens


def _same_size_other_bytes(folder: Path) -> None:
    """Other weights in the same file, with the same size and times (a fingerprint cannot tell)."""
    path = folder / "model.safetensors"
    stat = path.stat()
    tensors = load_file(path)
    save_file({k: (-v if v.is_floating_point() else v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_other_bytes_are_checked_against_a_new_reference(student, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(student("qwen2"), model)
    assert export("--model", str(model), "--out", str(tmp_path / "a"), "--gguf", "f16").exit_code == 0
    _same_size_other_bytes(model)
    result = export("--model", str(model), "--out", str(tmp_path / "b"), "--gguf", "f16")
    assert result.exit_code == 0, result.output  # checked against the old reference, it would fail
    reference, (validation,) = validations(tmp_path / "b")
    assert reference == "made by this export" and validation["passed"]


@pytest.mark.parametrize("flag", ["--no-reference-cache", "--no-validate"])
def test_nothing_recorded_without_the_cache_or_validation(student, tmp_path, flag):
    result = export("--model", str(student("qwen2")), "--out", str(tmp_path / "a"), "--gguf", "f16", flag)
    assert result.exit_code == 0, result.output
    assert not cache_root().exists() or not list(cache_root().iterdir())


def test_only_the_most_recent_records_are_kept(tmp_path):
    from distill.export.reference_cache import MAX_RECORDS, ReferenceCache
    cache = ReferenceCache(tmp_path, 16, False)
    root = cache.record.parent
    for n in range(MAX_RECORDS + 3):
        (root / f"record-{n:02d}").mkdir(parents=True)
        os.utime(root / f"record-{n:02d}", (1000 + n, 1000 + n))
    (root / ".tmp-killed").mkdir()
    os.utime(root / ".tmp-killed", (1000, 1000))
    (root / ".tmp-running").mkdir()
    cache._prune()
    kept = [f"record-{n:02d}" for n in range(3, MAX_RECORDS + 3)]
    assert sorted(p.name for p in root.iterdir()) == [".tmp-running"] + kept
