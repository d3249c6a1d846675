"""The tokenizer half of the GGUF: which pre-tokenizer a tokenizer.json's splits name when its
vocabulary has no llama.cpp fingerprint, the token table, SentencePiece-style scores, and ids
that share a text. (Real vocabularies against llama.cpp's test vectors: test_real_vocabs.py.)"""

from __future__ import annotations

import hashlib
import json

import gguf
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from distill.core.errors import UserError
from distill.export.gguf_pre import PRE_TOKENIZERS, fingerprint, identify_pre_tokenizer
from distill.export.gguf_vocab import (load_backend_tokenizer, spm_entries, tokenizer_kind, unique_texts,
                               vocab_entries)
from tests.conftest import DEMO_TOKENIZER

# The split regexes as tokenizer.json files spell them (not llama.cpp's adapted spellings).
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
BYTE_LEVEL_REGEX = {**BYTE_LEVEL, "use_regex": True}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _tokenizer(pre: dict, vocab: dict | None = None) -> Tokenizer:
    vocab = vocab or {"a": 0, "b": 1, "1": 2, "\u0120": 3}
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []}}
    return Tokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize("pre,expected", [
    ({"type": "Sequence", "pretokenizers": [_split(QWEN2), BYTE_LEVEL]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [_split(QWEN35), BYTE_LEVEL]}, "qwen35"),
    ({"type": "Sequence", "pretokenizers": [_split(LLAMA3), BYTE_LEVEL]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL_REGEX]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [_split(GPT2), BYTE_LEVEL]}, "smollm"),  # no multi-digit tokens
    (BYTE_LEVEL_REGEX, "smollm"),
])
def test_custom_vocabularies_are_named_by_their_splits(pre, expected):
    assert identify_pre_tokenizer(_tokenizer(pre), None, "tokenizer.json") == (expected, "splits")


def test_gpt2_splitting_with_multi_digit_tokens_is_gpt2():
    tokenizer = _tokenizer(BYTE_LEVEL_REGEX, {"a": 0, "1": 1, "\u012012": 2})
    assert identify_pre_tokenizer(tokenizer, None, "t") == ("gpt-2", "splits")


def test_unknown_splitting_asks_for_the_override_and_lists_the_names():
    pre = {"type": "Sequence", "pretokenizers": [_split(r"\w+"), BYTE_LEVEL]}
    with pytest.raises(UserError, match="--gguf-pre") as caught:
        identify_pre_tokenizer(_tokenizer(pre), None, "tokenizer.json")
    assert "qwen2" in str(caught.value) and "deepseek-r1-qwen" in str(caught.value) and "\n" not in str(caught.value)


def test_known_names_include_what_students_use():
    assert {"qwen2", "deepseek-r1-qwen", "llama-bpe", "smollm", "deepseek-llm", "deepseek-v3", "gpt-2",
            "starcoder", "qwen35", "deepseek-coder"} <= set(PRE_TOKENIZERS)
    assert fingerprint([1, 2]) == hashlib.sha256(b"[1, 2]").hexdigest()  # as llama.cpp's converter hashes


def test_tokenizer_kinds():
    assert tokenizer_kind(json.loads(_tokenizer(BYTE_LEVEL_REGEX).to_str()), "t") == "gpt2"
    spm = {"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": {"type": "Metaspace"}}
    assert tokenizer_kind(spm, "t") == "llama"
    legacy = {"model": {"type": "BPE", "byte_fallback": True}, "pre_tokenizer": None,
              "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                                 {"type": "Replace", "pattern": {"String": " "},
                                                                  "content": "\u2581"}]}}
    assert tokenizer_kind(legacy, "t") == "llama"
    with pytest.raises(UserError, match="only byte-level BPE and SentencePiece-style BPE"):
        tokenizer_kind({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}}, "t")


def test_demo_tokenizer_is_qwen2_by_its_splits():
    assert identify_pre_tokenizer(load_backend_tokenizer(DEMO_TOKENIZER), None, "demo") == ("qwen2", "splits")


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


def test_ids_that_share_a_text_keep_the_one_the_tokenizer_produces():
    tokenizer = load_backend_tokenizer(DEMO_TOKENIZER)
    ids = tokenizer.get_vocab()
    tokens = [""] * (max(ids.values()) + 1)
    for text, i in ids.items():
        tokens[i] = text
    types = [gguf.TokenType.NORMAL] * len(tokens)
    lower, higher = sorted([ids["h"], ids["e"]])
    tokens[lower] = tokens[higher] = "h"  # "h" encodes to its own id, whichever is higher
    keep = ids["h"]
    other = lower if keep == higher else higher
    assert unique_texts(tokens, types, tokenizer) == [other]
    assert tokens[keep] == "h" and types[keep] == gguf.TokenType.NORMAL
    assert tokens[other] == f"[PAD{other}]" and types[other] == gguf.TokenType.UNUSED
    assert len(set(tokens)) == len(tokens)


def test_sentencepiece_scores_follow_the_merge_ranks():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "\u2581": 4, "a": 5, "b": 6,
             "ab": 7, "\u2581a": 8, "\u2581ab": 9}
    data = {"version": "1.0", "truncation": None, "padding": None, "post_processor": None, "decoder": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for t, i in list(vocab.items())[:3]],
            "normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                                                  "prepend_scheme": "first", "split": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": vocab, "merges": [["a", "b"], ["\u2581", "a"], ["\u2581a", "b"], ["\u2581", "ab"]]}}
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokens, scores, types = spm_entries(tokenizer, data, 12)
    assert tokens[:10] == list(vocab) and tokens[10:] == ["[PAD10]", "[PAD11]"]
    # made by merges 0, 1 and 2 (the later merge that also makes "\u2581ab" does not lower it)
    assert (scores[7], scores[8], scores[9]) == (0.0, -1.0, -2.0)
    assert max(scores[4], scores[5], scores[6]) < -3  # single characters: no merge makes them
    assert types[:4] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
                         gguf.TokenType.BYTE]
    assert types[4:10] == [gguf.TokenType.NORMAL] * 6 and types[10:] == [gguf.TokenType.UNUSED] * 2
