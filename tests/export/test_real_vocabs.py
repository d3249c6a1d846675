"""Real students' vocabularies against llama.cpp's own tokenizer test vectors: for each of
llama.cpp's `ggml-vocab-*.gguf` files a tiny model of a matching architecture carries the HF
tokenizer rebuilt from it and the family's real chat template; `distill export --gguf f16`
must identify the vocabulary as llama.cpp's converter does, and the GGUF must tokenize every
test string on which the rebuilt HF tokenizer agrees with llama.cpp's `.out` file to exactly the
expected ids, and carry the chat template unchanged."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from distill import cli
from tests.conftest import build_tiny_model

from .vocabs import UNCHECKED, VOCABS, agreed_strings, rebuilt_tokenizer, template

MESSAGES = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "content": "42."},
            {"role": "user", "content": "And 7 * 6?"}]


def _llama(path, **kw):
    import llama_cpp
    return llama_cpp.Llama(str(path), n_ctx=512, verbose=False, n_threads=1, n_threads_batch=1, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Factory: `exported("qwen2")` -> (model folder, export folder, manifest), made once."""
    made = {}

    def make(name: str):
        if name not in made:
            arch, template_file = VOCABS[name][:2]
            root = tmp_path_factory.mktemp(f"vocab-{name}")
            model = build_tiny_model(arch, rebuilt_tokenizer(name), root / "model", layers=1)
            (model / "chat_template.jinja").write_text(template(template_file), encoding="utf-8")
            out = root / "export"
            result = CliRunner().invoke(cli.app, ["export", "--quiet", "--model", str(model), "--out", str(out),
                                                  "--gguf", "f16", "--threads", "1",
                                                  *(["--no-validate"] if name in UNCHECKED else [])])
            assert result.exit_code == 0, result.output
            made[name] = (model, out, json.loads((out / "manifest.json").read_text()))
        return made[name]

    return make


@pytest.mark.parametrize("name", list(VOCABS))
def test_llama_cpp_tokenizes_the_test_vectors_as_expected(name, exported):
    model, out, manifest = exported(name)
    expected_pre, found_by = VOCABS[name][2:]
    vocab = manifest["tokenizer"]
    if expected_pre is None:
        assert vocab["model"] == "llama" and "pre" not in vocab
    else:
        assert vocab["model"] == "gpt2"
        if isinstance(expected_pre, tuple):  # either is right: they split this tokenizer's text alike
            assert vocab["pre"] in expected_pre
        else:
            assert (vocab["pre"], vocab["pre_found_by"]) == (expected_pre, found_by)
    (artifact,) = manifest["artifacts"]
    assert name in UNCHECKED or artifact["validation"]["passed"], artifact["validation"]

    tokenizer = AutoTokenizer.from_pretrained(model)
    agreed, total = agreed_strings(name, tokenizer)
    # (transformers rebuilds SentencePiece vocabularies imperfectly: 31 of llama-spm's 46)
    assert len(agreed) >= 0.6 * total, f"the rebuilt tokenizer agrees with llama.cpp on {len(agreed)}/{total}"
    llm = _llama(out / artifact["path"], vocab_only=True)
    try:
        wrong = [(text, ids, got) for text, ids in agreed
                 if (got := llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) != ids]
    finally:
        llm.close()
    assert not wrong, f"{len(wrong)}/{len(agreed)} strings tokenized differently, first: {wrong[0]!r}"


@pytest.mark.parametrize("name", list(VOCABS))
def test_chat_template_round_trips(name, exported):
    model, out, manifest = exported(name)
    tokenizer = AutoTokenizer.from_pretrained(model)
    source = template(VOCABS[name][1])
    llm = _llama(out / manifest["artifacts"][0]["path"], vocab_only=True)
    try:
        assert llm.metadata["tokenizer.chat_template"] == source
        prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        # the template's markers are the vocabulary's control tokens in llama.cpp as in HF
        got = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()
    if name not in UNCHECKED:
        assert got == tokenizer.encode(prompt, add_special_tokens=False)


def test_phi3_is_refused_clearly(tmp_path):
    """phi-3's SentencePiece vocabulary would be written, but its model needs llama.cpp's phi3
    architecture, which this writer does not write."""
    model = build_tiny_model("llama", rebuilt_tokenizer("phi-3"), tmp_path / "model", layers=1)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="phi3", architectures=["Phi3ForCausalLM"])
    (model / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli.app, ["export", "--quiet", "--model", str(model), "--out", str(tmp_path / "out"),
                                          "--gguf", "f16"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "model_type 'phi3' (Phi3ForCausalLM) cannot be exported; supported architectures: llama" in lines[0]
    assert not (tmp_path / "out").exists()
