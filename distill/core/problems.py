"""Load problems (question + reference answer) from local files, Hugging Face datasets or the
bundled demo task, detecting the question and answer fields the way common datasets name them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from .answers import reference_answer
from .errors import UserError, one_line
from .io import read_jsonl

QUESTION_FIELDS = ("question", "problem", "prompt", "Question", "Problem", "input")
ANSWER_FIELDS = ("answer", "solution", "final_answer", "Answer", "expected_answer", "output")


def problem_id(question: str, reference: str) -> str:
    return hashlib.sha256(f"{question}\0{reference}".encode()).hexdigest()[:16]


def read_rows(src: str) -> list[dict]:
    path = Path(src)
    suffix = path.suffix.lower()
    if path.is_dir():
        return _read_saved_dataset(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a list of objects (or an object holding one)")
        return data
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise UserError(f"{path}: not a readable Parquet file ({e.__class__.__name__})") from None
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json, .parquet or .csv)")


def _read_saved_dataset(path: Path) -> list[dict]:
    """A folder written by `datasets`' save_to_disk: one Dataset (state.json) or a DatasetDict
    (dataset_dict.json), whose "train" split (or only split) is read."""
    if not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        raise UserError(f"{path}: a folder that holds no dataset (expected a `datasets` save_to_disk "
                        "folder with dataset_dict.json or state.json, or give a .jsonl/.json/.parquet/"
                        ".csv file)")
    from datasets import load_from_disk
    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged saved dataset is the user's input at fault
        raise UserError(f"{path}: the saved dataset cannot be read ({type(e).__name__}: "
                        f"{one_line(e)[:200]})") from None
    if hasattr(ds, "keys"):
        splits = list(ds.keys())
        if "train" not in splits and len(splits) != 1:
            raise UserError(f"{path}: the saved dataset has no 'train' split and several others "
                            f"({', '.join(splits)}); save the split to use on its own")
        ds = ds["train" if "train" in splits else splits[0]]
    return [dict(r) for r in ds]


def load_hub(spec: str) -> list[dict]:
    """`name[:config][@split]`, e.g. `openai/gsm8k:main@test`."""
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        offline_note = " (offline: HF_HUB_OFFLINE is set)"
    else:
        offline_note = ""
    from datasets import load_dataset
    try:
        ds = load_dataset(name, config or None, split=split or "train")
    except Exception as e:
        raise UserError(f"{spec}: not a local file and could not be loaded from the Hugging Face "
                        f"hub{offline_note}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return [dict(r) for r in ds]


def _pick(fields: tuple[str, ...], row: dict, given: str | None, what: str, src: str) -> str:
    if given:
        if given not in row:
            raise UserError(f"{src}: no field '{given}' (named by --{what}-field); "
                            f"fields are: {', '.join(row)}")
        return given
    for name in fields:
        if name in row:
            return name
    raise UserError(f"{src}: no {what} field found (looked for {', '.join(fields)}; "
                    f"fields are: {', '.join(row)}); name it with --{what}-field")


def load_problems(src: str, question_field: str | None = None, answer_field: str | None = None,
                  limit: int | None = None, require_answer: bool = True,
                  demo_split: str = "train") -> list[dict]:
    """Return rows {id, question, reference, raw_answer} in source order."""
    if src == "demo":
        from distill.core.demo_task import load_split
        rows = load_split(demo_split)
    elif Path(src).exists():
        rows = read_rows(src)
    elif "/" in src and not Path(src).suffix and not src.startswith((".", "/")):
        rows = load_hub(src)
    else:
        raise UserError(f"{src}: no such file (nor a Hugging Face dataset name like "
                        "openai/gsm8k:main@test)")
    if not rows:
        raise UserError(f"{src}: no problems in the file")
    q_field = _pick(QUESTION_FIELDS, rows[0], question_field, "question", src)
    a_field = None
    if require_answer or answer_field:
        a_field = _pick(ANSWER_FIELDS, rows[0], answer_field, "answer", src)
    problems, seen = [], set()
    for number, row in enumerate(rows, start=1):
        question = row.get(q_field)
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{src}: row {number}: field '{q_field}' is missing or empty")
        raw = row.get(a_field) if a_field else None
        if require_answer and (raw is None or str(raw).strip() == ""):
            raise UserError(f"{src}: row {number}: field '{a_field}' is missing or empty")
        reference = reference_answer(raw) if raw is not None else ""
        pid = str(row["id"]) if "id" in row and str(row["id"]) not in seen else problem_id(question, reference)
        seen.add(pid)
        problems.append({"id": pid, "question": question, "reference": reference,
                         "raw_answer": None if raw is None else str(raw)})
        if limit is not None and len(problems) >= limit:
            break
    return problems
