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

from distill.backends.logits import kl_and_top1, llama_logits, onnx_logits

from .native import Child, NativeAbort, run_child
from .reference import Reference, compare_greedy

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
        logits = llama_logits(llm, sequence)
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


def _token_check(corpus: list[str], expected: dict[str, list[list[int]]], encode_plain, encode_default) -> dict:
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


def hf_token_ids(ref: Reference) -> dict[str, list[list[int]]]:
    return {mode: [ref.tokenizer.encode(text, add_special_tokens=special) for text in ref.corpus]
            for mode, special in (("plain", False), ("default", True))}


def _finish(result: dict) -> dict:
    result["passed"] = not result["failures"]
    return result


def reference_job(ref: Reference, work: Path) -> dict:
    """What a child needs of the reference: small things inline, the logits as .npy files."""
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "held_out_logits.npy", ref.held_out_logits)
    for i, steps in enumerate(ref.greedy_logits):
        np.save(work / f"greedy_logits_{i}.npy", steps)
    return {"corpus": ref.corpus, "expected": hf_token_ids(ref), "eos_ids": sorted(ref.eos_ids),
            "prompts": ref.prompts, "greedy": ref.greedy, "held_out": ref.held_out,
            "held_out_logits": str(work / "held_out_logits.npy"),
            "greedy_logits": [str(work / f"greedy_logits_{i}.npy") for i in range(len(ref.greedy_logits))]}


def _gguf_job(path: Path, quant: str, ref_job: Optional[dict], threads: int, f16_logits: Optional[Path],
              max_quant_kld: float, save_logits: Optional[Path], heldout: Optional[HeldOut]) -> dict:
    return {"path": str(path), "quant": quant, "ref": ref_job, "threads": threads,
            "f16_logits": str(f16_logits) if f16_logits else None, "max_quant_kld": max_quant_kld,
            "save_logits": str(save_logits) if save_logits else None,
            "heldout": {"sequences": heldout.sequences, "store": str(heldout.store)} if heldout else None}


def _aborted(e: NativeAbort) -> dict:
    return _finish({"loads": False, "error": str(e),
                    "failures": [f"llama.cpp aborted while loading or running it: {e}"]})


def start_check_gguf(path: Path, quant: str, threads: int, max_quant_kld: float, save_logits: Optional[Path],
                     log_path: Path, heldout: Optional[HeldOut] = None) -> Child:
    """Start checking a GGUF before the reference is ready: the child loads the file meanwhile;
    `finish_check_gguf` hands it the reference."""
    return Child("check_gguf", _gguf_job(path, quant, None, threads, None, max_quant_kld, save_logits, heldout),
                 log_path)


def finish_check_gguf(child: Child, ref_job: dict) -> dict:
    try:
        return child.finish(ref_job)
    except NativeAbort as e:
        return _aborted(e)


def check_gguf(path: Path, quant: str, ref_job: dict, threads: int, f16_logits: Optional[Path],
               max_quant_kld: float, save_logits: Optional[Path] = None, log_path: Optional[Path] = None,
               heldout: Optional[HeldOut] = None) -> dict:
    """Validation results of one GGUF file, computed in a child process; an abort of llama.cpp
    there is a failure naming its assertion. `save_logits` keeps the held-out logits (the f16
    file's are what quantized files are compared with). With `heldout`, the file is also
    measured against f16 on the held-out calibration texts."""
    job = _gguf_job(path, quant, ref_job, threads, f16_logits, max_quant_kld, save_logits, heldout)
    try:
        return run_child("check_gguf", job, log_path or path.with_name(path.name + ".log"))
    except NativeAbort as e:
        return _aborted(e)


def check_gguf_here(job: dict, more=None) -> dict:
    """In the child: load the file in llama.cpp and compare it with the reference (sent with the
    job, or read from `more()` once the file is loaded)."""
    import llama_cpp

    llm, error = _load(llama_cpp, job, CHECK_CONTEXT)
    spec = job["ref"] if job["ref"] is not None else more()
    ref = Reference(tokenizer=None, eos_ids=set(spec["eos_ids"]), corpus=spec["corpus"], prompts=spec["prompts"],
                    greedy=spec["greedy"], greedy_logits=[np.load(p, mmap_mode="r") for p in spec["greedy_logits"]],
                    held_out=spec["held_out"], held_out_logits=np.load(spec["held_out_logits"], mmap_mode="r"))
    heldout = HeldOut(job["heldout"]["sequences"], Path(job["heldout"]["store"])) if job.get("heldout") else None
    n_ctx = max(len(ref.held_out), max(len(p) + len(g) for p, g in zip(ref.prompts, ref.greedy)),
                heldout.longest if heldout else 0) + 8
    if llm is not None and n_ctx > CHECK_CONTEXT:  # a long chat template: load again with room for it
        llm.close()
        llm, error = _load(llama_cpp, job, n_ctx)
    quant = job["quant"]
    result: dict = {"failures": []}
    if llm is None:
        result.update(loads=False, error=error)
        result["failures"].append(f"does not load in llama.cpp ({error})")
        return _finish(result)
    try:
        result["loads"] = True
        result["tokenizer"] = _token_check(
            ref.corpus, spec["expected"], lambda s: llm.tokenize(s.encode("utf-8"), add_bos=False, special=True),
            lambda s: llm.tokenize(s.encode("utf-8"), add_bos=True, special=True))
        if not result["tokenizer"]["match"]:
            result["failures"].append("token ids differ from the HF tokenizer")

        logits = llama_logits(llm, ref.held_out)
        if job["save_logits"]:
            np.save(job["save_logits"], logits)
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
        elif job["f16_logits"]:
            kl, top1 = kl_and_top1(np.load(job["f16_logits"], mmap_mode="r"), logits)
            result["vs_f16"] = {"mean_kld": round(kl, 6), "top1_agreement": round(top1, 4),
                                "tokens": len(ref.held_out)}
            if kl > job["max_quant_kld"]:
                result["failures"].append(f"KL divergence from f16 {kl:.4g} > max_quant_kld {job['max_quant_kld']}")
        if heldout is not None:
            measured = heldout_check(llm, heldout, is_reference=quant == "f16")
            if measured:
                result["vs_f16_heldout"] = measured
        return _finish(result)
    finally:
        llm.close()


# Room for the held-out text (HELD_OUT_TOKENS) and a prompt with its greedy continuation.
CHECK_CONTEXT = 256


def _load(llama_cpp, job: dict, n_ctx: int):
    """(model, None) or (None, why it does not load)."""
    try:
        # verbose: llama.cpp's log (and the assertion of an abort) goes to the child's log file;
        # quiet, llama-cpp-python would send it to /dev/null.
        return llama_cpp.Llama(job["path"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                               logits_all=True, n_threads=job["threads"], n_threads_batch=job["threads"],
                               verbose=True), None
    except Exception as e:  # noqa: BLE001 - any load failure is the finding
        return None, str(e)


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
    result["tokenizer"] = _token_check(ref.corpus, hf_token_ids(ref), lambda s: tokenizer.encode(s),
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
