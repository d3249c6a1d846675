"""Traces and tokenizer folders for the train tests: small handwritten traces, generate-like
output folders, and chat templates that behave like those of Qwen2.5, Qwen3 and Llama 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import DEMO_TOKENIZER

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct: ChatML with a default system prompt.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + QWEN25_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# Qwen3: the assistant message is split at </think> and re-rendered; the think block is kept only
# in the last turn; enable_thinking=false pre-fills an empty think block.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] in ['user', 'system'] %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.last %}{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")

LLAMA3_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

# Llama 3.1 Instruct: BOS, header tokens, a dated system header, <|eot_id|> closes every turn.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n"
    + LLAMA3_SYSTEM.replace("\n", "\\n") + "<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

PROBLEMS = [
    ("Ava has 3 apples. Then Ava gets 4 more. How many apples does Ava have now?", "3 + 4 = 7", "7"),
    ("Ben has 10 coins. Then Ben gives away 6. How many coins does Ben have now?", "10 - 6 = 4", "4"),
    ("Cleo has 5 pens. Then Cleo doubles them. Then Cleo gets 2 more. How many pens does Cleo have now?",
     "5 * 2 = 10\n10 + 2 = 12", "12"),
    ("Dan has 8 eggs. Then Dan gives away 3. How many eggs does Dan have now?", "8 - 3 = 5", "5"),
    ("Eli has 2 cards. Then Eli triples them. Then Eli gives away 1. Then Eli gets 9 more. How many cards "
     "does Eli have now?", "2 * 3 = 6\n6 - 1 = 5\n5 + 9 = 14", "14"),
    ("Fay has 12 beads. Then Fay gets 1 more. How many beads does Fay have now?", "12 + 1 = 13", "13"),
]


def trace_rows(n: int | None = None, teacher: str = "hf:tiny-qwen3-moe") -> list[dict]:
    """Rows as `distill generate` writes them (all kept), from the demo task's train split."""
    from distill.core.demo_task import load_split
    rows = []
    for i, p in enumerate(load_split("train")[: n or 40]):
        prompt = f"{p['question']}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        rows.append({"id": f"s{i}", "prompt_id": p["id"], "problem": p["question"], "prompt": prompt,
                     "reasoning": p["reasoning"], "answer": f"The answer is \\boxed{{{p['answer']}}}.",
                     "reference": p["answer"], "verified": True, "kept": True, "drop_reason": None,
                     "teacher": teacher})
    return rows


def write_jsonl(path: Path, rows: list[dict], torn_tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn_tail, encoding="utf-8")
    return path


def write_generate_folder(folder: Path, rows: list[dict], dropped: list[dict] = ()) -> Path:
    """A folder shaped like the output of `distill generate`."""
    from datasets import Dataset
    write_jsonl(folder / "samples.jsonl", list(rows) + list(dropped))
    Dataset.from_list(list(rows)).save_to_disk(str(folder / "traces"))
    (folder / "summary.json").write_text(json.dumps({
        "prompts": len(rows), "samples": len(rows) + len(dropped), "kept": len(rows),
        "dropped": {"wrong_answer": len(dropped)}, "pass_at_1": 0.9}), encoding="utf-8")
    return folder


def tokenizer_folder(kind: str, tmp: Path, smollm2_dir: Path | None = None) -> Path:
    """A tokenizer folder with the chat template of `kind`: demo, qwen2.5, qwen3, smollm2, llama3."""
    from transformers import AutoTokenizer
    out = tmp / f"tok-{kind}"
    if kind == "smollm2":
        tok = AutoTokenizer.from_pretrained(smollm2_dir)
    else:
        tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    if kind == "qwen2.5":
        tok.chat_template = QWEN25_TEMPLATE
    elif kind == "qwen3":
        tok.chat_template = QWEN3_TEMPLATE
    elif kind == "llama3":
        tok.add_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], special_tokens=True)
        tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
        tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(out)
    return out


def without_chat_template(model_dir: Path, tmp: Path) -> Path:
    out = tmp / "no-template"
    shutil.copytree(model_dir, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
