"""The tokenizer half of a GGUF file: the byte-level BPE vocabulary (`tokenizer.ggml.model =
gpt2`), its merges, special token ids, the chat template and `tokenizer.ggml.pre`, which tells
llama.cpp how to split text before BPE. The pre-tokenizer is read from tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from distill.core.errors import UserError

# The split regexes of the pre-tokenizers llama.cpp implements, as tokenizer.json spells them.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SPLIT_REGEXES = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe", GPT2_REGEX: "gpt-2"}
ASCII_DIGITS = set("0123456789")


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def _digit_tokens_are_single(vocab: dict[str, int]) -> bool:
    """True when no token holds a digit next to any other character: the vocabulary was trained
    on text whose digits were split one by one (SmolLM, StarCoder)."""
    return not any(len(tok) > 1 and not ASCII_DIGITS.isdisjoint(tok) for tok in vocab)


def detect_pre_tokenizer(tokenizer_json: dict, where: str) -> str:
    """The llama.cpp pre-tokenizer name that splits text the way this tokenizer.json does."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    splits = [s for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    digits = [s for s in steps if s.get("type") == "Digits"]
    if tokenizer_json.get("model", {}).get("type") != "BPE" or not byte_level:
        raise UserError(f"{where}: only byte-level BPE tokenizers can be written to GGUF here "
                        f"(found model {tokenizer_json.get('model', {}).get('type')}, pre-tokenizers {kinds})")
    if len(splits) == 1 and not digits and not byte_level[0].get("use_regex", True):
        regex = splits[0].get("pattern", {}).get("Regex")
        if regex in SPLIT_REGEXES:
            return SPLIT_REGEXES[regex]
    if not splits and byte_level[0].get("use_regex", True):
        if digits and digits[0].get("individual_digits"):
            return "smollm"
        if not digits:
            # Plain GPT-2 splitting. A vocabulary without multi-digit tokens was trained with
            # digits split one by one, which llama.cpp's `smollm` splitting reproduces exactly.
            vocab = tokenizer_json.get("model", {}).get("vocab", {})
            return "smollm" if _digit_tokens_are_single(vocab) else "gpt-2"
    raise UserError(f"{where}: pre-tokenizer not recognised ({json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}); "
                    "name the llama.cpp one with --gguf-pre (e.g. qwen2, llama-bpe, smollm, gpt-2)")


def _looks_special(token: str) -> bool:
    return ((token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # DeepSeek's full-width bars
            or token in ("<pad>", "<mask>"))


def vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """One (text, type) per id up to the model's vocab_size, from a `tokenizers.Tokenizer`; ids
    the tokenizer lacks (padded embedding rows) become unused placeholders."""
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"tokenizer: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        if i in added:
            # llama.cpp matches added tokens on raw text, so they must be stored as they appear.
            if not added[i].normalized:
                text = tokenizer.decode([i], skip_special_tokens=False)
            if added[i].special or _looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    return tokens, types


def load_backend_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The `tokenizers.Tokenizer` behind the model's tokenizer. Read straight from tokenizer.json
    when there is one (importing transformers for this costs more than the whole conversion of
    a small model); otherwise built by transformers from vocab.json and merges.txt."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise UserError(f"{path}: cannot be read by the tokenizers library ({e})") from None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code).backend_tokenizer


def _token_content(entry) -> str | None:
    if isinstance(entry, dict):
        entry = entry.get("content")
    return entry if isinstance(entry, str) else None


def _adds_bos(tokenizer, tokenizer_config: dict) -> bool:
    """Whether the HF tokenizer puts BOS in front by default: tokenizer_config.json's
    add_bos_token when set, else what tokenizer.json's post-processor does."""
    bos = _token_content(tokenizer_config.get("bos_token"))
    bos_id = tokenizer.token_to_id(bos) if bos else None
    if bos_id is None:
        return False
    if isinstance(tokenizer_config.get("add_bos_token"), bool):
        return tokenizer_config["add_bos_token"]
    ids = tokenizer.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == bos_id


def add_vocab(writer: gguf.GGUFWriter, folder: Path, vocab_size: int, pre: str | None,
              trust_remote_code: bool = False) -> dict:
    """Write the tokenizer keys; returns what was chosen (for the manifest)."""
    tokenizer = load_backend_tokenizer(folder, trust_remote_code)
    tokenizer_json = json.loads(tokenizer.to_str())
    detected = detect_pre_tokenizer(tokenizer_json, str(folder / "tokenizer.json")) if pre is None else pre
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}

    tokens, types = vocab_entries(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(detected)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        special.merges = _merges_of(tokenizer_json)
    if not special.merges:
        raise UserError(f"{folder}: the tokenizer has no BPE merges")
    eos = _generation_eos(folder)
    if eos is not None and eos < vocab_size:
        # The student stops on the token generation_config.json names (train sets it to the
        # end-of-turn token); llama.cpp should stop on the same one.
        special.special_token_ids["eos"] = eos
    special.add_special_token["bos"] = _adds_bos(tokenizer, tokenizer_config)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
    return {"pre": detected, "pre_detected": pre is None, "tokens": len(tokens),
            "merges": len(special.merges), "special_ids": dict(special.special_token_ids),
            "add_bos": special.add_special_token["bos"],
            "chat_template": special.chat_template is not None}


def _merges_of(tokenizer_json: dict) -> list[str]:
    """Merges as GGUF stores them ("a b"), for tokenizers that had no tokenizer.json on disk."""
    merges = tokenizer_json.get("model", {}).get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _generation_eos(folder: Path) -> int | None:
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if isinstance(eos, int) else None
