"""What every comparison of two models' next-token distributions shares: the end-of-sequence ids
of a model, the logits of every position of a token sequence on each runtime, and KL divergence
with top-1 agreement. Export validation, `eval --reference` fidelity and the backends use these,
so an artifact is judged the same way wherever it is judged."""

from __future__ import annotations

import numpy as np

ROWS_AT_ONCE = 64   # positions per float64 softmax: bounds memory for 150k-token vocabularies


def eos_ids(*configs, tokenizer=None) -> list[int]:
    """The ids that end a generation: those named by the first of `configs` that names any (a
    GenerationConfig, a model config, or a dict such as genai_config's "model"), then the
    tokenizer's eos token; in that order, without repeats. Empty when nobody names one."""
    ids: list = []
    for config in configs:
        named = config.get("eos_token_id") if isinstance(config, dict) else getattr(config, "eos_token_id", None)
        if named is not None:
            ids = list(named) if isinstance(named, (list, tuple)) else [named]
            break
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return [int(i) for i in dict.fromkeys(ids) if i is not None]


# ---- logits of every position, one reader per runtime ----------------------------------------

def torch_logits(model, tokens: list[int]) -> np.ndarray:
    """[len(tokens), vocab] float32 from a transformers causal LM, in one forward pass."""
    import torch
    with torch.inference_mode():
        return model(torch.tensor([tokens], device=model.device)).logits[0].float().cpu().numpy()


def llama_logits(llm, tokens: list[int]) -> np.ndarray:
    """[len(tokens), vocab] float32 from a `llama_cpp.Llama` made with logits_all=True and a
    batch that holds the tokens, evaluated from an empty cache."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)


def onnx_logits(model, tokens: list[int], context: int = 0) -> np.ndarray:
    """[len(tokens), vocab] float32 from an onnxruntime-genai model (`og.Model`)."""
    import onnxruntime_genai as og
    params = og.GeneratorParams(model)
    length = len(tokens) + 1
    params.set_search_options(max_length=min(length, context) if context else length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([tokens], dtype=np.int32))
    logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0, :len(tokens)]
    del generator
    return logits


# ---- comparing distributions -----------------------------------------------------------------

def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_positions(reference_logits: np.ndarray, logits: np.ndarray,
                      targets: list[int] | None = None) -> dict[str, np.ndarray]:
    """Per position, over the vocabulary both share: KL(reference || other) in nats ("kl"),
    whether both rank the same token first ("top1"), and, given the next tokens, the other's
    log-probability of each ("logprob")."""
    vocab = min(reference_logits.shape[-1], logits.shape[-1])
    kl, top1, logprob = [], [], []
    for start in range(0, len(logits), ROWS_AT_ONCE):
        rows = slice(start, start + ROWS_AT_ONCE)
        p, q = log_softmax(reference_logits[rows, :vocab]), log_softmax(logits[rows, :vocab])
        kl.append((np.exp(p) * (p - q)).sum(axis=-1))
        top1.append(p.argmax(-1) == q.argmax(-1))
        if targets is not None:
            ids = np.asarray(targets[rows])
            logprob.append(q[np.arange(len(ids)), ids])
    out = {"kl": np.concatenate(kl), "top1": np.concatenate(top1)}
    if targets is not None:
        out["logprob"] = np.concatenate(logprob)
    return out


def token_logprobs(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """The log-probability each position gives the token that follows it (`targets`)."""
    out = []
    for start in range(0, len(targets), ROWS_AT_ONCE):
        ids = np.asarray(targets[start:start + ROWS_AT_ONCE])
        out.append(log_softmax(logits[start:start + len(ids)])[np.arange(len(ids)), ids])
    return np.concatenate(out) if out else np.zeros(0)


def kl_and_top1(reference_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Mean KL(reference || other) over positions, and how often both pick the same token."""
    stats = compare_positions(reference_logits, logits)
    return max(float(stats["kl"].mean()), 0.0), float(stats["top1"].mean())
