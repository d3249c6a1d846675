"""The HF reference's side of export's process boundary (`python -m distill.export.worker
reference`, export/child.py): the HF tokenizer's ids, the held-out logits, then the verdicts the
parent asks for (reference.py holds the parent's side, ReferenceProcess, and what is judged)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from distill.backends.logits import torch_logits

from .child import parent_has_sent
from .reference import HFModel, judge_greedy, reference_inputs, until_eos


def reference_here(job: dict, more, emit) -> dict:
    """In the reference child: the token ids, then the held-out logits, then verdicts."""
    import torch
    torch.set_num_threads(job["threads"])
    hf = HFModel(Path(job["folder"]), job["trust_remote_code"])
    if sys.platform == "linux":
        inputs = _inputs_beside_model(hf, job["new_tokens"], emit)
    else:
        inputs = reference_inputs(hf.folder, hf.trust_remote_code, job["new_tokens"])
        emit(inputs)
    model = hf.loaded()
    # A verdict asked for already means that the first GGUF's checker has sent its greedy runs:
    # its decoding is over, and its half of the threads is free for this process's forward
    # passes (0.46 s for the held-out logits of SmolLM2-135M on one thread).
    if parent_has_sent():
        torch.set_num_threads(job.get("all_threads", job["threads"]))
    np.save(job["logits"], torch_logits(model, inputs["held_out"]))
    emit({"held_out_logits": job["logits"]})
    judged = 0
    while (request := more()) is not None:
        if request.get("release"):
            hf.model = None
        else:
            torch.set_num_threads(job.get("all_threads", job["threads"]))
            verdict, rows = judge_greedy(hf, inputs, request["index"], request["tokens"], request["tolerance"])
            if verdict["exact"]:  # the HF model's own greedy path: kept for a recorded reference
                np.save(Path(job["work"]) / f"greedy-{judged}.npy", rows)
                verdict = {**verdict, "index": request["index"],
                           "tokens": until_eos(request["tokens"], set(inputs["eos_ids"])),
                           "rows": str(Path(job["work"]) / f"greedy-{judged}.npy")}
            judged += 1
            emit(verdict)
    return {}


def _inputs_beside_model(hf: HFModel, new_tokens: int, emit) -> dict:
    """The token ids, made by a forked copy of this process (which sends them to the export at
    once) while this one imports the model's class and loads its weights: on two cores instead of
    one after the other. The fork comes once torch and the model's configuration are imported,
    which both halves need (2.4 s of the 3.6 s to the first logits of SmolLM2-135M in a fresh
    process), and before torch has run anything, so that the copy starts no thread pool of its
    own. Linux only: macOS does not allow a fork after such imports."""
    from transformers import AutoConfig

    AutoConfig.from_pretrained(hf.folder, trust_remote_code=hf.trust_remote_code)
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: the ids to the export and to this process, then gone
        code = 1
        try:
            os.close(read)
            inputs = reference_inputs(hf.folder, hf.trust_remote_code, new_tokens)
            emit(inputs)
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(inputs))
            code = 0
        except BaseException:  # noqa: BLE001 - its traceback goes to the export's log
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    hf.loaded()
    with os.fdopen(read) as received:
        text = received.read()
    os.waitpid(pid, 0)
    if not text:
        raise RuntimeError("the tokenizer could not make the reference's token ids (its error is above)")
    return json.loads(text)
