"""The trace format: the one home of what `distill generate` writes and what `distill train`
and `distill export` (its calibration texts) read.

- Columns (`TRACE_COLUMNS`, `features`): one row per kept sample, saved as a `datasets` folder
  (`OUT/traces`, `load_from_disk`). id (the sample id, as in samples.jsonl), prompt_id,
  sample_index, problem (as given), prompt (the user message exactly as the teacher saw it, the
  template applied), reasoning (the thinking, without the think tags), answer (the text after
  `</think>`), extracted (the final answer pulled out of it), reference, teacher, prompt_tokens and
  completion_tokens (the teacher's), pass_rate (of the problem's samples), and messages (the user
  turn and the assistant turn `<think>\n{reasoning}\n</think>\n\n{answer}`).
- Reading (`load_traces`): a generate folder (its traces/ dataset or samples.jsonl, kept rows
  only), or any dataset or file with problem / reasoning / answer fields; `prompt` is rendered
  from the problem with the prompt template when the data lacks it.
- Encoding for training (`encode_traces`): the student's own chat template; only the assistant
  turn is trained, with the special token that closes it (`<|im_end|>` for ChatML, `<|eot_id|>`
  for Llama 3): a student that never learns to emit it never stops (open-r1 #492, #603). The
  prompt and the completion are tokenized separately, as at inference time.
- The held-out split (`split_heldout`): whole problems, so that a problem's traces stay on one
  side."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chat import THINK_CLOSE, assistant_message, load_prompt_template, require_chat_template, user_message
from .errors import UserError
from . import teacher_logprobs
from .io import atomic_dir, read_json, read_jsonl, write_json
from .problems import load_hub, read_rows

TRACE_COLUMNS = ("id", "prompt_id", "sample_index", "problem", "prompt", "reasoning", "answer",
                 "extracted", "reference", "teacher", "prompt_tokens", "completion_tokens",
                 "pass_rate")


def features():
    from datasets import Features, Value
    strings = ("id", "prompt_id", "problem", "prompt", "reasoning", "answer", "extracted",
               "reference", "teacher")
    spec = {name: Value("string") for name in strings}
    spec.update(sample_index=Value("int32"), prompt_tokens=Value("int32"),
                completion_tokens=Value("int32"), pass_rate=Value("float32"),
                messages=[{"role": Value("string"), "content": Value("string")}])
    return Features({name: spec[name] for name in (*TRACE_COLUMNS, "messages")})


def trace_row(row: dict) -> dict:
    """A kept sample of samples.jsonl as a trace row."""
    out = {name: row[name] for name in TRACE_COLUMNS}
    out["messages"] = [{"role": "user", "content": row["prompt"]},
                       {"role": "assistant", "content": assistant_message(row["reasoning"], row["answer"])}]
    return out


def write_traces(rows: list[dict], out_dir: Path, logprobs_meta: dict | None = None) -> Path:
    """The kept rows of `rows` as OUT/traces (atomically); with `logprobs_meta` (generate
    --logprobs), the teacher's stored log-probs as four more columns and their meta file."""
    import datasets
    from datasets import Dataset, Features

    kept = [trace_row(r) for r in rows if r["kept"]]
    spec = features()
    if logprobs_meta is not None:
        spec = Features({**spec, **teacher_logprobs.features()})
        for trace, row in zip(kept, (r for r in rows if r["kept"])):
            trace.update(teacher_logprobs.TokenLogprobs.unpack(row["teacher_logprobs"]).columns())
    columns = {name: [row[name] for row in kept] for name in spec}
    target = out_dir / "traces"
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(target) as tmp:
            # one shard even when empty: zero shards is a folder load_from_disk cannot read
            Dataset.from_dict(columns, features=spec).save_to_disk(str(tmp), num_shards=1)
            if logprobs_meta is not None:
                write_json(tmp / teacher_logprobs.META_FILE, logprobs_meta)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    return target


# ---- reading ------------------------------------------------------------------------------------

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
    logprobs_meta: dict | None = None   # stored teacher log-probs: K and the teacher's vocabulary probe
    prompt_template: str | None = None  # the user-turn template generate rendered the problems with

    @property
    def think(self) -> bool:
        """Whether the traces reason in a think block (not those of a --no-think teacher)."""
        return any(row["reasoning"].strip() for row in self.rows)

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


def _stored_logprobs(row: dict):
    """A row's stored teacher log-probs: the traces/ columns, or samples.jsonl's packed form."""
    if row.get("teacher_token_ids") is not None:
        return teacher_logprobs.TokenLogprobs.from_columns(row)
    if isinstance(row.get("teacher_logprobs"), dict):
        return teacher_logprobs.TokenLogprobs.unpack(row["teacher_logprobs"])
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
                     "answer": _text(row, answer_f, source, number), "logprobs": _stored_logprobs(row)})
    if not rows:
        raise UserError(f"traces: {source}: no kept traces ({len(raw)} samples, none kept): "
                        "nothing to train on")
    summary = {}
    if generate_dir is not None and (generate_dir / "summary.json").is_file():
        summary = read_json(generate_dir / "summary.json")
    meta_files = [Path(source) / teacher_logprobs.META_FILE] + \
        ([generate_dir / teacher_logprobs.META_FILE] if generate_dir is not None else [])
    meta = next((read_json(f) for f in meta_files if f.is_file()), None)
    record = generate_dir / "generate.json" if generate_dir is not None else None
    generate_template = read_json(record).get("config", {}).get("prompt_template") if record and record.is_file() \
        else None
    return Traces(rows=rows, source=source, teacher=_teacher_name(raw, generate_dir), rows_read=len(raw),
                  prompt_template=generate_template,
                  logprobs_meta=meta if any(r["logprobs"] is not None for r in rows) else None,
                  not_kept=not_kept, generate_summary=summary if isinstance(summary, dict) else {})


# ---- encoding for training ----------------------------------------------------------------------

IGNORE = -100
_PROBE = "Distill-edge probe answer 7"


@dataclass(frozen=True)
class EndOfTurn:
    text: str
    token_id: int


def end_of_turn(tokenizer, where: str) -> EndOfTurn:
    """The special token the chat template writes right after an assistant message."""
    require_chat_template(tokenizer, where)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    at = rendered.rfind(_PROBE)
    if at < 0:
        raise UserError(f"{where}: the chat template does not render the assistant message")
    tail = rendered[at + len(_PROBE):]
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = sorted((tail.find(tok), -len(tok), tok) for tok in specials if tok and tok in tail)
    if not found:
        raise UserError(f"{where}: the chat template closes assistant turns with {tail!r}, which holds no "
                        "special token; the model could not learn where its answer ends")
    text = found[0][2]
    return EndOfTurn(text=text, token_id=tokenizer.convert_tokens_to_ids(text))


def split_turns(tokenizer, prompt: str, reasoning: str, answer: str, eot: EndOfTurn,
                where: str) -> tuple[str, str]:
    """(prompt text with the assistant turn opened, completion text up to and including the
    end-of-turn token)."""
    user = [{"role": "user", "content": prompt}]
    reply = assistant_message(reasoning, answer)
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": reply}], tokenize=False)
    if not full.startswith(prompt_text):
        raise UserError(f"{where}: the chat template renders a conversation that does not begin with "
                        "its own generation prompt; cannot tell the prompt from the answer")
    completion = full[len(prompt_text):]
    anchor = answer.strip() or THINK_CLOSE  # the last text of the assistant message
    answer_at = completion.rfind(anchor)
    if reasoning.strip() not in completion or answer_at < 0:
        raise UserError(f"{where}: the chat template drops the reasoning or the answer from the assistant "
                        "turn (as DeepSeek-R1-Distill templates strip the think block); use a template "
                        "that keeps `<think>...</think>` in the last assistant message")
    end = completion.find(eot.text, answer_at + len(anchor))
    if end < 0:
        raise UserError(f"{where}: the chat template does not close the assistant turn with {eot.text}")
    return prompt_text, completion[:end + len(eot.text)]


def encode_traces(tokenizer, rows: list[dict], eot: EndOfTurn, max_seq_len: int,
                  where: str, stored: bool = False) -> tuple[list[dict], int]:
    """{input_ids (int32 array), prompt_len, problem} for each trace, in order; traces longer than
    `max_seq_len` are dropped (cutting them would cut the answer off). Returns (samples, number
    dropped as too long). Labels are derived per batch (`labels_of`), so a large trace set costs
    four bytes a token in memory. With `stored`, each sample also carries the stored teacher
    log-probs at its trained positions (`position_data`: top-K ids, log-probs, where they apply)."""
    prompts, completions = [], []
    for row in rows:
        p, c = split_turns(tokenizer, row["prompt"], row["reasoning"], row["answer"], eot, where)
        prompts.append(p)
        completions.append(c)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    samples, too_long = [], 0
    for row, p_ids, c_ids in zip(rows, prompt_ids, completion_ids):
        if not c_ids or c_ids[-1] != eot.token_id:
            raise UserError(f"{where}: the completion does not tokenize to end with {eot.text} "
                            f"(id {eot.token_id}); is it a special token of this tokenizer?")
        if len(p_ids) + len(c_ids) > max_seq_len:
            too_long += 1
            continue
        sample = {"input_ids": np.asarray(list(p_ids) + list(c_ids), dtype=np.int32),
                  "prompt_len": len(p_ids), "problem": row["problem"]}
        if stored:
            sample["position_data"] = teacher_logprobs.at_positions(row["logprobs"], c_ids)
        samples.append(sample)
    return samples, too_long


def labels_of(sample: dict) -> np.ndarray:
    """The token ids with the prompt replaced by IGNORE: what the loss trains on."""
    labels = sample["input_ids"].astype(np.int64)
    labels[: sample["prompt_len"]] = IGNORE
    return labels


def targets_of(sample: dict) -> np.ndarray:
    """The next-token target of every position (IGNORE after the last token)."""
    return np.append(labels_of(sample)[1:], IGNORE)


def split_heldout(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole problems (the traces of one problem stay on one side), about `fraction`
    of the traces, never all of them."""
    per_problem = Counter(s["problem"] for s in samples)
    problems = sorted(per_problem)
    if fraction <= 0 or len(problems) < 2:
        return samples, []
    random.Random(seed).shuffle(problems)
    wanted = max(1, round(fraction * len(samples)))
    held, count = set(), 0
    for problem in problems[:-1]:
        if count >= wanted:
            break
        held.add(problem)
        count += per_problem[problem]
    train = [s for s in samples if s["problem"] not in held]
    heldout = [s for s in samples if s["problem"] in held]
    return train, heldout
