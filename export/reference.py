"""What every artifact is checked against: the Hugging Face model's tokens and next-token
distributions on fixed text, in fp32, and its verdict on each artifact's greedy continuations.

The export makes the reference in a child process (ReferenceProcess) while it writes the GGUF
files, or reads the one an earlier export of the same weights recorded (reference_cache.py).
Greedy runs are judged by teacher forcing: one forward pass of the HF model over the
prompt and the artifact's tokens shows at every step whether the HF model would have chosen that
token. That is the verdict of decoding the HF model step by step and comparing, for one pass
instead of one weight-bound step per token. A continuation that matches exactly is the HF
model's own greedy path, and its rows are what a recorded reference judges the next export's
artifacts with (`judge_against`): they are the rows teacher forcing would give for as long as an
artifact picks the same tokens, and at its first other token the row says whether that was a
clear difference or a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from distill.backends.logits import eos_ids, torch_logits
from distill.core.chat import assistant_message, render_prompt

# Strings that trip tokenizers: digit runs, whitespace runs, non-Latin scripts and emoji, the
# chat and think tags, apostrophes and code.
TOKEN_CORPUS = [
    "0 1 12 123 1234 12345 123456789 3.14159 -42 1,000,000 2^10=1024 007",
    "Whitespace:  two   three\t\ttabs\n\nnewlines\r\n  \n   end  ",
    "   leading spaces and trailing ones   ",
    "Unicode: naïve café, Ελληνικά, русский, 日本語, 中文, العربية, emoji 😀👍🏽, ∑∫√π ≤ ≥ ≠",
    "<|im_start|>user\nWhat is 7 * 6?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nFirst, 7 * 6 = 42.\n</think>\n\nThe answer is \\boxed{42}.",
    "I've said 'RE-run' won't  work... isn't it? \"quotes\" (parens) [brackets] {braces}",
    "def f(x):\n    return x**2  # squared\n\n\nprint(f(12))",
]
GREEDY_PROMPTS = [
    "What is 17 + 25?",
    "Tom has 3 boxes with 12 apples each. He gives away 9 apples. How many apples are left?",
]
HELD_OUT = (
    "A train leaves at 9:15 and arrives at 11:40. How long is the trip in minutes?",
    "From 9:15 to 11:15 is 2 hours, which is 120 minutes. From 11:15 to 11:40 is 25 minutes. "
    "So the trip takes 120 + 25 = 145 minutes.",
    "The trip takes \\boxed{145} minutes.",
)
HELD_OUT_TOKENS = 128


def _render(tokenizer, text: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return render_prompt(tokenizer, text)
    return text


def held_out_messages() -> list[dict]:
    """The held-out conversation, which each side renders with its own chat template: the HF
    tokenizer's here, the GGUF's own in the first checker's guess (gguf_check.py), so that the
    guess equals the HF ids wherever the file is right."""
    question, reasoning, answer = HELD_OUT
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": assistant_message(reasoning, answer)}]


HELD_OUT_PLAIN = "\n".join(HELD_OUT)  # the held-out text of a model without a chat template


def _held_out_text(tokenizer) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(held_out_messages(), tokenize=False)
    return HELD_OUT_PLAIN


def _eos_ids(folder: Path, tokenizer) -> set[int]:
    from transformers import GenerationConfig
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = None
    return set(eos_ids(generation, tokenizer=tokenizer))


@dataclass
class Reference:
    """What every artifact is compared with. The HF model's outputs may still be on their way:
    `held_out_logits()` waits for them ([tokens, vocab]); `judge(index, tokens, rel_tolerance)`
    asks for the HF model's verdict on a greedy continuation of prompt `index` (see
    `greedy_verdict`) and returns a function that waits for it, so that several can be asked
    at once."""
    eos_ids: set[int]
    corpus: list[str]
    expected: dict[str, list[list[int]]]      # the HF tokenizer's ids per mode ("plain", "default")
    prompts: list[list[int]]
    held_out: list[int]
    new_tokens: int
    held_out_logits: Callable[[], np.ndarray]
    judge: Callable[[int, list[int], float], Callable[[], dict]]

    @classmethod
    def from_inputs(cls, inputs: dict, held_out_logits, judge) -> "Reference":
        """From `reference_inputs`' JSON-ready dict."""
        return cls(**{**inputs, "eos_ids": set(inputs["eos_ids"])}, held_out_logits=held_out_logits, judge=judge)


