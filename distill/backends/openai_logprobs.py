"""Token log-probs from an OpenAI-compatible chat server (`generate --logprobs K`).

Chat completions return each generated token as a string with its log-prob and its top
alternatives. vLLM returns ids instead when asked (`return_tokens_as_token_ids`: "token_id:123");
elsewhere the strings are mapped to ids through the teacher's tokenizer (`--teacher-tokenizer`),
by their bytes (the `bytes` field, or the string's UTF-8). OpenAI caps `top_logprobs` at 20 and
vLLM at its `--max-logprobs` (20 by default; more is an HTTP 400): `probe` asks for K once before
any work and turns a refusal into one line."""

from __future__ import annotations

import re

from distill.core.errors import UserError

TOKEN_ID = re.compile(r"token_id:(-?\d+)$")
_MAX_ALLOWED = re.compile(r"max(?:imum)? allowed:?\s*(\d+)", re.I)


class TokenMapper:
    """Token text (or bytes) -> id in a Hugging Face tokenizer's vocabulary: byte-level BPE tokens
    through GPT-2's byte alphabet, SentencePiece tokens with their '▁' spaces and <0xNN> bytes."""

    def __init__(self, tokenizer):
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        vocab = tokenizer.get_vocab()
        specials = set(tokenizer.all_special_tokens)
        byte_level = all(c in byte_of for tok in list(vocab)[:2000] for c in tok if tok not in specials)
        self.ids: dict[bytes, int] = {}
        for token, i in sorted(vocab.items(), key=lambda item: (item[0] in specials, item[1])):
            if token in specials:
                raw = token.encode("utf-8")
            elif byte_level:
                raw = bytes(byte_of[c] for c in token)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                raw = bytes([int(token[3:5], 16)])
            else:
                raw = token.replace("▁", " ").encode("utf-8")
            self.ids.setdefault(raw, i)

    def id_of(self, token: str, raw: list[int] | None) -> int:
        key = bytes(raw) if raw is not None else token.encode("utf-8")
        if key not in self.ids:
            raise UserError(f"teacher: the server returned the token {token!r}, which the teacher tokenizer "
                            "(--teacher-tokenizer) does not have: it is not the served model's tokenizer")
        return self.ids[key]


def request_fields(k: int, token_ids: bool) -> tuple[dict, dict]:
    """(request arguments, extra_body) that ask for the top-k log-probs of every generated token."""
    return {"logprobs": True, "top_logprobs": k}, ({"return_tokens_as_token_ids": True} if token_ids else {})


def token_id(entry, mapper: TokenMapper | None) -> int:
    text = entry.get("token") if isinstance(entry, dict) else entry.token
    raw = entry.get("bytes") if isinstance(entry, dict) else getattr(entry, "bytes", None)
    found = TOKEN_ID.match(text or "")
    if found:
        return int(found.group(1))
    if mapper is None:
        raise UserError("teacher: the server returns token strings, not ids; give --teacher-tokenizer "
                        "(the served model's tokenizer folder or hub id) to map them")
    return mapper.id_of(text, raw)


def parse(entries: list, k: int, mapper: TokenMapper | None):
    """TokenLogprobs of a completion's `logprobs.content` entries."""
    from distill.core.teacher_logprobs import TokenLogprobs

    ids, lps, top_ids, top_lps = [], [], [], []
    for entry in entries:
        get = entry.get if isinstance(entry, dict) else (lambda name, e=entry: getattr(e, name, None))
        ids.append(token_id(entry, mapper))
        lps.append(float(get("logprob")))
        tops = get("top_logprobs") or []
        top_ids.append([token_id(t, mapper) for t in tops])
        top_lps.append([float(t.get("logprob") if isinstance(t, dict) else t.logprob) for t in tops])
    return TokenLogprobs.from_lists(ids, lps, top_ids, top_lps, k)


def refusal(message: str, k: int, where: str) -> UserError:
    found = _MAX_ALLOWED.search(message)
    limit = f" at most {found.group(1)}" if found else " fewer"
    return UserError(f"logprobs: {where} allows{limit} top log-probs per token, not {k} "
                     f"(OpenAI's limit is 20; vLLM's is its --max-logprobs)")
