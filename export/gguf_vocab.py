"""The tokenizer half of a GGUF file, for the two kinds of BPE vocabulary students use:

- byte-level BPE (Qwen, Llama 3, DeepSeek, SmolLM, GPT-2): `tokenizer.ggml.model = gpt2` with the
  merges and `tokenizer.ggml.pre`, which tells llama.cpp how to split text before BPE
  (identified in gguf_pre.py);
- SentencePiece-style BPE (Llama 2, Mistral, TinyLlama: byte fallback, spaces as "\u2581"), often
  shipped as tokenizer.json alone: `tokenizer.ggml.model = llama`, whose tokenizer merges the
  adjacent pair with the highest score first. Each token's score is minus the rank of the merge
  that makes it, so llama.cpp merges in the BPE's order.

Special token ids, the add-BOS flag and the chat template come with either."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from distill.core.errors import UserError

from .gguf_pre import identify_pre_tokenizer

SPACE = "\u2581"


def _steps(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [s for c in component.get(key, []) for s in _steps(c, key)]
    return [component]


def tokenizer_kind(tokenizer_json: dict, where: str) -> str:
    """"gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE), as llama.cpp names them."""
    model = tokenizer_json.get("model", {})
    pre = _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    norm = _steps(tokenizer_json.get("normalizer"), "normalizers")
    if model.get("type") == "BPE":
        if any(s.get("type") == "ByteLevel" for s in pre):
            return "gpt2"
        spaces_marked = any(s.get("type") == "Metaspace" for s in pre) or any(
            s.get("type") == "Replace" and s.get("content") == SPACE for s in norm)
        if model.get("byte_fallback") and spaces_marked:
            return "llama"
    raise UserError(f"{where}: only byte-level BPE and SentencePiece-style BPE (byte fallback, "
                    f"\u2581 for spaces) tokenizers can be written to GGUF here (found model "
                    f"{model.get('type')}, pre-tokenizers {[s.get('type') for s in pre]})")


def _adds_space_prefix(tokenizer_json: dict) -> bool:
    for s in _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if s.get("type") == "Metaspace":
            return s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
    return any(s.get("type") == "Prepend" and s.get("prepend") == SPACE
               for s in _steps(tokenizer_json.get("normalizer"), "normalizers"))


