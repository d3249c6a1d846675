"""Checks of each artifact against the Hugging Face model, recorded in the manifest.

GGUF: loads in llama.cpp; same token ids as the HF tokenizer on a fixed corpus; float files give
the same greedy continuations and near-zero KL; quantized files' KL and top-1 agreement against
the f16 file on held-out text. ONNX: loads in onnxruntime-genai; same token ids; fp32 gives the
same greedy continuations (other precisions are measured, not required to match).

Each GGUF is checked in a child process; this module is the parent's side and the rules both
sides share, gguf_check.py the child's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from distill.backends.logits import kl_and_top1, onnx_logits

from .child import Child, NativeAbort, absolute
from .reference import Reference

# Relative logit tolerance for calling a greedy divergence a tie, and the most KL (nats) a float
# artifact may show against the fp32 HF model: rounding of the weights, nothing more.
TIE_TOLERANCE = {"f32": 2e-3, "f16": 5e-3, "bf16": 3e-2, "fp32": 1e-3}
FLOAT_MAX_KLD = {"f32": 1e-3, "f16": 1e-2, "bf16": 5e-2, "fp32": 1e-3}


@dataclass
class HeldOut:
    """The held-out calibration texts; the f16 file's check stores its logits in `store` (a
    float32 .npy memory map on disk, [tokens, vocab]) and every other file is compared with them."""
    sequences: list[list[int]]
    store: Path

    @property
    def longest(self) -> int:
        return max(len(s) for s in self.sequences)


def token_check(corpus: list[str], expected: dict[str, list[list[int]]], encode_plain, encode_default) -> dict:
    """`plain` is without BOS/EOS (HF add_special_tokens=False), `default` what each adds by
    default; special tokens in the text are matched as tokens in both. `expected` holds the HF
    tokenizer's ids per mode and string."""
    mismatches, differing = [], {"plain": 0, "default": 0}
    for k, text in enumerate(corpus):
        for mode, encode in (("plain", encode_plain), ("default", encode_default)):
            want = expected[mode][k]
            got = [int(t) for t in encode(text)]
            if want != got:
                differing[mode] += 1
                mismatches.append({"text": text[:80], "mode": mode, "hf": want[:40], "runtime": got[:40]})
    return {"match": not mismatches, "strings": len(corpus), "differing": differing,
            "mismatches": mismatches[:5]}


def _finish(result: dict) -> dict:
    result["passed"] = not result["failures"]
    return result


def inputs_part(ref: Reference) -> dict:
    """What a child needs first: the token ids to tokenize, score and continue."""
    return {"corpus": ref.corpus, "expected": ref.expected, "prompts": ref.prompts, "held_out": ref.held_out,
            "new_tokens": ref.new_tokens}


def logits_part(ref: Reference, work: Path) -> dict:
    """What it needs then: the HF logits on the held-out text, as a .npy file it memory-maps (the
    reference process's own file, or one saved here)."""
    logits = ref.held_out_logits()
    path = getattr(logits, "filename", None)
    if path is None:
        path = work / "held_out_logits.npy"
        if not path.is_file():
            work.mkdir(parents=True, exist_ok=True)
            np.save(path, logits)
    return {"held_out_logits": absolute(path)}


def _gguf_job(path: Path, quant: str, threads: int, f16_logits: Optional[Path], max_quant_kld: float,
              save_logits: Optional[Path], heldout: Optional[HeldOut], guess: Optional[int] = None) -> dict:
    return {"path": absolute(path), "quant": quant, "threads": threads, "guess": guess,
            "f16_logits": absolute(f16_logits), "max_quant_kld": max_quant_kld,
            "save_logits": absolute(save_logits),
            "heldout": {"sequences": heldout.sequences, "store": absolute(heldout.store)} if heldout else None}


def _aborted(e: NativeAbort) -> dict:
    return _finish({"loads": False, "error": str(e),
                    "failures": [f"llama.cpp aborted while loading or running it: {e}"]})


def start_check_gguf(path: Path, quant: str, threads: int, f16_logits: Optional[Path], max_quant_kld: float,
                     save_logits: Optional[Path], log_path: Path, heldout: Optional[HeldOut] = None,
                     waiting: Optional[Child] = None, guess: Optional[int] = None) -> Child:
    """Start checking a GGUF in a child process (`waiting`, one started earlier with
    `Child.waiting("check_gguf", ...)`, or a new one): it loads the file now, decodes its own
    outputs once it gets `inputs_part` (with `guess`, that many greedy tokens from its own guess
    of the inputs before they come), and compares them once it gets `logits_part`
    (`finish_check_gguf`)."""
    job = _gguf_job(path, quant, threads, f16_logits, max_quant_kld, save_logits, heldout, guess)
    return waiting.begin(job) if waiting is not None else Child("check_gguf", job, log_path)


