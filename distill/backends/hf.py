"""`hf:PATH_OR_ID`: transformers, any causal LM including MoE (Qwen3-MoE, Qwen2-MoE, Mixtral,
DeepSeek-V3 family).

Batched generation that keeps the batch full: up to `batch_size` samples decode together with a
KV cache; a sample that ends leaves the batch at once and the next waiting prompts are prefilled
(left-padded) and join it, their cache left-padded to the batch's; cache columns no row attends
to any more are dropped. Prompts are tokenized as rendered (no extra special tokens, the chat
template already wrote them) and taken longest first; greedy decoding (temperature 0) generates
each prompt once and copies it `n` times. A sample stops at the end-of-turn token: the ids in the
model's generation_config `eos_token_id` (else its config's) plus the tokenizer's eos
(distill/backends/logits.py `eos_ids`). `finish_reason` is "length" when the token limit was
reached without it. Stop strings are looked for in a short tail of the generated text (never
across the prompt), grown by one cached token string per step, and the text is cut before them.
Sampling is exactly temperature, then top-p as transformers defines it, then a draw with the
sample's own generator seeded `seed + j` (top-k, min-p and repetition penalty off), so that the
numbers compare with the other backends and a sample does not depend on its batch. Models whose
cache is not plain growing tensors (sliding-window layers) run the same loop without joining:
new prompts wait until the batch is empty.

Options of `load` (unknown ones are ignored, so callers can pass one set to every backend):
    dtype               "auto" (bf16 on a GPU, fp32 on CPU), "float32", "bfloat16", "float16"
    trust_remote_code   run the repository's own code (only when the user asked for it)
    batch_size          sequences per forward pass (16)
    threads             torch CPU threads (default: torch's choice)
    device_map          passed to from_pretrained (default "auto" on a GPU, none on CPU)

Beyond the contract the backend exposes `model`, `tokenizer`, `device` and `count_tokens(text)`.
Timings: `ttft_s` runs from a sample's prefill to its first token, `decode_s` from there to its
last token (in a shared batch).
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from distill.core.chat import render_messages, render_prompt
from distill.core.errors import UserError

from .types import Collector, Completion, Sampling
from .logits import eos_ids

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_target(target: str) -> None:
    path = Path(target)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"hf:{target}: not a Hugging Face model folder (no config.json)")
    elif target.startswith((".", "/", "~")) or target.count("/") != 1:
        raise UserError(f"hf:{target}: no such folder (nor a hub id like Qwen/Qwen3-30B-A3B)")


def load(target: str, dtype: str = "auto", trust_remote_code: bool = False, batch_size: int = 16,
         threads: int | None = None, device_map: str | None = None, **_unused) -> "HFBackend":
    _check_target(target)
    if dtype not in DTYPES:
        raise UserError(f"dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from distill.core import progress
    if progress.QUIET:
        hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    torch_dtype = (torch.bfloat16 if gpu else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    if device_map is None and gpu:
        device_map = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            target, dtype=torch_dtype, device_map=device_map, use_safetensors=True,
            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"hf:{target}: cannot load a causal LM ({first})") from None
    model.eval()
    return HFBackend(target, model, tokenizer, batch_size)


class HFBackend:
    kind = "hf"

    def __init__(self, target: str, model, tokenizer, batch_size: int):
        self.target, self.model, self.tokenizer = target, model, tokenizer
        self.batch_size = max(1, batch_size)
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids(model.generation_config, model.config, tokenizer=tokenizer)
        if not self.eos_ids:
            raise UserError(f"hf:{target}: neither the generation config nor the tokenizer names an "
                            "end-of-sequence token")
        self._pieces: dict[int, str] = {}
        # transformers 5.x renames `past_key_values` to `cache`
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def render(self, user_text: str, think: bool = True) -> str:
        return render_prompt(self.tokenizer, user_text, think_prefill=think, where=f"hf:{self.target}")

    def render_messages(self, messages: list[dict], think_prefill: bool = True) -> str:
        return render_messages(self.tokenizer, messages, think_prefill, where=f"hf:{self.target}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], sampling: Sampling, on_done=None) -> list[list[Completion]]:
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        collector = Collector(len(prompts), sampling, on_done)
        seeded = sampling.temperature > 0
        rows = [_Row(i, j, encoded[i], sampling.seed + j if seeded else None) for i, j in collector.jobs()]
        rows.sort(key=lambda row: -len(row.prompt))  # newcomers then fit inside the batch's cache
        self._decode(rows, sampling, lambda row, completion: collector.add(row.index, row.copy, completion))
        return collector.results

    def stream(self, prompt: str, sampling: Sampling) -> Iterator[str]:
        """Yield the text of one sample as it is decoded (the same loop as `generate`, run in a
        thread), and return its Completion. Closing the iterator early stops the decoding."""
        import queue
        import threading

        row = _Row(0, 0, self.tokenizer(prompt, add_special_tokens=False)["input_ids"],
                   sampling.seed if sampling.temperature > 0 else None)
        texts: queue.Queue = queue.Queue()
        cancel = threading.Event()
        outcome: dict = {}

        def after_step():
            if cancel.is_set():
                raise _Cancelled
            texts.put(self.tokenizer.decode(row.out, skip_special_tokens=False))

        def work():
            try:
                self._decode([row], sampling, lambda _, completion: outcome.update(completion=completion), after_step)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = e
            finally:
                texts.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        shown = ""
        try:
            while (text := texts.get()) is not None:
                if len(text) > len(shown) and not text.endswith("\ufffd"):  # a whole character
                    yield text[len(shown):]
                    shown = text
        finally:
            cancel.set()
            thread.join()
        if isinstance(outcome.get("error"), _Cancelled):
            return None
        if "error" in outcome:
            raise outcome["error"]
        completion = outcome["completion"]
        if len(completion.text) > len(shown):
            yield completion.text[len(shown):]
        return completion

    def _decode(self, queue: list["_Row"], sampling: Sampling, on_done, after_step=None) -> None:
        """Decode every row, `batch_size` at a time; a finished row leaves the batch at once and
        the next waiting ones are prefilled and join it (their cache left-padded to the batch's).
        `after_step()` runs once a step, after every row took its token."""
        import torch

        queue, rows = deque(queue), []
        cache = mask = logits = None
        watch = _Watch(self.tokenizer, set(self.eos_ids), sampling, self._pieces)
        # Newcomers join once a quarter of the batch is free (or the queue fits): each join is a
        # prefill call and a copy of the whole cache, too dear to pay for every finished row.
        join_at = max(1, self.batch_size // 4)
        with torch.inference_mode():
            while queue or rows:
                free = self.batch_size - len(rows)
                if queue and free >= min(join_at, len(queue)) and (cache is None or _joinable(cache)):
                    new = [queue.popleft() for _ in range(min(free, len(queue)))]
                    new_cache, new_mask, new_logits = self._prefill(new)
                    cache, mask = _join(cache, mask, new_cache, new_mask)
                    logits = new_logits if logits is None else torch.cat([logits, new_logits])
                    rows += new
                tokens = self._pick(logits, rows, sampling)
                if sampling.logprobs:
                    _keep_logprobs(logits, rows, tokens, sampling.logprobs)
                keep = []
                for k, (row, token) in enumerate(zip(rows, tokens)):
                    if watch.advance(row, token):
                        on_done(row, watch.completion(row))
                    else:
                        keep.append(k)
                if after_step is not None:
                    after_step()
                if not keep:
                    rows, cache, mask, logits = [], None, None, None
                    continue
                if len(keep) < len(rows):
                    rows = [rows[k] for k in keep]
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask = _trim(cache, mask[index])
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                out = self.model(input_ids=torch.tensor([[row.out[-1]] for row in rows], device=self.device),
                                 attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                                 use_cache=True, **{self._cache_argument: cache})
                cache, logits = _cache_of(out), out.logits[:, -1].float()

    def _prefill(self, rows: list["_Row"]):
        """The left-padded prompts of `rows` through the model: their cache, mask and last logits."""
        import torch
        width = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        started = time.perf_counter()
        for k, row in enumerate(rows):
            input_ids[k, width - len(row.prompt):] = torch.tensor(row.prompt)
            mask[k, width - len(row.prompt):] = 1
            row.started = started
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return _cache_of(out), mask, out.logits[:, -1].float()

    def _pick(self, logits, rows: list["_Row"], sampling: Sampling) -> list[int]:
        """Greedy: the argmax. Else temperature, then top-p as transformers defines it (the
        smallest set of tokens holding top_p of the mass), then a draw with the row's own generator."""
        import torch
        if sampling.temperature == 0:
            return logits.argmax(-1).tolist()
        scaled = logits / sampling.temperature
        if sampling.top_p < 1.0:
            ordered, order = torch.sort(scaled, descending=False)
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
            drop[:, -1] = False
            scaled = scaled.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = scaled.softmax(-1)
        for row in rows:
            if row.generator is None:
                row.generator = torch.Generator(device=self.device).manual_seed(row.seed)
        tokens = [int(torch.multinomial(probs[k], 1, generator=row.generator)) for k, row in enumerate(rows)]
        if sampling.sampler_logprobs:
            for k, (row, token) in enumerate(zip(rows, tokens)):
                row.sampler.append(float(probs[k, token].log()))
        return tokens

    def close(self) -> None:
        self.model = None


class _Cancelled(Exception):
    """Raised inside the decoding thread when the streaming caller stopped listening."""


@dataclass
class _Row:
    """One sample: prompt `index`, sample `copy`, its seed (None: greedy) and what it generated."""
    index: int
    copy: int
    prompt: list[int]
    seed: int | None
    out: list[int] = field(default_factory=list)
    tail: str = ""
    finish: str = "length"
    stop_token: int | None = None
    generator: object = None
    started: float = 0.0
    first: float | None = None
    last: float = 0.0
    lp: list = field(default_factory=list)       # per generated token: (id, log-prob, top-K ids, top-K log-probs)
    sampler: list = field(default_factory=list)  # per generated token: its log-prob when it was drawn


def _keep_logprobs(logits, rows: list[_Row], tokens: list[int], k: int) -> None:
    """The model's own (temperature 1) log-prob of each row's token and its top-k, for
    `generate --logprobs`."""
    import torch
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    for i, (row, token) in enumerate(zip(rows, tokens)):
        row.lp.append((token, float(logprobs[i, token]), top.indices[i].tolist(), top.values[i].tolist()))


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _joinable(cache) -> bool:
    """Rows can join a cache whose layers are plain growing tensors (not sliding windows)."""
    return all(type(layer).__name__ == "DynamicLayer" for layer in getattr(cache, "layers", [None]))


def _join(cache, mask, new_cache, new_mask):
    """The batch's cache and mask with the new rows appended, the shorter side left-padded."""
    import torch
    if cache is None:
        return new_cache, new_mask
    width = max(mask.shape[1], new_mask.shape[1])
    pad = lambda t, dim_len: torch.nn.functional.pad(t, (0, 0, width - dim_len, 0))  # noqa: E731
    for layer, new in zip(cache.layers, new_cache.layers):
        length, new_length = layer.keys.shape[-2], new.keys.shape[-2]
        layer.keys = torch.cat([pad(layer.keys, length), pad(new.keys, new_length)])
        layer.values = torch.cat([pad(layer.values, length), pad(new.values, new_length)])
    left = lambda m: torch.nn.functional.pad(m, (width - m.shape[1], 0))  # noqa: E731
    return cache, torch.cat([left(mask), left(new_mask)])


def _trim(cache, mask):
    """Drop the cache columns on the left that no remaining row attends to."""
    first = int(mask.any(0).int().argmax())
    if first > 0 and _joinable(cache):
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        return mask[:, first:]
    return mask


class _Watch:
    """Ends rows: at an end-of-sequence id, a stop string, or the token limit. Stop strings are
    looked for in a short tail of each row's generated text (never the prompt), grown by one
    cached token string per step, so no row is decoded in full while it runs."""

    def __init__(self, tokenizer, eos: set[int], sampling: Sampling, pieces: dict[int, str]):
        self.tokenizer, self.eos, self.sampling, self.pieces = tokenizer, eos, sampling, pieces
        self.stops = [s for s in sampling.stop if s]
        self.longest = max((len(s) for s in self.stops), default=0)

    def advance(self, row: _Row, token: int) -> bool:
        """Take `token` for `row`; True when the row is finished."""
        row.last = time.perf_counter()
        row.first = row.first or row.last
        if token in self.eos:
            row.finish, row.stop_token = "stop", token
            return True
        row.out.append(token)
        if self.stops:
            piece = self.pieces.get(token)
            if piece is None:
                piece = self.pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
            row.tail = (row.tail + piece)[-(len(piece) + self.longest):]
            if any(s in row.tail for s in self.stops):
                row.finish = "stop"
                return True
        return len(row.out) >= self.sampling.max_new_tokens

    def completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.out, skip_special_tokens=False)
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            text, row.finish = text[:min(cuts)], "stop"
        logprobs = None
        if row.lp:
            from distill.core.teacher_logprobs import TokenLogprobs
            ids, lps, top_ids, top_lps = zip(*row.lp)
            logprobs = TokenLogprobs.from_lists(ids, lps, top_ids, top_lps, self.sampling.logprobs)
        return Completion(text=text, finish_reason=row.finish, prompt_tokens=len(row.prompt),
                          completion_tokens=len(row.out), ttft_s=row.first - row.started,
                          decode_s=row.last - row.first, token_ids=row.out,
                          stop_token=row.stop_token, logprobs=logprobs,
                          sampler_logprobs=list(row.sampler) if self.sampling.sampler_logprobs else None)
