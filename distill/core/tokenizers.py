"""Loading a tokenizer with clear errors, and telling whether two tokenizers produce the same ids:
what KD, on-policy distillation and stored teacher log-probs need to know before comparing
next-token distributions id by id."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def require_model_path(path: str, field: str) -> None:
    if not path:
        raise UserError(f"{field}: give a model folder or a Hugging Face model name")
    if not Path(path).exists() and (path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(path)):
        raise UserError(f"{field}: {path}: no such folder (nor a Hugging Face model name)")


def load_tokenizer(path: str, field: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    require_model_path(path, field)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad path or folder
        raise UserError(f"{field}: {path}: cannot load a tokenizer ({first_line(e)})") from None


def _tokenizer_parts(tokenizer) -> dict:
    """What makes two tokenizers produce the same ids: vocabulary, merges, added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        model = spec.get("model") or {}
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        return {"vocabulary": model.get("vocab"), "merges": merges,
                "special tokens": sorted((a["id"], a["content"]) for a in spec.get("added_tokens", []))}
    return {"vocabulary": tokenizer.get_vocab(), "merges": [],
            "special tokens": sorted((i, t) for t, i in tokenizer.get_added_vocab().items())}


def require_same_tokenizer(student_tok, teacher_tok, teacher_path: str) -> None:
    """KD compares next-token distributions id by id, so the teacher must tokenize exactly as the
    student does. Embedding sizes may differ (padded vocabularies); the tokenizers may not."""
    mine, theirs = _tokenizer_parts(student_tok), _tokenizer_parts(teacher_tok)
    for part in ("vocabulary", "merges", "special tokens"):
        if mine[part] != theirs[part]:
            raise UserError(f"teacher: {teacher_path}: its tokenizer differs from the student's ({part}: "
                            f"{len(theirs[part] or [])} vs {len(mine[part] or [])} entries); "
                            "logit distillation needs the same tokenizer (use --method sft)")