def _looks_special(token: str) -> bool:
    return ((token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # DeepSeek's full-width bars
            or token in ("<pad>", "<mask>"))


def _ids_to_tokens(tokenizer, vocab_size: int) -> dict[int, str]:
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"tokenizer: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    return by_id


def vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """One (text, type) per id up to the model's vocab_size, from a byte-level BPE
    `tokenizers.Tokenizer`; ids the tokenizer lacks (padded embedding rows) become unused
    placeholders, and so do all but one of several ids with the same text."""
    by_id = _ids_to_tokens(tokenizer, vocab_size)
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
                decoded = tokenizer.decode([i], skip_special_tokens=False)
                # (DeepSeek's added tokens for the bytes that are never UTF-8 on their own
                # decode to U+FFFD: they stay as stored)
                if decoded and "\ufffd" not in decoded:
                    text = decoded
            if added[i].special or _looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    unique_texts(tokens, types, tokenizer)
    return tokens, types


def spm_entries(tokenizer, tokenizer_json: dict, vocab_size: int,
                unk: str | None = None) -> tuple[list[str], list[float], list[int]]:
    """(texts, scores, types) of a SentencePiece-style BPE vocabulary; `unk` names the unknown
    token where the BPE model does not."""
    by_id = _ids_to_tokens(tokenizer, vocab_size)
    added = tokenizer.get_added_tokens_decoder()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    merges = _merges_of(tokenizer_json)
    unmade = -float(len(merges) + 1)  # tokens no merge makes are never preferred
    made: dict[int, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        i = vocab.get(left + right)
        if i is not None and i not in made:
            made[i] = -float(rank)
    unk = tokenizer_json.get("model", {}).get("unk_token") or unk
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            scores.append(unmade)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text)
        scores.append(made.get(i, unmade if i not in added else 0.0))
        if text == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special or _looks_special(text)
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    unique_texts(tokens, types, tokenizer)
    return tokens, scores, types


def unique_texts(tokens: list[str], types: list[int], tokenizer) -> list[int]:
    """llama.cpp maps text to id and aborts when two ids share a text: keep the id the tokenizer
    itself produces for that text (else the first) and turn the others into unused
    placeholders. Returns the ids renamed."""
    seen: dict[str, list[int]] = {}
    for i, text in enumerate(tokens):
        seen.setdefault(text, []).append(i)
    renamed = []
    taken = set(seen)
    for text, ids in seen.items():
        if len(ids) < 2:
            continue
        encoded = tokenizer.encode(text, add_special_tokens=False).ids
        keep = encoded[0] if len(encoded) == 1 and encoded[0] in ids else ids[0]
        for i in ids:
            if i == keep:
                continue
            name = f"[PAD{i}]"
            while name in taken:
                name = f"[{name}]"
            taken.add(name)
            tokens[i], types[i] = name, gguf.TokenType.UNUSED
            renamed.append(i)
    return renamed


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


def bos_in_front(tokenizer, tokenizer_config: dict) -> int | None:
    """The BOS id when the HF tokenizer puts it in front by default (tokenizer_config.json's
    add_bos_token when set, else what tokenizer.json's post-processor does), else None."""
    bos = _token_content(tokenizer_config.get("bos_token"))
    bos_id = tokenizer.token_to_id(bos) if bos else None
    if bos_id is None:
        return None
    if isinstance(tokenizer_config.get("add_bos_token"), bool):
        return bos_id if tokenizer_config["add_bos_token"] else None
    ids = tokenizer.encode("a", add_special_tokens=True).ids
    return bos_id if ids and ids[0] == bos_id else None


def add_vocab(writer: gguf.GGUFWriter, folder: Path, vocab_size: int, pre: str | None,
              trust_remote_code: bool = False) -> dict:
    """Write the tokenizer keys; returns what was chosen (for the manifest)."""
    tokenizer = load_backend_tokenizer(folder, trust_remote_code)
    tokenizer_json = json.loads(tokenizer.to_str())
    where = str(folder / "tokenizer.json")
    kind = tokenizer_kind(tokenizer_json, where)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    bos_id = bos_in_front(tokenizer, tokenizer_config)

    facts: dict = {"model": kind}
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        if pre is None:
            pre, how = identify_pre_tokenizer(tokenizer, bos_id, where)
        else:
            how = "--gguf-pre"
        facts.update(pre=pre, pre_detected=how != "--gguf-pre", pre_found_by=how)
        tokens, types = vocab_entries(tokenizer, vocab_size)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    else:
        tokens, scores, types = spm_entries(tokenizer, tokenizer_json, vocab_size,
                                            _token_content(tokenizer_config.get("unk_token")))
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_adds_space_prefix(tokenizer_json))
        facts["add_space_prefix"] = _adds_space_prefix(tokenizer_json)

    special = gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
    if kind == "gpt2":
        if not special.merges:
            special.merges = _merges_of(tokenizer_json)
        if not special.merges:
            raise UserError(f"{folder}: the tokenizer has no BPE merges")
    eos = _generation_eos(folder)
    if eos is not None and eos < vocab_size:
        # The student stops on the token generation_config.json names (train sets it to the
        # end-of-turn token); llama.cpp should stop on the same one.
        special.special_token_ids["eos"] = eos
    special.add_special_token["bos"] = bos_id is not None
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
    return {**facts, "tokens": len(tokens), "merges": len(special.merges),
            "placeholders": sum(1 for t in types if t == gguf.TokenType.UNUSED),
            "special_ids": dict(special.special_token_ids), "add_bos": special.add_special_token["bos"],
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