@dataclass
class HFModel:
    """The HF side, kept where the reference is made; the model loads on first use."""
    folder: Path
    trust_remote_code: bool = False
    model: object = None

    def loaded(self):
        if self.model is None:
            import torch
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # our own progress lines say what is happening
            try:
                self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32,
                                                                  trust_remote_code=self.trust_remote_code).eval()
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return self.model


def reference_inputs(folder: Path, trust_remote_code: bool, new_tokens: int) -> dict:
    """The token ids of the reference (the HF tokenizer alone), as JSON-ready lists."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    corpus = list(TOKEN_CORPUS)
    corpus.append(_render(tokenizer, GREEDY_PROMPTS[0]))
    specials = [t for t in tokenizer.get_added_vocab()][:64]
    corpus.append("x" + " y".join(specials) + "\nz")
    return {"eos_ids": sorted(_eos_ids(folder, tokenizer)), "corpus": corpus,
            "expected": {mode: [tokenizer.encode(text, add_special_tokens=special) for text in corpus]
                         for mode, special in (("plain", False), ("default", True))},
            "prompts": [tokenizer.encode(_render(tokenizer, t), add_special_tokens=False) for t in GREEDY_PROMPTS],
            "held_out": tokenizer.encode(_held_out_text(tokenizer), add_special_tokens=False)[:HELD_OUT_TOKENS],
            "new_tokens": new_tokens}


def judge_against(paths: Callable[[], list[tuple[list[int], np.ndarray]]], eos: set[int], new_tokens: int):
    """A `Reference.judge` from the HF model's greedy paths: (tokens, next-token logits before each
    of them) per prompt, token i being row i's argmax."""
    def judge(index: int, tokens: list[int], rel_tolerance: float) -> Callable[[], dict]:
        # The paths hold new_tokens rows at most; an artifact's run is that long at most anyway.
        tokens = until_eos([int(t) for t in tokens], eos)[:new_tokens]
        return lambda: greedy_verdict(paths()[index][1], tokens, eos, rel_tolerance, new_tokens)
    return judge


def local_reference(folder: Path, new_tokens: int = 16, trust_remote_code: bool = False) -> Reference:
    """The reference made in this process (tests; the export makes it in a ReferenceProcess)."""
    hf = HFModel(folder, trust_remote_code)
    inputs = reference_inputs(folder, trust_remote_code, new_tokens)
    logits = torch_logits(hf.loaded(), inputs["held_out"])

    def judge(index: int, tokens: list[int], rel_tolerance: float) -> Callable[[], dict]:
        verdict, _ = judge_greedy(hf, inputs, index, tokens, rel_tolerance)
        return lambda: verdict

    return Reference.from_inputs(inputs, held_out_logits=lambda: logits, judge=judge)


