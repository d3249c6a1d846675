"""Settings of `distill eval` (defaults, YAML and flags all land here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from distill.core.config import option
from distill.core.errors import UserError


@dataclass
class EvalConfig:
    model: list[str] = option([], "Model to evaluate (repeatable): hf:DIR_OR_ID, gguf:FILE, onnx:DIR, openai:URL, or a bare path", input=True)
    label: list[str] = option([], "Row label for each --model, in the same order")
    benchmark: str = option("demo", "gsm8k, math500, aime24, demo, or a local .jsonl/.json/.parquet/.csv file", input=True)
    out: str = option("eval", "Output folder")
    served_model: Optional[str] = option(None, "Model name on an openai: server")
    api_key_env: Optional[str] = option(None, "Name of the environment variable holding the API key (openai:)")
    question_field: Optional[str] = option(None, "Field holding the question (default: detected)")
    answer_field: Optional[str] = option(None, "Field holding the reference answer (default: detected)")
    limit: Optional[int] = option(None, "Use only the first N problems")
    samples: int = option(1, "Samples per problem (pass@1 averaged over them; maj@k when > 1)")
    temperature: float = option(0.0, "Sampling temperature (0 = greedy; the R1 protocol is 0.6 with 4+ samples)")
    top_p: float = option(1.0, "Nucleus sampling (the R1 protocol uses 0.95)")
    max_new_tokens: int = option(4096, "Token limit per response (with --think-budget: the budget, then --answer-tokens)")
    seed: int = option(0, "Random seed")
    think_budget: list[int] = option([], "Budget forcing: thinking tokens before </think> is forced (several give a curve)")
    answer_tokens: int = option(256, "Tokens the answer may take after a forced </think> (with --think-budget)")
    prompt_template: Optional[str] = option(None, "User-turn template: a bundled name (r1, plain), a file, or text with {problem} (default: the one each model was trained with, recorded by train and export; else r1)")
    think: Optional[bool] = option(None, "Open each response with <think> (R1-style reasoning); --no-think for models that do not reason: the whole response is the answer (default: as each model was trained, else on)")
    reference: Optional[str] = option(None, "Reference model (hf:DIR) for KL divergence and top-1 agreement", input=True)
    fidelity_text: Optional[str] = option(None, "Held-out text file for fidelity and perplexity (default: the benchmark's solutions)", input=True)
    fidelity_tokens: int = option(1024, "Tokens of held-out text scored for fidelity and perplexity")
    fidelity_window: int = option(512, "Context window the held-out text is scored in")
    speed_tokens: int = option(64, "Tokens decoded by the single-stream speed probe per model (0: no speed probe)")
    min_accuracy: Optional[float] = option(None, "Gate: every row's pass@1 at least this (exit 3 otherwise)")
    baseline: Optional[str] = option(None, "Gate: an earlier report.json to compare against per label", input=True)
    max_drop: Optional[float] = option(None, "Gate: largest allowed pass@1 drop against --baseline")
    max_kld: Optional[float] = option(None, "Gate: largest allowed mean KL divergence against --reference")
    max_loop_rate: Optional[float] = option(None, "Gate: largest allowed share of samples that end in a loop; with --baseline, the largest allowed (significant) rise over the baseline's same label")
    junit: Optional[str] = option(None, "Write every (row, gate) verdict to FILE as JUnit XML, for CI test reporters")
    batch_size: Optional[int] = option(None, "Sequences generated together (hf, gguf, onnx; default: 16, gguf 32 when its KV cache fits in a quarter of the free memory)")
    concurrency: int = option(8, "Requests in flight (openai)")
    max_retries: int = option(6, "Retries per request on 429, 5xx and timeouts (openai)")
    request_timeout: float = option(600.0, "Seconds before a request times out (openai)")
    request_extra: Optional[str] = option(None, "JSON object merged into every openai: request, for server-specific sampling fields (llama.cpp servers: '{\"repeat_penalty\": 1.0, \"top_k\": 0, \"min_p\": 0}')")
    dtype: str = option("auto", "Torch dtype for hf: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    n_ctx: int = option(8192, "Context window for gguf models")
    threads: Optional[int] = option(None, "CPU threads for the local runtimes (default: all cores)")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")

    def check(self) -> None:
        if len(set(self.label)) != len(self.label):
            raise UserError("label: labels must be unique (rows of the report are keyed by label)")
        for name in ("samples", "max_new_tokens", "batch_size", "concurrency", "answer_tokens",
                     "fidelity_tokens", "fidelity_window", "n_ctx"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UserError("limit: must be at least 1")
        if self.speed_tokens < 0 or self.max_retries < 0 or self.request_timeout <= 0:
            raise UserError("speed_tokens/max_retries/request_timeout: must not be negative")
        if self.threads is not None and self.threads < 1:
            raise UserError("threads: must be at least 1")
        if not 0 <= self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise UserError("temperature/top_p: temperature must be in [0, 5] and top_p in (0, 1]")
        if any(b < 1 for b in self.think_budget):
            raise UserError("think_budget: every budget must be at least 1 token")
        if len(set(self.think_budget)) != len(self.think_budget):
            raise UserError("think_budget: budgets must be distinct")
        if self.reference is not None and not self.reference.startswith("hf:"):
            raise UserError(f"reference: expected hf:DIR_OR_ID, got '{self.reference}'")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise UserError("min_accuracy: must be in [0, 1]")
        if self.max_drop is not None and not 0 <= self.max_drop <= 1:
            raise UserError("max_drop: must be in [0, 1]")
        if self.max_loop_rate is not None and not 0 <= self.max_loop_rate <= 1:
            raise UserError("max_loop_rate: must be in [0, 1]")
        if self.max_kld is not None and self.max_kld < 0:
            raise UserError("max_kld: must be at least 0")
        if self.junit is not None and (not self.junit.strip() or Path(self.junit).is_dir()):
            raise UserError(f"junit: '{self.junit}' is a folder or empty; give the path of the XML file to write")
        if self.request_extra is not None:
            try:
                extra = json.loads(self.request_extra)
            except json.JSONDecodeError as e:
                raise UserError(f"request_extra: not valid JSON ({e.msg})") from None
            if not isinstance(extra, dict):
                raise UserError("request_extra: expected a JSON object")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"dtype: expected auto, float32, bfloat16 or float16, got '{self.dtype}'")

    def check_complete(self) -> None:
        """Checks across fields that a YAML file and flags may set separately, so they run once
        the config is final (`check` runs after each layer)."""
        if not self.model:
            raise UserError("model: give at least one --model (hf:DIR, gguf:FILE, onnx:DIR, openai:URL)")
        if len(self.label) > len(self.model):
            raise UserError(f"label: {len(self.label)} labels for {len(self.model)} models "
                            "(give one --label per --model, in the same order)")
        if any(m.startswith("openai:") for m in self.model) and not self.served_model:
            raise UserError("served_model: an openai: model needs --served-model NAME")
        if self.think_budget and self.think is False:
            raise UserError("think_budget: budget forcing needs the think block (drop --no-think)")
        if self.think_budget and any(m.startswith("openai:") for m in self.model):
            raise UserError("think_budget: budget forcing continues the model's own text, which an "
                            "openai: chat server does not allow; evaluate openai: models without it")
        if self.max_drop is not None and self.baseline is None:
            raise UserError("baseline/max_drop: the drop gate needs both --baseline and --max-drop")
        if self.baseline is not None and self.max_drop is None and self.max_loop_rate is None:
            raise UserError("baseline/max_drop: --baseline needs a gate to apply: --max-drop and/or --max-loop-rate")
        if self.max_kld is not None and self.reference is None:
            raise UserError("max_kld: the KL gate needs --reference hf:DIR")
