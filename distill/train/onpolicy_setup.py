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
    scorer: Optional[object] = None  # scores sampled tokens: a served teacher, or one of another tokenizer
    cross_tokenizer: bool = False    # the teacher's tokenizer differs from the student's (cross_tokenizer.py)
    teacher_tokenizer: object = None


def prepare_on_policy(config, traces, samples: list[dict], tokenizer, where: str) -> OnPolicyData:
    """The prompts, their split, and the teacher's way of scoring, all checked before anything
    heavy loads (a local teacher of another tokenizer gets its scorer once it is loaded)."""
    data = OnPolicyData([], [], [])
    data.teacher_tokenizer = teacher_tokenizer_of(config)
    data.cross_tokenizer = data.teacher_tokenizer is not None and not same_tokenizer(tokenizer, data.teacher_tokenizer)
    if config.teacher.startswith("openai:"):
        from .served_teacher import connect
        data.scorer = connect(config, tokenizer, data.teacher_tokenizer if data.cross_tokenizer else None)
    items = prompt_items(config, traces, samples)
    encode_prompts(tokenizer, items, where)
    if data.scorer is not None:
        data.scorer.require_room(max(len(it["prompt_ids"]) for it in items) + config.max_new_tokens + 2)
    train, heldout = split_heldout(items, config.eval_fraction, config.seed)
    data.items, data.train, data.heldout = train + heldout, train, heldout
    for index, item in enumerate(data.items):
        item["index"] = index
    return data


def teacher_tokenizer_of(config):
    """The teacher's tokenizer: --teacher-tokenizer, or a local teacher's own; None for a served
    teacher without --teacher-tokenizer (then it must read as the student does)."""
    from distill.core.tokenizers import load_tokenizer
    if config.teacher_tokenizer:
        return load_tokenizer(config.teacher_tokenizer, "teacher_tokenizer", config.trust_remote_code)
    if config.teacher.startswith("openai:"):
        return None
    return load_tokenizer(local_teacher_path(config.teacher), "teacher", config.trust_remote_code)


def same_tokenizer(student, teacher) -> bool:
    from distill.core.errors import UserError
    from distill.core.tokenizers import require_same_tokenizer
    try:
        require_same_tokenizer(student, teacher, "teacher")
    except UserError:
        return False
    return True


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


def on_policy_sampling(config) -> Sampling:
    return Sampling(n=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature, top_p=config.top_p, seed=config.seed)


def on_policy_summary(config, trainer, cross_tokenizer: bool = False) -> dict:
    served = trainer.scorer
    scores = "full next-token distribution" if served is None else \
        "spans of the sampled text (another tokenizer: log-probs summed over shared boundaries)" if cross_tokenizer \
        else "sampled tokens (log-probs from the server)"
    return {"teacher": config.teacher if not config.teacher.startswith("openai:") else f"{config.teacher}#{config.model}",
            "teacher_scores": scores, "cross_tokenizer": cross_tokenizer,
            "server_api": getattr(served, "api", None),
            "samples_per_prompt": config.samples_per_prompt, "temperature": config.temperature,
            "top_p": config.top_p, "max_new_tokens": config.max_new_tokens, "sft_weight": config.sft_weight,
            "sequences_scored": trainer.sequences if served is not None else None,
            "sequences_refused": trainer.refused if served is not None else None,
            "request_retries": getattr(getattr(served, "retries_of", served), "retries", None),
            "seconds": {k: round(v, 2) for k, v in trainer.seconds.items()}}