class ReferenceProcess:
    """The reference made and kept in a `python -m distill.export.worker reference` child: importing
    torch and transformers and loading the model there run on another core while this process
    hashes and writes the GGUF files (in a thread they would take turns on the GIL). It sends
    the token ids first, so that a llama.cpp check can decode its own outputs while the model
    still loads, then the held-out logits (a .npy file in `work`), then the verdicts asked for,
    in order; `release` frees its model until it is needed again. The first exact match of each
    prompt keeps its rows (a .npy file), so that the reference can be recorded (`parts`)."""

    cached = False

    def __init__(self, folder: Path, new_tokens: int, threads: int, trust_remote_code: bool, work: Path,
                 all_threads: int = 1, waiting=None):
        from .child import Child, absolute

        work.mkdir(parents=True, exist_ok=True)
        self.folder, self.work, logits_path = folder, work, work / "held_out_logits.npy"
        self.new_tokens = new_tokens
        job = {"folder": absolute(folder), "new_tokens": new_tokens, "threads": threads, "all_threads": all_threads,
               "trust_remote_code": trust_remote_code, "logits": absolute(logits_path), "work": absolute(work)}
        self.child = waiting.begin(job) if waiting is not None else Child("reference", job, work / "reference.log")
        self._inputs: dict | None = None
        self._ref: Reference | None = None
        self._logits: np.ndarray | None = None
        self._paths: dict[int, tuple[list[int], Path]] = {}  # prompt -> an exactly matching run's rows
        self._asked = 0            # verdicts asked for
        self._verdicts: list = []  # verdicts read so far, in the order asked

    def _receive(self) -> dict:
        from distill.core.errors import UserError

        from .child import NativeAbort
        try:
            return self.child.receive()
        except NativeAbort as e:
            raise UserError(f"{self.folder}: transformers could not run the model to check the export "
                            f"against it: {e}") from None

    def inputs(self) -> Reference:
        """The reference, once its token ids are there (the model's outputs follow)."""
        if self._ref is None:
            self._inputs = self._receive()
            self._ref = Reference.from_inputs(self._inputs, held_out_logits=self._held_out_logits, judge=self._judge)
        return self._ref

    def _held_out_logits(self) -> np.ndarray:
        self.inputs()
        if self._logits is None:
            self._logits = np.load(self._receive()["held_out_logits"], mmap_mode="r")
        return self._logits

    def _judge(self, index: int, tokens: list[int], rel_tolerance: float) -> Callable[[], dict]:
        self.child.send({"index": index, "tokens": [int(t) for t in tokens], "tolerance": rel_tolerance})
        number, self._asked = self._asked, self._asked + 1

        def verdict() -> dict:
            self._held_out_logits()  # sent before any verdict
            while len(self._verdicts) <= number:
                received = self._receive()
                rows = received.pop("rows", None)
                if rows is not None:
                    self._paths.setdefault(received.pop("index"), (received.pop("tokens"), Path(rows)))
                self._verdicts.append(received)
            return self._verdicts[number]
        return verdict

    def complete(self) -> bool:
        """Whether every prompt has the HF model's greedy path (some artifact matched it exactly)."""
        return self._inputs is not None and len(self._paths) == len(self._inputs["prompts"])

    def parts(self) -> tuple[dict, Path, list[tuple[list[int], Path]]]:
        """(token ids and settings, the held-out logits' .npy file, per prompt the greedy path's
        tokens and .npy file of rows), once complete."""
        self._held_out_logits()
        return self._inputs, self.work / "held_out_logits.npy", [self._paths[i] for i in range(len(self._paths))]

    def release(self) -> None:
        self._held_out_logits()
        self.child.send({"release": True})

    def stop(self) -> None:
        if self.child.proc.poll() is None:
            self.child.stop()


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens


def judge_greedy(hf: HFModel, inputs: dict, index: int, tokens: list[int],
                 rel_tolerance: float) -> tuple[dict, np.ndarray]:
    """An artifact's greedy continuation of prompt `index`, judged by the HF model (teacher
    forced; the logits of the prompt's own positions are not computed): the verdict and the rows."""
    import torch

    eos = set(inputs["eos_ids"])
    tokens = until_eos([int(t) for t in tokens], eos)
    with torch.inference_mode():
        logits = hf.loaded()(torch.tensor([inputs["prompts"][index] + tokens]),
                             logits_to_keep=len(tokens) + 1).logits[0].float().numpy()
    return greedy_verdict(logits, tokens, eos, rel_tolerance, inputs["new_tokens"]), logits


def greedy_verdict(step_logits: np.ndarray, tokens: list[int], eos_ids: set[int], rel_tolerance: float,
                   new_tokens: int | None = None) -> dict:
    """Whether `tokens` are the greedy choices of the model whose next-token logits before each of
    them are `step_logits` (one row more than the tokens: the step after the last one). A token
    other than the argmax where the model had two candidates within `rel_tolerance` of its logit
    scale is a tie that rounding may break either way, not an error; everything after it is no
    longer comparable. Tokens that end early (no end-of-generation id, fewer than `new_tokens`)
    are a difference at the step where the model would have gone on."""
    for i, token in enumerate(tokens):
        step = step_logits[i]
        best = int(step.argmax())
        if token != best:
            gap = float(step[best] - step[token]) if token < step.shape[0] else float("inf")
            tol = rel_tolerance * max(1.0, float(np.abs(step).max()))
            return {"match": gap <= tol, "exact": False, "first_difference": i, "logit_gap": round(gap, 6),
                    "tolerance": round(tol, 6), "expected": best, "got": tokens}
    ended = bool(tokens) and tokens[-1] in eos_ids
    if not ended and new_tokens is not None and len(tokens) < new_tokens:
        return {"match": False, "exact": False, "first_difference": len(tokens),
                "expected": int(step_logits[len(tokens)].argmax()), "got": tokens}
    return {"match": True, "exact": True}
