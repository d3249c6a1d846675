"""Quantization in llama.cpp's child process with an importance matrix (the path issue-15's
imatrix export takes): the matrix reaches llama.cpp and changes what it writes, and one of the
wrong size is refused with llama.cpp's own reason."""

from __future__ import annotations

import numpy as np
import pytest

from distill.core.errors import GateFailed
from export.gguf_info import read_header
from export.gguf_writer import write_gguf
from export.quantize import quantize
from export.source import check_model_folder, model_facts


@pytest.fixture(scope="module")
def f16_file(student, tmp_path_factory):
    folder = student("qwen2")
    config = check_model_folder(folder)
    out = tmp_path_factory.mktemp("imatrix") / "m-f16.gguf"
    write_gguf(folder, config, model_facts(folder, config), out, "f16", "m")
    return out


def _imatrix(path, f16_file, scale=None, wrong_size=False):
    rng = np.random.default_rng(0)
    matrices = {t["name"]: t["shape"] for t in read_header(f16_file)[1] if len(t["shape"]) == 2}
    values = {name: (rng.uniform(0.01, 100.0, shape[0] + (1 if wrong_size else 0)) if scale is None
                     else np.full(shape[0], scale)).astype(np.float32)
              for name, shape in matrices.items()}
    np.savez(path, **values)
    return path


def test_importance_matrix_changes_the_quantization(f16_file, tmp_path):
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(f16_file, plain, "q4_0", 1, tmp_path / "q.log")
    quantize(f16_file, weighted, "q4_0", 1, tmp_path / "q.log", imatrix=_imatrix(tmp_path / "im.npz", f16_file))
    assert read_header(plain)[1] == read_header(weighted)[1]  # same tensors and types
    assert plain.read_bytes() != weighted.read_bytes()


def test_importance_matrix_of_the_wrong_size_is_refused(f16_file, tmp_path):
    bad = _imatrix(tmp_path / "bad.npz", f16_file, wrong_size=True)
    with pytest.raises(GateFailed, match="m-q4_0.gguf: llama.cpp could not quantize to q4_0"):
        quantize(f16_file, tmp_path / "m-q4_0.gguf", "q4_0", 1, tmp_path / "q.log", imatrix=bad)
    assert not (tmp_path / "m-q4_0.gguf").exists()
