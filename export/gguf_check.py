"""The GGUF checker's side of export's process boundary (`python -m distill.export.worker
check_gguf`, export/child.py): load the file in llama.cpp, decode its greedy continuations and
held-out logits, tokenize the corpus, and compare with what the parent sends (validate.py holds
the parent's side and the verdicts' rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from distill.backends.gguf import GGUFBackend
from distill.backends.llamacpp import open_llama
from distill.backends.logits import kl_and_top1, llama_logits

from .child import parent_has_sent
from .reference import GREEDY_PROMPTS, HELD_OUT_PLAIN, HELD_OUT_TOKENS, held_out_messages
from .validate import FLOAT_MAX_KLD, TIE_TOLERANCE, HeldOut, token_check


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


def check_gguf_here(job: dict, more, emit) -> dict:
    """In the child: load the file in llama.cpp; once the inputs come (`more()`), decode the
    greedy continuations (sent back at once, to be judged by the HF model), the held-out logits
    and the corpus's token ids; once the HF logits come (`more()` again), compare. With
    `job["guess"]`, the greedy runs and held-out logits are decoded before the inputs come, from
    the ids this file's own template and tokenizer give (`_guessed_runs`)."""
    llm, error = _load(job, CHECK_CONTEXT)
    quant = job["quant"]
    guessed = _guessed_runs(job["path"], llm, job["guess"], quant in TIE_TOLERANCE) \
        if llm is not None and job.get("guess") else None
    inputs = more()
    heldout = HeldOut(job["heldout"]["sequences"], Path(job["heldout"]["store"])) if job.get("heldout") else None
    n_ctx = max(len(inputs["held_out"]), max(len(p) for p in inputs["prompts"]) + inputs["new_tokens"],
                heldout.longest if heldout else 0) + 8
    if llm is not None and n_ctx > CHECK_CONTEXT:  # a long chat template: load again with room for it
        llm.close()
        llm, error = _load(job, n_ctx)
    result: dict = {"failures": []}
    if llm is None:
        emit({"greedy_tokens": None})
        result.update(loads=False, error=error)
        result["failures"].append(f"does not load in llama.cpp ({error})")
        return result
    try:
        result["loads"] = True
        greedy = None
        if quant in TIE_TOLERANCE:
            greedy = guessed["greedy"] if guessed and guessed["prompts"] == inputs["prompts"] else \
                _llama_greedy(GGUFBackend(job["path"], llm), inputs["prompts"], inputs["new_tokens"])
        emit({"greedy_tokens": greedy})
        logits = guessed["logits"] if guessed and guessed["logits"] is not None and \
            guessed["held_out"] == inputs["held_out"] else \
            llama_logits(llm, inputs["held_out"])
        if job["save_logits"]:
            np.save(job["save_logits"], logits)
        result["tokenizer"] = token_check(
            inputs["corpus"], inputs["expected"], lambda s: llm.tokenize(s.encode("utf-8"), add_bos=False, special=True),
            lambda s: llm.tokenize(s.encode("utf-8"), add_bos=True, special=True))
        if not result["tokenizer"]["match"]:
            result["failures"].append("token ids differ from the HF tokenizer")
        if heldout is not None:
            measured = heldout_check(llm, heldout, is_reference=quant == "f16")
            if measured:
                result["vs_f16_heldout"] = measured
    finally:
        llm.close()

    hf_logits = np.load(more()["held_out_logits"], mmap_mode="r")
    kl_hf, top1_hf = kl_and_top1(hf_logits, logits)
    result["vs_hf"] = {"mean_kld": round(kl_hf, 6), "top1_agreement": round(top1_hf, 4), "tokens": len(logits)}
    if quant in TIE_TOLERANCE and kl_hf > FLOAT_MAX_KLD[quant]:
        result["failures"].append(f"KL divergence from the HF model {kl_hf:.4g} > {FLOAT_MAX_KLD[quant]}")
    elif quant not in TIE_TOLERANCE and job["f16_logits"]:
        kl, top1 = kl_and_top1(np.load(job["f16_logits"], mmap_mode="r"), logits)
        result["vs_f16"] = {"mean_kld": round(kl, 6), "top1_agreement": round(top1, 4), "tokens": len(logits)}
        if kl > job["max_quant_kld"]:
            result["failures"].append(f"KL divergence from f16 {kl:.4g} > max_quant_kld {job['max_quant_kld']}")
    return result


def _guessed_runs(path: str, llm, new_tokens: int, greedy: bool) -> Optional[dict]:
    """The greedy runs and held-out logits of the reference's texts as this file's own chat
    template and tokenizer turn them into ids, decoded before the HF tokenizer's ids come: the
    reference process imports torch and transformers for 3 s first, and these runs were the
    longest wait after it. The guess is kept only where it equals the HF ids (a template or
    tokenizer that differs is decoded again, and fails the token check anyway), so the verdicts
    are those of the HF ids. None when the texts do not fit the check's context."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    backend = GGUFBackend(path, llm)
    try:
        if backend.has_template():
            prompts = [backend.tokenize(backend.render(text)) for text in GREEDY_PROMPTS]
            held_out = backend.tokenize(Jinja2ChatFormatter(
                backend.template, eos_token=backend.eos_text, bos_token=backend.bos_text,
                add_generation_prompt=False)(messages=held_out_messages()).prompt)
        else:
            prompts = [backend.tokenize(text) for text in GREEDY_PROMPTS]
            held_out = backend.tokenize(HELD_OUT_PLAIN)
    except Exception:  # noqa: BLE001 - a template jinja2 cannot render here: no guess, nothing lost
        return None
    held_out = held_out[:HELD_OUT_TOKENS]
    if max(len(held_out), max(len(p) for p in prompts) + new_tokens) + 8 > CHECK_CONTEXT:
        return None
    runs = _llama_greedy(backend, prompts, new_tokens) if greedy else None
    # the held-out logits only while the inputs are not there: the greedy runs come first
    return {"prompts": prompts, "held_out": held_out, "greedy": runs,
            "logits": None if parent_has_sent() else llama_logits(llm, held_out)}


# Room for the held-out text (HELD_OUT_TOKENS) and a prompt with its greedy continuation.
CHECK_CONTEXT = 256


def _load(job: dict, n_ctx: int):
    """(model, None) or (None, why it does not load)."""
    try:
        # verbose: llama.cpp's log (and the assertion of an abort) goes to the child's log file;
        # quiet, llama-cpp-python would send it to /dev/null.
        return open_llama(job["path"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                               logits_all=True, n_threads=job["threads"], n_threads_batch=job["threads"],
                               verbose=True), None
    except Exception as e:  # noqa: BLE001 - any load failure is the finding
        return None, str(e)


def _llama_greedy(backend, prompts: list[list[int]], n: int) -> list[list[int]]:
    """n greedy tokens after each prompt (end-of-generation ids do not stop it: the HF model
    judges what follows), the prompts decoded together (gguf_batch.py): a step reads the weights
    once for all of them, 0.84 s against 1.15 s one after the other for two prompts of SmolLM2."""
    from distill.backends.gguf_batch import BatchDecoder, Job
    from distill.backends.types import Sampling

    runs: dict[int, list[int]] = {}
    window = max(len(p) for p in prompts) + n
    with BatchDecoder(backend, len(prompts), window) as decoder:
        decoder.run([Job(i, 0, p, n, None, until_eog=False) for i, p in enumerate(prompts)], Sampling(),
                    lambda job, _: runs.__setitem__(job.index, job.out))
    return [runs[i] for i in range(len(prompts))]
