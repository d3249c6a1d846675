"""The calibration texts of the importance matrix, tokenized as the student sees them.

Traces (a `distill generate` folder, a dataset or a JSONL file with problem / reasoning / answer,
or by default the traces named in the student's train.json) are rendered with the student's chat
template by the trace module, as in training (distill/core/traces.py). Other JSONL files give one
text per row (`text`, or `messages` rendered with the chat template); a .txt file is cut into
chunks of the context length, as llama.cpp's imatrix tool cuts its input. Whole problems are kept
apart for validation: the matrix never sees the texts the quants are measured on."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from distill.core.errors import UserError
from distill.core.io import read_json, read_jsonl
from distill.core.progress import info
from distill.core.traces import encode_traces, end_of_turn, load_traces, split_heldout

TEXT_CHUNK = 512  # llama.cpp's imatrix tool calibrates on chunks of its default context, 512
SEED = 0


@dataclass
class Calibration:
    source: str                      # as named by the user, or train.json's traces
    kind: str                        # traces | text | chat | imatrix
    texts: list[np.ndarray]          # token ids the matrix is computed from
    heldout: list[np.ndarray]        # token ids the quants are measured on
    too_long: int = 0                # traces dropped for not fitting the context
    imatrix_file: Optional[Path] = None
    heldout_source: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"source": self.source, "kind": self.kind, "texts": len(self.texts),
                "tokens": int(sum(len(t) for t in self.texts)), "heldout_source": self.heldout_source,
                "heldout_texts": len(self.heldout), "heldout_tokens": int(sum(len(t) for t in self.heldout)),
                "too_long": self.too_long, "notes": self.notes}


def recorded_traces(model: str) -> Optional[tuple[str, str]]:
    """(traces source, prompt template) from the student's train.json, when it names traces that
    are still there."""
    record = Path(model) / "train.json"
    if not record.is_file():
        return None
    config = (read_json(record).get("config") or {})
    traces = config.get("traces")
    if not traces or not Path(traces).exists():
        return None
    return str(traces), str(config.get("prompt_template") or "r1")


def _is_imatrix_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == ".gguf"):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _trace_samples(tokenizer, src: str, prompt_template: str, context: int) -> tuple[list[dict], int]:
    traces = load_traces(src, prompt_template)
    eot = end_of_turn(tokenizer, "model")
    samples, too_long = encode_traces(tokenizer, traces.rows, eot, context, "model")
    if not samples:
        raise UserError(f"imatrix: {src}: all {too_long} traces are longer than the context length "
                        f"{context} (--context-length)")
    return samples, too_long


def _row_samples(tokenizer, path: Path, rows: list[dict], context: int) -> tuple[list[dict], str]:
    """One sample per row of a JSONL file of texts or chat conversations."""
    kind = "text" if "text" in rows[0] else "chat"
    samples = []
    for number, row in enumerate(rows, start=1):
        if kind == "text":
            text = row.get("text")
            if not isinstance(text, str):
                raise UserError(f"{path}: row {number}: field 'text' is missing or not text")
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        else:
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                raise UserError(f"{path}: row {number}: field 'messages' is missing or empty")
            ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False),
                            add_special_tokens=False)["input_ids"]
        if not ids or (kind == "text" and not text.strip()):
            continue
        if len(ids) > context:
            raise UserError(f"{path}: row {number}: the text is {len(ids)} tokens, longer than the "
                            f"context length {context} (--context-length)")
        samples.append({"input_ids": np.asarray(ids, dtype=np.int32), "problem": number})
    return samples, kind


def _text_file_samples(tokenizer, path: Path, context: int) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = min(context, TEXT_CHUNK)
    return [{"input_ids": np.asarray(ids[i:i + size], dtype=np.int32), "problem": i}
            for i in range(0, len(ids) - size // 4, size)]  # a short tail is too little context


def _samples(tokenizer, src: str, prompt_template: str, context: int) -> tuple[list[dict], str, int]:
    path = Path(src)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _text_file_samples(tokenizer, path, context), "text", 0
    if path.is_file() and path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
        if rows and ("text" in rows[0] or "messages" in rows[0]):
            samples, kind = _row_samples(tokenizer, path, rows, context)
            return samples, kind, 0
    samples, too_long = _trace_samples(tokenizer, src, prompt_template, context)
    return samples, "traces", too_long


def _split(samples: list[dict], heldout: float, max_texts: int, heldout_tokens: int
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    train, held = split_heldout(samples, heldout, SEED)
    if len(train) > max_texts:
        train = random.Random(SEED).sample(train, max_texts)
    kept, total = [], 0
    for sample in held:
        if total >= heldout_tokens:
            break
        ids = sample["input_ids"][: heldout_tokens - total]
        kept.append(ids)
        total += len(ids)
    return [s["input_ids"] for s in train], kept


def resolve_calibration(spec: Optional[str], model: str, folder: Path, context: int, max_texts: int,
                        heldout: float, heldout_tokens: int, trust_remote_code: bool = False
                        ) -> Optional[Calibration]:
    """The calibration of `--imatrix SPEC`, or None when there is none (asked off, or no SPEC and
    no traces recorded in the student's train.json)."""
    if spec is not None and spec.strip().lower() == "none":
        return None
    recorded = recorded_traces(model)
    if spec is None and recorded is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if spec is not None and _is_imatrix_file(Path(spec)):
        calibration = Calibration(source=spec, kind="imatrix", texts=[], heldout=[], imatrix_file=Path(spec))
        if recorded is None:
            calibration.notes.append("no traces recorded in the student's train.json: no held-out texts to measure on")
            return calibration
        samples, _, calibration.too_long = _samples(tokenizer, recorded[0], recorded[1], context)
        # The file's own texts are unknown: everything not held out is ignored.
        calibration.heldout = _split(samples, heldout, max_texts, heldout_tokens)[1]
        calibration.heldout_source = recorded[0]
        return calibration
    if spec is not None and not Path(spec).exists() and not ("/" in spec and not Path(spec).suffix):
        raise UserError(f"field 'imatrix': {spec}: no such file or folder (give traces, a .txt or .jsonl "
                        "file, an imatrix .gguf file, or none)")
    src, template = (spec, "r1") if spec is not None else recorded
    if spec is not None and recorded is not None and Path(spec).resolve() == Path(recorded[0]).resolve():
        template = recorded[1]
    samples, kind, too_long = _samples(tokenizer, src, template, context)
    if not samples:
        raise UserError(f"imatrix: {src}: holds no text to calibrate on")
    texts, held = _split(samples, heldout, max_texts, heldout_tokens)
    calibration = Calibration(source=src, kind=kind, texts=texts, heldout=held, too_long=too_long,
                              heldout_source=src if held else None)
    if too_long:
        calibration.notes.append(f"{too_long} traces longer than the context length {context} left out")
        info(f"Calibration: {too_long} traces longer than the context length {context} left out")
    if not held:
        calibration.notes.append("too few texts to hold any out: quants are not measured on held-out text")
    return calibration
