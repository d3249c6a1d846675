"""One row of samples.jsonl per teacher sample: its stable id, the response split into reasoning
and answer, the verification result and the token counts.

The id hashes the teacher, the problem's id and user message, the sampling settings and the sample index, so a
rerun of the same command recognises the samples it already has and asks the teacher only for
the missing ones."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from distill.core.answers import Response, extract_answer, split_response
from distill.core.chat import THINK_CLOSE, THINK_OPEN

from .filters import verify


def sampling_record(sampling, think: bool = True) -> dict:
    """The settings that change what the teacher writes (`n` does not: sample i is the same
    whether 4 or 8 are asked for)."""
    record = asdict(sampling) | ({} if think else {"think": False})
    record.pop("n", None)
    record.pop("sampler_logprobs", None)
    if not record.get("logprobs"):  # the ids of samples made before --logprobs existed stay the same
        record.pop("logprobs", None)
    return record


def sample_id(teacher: str, prompt_id: str, user_text: str, sampling: dict, index: int) -> str:
    key = json.dumps({"teacher": teacher, "prompt_id": prompt_id, "prompt": user_text,
                      "sampling": sampling, "sample": index}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def parse_completion(completion, prefill: str) -> Response:
    """Reasoning and answer of one completion. A server that returns the thinking on a separate
    channel (`reasoning_content`) has already split it; then the content is the answer."""
    if completion.reasoning is not None and completion.reasoning.strip():
        content = completion.text
        if THINK_CLOSE in content:  # a server that both separates and echoes the block
            return split_response(content, prefill)
        stray = THINK_OPEN in content
        answer = content.strip()
        return Response(completion.reasoning.strip(), answer, not stray, extract_answer(answer))
    text = completion.text
    if not prefill and THINK_CLOSE in text and THINK_OPEN not in text:
        # the server's chat template opened the block (DeepSeek-R1's does) and the content
        # starts inside it
        prefill = f"{THINK_OPEN}\n"
    return split_response(text, prefill)


def build_row(*, sid: str, problem: dict, user_text: str, index: int, completion, prefill: str,
              teacher: str, sampling: dict, wall_s: float, think: bool = True) -> dict:
    response = parse_completion(completion, prefill) if think else Response("", completion.text.strip(), False,
                                                                             extract_answer(completion.text))
    return {
        "id": sid,
        "prompt_id": problem["id"],
        "sample_index": index,
        "problem": problem["question"],
        "prompt": user_text,
        "reference": problem["reference"],
        "response": completion.text,
        "reasoning_channel": completion.reasoning,
        "prefill": prefill,
        "reasoning": response.reasoning,
        "answer": response.answer,
        "extracted": response.extracted,
        "think_closed": response.think_closed,
        "verified": bool(response.extracted is not None and verify(response, problem["reference"])),
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "ttft_s": completion.ttft_s,
        "decode_s": completion.decode_s,
        "gen_wall_s": wall_s,
        "teacher": teacher,
        "sampling": sampling,
        "think": think,
        "teacher_logprobs": completion.logprobs.pack() if completion.logprobs is not None else None,
        # decided by the filters once all samples of the prompt are in
        "kept": None,
        "drop_reason": None,
        "pass_rate": None,
    }
