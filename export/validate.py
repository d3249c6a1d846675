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

from distill.backends.llamacpp import open_llama
from distill.backends.logits import kl_and_top1, llama_logits, onnx_logits

from .child import Child, NativeAbort, absolute, parent_has_sent
from .reference import GREEDY_PROMPTS, HELD_OUT, HELD_OUT_TOKENS, Reference

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
                _llama_greedy(job["path"], llm, inputs["prompts"], inputs["new_tokens"])
        emit({"greedy_tokens": greedy})
        logits = guessed["logits"] if guessed and guessed["logits"] is not None and \
            guessed["held_out"] == inputs["held_out"] else \
            llama_logits(llm, inputs["held_out"])
        if job["save_logits"]:
            np.save(job["save_logits"], logits)
        result["tokenizer"] = _token_check(
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

    from distill.backends.gguf import GGUFBackend
    from distill.core.chat import assistant_message

    backend = GGUFBackend(path, llm)
    question, reasoning, answer = HELD_OUT
    try:
        if backend.has_template():
            prompts = [backend.tokenize(backend.render(text)) for text in GREEDY_PROMPTS]
            conversation = [{"role": "user", "content": question},
                            {"role": "assistant", "content": assistant_message(reasoning, answer)}]
            held_out = backend.tokenize(Jinja2ChatFormatter(
                backend.template, eos_token=backend.eos_text, bos_token=backend.bos_text,
                add_generation_prompt=False)(messages=conversation).prompt)
        else:
            prompts = [backend.tokenize(text) for text in GREEDY_PROMPTS]
            held_out = backend.tokenize(f"{question}\n{reasoning}\n{answer}")
    except Exception:  # noqa: BLE001 - a template jinja2 cannot render here: no guess, nothing lost
        return None
    held_out = held_out[:HELD_OUT_TOKENS]
    if max(len(held_out), max(len(p) for p in prompts) + new_tokens) + 8 > CHECK_CONTEXT:
        return None
    runs = _llama_greedy(path, llm, prompts, new_tokens) if greedy else None
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


def _llama_greedy(path: str, llm, prompts: list[list[int]], n: int) -> list[list[int]]:
    """n greedy tokens after each prompt (end-of-generation ids do not stop it: the HF model
    judges what follows), the prompts decoded together (gguf_batch.py): a step reads the weights
    once for all of them, 0.84 s against 1.15 s one after the other for two prompts of SmolLM2."""
    from distill.backends.gguf import GGUFBackend
    from distill.backends.gguf_batch import BatchDecoder, Job
    from distill.backends.types import Sampling

    runs: dict[int, list[int]] = {}
    window = max(len(p) for p in prompts) + n
    with BatchDecoder(GGUFBackend(path, llm), len(prompts), window) as decoder:
        decoder.run([Job(i, 0, p, n, None, until_eog=False) for i, p in enumerate(prompts)], Sampling(),
                    lambda job, _: runs.__setitem__(job.index, job.out))
    return [runs[i] for i in range(len(prompts))]


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
    result["tokenizer"] = _token_check(ref.corpus, ref.expected, lambda s: tokenizer.encode(s),
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
