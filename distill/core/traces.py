"""Read the traces to train on: the output folder of `distill generate` (its `traces/` dataset or
its `samples.jsonl`, kept rows only), or any dataset or file with problem / reasoning / answer
fields. Each trace becomes {problem, prompt, reasoning, answer}; `prompt` is the user turn exactly
as the teacher saw it, rendered from the problem with the prompt template when the data lacks it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distill.core.chat import load_prompt_template, user_message
from distill.core.errors import UserError
from distill.core.io import read_json, read_jsonl
from distill.core.problems import load_hub, read_rows

PROBLEM_FIELDS = ("problem", "question")
REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")
ANSWER_FIELDS = ("answer", "final_answer", "response")


@dataclass
class Traces:
    rows: list[dict]
    source: str
    teacher: str | None = None
    rows_read: int = 0
    not_kept: int = 0
    generate_summary: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """What the model card and the summary say about the data."""
        info = {"source": self.source, "teacher": self.teacher, "rows_read": self.rows_read,
                "kept_traces": len(self.rows), "not_kept": self.not_kept,
                "problems": len({r["problem"] for r in self.rows})}
        for key in ("prompts", "samples", "kept", "dropped", "pass_at_1", "teacher_pass_at_1"):
            if key in self.generate_summary:
                info[f"generate_{key}"] = self.generate_summary[key]
        return info


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in
                                 ("dataset_info.json", "state.json", "dataset_dict.json"))


def _read_source(src: str) -> tuple[list[dict], str, Path | None]:
    """The raw rows, where they came from, and the generate folder they belong to (if any)."""
    path = Path(src)
    if path.is_dir() and not _is_saved_dataset(path):
        if _is_saved_dataset(path / "traces"):
            return read_rows(str(path / "traces")), str(path / "traces"), path
        if (path / "samples.jsonl").is_file():
            return read_jsonl(path / "samples.jsonl", tolerate_torn_tail=True), str(path / "samples.jsonl"), path
        raise UserError(f"traces: {path}: holds neither a traces/ dataset nor samples.jsonl "
                        "(give the output folder of `distill generate`, or a dataset file)")
    if path.is_dir():
        parent = path.parent if (path.parent / "samples.jsonl").is_file() or (path.parent / "summary.json").is_file() else None
        return read_rows(str(path)), str(path), parent
    if path.is_file():
        if path.suffix.lower() == ".jsonl":
            rows = read_jsonl(path, tolerate_torn_tail=path.name == "samples.jsonl")
        else:
            rows = read_rows(str(path))
        return rows, str(path), path.parent if (path.parent / "summary.json").is_file() else None
    if "/" in src and not path.suffix and not src.startswith((".", "/")):
        return load_hub(src), src, None
    raise UserError(f"traces: {src}: no such file or folder")


def _field(row: dict, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def _text(row: dict, name: str, src: str, number: int) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise UserError(f"{src}: row {number}: field '{name}' is missing or not text")
    return value


def _teacher_name(rows: list[dict], generate_dir: Path | None) -> str | None:
    names = Counter(str(r["teacher"]) for r in rows if r.get("teacher"))
    if names:
        return names.most_common(1)[0][0]
    if generate_dir is not None and (generate_dir / "generate.json").is_file():
        config = read_json(generate_dir / "generate.json").get("config", {})
        teacher = config.get("teacher")
        if teacher and config.get("model"):
            teacher = f"{config['model']} ({teacher})"
        return teacher or None
    return None


def load_traces(src: str, prompt_template: str) -> Traces:
    raw, source, generate_dir = _read_source(src)
    if not raw:
        raise UserError(f"traces: {source}: no rows")
    first = raw[0]
    problem_f, reasoning_f, answer_f = (_field(first, PROBLEM_FIELDS), _field(first, REASONING_FIELDS),
                                        _field(first, ANSWER_FIELDS))
    for what, name, names in (("problem", problem_f, PROBLEM_FIELDS), ("reasoning", reasoning_f, REASONING_FIELDS),
                              ("answer", answer_f, ANSWER_FIELDS)):
        if name is None:
            raise UserError(f"{source}: row 1: no {what} field (looked for {', '.join(names)}; "
                            f"fields are: {', '.join(first)})")
    template = None
    rows, not_kept = [], 0
    for number, row in enumerate(raw, start=1):
        if "kept" in row and row["kept"] is not True:
            not_kept += 1
            continue
        problem = _text(row, problem_f, source, number)
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            template = template or load_prompt_template(prompt_template)
            prompt = user_message(problem, template)
        rows.append({"problem": problem, "prompt": prompt,
                     "reasoning": _text(row, reasoning_f, source, number),
                     "answer": _text(row, answer_f, source, number)})
    if not rows:
        raise UserError(f"traces: {source}: no kept traces ({len(raw)} samples, none kept): "
                        "nothing to train on")
    summary = {}
    if generate_dir is not None and (generate_dir / "summary.json").is_file():
        summary = read_json(generate_dir / "summary.json")
    return Traces(rows=rows, source=source, teacher=_teacher_name(raw, generate_dir), rows_read=len(raw),
                  not_kept=not_kept, generate_summary=summary if isinstance(summary, dict) else {})
