"""Setting up on-policy distillation (`--method on-policy`): the prompts to sample on (the traces'
problems, or --prompts), rendered and tokenized as the hf backend renders a prompt before
generating; the held-out prompts; the served teacher, checked before anything heavy loads; and
what train_summary.json records of the run. The trainer itself is onpolicy.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill.backends import Sampling
from distill.core.chat import load_prompt_template, render_prompt, user_message
from distill.core.problems import load_problems
from distill.core.traces import split_heldout


@dataclass
class OnPolicyData:
    items: list[dict]                # every prompt: {user_text, problem, trace, prompt_text, prompt_ids, index}
    train: list[dict]
    heldout: list[dict]
    served: Optional[object] = None  # the openai: teacher (served_teacher.ServedTeacher), or None


def prepare_on_policy(config, traces, samples: list[dict], tokenizer, where: str) -> OnPolicyData:
    served = served_teacher(config, tokenizer)
    items = prompt_items(config, traces, samples)
    encode_prompts(tokenizer, items, where)
    train, heldout = split_heldout(items, config.eval_fraction, config.seed)
    items = train + heldout
    for index, item in enumerate(items):
        item["index"] = index
    return OnPolicyData(items, train, heldout, served)


def prompt_items(config, traces, samples: list[dict]) -> list[dict]:
    """The prompts to sample on, one per distinct user turn: the traces' problems (each with its
    first encoded trace, for the optional SFT term) or, with --prompts, generate's problem
    sources rendered with the prompt template."""
    if config.prompts:
        template = load_prompt_template(config.prompt_template)
        problems = load_problems(config.prompts, require_answer=False, demo_split="train")
        items = {user_message(p["question"], template): {"problem": p["question"], "trace": None} for p in problems}
    else:
        first_trace = {}
        for row, sample in zip(traces.rows, samples):
            first_trace.setdefault(row["prompt"], (row["problem"], sample))
        items = {text: {"problem": problem, "trace": sample} for text, (problem, sample) in first_trace.items()}
    return [{"user_text": text, **value} for text, value in items.items()]


def encode_prompts(tokenizer, items: list[dict], where: str) -> None:
    """The rendered prompt (assistant turn opened with `<think>\\n`) and its ids, tokenized as the
    hf backend tokenizes a prompt before generating."""
    for item in items:
        item["prompt_text"] = render_prompt(tokenizer, item["user_text"], where=where)
        item["prompt_ids"] = tokenizer(item["prompt_text"], add_special_tokens=False)["input_ids"]


def local_teacher_path(spec: str) -> str:
    """`hf:PATH_OR_ID` or a bare folder or hub id: what transformers loads."""
    return spec[3:] if spec.startswith("hf:") else spec


def served_teacher(config, tokenizer):
    """The openai: teacher, checked (same tokenizer, log-probs of given tokens) before anything
    heavy loads; None for a local teacher."""
    if not config.teacher.startswith("openai:"):
        return None
    from .served_teacher import connect
    return connect(config, tokenizer)


def on_policy_sampling(config) -> Sampling:
    return Sampling(n=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature, top_p=config.top_p, seed=config.seed)


def on_policy_summary(config, trainer) -> dict:
    served = trainer.served
    return {"teacher": config.teacher if served is None else f"{config.teacher}#{config.model}",
            "teacher_scores": "full next-token distribution" if served is None else "sampled tokens (log-probs from the server)",
            "server_api": None if served is None else served.api,
            "samples_per_prompt": config.samples_per_prompt, "temperature": config.temperature,
            "top_p": config.top_p, "max_new_tokens": config.max_new_tokens, "sft_weight": config.sft_weight,
            "sequences_scored": trainer.sequences if served is not None else None,
            "sequences_refused": trainer.refused if served is not None else None,
            "request_retries": served.retries if served is not None else None}
