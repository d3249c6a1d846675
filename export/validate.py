"""Checks of each artifact against the Hugging Face model, recorded in the manifest.

GGUF: loads in llama.cpp; same token ids as the HF tokenizer on a fixed corpus; float files give
the same greedy continuations and near-zero KL; quantized files' KL and top-1 agreement against
the f16 file on held-out text. ONNX: loads in onnxruntime-genai; same token ids; fp32 gives the
same greedy continuations (other precisions are measured, not required to match)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .reference import Reference, compare_greedy, kl_and_top1

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


def heldout_check(llm, heldout: HeldOut, is_reference: bool) -> Optional[dict]:
    """Mean KL divergence from f16 and top-1 agreement over the held-out calibration texts,
    each text evaluated on its own from position 0, as it was calibrated."""
    total = sum(len(s) for s in heldout.sequences)
    if is_reference:
        store = np.lib.format.open_memmap(heldout.store, mode="w+", dtype=np.float32,
                                          shape=(total, llm.n_vocab()))
    elif heldout.store.is_file():
        store = np.load(heldout.store, mmap_mode="r")
    else:
        return None
    kl_sum = top1_sum = 0.0
    offset = 0
    for sequence in heldout.sequences:
        llm.reset()
        llm.eval(sequence)
        logits = np.array(llm.scores[: len(sequence)], dtype=np.float32)
        if is_reference:
            store[offset:offset + len(sequence)] = logits
        else:
            kl, top1 = kl_and_top1(np.asarray(store[offset:offset + len(sequence)]), logits)
            kl_sum += kl * len(sequence)
            top1_sum += top1 * len(sequence)
        offset += len(sequence)
    if is_reference:
        store.flush()
        return None
    return {"mean_kld": round(kl_sum / total, 6), "top1_agreement": round(top1_sum / total, 4),
            "tokens": total, "texts": len(heldout.sequences)}


def _token_check(ref: Reference, encode_plain, encode_default) -> dict:
    """`plain` is without BOS/EOS (HF add_special_tokens=False), `default` what each adds by
    default; special tokens in the text are matched as tokens in both."""
    mismatches, differing = [], {"plain": 0, "default": 0}
    for text in ref.corpus:
        for mode, encode, special in (("plain", encode_plain, False), ("default", encode_default, True)):
            want = ref.tokenizer.encode(text, add_special_tokens=special)
            got = [int(t) for t in encode(text)]
            if want != got:
                differing[mode] += 1
                mismatches.append({"text": text[:80], "mode": mode, "hf": want[:40], "runtime": got[:40]})
    return {"match": not mismatches, "strings": len(ref.corpus), "differing": differing,
            "mismatches": mismatches[:5]}


def _finish(result: dict) -> dict:
    result["passed"] = not result["failures"]
    return result


def check_gguf(path: Path, quant: str, ref: Reference, threads: int,
               f16_logits: Optional[np.ndarray], max_quant_kld: float,
               heldout: Optional[HeldOut] = None) -> tuple[dict, Optional[np.ndarray]]:
    """Validation results, and the held-out logits (the f16 ones are what quants compare with)."""
    import llama_cpp

    result: dict = {"failures": []}
    n_ctx = max(len(ref.held_out), max(len(p) + len(g) for p, g in zip(ref.prompts, ref.greedy)),
                heldout.longest if heldout else 0) + 8
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                              n_threads=threads, n_threads_batch=threads, verbose=False)
    except Exception as e:  # noqa: BLE001 - any load failure is the finding
        result.update(loads=False, error=str(e))
        result["failures"].append(f"does not load in llama.cpp ({e})")
        return _finish(result), None
    try:
        result["loads"] = True
        result["tokenizer"] = _token_check(
            ref, lambda s: llm.tokenize(s.encode("utf-8"), add_bos=False, special=True),
            lambda s: llm.tokenize(s.encode("utf-8"), add_bos=True, special=True))
        if not result["tokenizer"]["match"]:
            result["failures"].append("token ids differ from the HF tokenizer")

        llm.reset()
        llm.eval(ref.held_out)
        logits = np.array(llm.scores[: len(ref.held_out)], dtype=np.float32)
        kl_hf, top1_hf = kl_and_top1(ref.held_out_logits, logits)
        result["vs_hf"] = {"mean_kld": round(kl_hf, 6), "top1_agreement": round(top1_hf, 4),
                           "tokens": len(ref.held_out)}
        if quant in TIE_TOLERANCE:
            runs = [compare_greedy(ref, i, _llama_greedy(llm, p, len(ref.greedy[i])), TIE_TOLERANCE[quant])
                    for i, p in enumerate(ref.prompts)]
            result["greedy"] = {"match": all(r["match"] for r in runs), "prompts": len(runs),
                                "tokens": len(ref.greedy[0]), "runs": runs}
            if not result["greedy"]["match"]:
                result["failures"].append("greedy continuation differs from the HF model")
            if kl_hf > FLOAT_MAX_KLD[quant]:
                result["failures"].append(f"KL divergence from the HF model {kl_hf:.4g} > {FLOAT_MAX_KLD[quant]}")
        elif f16_logits is not None:
            kl, top1 = kl_and_top1(f16_logits, logits)
            result["vs_f16"] = {"mean_kld": round(kl, 6), "top1_agreement": round(top1, 4),
                                "tokens": len(ref.held_out)}
            if kl > max_quant_kld:
                result["failures"].append(f"KL divergence from f16 {kl:.4g} > max_quant_kld {max_quant_kld}")
        if heldout is not None:
            measured = heldout_check(llm, heldout, is_reference=quant == "f16")
            if measured:
                result["vs_f16_heldout"] = measured
        return _finish(result), logits
    finally:
        llm.close()


def _llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    tokens = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return tokens


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
    result["tokenizer"] = _token_check(ref, lambda s: tokenizer.encode(s), lambda s: tokenizer.encode(s))
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

    logits = _onnx_logits(og, model, ref.held_out)
    kl, top1 = kl_and_top1(ref.held_out_logits, logits)
    result["vs_hf"] = {"mean_kld": round(kl, 6), "top1_agreement": round(top1, 4), "tokens": len(ref.held_out)}
    runs = [compare_greedy(ref, i, _onnx_greedy(og, model, p, len(ref.greedy[i])),
                           TIE_TOLERANCE.get(precision, 0.0)) for i, p in enumerate(ref.prompts)]
    matched = sum(r["match"] for r in runs)
    result["greedy"] = {"match": matched == len(runs), "prompts": len(runs), "matched": matched,
                        "tokens": len(ref.greedy[0]), "runs": runs}
    if precision == "fp32":
        if not result["greedy"]["match"]:
            result["failures"].append("greedy continuation differs from the HF model")
        if kl > FLOAT_MAX_KLD["fp32"]:
            result["failures"].append(f"KL divergence from the HF model {kl:.4g} > {FLOAT_MAX_KLD['fp32']}")
    return _finish(result)


def _onnx_logits(og, model, tokens: list[int]) -> np.ndarray:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(tokens, dtype=np.int32))
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


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
