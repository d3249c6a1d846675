"""Quantization in llama.cpp's child process with an importance matrix (the path issue-15's
imatrix export takes): the matrix reaches llama.cpp and changes what it writes, and one of the
wrong size is refused with llama.cpp's own reason."""

from __future__ import annotations

import numpy as np
import pytest

from distill.core.errors import GateFailed
from distill.export.gguf_info import read_header
from distill.export.gguf_writer import write_gguf
from distill.export.imatrix import Imatrix, write_imatrix
from distill.export.quantize import quantize
from distill.export.source import check_model_folder, model_facts


@pytest.fixture(scope="module")
def f16_file(student, tmp_path_factory):
    folder = student("qwen2")
    config = check_model_folder(folder)
    out = tmp_path_factory.mktemp("imatrix") / "m-f16.gguf"
    write_gguf(folder, config, model_facts(folder, config), out, "f16", "m")
    return out


def _imatrix(path, f16_file, wrong_size=False):
    """An importance matrix file in llama.cpp's format with random sums for every matrix."""
    rng = np.random.default_rng(0)
    matrices = {t["name"]: t["shape"] for t in read_header(f16_file)[1] if len(t["shape"]) == 2}
    sums = {name: rng.uniform(0.01, 100.0, (1, shape[0] + (1 if wrong_size else 0))).astype(np.float32)
            for name, shape in matrices.items()}
    counts = {name: np.ones(1, dtype=np.int64) for name in matrices}
    write_imatrix(path, Imatrix(sums, counts, ["random"], chunk_count=1, chunk_size=512), "qwen2")
    return path


def test_importance_matrix_changes_the_quantization(f16_file, tmp_path):
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(f16_file, plain, "q4_0", 1, tmp_path / "q.log")
    quantize(f16_file, weighted, "q4_0", 1, tmp_path / "q.log", imatrix=_imatrix(tmp_path / "im.gguf", f16_file))
    assert read_header(plain)[1] == read_header(weighted)[1]  # same tensors and types
    assert plain.read_bytes() != weighted.read_bytes()


def test_importance_matrix_of_the_wrong_size_is_refused(f16_file, tmp_path):
    bad = _imatrix(tmp_path / "bad.gguf", f16_file, wrong_size=True)
    with pytest.raises(GateFailed, match="m-q4_0.gguf: llama.cpp could not quantize to q4_0"):
        quantize(f16_file, tmp_path / "m-q4_0.gguf", "q4_0", 1, tmp_path / "q.log", imatrix=bad)
    assert not (tmp_path / "m-q4_0.gguf").exists()
