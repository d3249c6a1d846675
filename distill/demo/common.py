"""Pieces shared by the demo model builds: R1-format training examples (trained by fit.py, the
project's trainer), pass@1 on the demo test split measured with the same prompt the pipeline
uses, and saving a model folder that the pipeline's consumers load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from distill.core.answers import split_response, is_correct
from distill.core.chat import THINK_OPEN, assistant_message, load_prompt_template, render_prompt, user_message
from distill.core.io import atomic_dir
from distill.core.progress import progress_bar

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def settings_fingerprint(args) -> str:
    """The settings that shape a training run (not where it writes, its thread count, its
    length or how it is measured afterwards, so that a build can be resumed or extended)."""
    skip = ("out", "work", "threads", "steps", "sampled_evals")
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    return json.dumps(keep, default=str)


def r1_completion(reasoning: str, answer: str) -> str:
    """What the assistant writes after the prompt's "<think>\\n" prefill."""
    return assistant_message(reasoning, f"\\boxed{{{answer}}}")[len(THINK_OPEN) + 1:]


def chat_examples(tokenizer, pairs: list[tuple[str, str]], template: str = "r1") -> list[dict]:
    """Token ids of R1 chat turns, one per (question, completion), the loss on the assistant's part
    only (the tokens after `prompt_len`).

    The assistant's part starts at the think block, so the model learns to open it by itself,
    and ends with the end-of-turn token, so generation stops there."""
    tpl = load_prompt_template(template)
    prompts = [render_prompt(tokenizer, user_message(q, tpl)) for q, _ in pairs]
    heads = [p[: -len(THINK_OPEN) - 1] for p in prompts]  # "...<|im_start|>assistant\n"
    texts = [p + c + tokenizer.eos_token for p, (_, c) in zip(prompts, pairs)]
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples = []
    for head, ids in zip(head_ids, full_ids):
        if ids[:len(head)] != head:
            raise ValueError("the chat prompt does not tokenize as a prefix of the full turn")
        examples.append({"input_ids": ids, "prompt_len": len(head)})
    return examples


def text_examples(tokenizer, texts: list[str]) -> list[dict]:
    """Plain texts with the loss on every token (pretraining)."""
    ids = tokenizer([t + tokenizer.eos_token for t in texts], add_special_tokens=False)["input_ids"]
    return [{"input_ids": i, "prompt_len": 0} for i in ids]


@torch.no_grad()
def complete(model, tokenizer, questions: list[str], *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, batch_size: int = 50, max_new_tokens: int = 128, template: str = "r1",
             description: str = "generating") -> list[str]:
    """The model's answers to demo questions with the pipeline's prompt: the chat template and
    the assistant turn opened with "<think>\\n" (the texts returned start after it)."""
    model.eval()
    tokenizer.padding_side = "left"
    tpl = load_prompt_template(template)
    prompts = [render_prompt(tokenizer, user_message(q, tpl)) for q in questions]
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 \
        else dict(do_sample=False)
    torch.manual_seed(seed)
    texts = []
    with progress_bar(description, len(prompts)) as advance:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, top_k=None, **sampling)
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            advance(len(out))
    return texts


def grade(text: str, reference: str) -> tuple[bool, bool]:
    """(correct, think block closed) for a completion written after the "<think>\\n" prefill."""
    resp = split_response(text, prefill=f"{THINK_OPEN}\n")
    return is_correct(resp.answer, reference), resp.think_closed


def pass_at_1(model, tokenizer, rows: list[dict], *, temperature: float = 0.0, top_p: float = 1.0,
              samples: int = 1, seed: int = 0, batch_size: int = 50, max_new_tokens: int = 128) -> dict:
    """pass@1 on demo rows ({question, answer}), averaged over `samples` samples per problem."""
    correct = closed = 0
    failures = []
    for k in range(samples):
        texts = complete(model, tokenizer, [r["question"] for r in rows], temperature=temperature,
                         top_p=top_p, seed=seed + k, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, description=f"pass@1 (T={temperature})")
        for row, text in zip(rows, texts):
            ok, think_closed = grade(text, row["answer"])
            correct += ok
            closed += think_closed
            if not ok and len(failures) < 5:
                failures.append({"question": row["question"], "reference": row["answer"], "response": text})
    total = len(rows) * samples
    return {"pass@1": correct / total, "think_closed": closed / total, "n": len(rows),
            "temperature": temperature, "top_p": top_p, "samples": samples, "failures": failures}


def save_model(model, tokenizer, out: Path, dtype: torch.dtype, tokenizer_dir: Path) -> Path:
    """A from_pretrained folder: safetensors weights in `dtype` (the model is left in it), the
    tokenizer files copied byte for byte from `tokenizer_dir` (a save_pretrained would rewrite
    them with this session's padding side and library defaults), and a generation config that
    stops at the end-of-turn token."""
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    model.config.eos_token_id = eos
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=None, do_sample=False)
    with atomic_dir(out) as tmp:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, tmp / name)
    return out
