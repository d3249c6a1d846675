"""`onnx:DIR`: an onnxruntime-genai model folder (genai_config.json, model.onnx, tokenizer).

Prompts are rendered and tokenized with the folder's Hugging Face tokenizer files, exactly as the
hf backend does, so both see the same token ids; onnxruntime-genai runs the model. Sequences are
generated in right-padded batches (onnxruntime-genai masks the padding itself)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from distill.core.chat import render_messages, render_prompt
from distill.core.errors import UserError, one_line

from .types import Completion, Sampling
from .logits import eos_ids


def read_genai_config(folder: Path) -> dict:
    path = folder / "genai_config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not an ONNX model folder (no genai_config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed genai_config.json ({one_line(e)})") from None


def open_model(folder: Path, threads: int | None):
    """The onnxruntime-genai model on the CPU, with `threads` intra-op threads when given."""
    import onnxruntime_genai as og
    try:
        config = og.Config(str(folder))
        config.clear_providers()
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        return og.Model(config)
    except Exception as e:  # onnxruntime raises plain RuntimeErrors for unreadable models
        raise UserError(f"{folder}: onnxruntime-genai cannot load the model ({one_line(e)[:200]})") from None


def open_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure here means the folder lacks a usable tokenizer
        raise UserError(f"{folder}: no usable tokenizer files ({one_line(e)[:200]})") from None


def _physical_cores() -> int:
    import psutil  # onnxruntime's default intra-op pool: one thread per physical core
    return psutil.cpu_count(logical=False) or 1


class OnnxBackend:
    kind = "onnx"

    def __init__(self, folder: Path, threads: int | None, batch_size: int, trust_remote_code: bool):
        genai = read_genai_config(folder)["model"]
        self.folder = folder
        self.threads = threads or _physical_cores()
        self.batch_size = batch_size
        self.context_length = int(genai.get("context_length") or 2048)
        self.tokenizer = open_tokenizer(folder, trust_remote_code)
        self.eos_ids = set(eos_ids(genai))
        if not self.eos_ids:
            raise UserError(f"{folder}: genai_config.json names no eos_token_id")
        pad = genai.get("pad_token_id")
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.vocab_size = int(genai.get("vocab_size") or 0)
        self.model = open_model(folder, self.threads)

    def render(self, user_text: str, think: bool = True) -> str:
        return render_prompt(self.tokenizer, user_text, think_prefill=think, where=str(self.folder))

    def encode(self, text: str) -> list[int]:
        # the rendered prompt already holds every special token the chat template wants
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[str], sampling: Sampling,
                 on_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        copies = 1 if sampling.temperature == 0 else sampling.n  # greedy: generate once, copy
        jobs = [(i, j) for i in range(len(prompts)) for j in range(copies)]
        ids = [self.encode(p) for p in prompts]
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in prompts]
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start:start + self.batch_size]
            done = self._generate_batch([ids[i] for i, _ in batch], sampling, seed=sampling.seed + start)
            for (i, j), completion in zip(batch, done):
                if copies == 1:
                    results[i] = [completion] * sampling.n
                else:
                    results[i][j] = completion
                if j == copies - 1 and on_done is not None:
                    on_done(i, results[i])
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch_ids: list[list[int]], sampling: Sampling, seed: int) -> list[Completion]:
        import onnxruntime_genai as og
        longest = max(len(x) for x in batch_ids)
        budget = min(sampling.max_new_tokens, self.context_length - longest)
        if budget < 1:
            return [Completion("", "length", len(x), 0, error=f"prompt of {len(x)} tokens does not fit "
                               f"the context of {self.context_length}") for x in batch_ids]
        tokens = np.full((len(batch_ids), longest), self.pad_id, dtype=np.int32)
        for row, x in enumerate(batch_ids):
            tokens[row, :len(x)] = x
        generator = self._generator(og, sampling, len(batch_ids), longest + budget, seed)
        started = time.perf_counter()
        generator.append_tokens(tokens)
        outputs: list[list[int]] = [[] for _ in batch_ids]
        finish: list[str | None] = [None] * len(batch_ids)
        first_token_at = None
        for _ in range(budget):
            if generator.is_done():
                break
            generator.generate_next_token()
            if first_token_at is None:
                first_token_at = time.perf_counter()
            for row, token in enumerate(generator.get_next_tokens()):
                if finish[row] is not None:
                    continue
                outputs[row].append(int(token))
                if int(token) in self.eos_ids:
                    finish[row] = "stop"
                elif sampling.stop and self._hits_stop(outputs[row], sampling.stop):
                    finish[row] = "stop"
            if all(f is not None for f in finish):
                break
        ended = time.perf_counter()
        completions = []
        for row, out in enumerate(outputs):
            # like the hf and gguf backends: the end-of-turn token is neither text nor counted
            text_ids = out[:-1] if out and out[-1] in self.eos_ids else out
            text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
            cuts = [text.find(s) for s in sampling.stop if s and s in text]
            completions.append(Completion(
                text=text[:min(cuts)] if cuts else text,
                finish_reason=finish[row] or "length", prompt_tokens=len(batch_ids[row]),
                completion_tokens=len(text_ids),
                ttft_s=(first_token_at - started) if first_token_at else None,
                decode_s=(ended - first_token_at) if first_token_at else None))
        return completions

    def _hits_stop(self, out: list[int], stop: list[str]) -> bool:
        tail = self.tokenizer.decode(out[-16:], skip_special_tokens=False)
        return any(s in tail for s in stop)

    # `distill chat`: a whole conversation rendered, and one sample streamed as it is decoded.

    def render_messages(self, messages: list[dict], think_prefill: bool = True) -> str:
        return render_messages(self.tokenizer, messages, think_prefill, where=str(self.folder))

    def stream(self, prompt: str, sampling: Sampling) -> Iterator[str]:
        """Yield the text of one sample as onnxruntime-genai's generator loop produces it, and return
        its Completion (stop strings are not applied)."""
        import onnxruntime_genai as og

        ids = self.encode(prompt)
        budget = min(sampling.max_new_tokens, self.context_length - len(ids))
        if budget < 1:
            return Completion("", "length", len(ids), 0, error=f"the prompt of {len(ids)} tokens fills the "
                              f"context of {self.context_length}")
        generator = self._generator(og, sampling, 1, len(ids) + budget, sampling.seed)
        started = time.perf_counter()
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        out: list[int] = []
        shown, finish, first = "", "length", None
        while len(out) < budget and not generator.is_done():
            generator.generate_next_token()
            first = first or time.perf_counter()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos_ids:
                finish = "stop"
                break
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=False)
            if not text.endswith("\ufffd") and text.startswith(shown):  # a character still incomplete waits
                piece, shown = text[len(shown):], text
                if piece:
                    yield piece
        text = self.tokenizer.decode(out, skip_special_tokens=False)
        if text.startswith(shown) and text != shown:
            yield text[len(shown):]
        last = time.perf_counter()
        first = first or last
        return Completion(text, finish, len(ids), len(out), ttft_s=first - started, decode_s=last - first)

    def _generator(self, og, sampling: Sampling, batch_size: int, max_length: int, seed: int):
        params = og.GeneratorParams(self.model)
        options = dict(batch_size=batch_size, max_length=max_length, random_seed=seed)
        if sampling.temperature > 0:
            # top_k off (the genai_config default is 50): the same temperature + top-p as elsewhere
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=self.vocab_size or 1 << 20)
        else:
            options.update(do_sample=False)
        params.set_search_options(**options)
        return og.Generator(self.model, params)

    def close(self) -> None:
        self.model = None


def load(target: str, threads: int | None = None, batch_size: int = 16,
         trust_remote_code: bool = False) -> OnnxBackend:
    folder = Path(target)
    if not folder.is_dir():
        raise UserError(f"{target}: no such ONNX model folder")
    return OnnxBackend(folder, threads, batch_size, trust_remote_code)
