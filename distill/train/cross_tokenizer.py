"""On-policy distillation from a teacher of another tokenizer (R1's vocabulary teaching a Qwen or
Llama student), local (`--teacher hf:DIR`) or served by a token-id server (vLLM, SGLang).

The student's sampled completion is turned back into text and rendered into the teacher's own
chat template (the same user turn, the think block opened as the student's was), and the teacher
scores it in its own tokens. The two tokenizations are aligned on byte offsets into spans whose
boundaries both share: a boundary counts where the text decoded from the tokens before it is
exactly that many bytes of the completion (a token that ends inside a character has no clean
boundary). A span's teacher log-prob is the sum over its teacher tokens, the student's the sum
over its student tokens; the student's end-of-turn token pairs with the teacher's as a last span
of its own. The loss (sparse_losses.py) then weighs every student token of a span by that span's
log-ratio. With one tokenizer every span is one token and this is exactly the per-token form.

What the span form estimates: the reverse KL between the two models' distributions over the
completion's text, both factorized at the shared boundaries. It does not see what each model
would have put at positions inside a span (it is not a per-token KL across vocabularies), and
text that one tokenizer can only cut at other places than the other merges into longer spans,
which carry less credit assignment. KD from stored log-probs across tokenizers stays refused:
stored top-K ids of another vocabulary name no student token."""

from __future__ import annotations

import numpy as np

from distill.core.chat import render_prompt
from distill.core.errors import UserError


def clean_offsets(tokenizer, ids: list[int], text: str) -> list[int | None]:
    """For k = 0..len(ids): the byte length of decode(ids[:k]) where that is a prefix of `text`,
    else None (a cut inside a character, or a tokenizer whose decoding does not reproduce it)."""
    prefixes = tokenizer.batch_decode([ids[:k] for k in range(len(ids) + 1)], skip_special_tokens=False)
    return [len(p.encode("utf-8")) if text.startswith(p) else None for p in prefixes]


def spans(student_offsets: list, teacher_offsets: list) -> tuple[np.ndarray, np.ndarray]:
    """(span of each student token, span of each teacher token): spans cut at the byte offsets
    both tokenizations have as clean boundaries."""
    shared = sorted({o for o in student_offsets if o is not None} & {o for o in teacher_offsets if o is not None})

    def assign(offsets: list) -> np.ndarray:
        out, current, span = [], 0, -1
        starts = offsets[:-1]
        for start in starts:
            # a token starts a new span where its start is a shared boundary (the first always does)
            if start is not None and current < len(shared) and start == shared[current]:
                span, current = span + 1, current + 1
            out.append(max(span, 0))
        return np.asarray(out, dtype=np.int64)
    return assign(student_offsets), assign(teacher_offsets)


def span_logprobs(student_span: np.ndarray, teacher_span: np.ndarray, teacher_lp: list[float]) -> np.ndarray:
    """The teacher's log-prob of each student token's span (the same value for every token of it)."""
    totals = np.zeros(int(max(student_span.max(initial=-1), teacher_span.max(initial=-1))) + 1)
    np.add.at(totals, teacher_span, np.asarray(teacher_lp, dtype=np.float64))
    return totals[student_span].astype(np.float32)


class CrossTokenizerScorer:
    """Scores student rollouts with a teacher of another tokenizer. `logprobs(sequences)` is the
    teacher's: log p(ids[j] | ids[:j]) for j >= 1 of each teacher id sequence."""

    def __init__(self, student_tokenizer, teacher_tokenizer, teacher_eot: int, logprobs, where: str):
        self.student, self.teacher, self.teacher_eot = student_tokenizer, teacher_tokenizer, teacher_eot
        self.logprobs, self.where = logprobs, where

    def score(self, rollouts: list[dict]) -> list[dict | None]:
        plans, sequences = [], []
        for r in rollouts:
            completion = r["input_ids"][r["prompt_len"]:].tolist()
            if r["stopped"]:
                completion = completion[:-1]
            text = self.student.decode(completion, skip_special_tokens=False)
            prompt = self.teacher(render_prompt(self.teacher, r["user_text"], where="teacher"),
                                  add_special_tokens=False)["input_ids"]
            teacher_ids = self.teacher(text, add_special_tokens=False)["input_ids"] if text else []
            plans.append((completion, text, len(prompt), teacher_ids, r["stopped"]))
            sequences.append(prompt + teacher_ids + ([self.teacher_eot] if r["stopped"] else []))
        scored = self.logprobs(sequences)
        return [self._position_data(plan, values) for plan, values in zip(plans, scored)]

    def _position_data(self, plan, values: list[float]) -> dict:
        completion, text, prompt_len, teacher_ids, stopped = plan
        teacher_lp = values[prompt_len - 1:]  # entry j scores token j + 1
        s_span, t_span = spans(clean_offsets(self.student, completion, text),
                               clean_offsets(self.teacher, teacher_ids, text))
        if stopped:  # the end of turn: a span of its own on both sides
            last = int(max(s_span.max(initial=-1), t_span.max(initial=-1))) + 1
            s_span, t_span = np.append(s_span, last), np.append(t_span, last)
        return {"teacher": span_logprobs(s_span, t_span, teacher_lp[:len(t_span)]), "span": s_span}


def local_logprobs(model):
    """`logprobs(sequences)` of a local Hugging Face teacher, one sequence at a time (the teacher's
    log-softmax a chunk of positions at a time, as the training losses do)."""
    import torch

    from .losses import chunk_rows

    def logprobs(sequences: list[list[int]]) -> list[list[float]]:
        out = []
        with torch.no_grad():
            for ids in sequences:
                device = next(model.parameters()).device
                logits = model(torch.tensor([ids], device=device), use_cache=False).logits[0, :-1]
                targets = torch.tensor(ids[1:], device=device)
                rows, values = chunk_rows(logits.shape[-1]), []
                for i in range(0, len(targets), rows):
                    part = torch.log_softmax(logits[i:i + rows].float(), dim=-1)
                    values.append(part.gather(1, targets[i:i + rows, None]).squeeze(1))
                out.append(torch.cat(values).tolist() if values else [])
        return out
    return logprobs


def teacher_end_of_turn(teacher_tokenizer, where: str) -> int:
    from distill.core.traces import end_of_turn
    try:
        return end_of_turn(teacher_tokenizer, where).token_id
    except UserError as e:
        raise UserError(f"teacher: {e}") from None
