"""What every artifact is checked against: the Hugging Face model's tokens, greedy continuations
and next-token distributions on fixed text, computed once in fp32."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill.backends.logits import eos_ids, kl_and_top1, log_softmax, torch_logits  # noqa: F401 (re-exported)
from distill.core.chat import assistant_message, render_prompt

# Strings that trip tokenizers: digit runs, whitespace runs, non-Latin scripts and emoji, the
# chat and think tags, apostrophes and code.
TOKEN_CORPUS = [
    "0 1 12 123 1234 12345 123456789 3.14159 -42 1,000,000 2^10=1024 007",
    "Whitespace:  two   three\t\ttabs\n\nnewlines\r\n  \n   end  ",
    "   leading spaces and trailing ones   ",
    "Unicode: naïve café, Ελληνικά, русский, 日本語, 中文, العربية, emoji 😀👍🏽, ∑∫√π ≤ ≥ ≠",
    "<|im_start|>user\nWhat is 7 * 6?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nFirst, 7 * 6 = 42.\n</think>\n\nThe answer is \\boxed{42}.",
    "I've said 'RE-run' won't  work... isn't it? \"quotes\" (parens) [brackets] {braces}",
    "def f(x):\n    return x**2  # squared\n\n\nprint(f(12))",
]
GREEDY_PROMPTS = [
    "What is 17 + 25?",
    "Tom has 3 boxes with 12 apples each. He gives away 9 apples. How many apples are left?",
]
HELD_OUT = (
    "A train leaves at 9:15 and arrives at 11:40. How long is the trip in minutes?",
    "From 9:15 to 11:15 is 2 hours, which is 120 minutes. From 11:15 to 11:40 is 25 minutes. "
    "So the trip takes 120 + 25 = 145 minutes.",
    "The trip takes \\boxed{145} minutes.",
)
HELD_OUT_TOKENS = 128


@dataclass
class Reference:
    tokenizer: object
    eos_ids: set[int]
    corpus: list[str]
    prompts: list[list[int]] = field(default_factory=list)
    greedy: list[list[int]] = field(default_factory=list)          # HF greedy tokens per prompt
    greedy_logits: list[np.ndarray] = field(default_factory=list)  # HF logits at each greedy step
    held_out: list[int] = field(default_factory=list)
    held_out_logits: np.ndarray | None = None                      # [tokens, vocab]


def _render(tokenizer, text: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return render_prompt(tokenizer, text)
    return text


def _held_out_text(tokenizer) -> str:
    question, reasoning, answer = HELD_OUT
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question},
             {"role": "assistant", "content": assistant_message(reasoning, answer)}], tokenize=False)
    return f"{question}\n{reasoning}\n{answer}"


def _eos_ids(folder: Path, tokenizer) -> set[int]:
    from transformers import GenerationConfig
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = None
    return set(eos_ids(generation, tokenizer=tokenizer))


def build_reference(folder: Path, new_tokens: int, threads: int, trust_remote_code: bool = False) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    corpus = list(TOKEN_CORPUS)
    corpus.append(_render(tokenizer, GREEDY_PROMPTS[0]))
    specials = [t for t in tokenizer.get_added_vocab()][:64]
    corpus.append("x" + " y".join(specials) + "\nz")
    ref = Reference(tokenizer=tokenizer, eos_ids=_eos_ids(folder, tokenizer), corpus=corpus)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _run_reference(model, tokenizer, ref, new_tokens)
    finally:
        torch.set_num_threads(torch_threads)
    del model
    return ref


def _run_reference(model, tokenizer, ref: Reference, new_tokens: int) -> None:
    import torch

    with torch.no_grad():
        for text in GREEDY_PROMPTS:
            ids = tokenizer.encode(_render(tokenizer, text), add_special_tokens=False)
            tokens, steps = [], []
            out = model(torch.tensor([ids]), use_cache=True)
            for step in range(new_tokens):
                logits = out.logits[0, -1].float()
                token = int(logits.argmax())
                tokens.append(token)
                steps.append(logits.numpy().copy())
                if step + 1 < new_tokens:
                    out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            ref.prompts.append(ids)
            ref.greedy.append(tokens)
            ref.greedy_logits.append(np.stack(steps))
        ref.held_out = tokenizer.encode(_held_out_text(tokenizer), add_special_tokens=False)[:HELD_OUT_TOKENS]
        ref.held_out_logits = torch_logits(model, ref.held_out)


def _until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens


def compare_greedy(ref: Reference, index: int, tokens: list[int], rel_tolerance: float) -> dict:
    """Greedy tokens against the HF ones. A divergence where the HF model itself had two
    candidates within `rel_tolerance` of its logit scale is a tie that rounding may break
    either way, not an error; everything after it is no longer comparable."""
    want = _until_eos(ref.greedy[index], ref.eos_ids)
    got = _until_eos(list(tokens), ref.eos_ids)
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            step = ref.greedy_logits[index][i]
            gap = float(step[a] - step[b]) if b < step.shape[0] else float("inf")
            tol = rel_tolerance * max(1.0, float(np.abs(step).max()))
            return {"match": gap <= tol, "exact": False, "first_difference": i,
                    "logit_gap": round(gap, 6), "tolerance": round(tol, 6),
                    "expected": want, "got": got}
    if len(want) != len(got):
        return {"match": False, "exact": False, "first_difference": min(len(want), len(got)),
                "expected": want, "got": got}
    return {"match": True, "exact": True}
