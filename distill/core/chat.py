"""Prompt and chat formatting shared by generate, train and eval, so that a teacher, a student
and every exported artifact see exactly the same text."""

from __future__ import annotations

import re
from pathlib import Path

from distill.data import asset

from .errors import UserError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def load_prompt_template(spec: str) -> str:
    """`spec` is a bundled template name (data/prompts/NAME.txt), a path to a text file, or a
    literal template; it must contain `{problem}`."""
    bundled = asset("prompts", f"{spec}.txt")
    if re.fullmatch(r"[\w.-]+", spec) and bundled.is_file():
        text = bundled.read_text(encoding="utf-8").rstrip("\n")
    elif "{problem}" not in spec and Path(spec).is_file():
        text = Path(spec).read_text(encoding="utf-8").rstrip("\n")
    else:
        text = spec
    if "{problem}" not in text:
        raise UserError(f"prompt_template: '{spec}' is neither a bundled template nor a file, "
                        "and has no {problem} placeholder")
    return text


def template_name(text: str) -> str:
    """The bundled template's name whose text this is, else the text itself (what reports record:
    the same template loaded from a name, a file or a literal is the same protocol)."""
    for bundled in sorted(asset("prompts").glob("*.txt")):
        if bundled.read_text(encoding="utf-8").rstrip("\n") == text:
            return bundled.stem
    return text


def user_message(problem: str, template: str) -> str:
    return template.replace("{problem}", problem.strip())


def assistant_message(reasoning: str, answer: str) -> str:
    """The R1 assistant turn: the thinking inside the think block, then the final answer. A trace
    without reasoning (a teacher run with --no-think) is its answer alone, without think tags."""
    if not reasoning.strip():
        return answer.strip()
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"


def require_chat_template(tokenizer, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: the tokenizer has no chat template; give a model with one "
                        "(an -Instruct model) or add `chat_template` to tokenizer_config.json")


def render_prompt(tokenizer, user_text: str, think_prefill: bool = True,
                  where: str = "model") -> str:
    """The generation prompt as text, with the assistant turn opened by `<think>\\n`.

    Templates such as DeepSeek-R1-Distill's already open the think block; then it is not
    opened twice."""
    return render_messages(tokenizer, [{"role": "user", "content": user_text}], think_prefill, where)


def render_messages(tokenizer, messages: list[dict], think_prefill: bool = True,
                    where: str = "model") -> str:
    """`render_prompt` for a whole conversation (system, user and assistant turns)."""
    require_chat_template(tokenizer, where)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return open_think_block(text) if think_prefill else text


def open_think_block(prompt: str) -> str:
    """The prompt with the assistant turn opened by `<think>\\n`, unless its template did it."""
    if not prompt.rstrip().endswith(THINK_OPEN):
        return prompt + f"{THINK_OPEN}\n"
    return prompt if prompt.endswith("\n") else prompt + "\n"


def prefill_of(prompt: str) -> str:
    """The part of the assistant turn the prompt already wrote (the opened think block)."""
    stripped = prompt.rstrip()
    return f"{THINK_OPEN}\n" if stripped.endswith(THINK_OPEN) else ""