def finish_check_gguf(child: Child, ref: Reference, work: Path, inputs_sent: bool = False) -> dict:
    """The child's result, with its greedy continuations judged by the HF model (asked for as
    soon as the child has decoded them); an abort of llama.cpp there is a failure naming its
    assertion."""
    try:
        if not inputs_sent:
            child.send(inputs_part(ref))
        greedy_tokens = child.receive()["greedy_tokens"]
        quant = child.job["quant"]
        verdicts = [ref.judge(i, tokens, TIE_TOLERANCE[quant]) for i, tokens in enumerate(greedy_tokens or [])]
        result = child.finish(logits_part(ref, work))
    except NativeAbort as e:
        return _aborted(e)
    if greedy_tokens is not None:
        runs = [verdict() for verdict in verdicts]
        result["greedy"] = {"match": all(r["match"] for r in runs), "prompts": len(runs),
                            "tokens": ref.new_tokens, "runs": runs}
        if not result["greedy"]["match"]:
            result["failures"].append("greedy continuation differs from the HF model")
    return _finish(result)


def check_gguf(path: Path, quant: str, ref: Reference, work: Path, threads: int, f16_logits: Optional[Path],
               max_quant_kld: float, save_logits: Optional[Path] = None, log_path: Optional[Path] = None,
               heldout: Optional[HeldOut] = None) -> dict:
    """Validation results of one GGUF file. `save_logits` keeps the held-out logits (the f16
    file's are what quantized files are compared with). With `heldout`, the file is also
    measured against f16 on the held-out calibration texts."""
    child = start_check_gguf(path, quant, threads, f16_logits, max_quant_kld, save_logits,
                             log_path or path.with_name(path.name + ".log"), heldout)
    return finish_check_gguf(child, ref, work)


def check_onnx(folder: Path, precision: str, ref: Reference) -> dict:
    import onnxruntime_genai as og

    result: dict = {"failures": []}
    try:
        model = og.Model(str(folder))
        tokenizer = og.Tokenizer(model)
    except Exception as e:  # noqa: BLE001
        result.update(loads=False, error=str(e))
        result["failures"].append(f"does not load in onnxruntime-genai ({e})")
        return _finish(result)
    result["loads"] = True
    result["tokenizer"] = token_check(ref.corpus, ref.expected, lambda s: tokenizer.encode(s),
                                       lambda s: tokenizer.encode(s))
    # onnxruntime-genai's tokenizer has one mode; it is compared with HF's both ways, and counts
    # as matching when either agrees on every string.
    differing = result["tokenizer"]["differing"]
    result["tokenizer"]["match"] = differing["plain"] == 0 or differing["default"] == 0
    if not result["tokenizer"]["match"]:
        result["failures"].append("token ids differ from the HF tokenizer")
    try:
        result["chat_template"] = bool(tokenizer.apply_chat_template(
            '[{"role": "user", "content": "hi"}]', add_generation_prompt=True))
    except Exception:  # noqa: BLE001
        result["chat_template"] = False
        result["failures"].append("the chat template is missing from the folder")

    logits = onnx_logits(model, ref.held_out)
    kl, top1 = kl_and_top1(ref.held_out_logits(), logits)
    result["vs_hf"] = {"mean_kld": round(kl, 6), "top1_agreement": round(top1, 4), "tokens": len(ref.held_out)}
    verdicts = [ref.judge(i, _onnx_greedy(og, model, p, ref.new_tokens), TIE_TOLERANCE.get(precision, 0.0))
                for i, p in enumerate(ref.prompts)]
    runs = [verdict() for verdict in verdicts]
    matched = sum(r["match"] for r in runs)
    result["greedy"] = {"match": matched == len(runs), "prompts": len(runs), "matched": matched,
                        "tokens": ref.new_tokens, "runs": runs}
    if precision == "fp32":
        if not result["greedy"]["match"]:
            result["failures"].append("greedy continuation differs from the HF model")
        if kl > FLOAT_MAX_KLD["fp32"]:
            result["failures"].append(f"KL divergence from the HF model {kl:.4g} > {FLOAT_MAX_KLD['fp32']}")
    return _finish(result)


def _onnx_greedy(og, model, prompt: list[int], n: int) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    tokens = []
    while not generator.is_done() and len(tokens) < n:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens
