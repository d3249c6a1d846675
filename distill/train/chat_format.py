"""Turn traces into token ids and labels with the student's own chat template.

The user turn is the problem as the teacher saw it; the assistant turn is the R1 format
`<think>\\n{reasoning}\\n</think>\\n\\n{answer}`. Only the assistant turn is trained, and the special
token that closes it (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3) is trained with it: a
student that never learns to emit it never stops (open-r1 #492, #603).

The prompt and the completion are tokenized separately, as at inference time, where the prompt is
tokenized alone and the model adds the completion token by token."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.core.chat import THINK_CLOSE, assistant_message, require_chat_template
from distill.core.errors import UserError

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
                  where: str) -> tuple[list[dict], int]:
    """{input_ids (int32 array), prompt_len, problem} for each trace, in order; traces longer than
    `max_seq_len` are dropped (cutting them would cut the answer off). Returns (samples, number
    dropped as too long). Labels are derived per batch (`labels_of`), so a large trace set costs
    four bytes a token in memory."""
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
        samples.append({"input_ids": np.asarray(list(p_ids) + list(c_ids), dtype=np.int32),
                        "prompt_len": len(p_ids), "problem": row["problem"]})
    return samples, too_long


def labels_of(sample: dict) -> np.ndarray:
    """The token ids with the prompt replaced by IGNORE: what the loss trains on."""
    labels = sample["input_ids"].astype(np.int64)
    labels[: sample["prompt_len"]] = IGNORE
    return labels


def targets_of(sample: dict) -> np.ndarray:
    """The next-token target of every position (IGNORE after the last token)."""
    return np.append(labels_of(sample)[1:], IGNORE)
