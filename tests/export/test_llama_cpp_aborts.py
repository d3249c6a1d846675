"""llama.cpp aborts the whole process on a failed assertion. Loading and quantizing run in child
processes, so a GGUF that makes llama.cpp abort ends the export with exit 3 and one line naming
the artifact and llama.cpp's assertion, and no temporary folder is left."""

from __future__ import annotations

import gguf
import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.errors import GateFailed
from distill.export import gguf_vocab
from distill.export.gguf_writer import write_gguf
from distill.export.quantize import quantize
from distill.export.source import check_model_folder, model_facts

runner = CliRunner()


def _one_line_exit_3(result, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 3, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_temporaries(folder) -> None:
    assert not [p.name for p in folder.rglob(".tmp-*")]


@pytest.fixture
def duplicated_texts(monkeypatch):
    """The writer without its fix for ids that share a text (as deepseek-llm's vocabulary has)."""
    original = gguf_vocab.vocab_entries

    def entries(tokenizer, vocab_size):
        tokens, types = original(tokenizer, vocab_size)
        tokens[101] = tokens[100]
        return tokens, types

    monkeypatch.setattr(gguf_vocab, "vocab_entries", entries)


@pytest.fixture
def no_layers(monkeypatch):
    """A header that says the model has no layers, which llama.cpp asserts against."""
    monkeypatch.setattr(gguf.GGUFWriter, "add_block_count",
                        lambda self, n: self.add_uint32(gguf.Keys.LLM.BLOCK_COUNT.format(arch=self.arch), 0))


def test_gguf_that_aborts_llama_cpp_on_loading_exits_3(student, tmp_path, duplicated_texts):
    result = runner.invoke(cli.app, ["export", "--quiet", "--model", str(student("qwen2")), "--out",
                                     str(tmp_path / "export"), "--gguf", "f16", "--threads", "1"])
    _one_line_exit_3(result, "model-f16.gguf", "llama.cpp aborted",
                     "GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed")
    _no_temporaries(tmp_path)


def test_quantization_that_aborts_exits_3_and_leaves_nothing(student, tmp_path, no_layers):
    result = runner.invoke(cli.app, ["export", "--quiet", "--model", str(student("qwen2")), "--out",
                                     str(tmp_path / "export"), "--gguf", "q4_0", "--no-validate", "--threads", "1"])
    _one_line_exit_3(result, "model-q4_0.gguf", "llama.cpp aborted while quantizing to q4_0", "GGML_ASSERT")
    assert list(tmp_path.iterdir()) == []


def test_quantize_reports_the_assertion_and_removes_its_output(student, tmp_path, no_layers):
    folder = student("qwen2")
    config = check_model_folder(folder)
    src = tmp_path / "m-f16.gguf"
    write_gguf(folder, config, model_facts(folder, config), src, "f16", "m")
    with pytest.raises(GateFailed, match=r"m-q8_0.gguf: llama.cpp aborted .*GGML_ASSERT\(.*n_layer"):
        quantize(src, tmp_path / "m-q8_0.gguf", "q8_0", 1, tmp_path / "quantize.log")
    assert not (tmp_path / "m-q8_0.gguf").exists()
