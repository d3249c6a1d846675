"""tokenizer.ggml.pre detection from tokenizer.json, and the token table written to GGUF."""

from __future__ import annotations

import json

import gguf
import pytest
from transformers import AutoTokenizer

from distill.core.errors import UserError
from export.gguf_vocab import (GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, detect_pre_tokenizer,
                               load_backend_tokenizer, vocab_entries)
from tests.conftest import DEMO_TOKENIZER


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _tokenizer_json(pre, vocab=None) -> dict:
    return {"model": {"type": "BPE", "vocab": vocab or {"a": 0, "1": 1}}, "pre_tokenizer": pre}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
BYTE_LEVEL_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


@pytest.mark.parametrize("pre,expected", [
    ({"type": "Sequence", "pretokenizers": [_split(QWEN2_REGEX), BYTE_LEVEL]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [_split(LLAMA3_REGEX), BYTE_LEVEL]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL_REGEX]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [_split(GPT2_REGEX), BYTE_LEVEL]}, "gpt-2"),
])
def test_known_pre_tokenizers(pre, expected):
    assert detect_pre_tokenizer(_tokenizer_json(pre), "tokenizer.json") == expected


def test_plain_byte_level_depends_on_whether_the_vocab_has_multi_digit_tokens():
    # SmolLM2 converted from GGUF by transformers: GPT-2 splitting, a vocabulary trained on
    # single digits, which is llama.cpp's `smollm`
    single = {"a": 0, "1": 1, "Ġa": 2, "³": 3}
    assert detect_pre_tokenizer(_tokenizer_json(BYTE_LEVEL_REGEX, single), "t") == "smollm"
    assert detect_pre_tokenizer(_tokenizer_json(BYTE_LEVEL_REGEX, {**single, "Ġ12": 4}), "t") == "gpt-2"


def test_unknown_pre_tokenizer_asks_for_the_override():
    pre = {"type": "Sequence", "pretokenizers": [_split(r"\w+"), BYTE_LEVEL]}
    with pytest.raises(UserError, match="--gguf-pre"):
        detect_pre_tokenizer(_tokenizer_json(pre), "tokenizer.json")
    with pytest.raises(UserError, match="byte-level BPE"):
        detect_pre_tokenizer({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}}, "t")


def test_demo_tokenizer_is_qwen2():
    data = json.loads((DEMO_TOKENIZER / "tokenizer.json").read_text())
    assert detect_pre_tokenizer(data, "demo") == "qwen2"


def test_vocab_entries_types_and_padding():
    tokenizer = load_backend_tokenizer(DEMO_TOKENIZER)
    assert tokenizer.get_vocab(with_added_tokens=True) == AutoTokenizer.from_pretrained(DEMO_TOKENIZER).get_vocab()
    size = tokenizer.get_vocab_size(with_added_tokens=True) + 4  # padded, as Qwen2.5 checkpoints are
    tokens, types = vocab_entries(tokenizer, size)
    assert len(tokens) == len(types) == size
    ids = tokenizer.get_vocab(with_added_tokens=True)
    assert types[ids["<|im_start|>"]] == gguf.TokenType.CONTROL and tokens[ids["<|im_start|>"]] == "<|im_start|>"
    assert types[ids["<think>"]] == gguf.TokenType.USER_DEFINED
    assert types[ids["h"]] == gguf.TokenType.NORMAL and tokens[ids["h"]] == "h"
    assert tokens[-1] == f"[PAD{size - 1}]" and types[-1] == gguf.TokenType.UNUSED
    with pytest.raises(UserError, match="vocab_size"):
        vocab_entries(tokenizer, size - 5)
