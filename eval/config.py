"""Settings of `distill eval` (defaults, YAML and flags all land here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill.core.config import option


@dataclass
class EvalConfig:
    model: list[str] = option([], "Model to evaluate (repeatable): hf:DIR_OR_ID, gguf:FILE, onnx:DIR, openai:URL, or a bare path", input=True)
    label: list[str] = option([], "Row label for each --model, in the same order")
    benchmark: str = option("demo", "gsm8k, math500, aime24, demo, or a local .jsonl/.json/.parquet file", input=True)
    out: str = option("eval", "Output folder")
    served_model: Optional[str] = option(None, "Model name on an openai: server")
    api_key_env: Optional[str] = option(None, "Name of the environment variable holding the API key (openai:)")
    question_field: Optional[str] = option(None, "Field holding the question (default: detected)")
    answer_field: Optional[str] = option(None, "Field holding the reference answer (default: detected)")
    limit: Optional[int] = option(None, "Use only the first N problems")
    samples: int = option(1, "Samples per problem (pass@1 averaged over them; maj@k when > 1)")
    temperature: float = option(0.0, "Sampling temperature (0 = greedy; the R1 protocol is 0.6 with 4+ samples)")
    top_p: float = option(1.0, "Nucleus sampling (the R1 protocol uses 0.95)")
    max_new_tokens: int = option(4096, "Token limit per response")
    seed: int = option(0, "Random seed")
    think_budget: list[int] = option([], "Budget forcing: thinking tokens before </think> is forced (several give a curve)")
    prompt_template: str = option("r1", "User-turn template: a bundled name, a file, or text with {problem}")
    reference: Optional[str] = option(None, "Reference model (hf:DIR) for KL divergence and top-1 agreement", input=True)
    fidelity_text: Optional[str] = option(None, "Held-out text file for fidelity and perplexity (default: the benchmark's solutions)", input=True)
    fidelity_tokens: int = option(2048, "Tokens of held-out text scored for fidelity")
    min_accuracy: Optional[float] = option(None, "Gate: every row's pass@1 at least this (exit 3 otherwise)")
    baseline: Optional[str] = option(None, "Gate: an earlier report.json to compare against per label", input=True)
    max_drop: Optional[float] = option(None, "Gate: largest allowed pass@1 drop against --baseline")
    max_kld: Optional[float] = option(None, "Gate: largest allowed mean KL divergence against --reference")
    batch_size: int = option(8, "Prompts per batch (hf)")
    concurrency: int = option(8, "Requests in flight (openai)")
    threads: Optional[int] = option(None, "CPU threads for the local runtimes (default: all cores)")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")
