"""Settings of `distill generate` (defaults, YAML and flags all land here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from distill.core.config import option
from distill.core.errors import UserError

TEACHER_KINDS = ("hf", "openai", "gguf")


@dataclass
class GenerateConfig:
    teacher: str = option("", "Teacher: hf:PATH_OR_ID, openai:BASE_URL (with --model) or gguf:FILE", input=True)
    prompts: str = option("demo", "Problems: a .jsonl/.json/.parquet/.csv file, a hub dataset name[:config][@split], or 'demo'", input=True)
    out: str = option("traces", "Output folder")
    model: Optional[str] = option(None, "Model name on an openai: server")
    api_key_env: Optional[str] = option(None, "Name of the environment variable holding the API key (openai:)")
    question_field: Optional[str] = option(None, "Field holding the question (default: detected)")
    answer_field: Optional[str] = option(None, "Field holding the reference answer (default: detected)")
    n: int = option(4, "Samples per prompt")
    limit: Optional[int] = option(None, "Use only the first N prompts")
    max_new_tokens: int = option(4096, "Token limit per sample (hitting it drops the sample as truncated)")
    temperature: float = option(0.6, "Sampling temperature (DeepSeek recommends 0.5-0.7 for R1)")
    top_p: float = option(0.95, "Nucleus sampling")
    seed: int = option(0, "Random seed")
    prompt_template: str = option("r1", "User-turn template: a bundled name (r1, plain), a file, or text with {problem}")
    shard: Optional[str] = option(None, "Process only shard I/N of the prompts (e.g. 0/4)")
    merge: bool = option(False, "Merge the shard folders out/shard-*-of-N into out (the filter flags given with --merge apply)")
    batch_size: int = option(16, "Sequences generated together, samples of one prompt included (hf)")
    concurrency: int = option(8, "Requests in flight (openai)")
    max_retries: int = option(6, "Retries per request on 429, 5xx and timeouts (openai)")
    request_timeout: float = option(600.0, "Seconds before a request times out (openai)")
    retry_wait: float = option(1.0, "Seconds before the first retry; doubles with each retry, at most 60 (openai)")
    min_trace_tokens: int = option(0, "Drop traces with fewer completion tokens (too_short)")
    max_trace_tokens: Optional[int] = option(None, "Drop traces with more completion tokens (too_long)")
    near_duplicate: float = option(0.9, "Jaccard similarity of word 5-grams above which a trace duplicates a kept one")
    decontaminate: list[str] = option([], "Benchmark files whose problems must not appear in the traces", input=True)
    decontaminate_ngram: int = option(8, "n-gram size for decontamination")
    min_pass_rate: float = option(0.0, "Keep only prompts whose pass rate is at least this")
    max_pass_rate: float = option(1.0, "Keep only prompts whose pass rate is at most this")
    dtype: str = option("auto", "Torch dtype for hf: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    n_ctx: int = option(8192, "Context window for gguf teachers")
    threads: Optional[int] = option(None, "CPU threads for gguf/hf (default: all cores)")
    logprobs: int = option(0, "Keep the teacher's log-prob of every sampled token and its top-K alternatives with the traces, for `distill train --method kd` without a teacher (K up to 20 on OpenAI-style servers; any K for hf/gguf)")
    teacher_tokenizer: Optional[str] = option(None, "The served teacher's tokenizer (folder or hub id): maps the server's log-prob token strings to ids (vLLM returns ids itself)")
    think: bool = option(True, "Open the teacher's answer with <think> (R1-style reasoning models); --no-think for teachers that do not reason: traces then hold the answer alone")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")

    def check(self) -> None:
        if self.teacher and self.teacher.split(":", 1)[0] not in TEACHER_KINDS:
            raise UserError(f"teacher: unknown kind in '{self.teacher}' (use one of: "
                            + ", ".join(f"{k}:..." for k in TEACHER_KINDS) + ")")
        if self.teacher.startswith("openai:") and not self.model:
            raise UserError("model: an openai: teacher needs --model NAME")
        if self.shard is not None:
            m = re.fullmatch(r"(\d+)/(\d+)", self.shard)
            if not m or not int(m.group(1)) < int(m.group(2)):
                raise UserError(f"shard: expected I/N with 0 <= I < N, got '{self.shard}'")
        for name in ("n", "max_new_tokens", "batch_size", "concurrency", "decontaminate_ngram"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1")
        if not 0 <= self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise UserError("temperature/top_p: temperature must be in [0, 5] and top_p in (0, 1]")
        for name in ("limit", "max_trace_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1")
        if self.max_retries < 0 or self.request_timeout <= 0 or self.retry_wait < 0:
            raise UserError("max_retries/request_timeout/retry_wait: must not be negative")
        if not 0 <= self.near_duplicate <= 1:
            raise UserError("near_duplicate: must be in [0, 1]")
        if self.logprobs < 0:
            raise UserError("logprobs: must not be negative (0: keep none)")
        if not 0 <= self.min_pass_rate <= self.max_pass_rate <= 1:
            raise UserError("min_pass_rate/max_pass_rate: need 0 <= min <= max <= 1")
