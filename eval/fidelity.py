"""Fidelity of an artifact to a reference model on held-out text: mean KL(reference || artifact)
of the next-token distributions, top-1 agreement, and the artifact's perplexity.

The held-out text is tokenized once with the reference's tokenizer and cut into windows; every
runtime is fed exactly those token ids (transformers, llama.cpp with logits for every position,
onnxruntime-genai), so the distributions are compared position by position. The reference's
logits are kept in memory (tokens x vocabulary floats) while the artifacts are scored; the
runtimes' logits readers and the KL/top-1 computation are distill/backends/logits.py's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from distill.backends.logits import compare_positions, llama_logits, token_logprobs, torch_logits
from distill.backends.logits import onnx_logits as genai_logits
from distill.core.errors import UserError, one_line


@dataclass
class Reference:
    spec: str
    windows: list[list[int]]     # token ids, each window scored on its own
    logits: list[np.ndarray]     # [len(window), vocab] float32, the reference's
    perplexity: float

    @property
    def tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


def _torch_dtype(name: str):
    import torch
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def _load_hf(target: str, cfg):
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=_torch_dtype(cfg.dtype),
                                                     trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - unreadable or missing model folders are user errors
        raise UserError(f"{target}: transformers cannot load the model ({one_line(e)[:200]})") from None
    return model.eval()


def _require_vocab(target: str, vocab: int, windows: list[list[int]]) -> None:
    if vocab <= max(max(w) for w in windows):
        raise UserError(f"{target}: its vocabulary of {vocab} tokens does not hold the reference's token "
                        "ids; --reference must share the model's tokenizer")


def hf_logits(target: str, windows: list[list[int]], cfg) -> Iterator[np.ndarray]:
    model = _load_hf(target, cfg)
    _require_vocab(target, model.get_input_embeddings().num_embeddings, windows)
    for window in windows:
        yield torch_logits(model, window)


def gguf_logits(target: str, windows: list[list[int]], cfg) -> Iterator[np.ndarray]:
    from distill.backends.llamacpp import open_llama
    longest = max(len(w) for w in windows)
    try:
        llm = open_llama(target, n_ctx=longest, n_batch=longest, n_ubatch=longest, logits_all=True,
                    n_threads=cfg.threads, verbose=False)
    except Exception as e:  # noqa: BLE001 - llama.cpp raises ValueError/RuntimeError alike
        raise UserError(f"{target}: llama.cpp cannot load the model ({one_line(e)[:200]})") from None
    try:
        _require_vocab(target, llm.n_vocab(), windows)
        for window in windows:
            yield llama_logits(llm, window)
    finally:
        llm.close()


def onnx_logits(target: str, windows: list[list[int]], cfg) -> Iterator[np.ndarray]:
    from distill.backends.onnx import open_model, read_genai_config
    genai = read_genai_config(Path(target))["model"]
    context = int(genai.get("context_length") or 0)
    if genai.get("vocab_size"):
        _require_vocab(target, int(genai["vocab_size"]), windows)
    longest = max(len(w) for w in windows)
    if context and longest > context:
        raise UserError(f"{target}: context of {context} tokens is shorter than the fidelity window "
                        f"({longest}); lower --fidelity-window")
    model = open_model(Path(target), cfg.threads)
    for window in windows:
        yield genai_logits(model, window, context)


LOGITS: dict[str, Callable[[str, list[list[int]], object], Iterator[np.ndarray]]] = {
    "hf": hf_logits,
    "gguf": gguf_logits,
    "onnx": onnx_logits,
}


def _windows(tokenizer, text: str, total: int, size: int) -> list[list[int]]:
    chars = 8 * total  # tokenize only as much text as the windows need (long texts warn and crawl)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > total or chars >= len(text):
            break
        chars *= 2
    ids = ids[:total]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    step = size - 1 if adds_bos else size
    windows = [([bos] if adds_bos else []) + ids[i:i + step] for i in range(0, len(ids), step)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError("fidelity_text: the held-out text has fewer than 2 tokens")
    return windows


def load_reference(spec: str, text: str, cfg) -> Reference:
    from transformers import AutoTokenizer
    target = spec.split(":", 1)[1]
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"reference: {target}: cannot load its tokenizer ({one_line(e)[:200]})") from None
    windows = _windows(tokenizer, text, cfg.fidelity_tokens, cfg.fidelity_window)
    logits = list(hf_logits(target, windows, cfg))
    nll = np.concatenate([-token_logprobs(x[:-1], w[1:]) for x, w in zip(logits, windows)])
    return Reference(spec, windows, logits, math.exp(float(nll.mean())))


def measure_fidelity(kind: str, target: str, reference: Reference, cfg) -> dict:
    """Mean KL(reference || model) per predicted position, top-1 agreement and perplexity."""
    if kind not in LOGITS:
        return {}
    kl_sum, agree, nll_sum, count = 0.0, 0, 0.0, 0
    for window, ref, logits in zip(reference.windows, reference.logits, LOGITS[kind](target, reference.windows, cfg)):
        # the last position predicts past the window
        stats = compare_positions(ref[:-1], logits[:-1], window[1:])
        kl_sum += float(stats["kl"].sum())
        agree += int(stats["top1"].sum())
        nll_sum += float(-stats["logprob"].sum())
        count += len(window) - 1
    return {
        "mean_kld": kl_sum / count,
        "top1_agreement": agree / count,
        "perplexity": math.exp(nll_sum / count),
        "fidelity_tokens": count,
    }
