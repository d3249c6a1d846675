"""`hf:PATH_OR_ID`: transformers, any causal LM including MoE (Qwen3-MoE, Qwen2-MoE, Mixtral,
DeepSeek-V3 family).

Batched generation with the KV cache: prompts are tokenized as rendered (no extra special tokens,
the chat template already wrote them), sorted by length so that a batch wastes little padding,
left-padded, and each prompt is repeated `n` times in the batch (greedy decoding, temperature 0,
generates once and copies). A sample stops at the end-of-turn token: the ids in the model's
generation_config `eos_token_id` plus the tokenizer's eos. `finish_reason` is "length" when the
token limit was reached without it. Stop strings are looked for in the generated text only
(never across the prompt) and the text is cut before them. Sampling uses exactly temperature and
top-p (top-k, min-p and repetition penalty are turned off) so that the numbers compare with the
other backends.

Options of `load` (unknown ones are ignored, so callers can pass one set to every backend):
    dtype               "auto" (bf16 on a GPU, fp32 on CPU), "float32", "bfloat16", "float16"
    trust_remote_code   run the repository's own code (only when the user asked for it)
    batch_size          sequences per forward pass (16)
    threads             torch CPU threads (default: torch's choice)
    device_map          passed to from_pretrained (default "auto" on a GPU, none on CPU)

Beyond the contract the backend exposes `model`, `tokenizer`, `device` and `count_tokens(text)`.
Timings: `ttft_s` is the time to the batch's first generated token; `decode_s` runs from there to
the sample's last token (the batch is shared, so these are per-batch figures).
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.core.chat import render_prompt
from distill.core.errors import UserError

from . import Collector, Completion, Sampling

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
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def render(self, user_text: str) -> str:
        return render_prompt(self.tokenizer, user_text, where=f"hf:{self.target}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], sampling: Sampling, on_done=None) -> list[list[Completion]]:
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        collector = Collector(len(prompts), sampling, on_done)
        rows = sorted(collector.jobs(), key=lambda ij: -len(encoded[ij[0]]))
        torch.manual_seed(sampling.seed)
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            for (i, j), completion in zip(batch, self._generate_batch([encoded[i] for i, _ in batch], sampling)):
                collector.add(i, j, completion)
        return collector.results

    def _generate_batch(self, token_lists: list[list[int]], sampling: Sampling) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(t) for t in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(token_lists), width), dtype=torch.long)
        for row, tokens in enumerate(token_lists):
            if tokens:
                input_ids[row, width - len(tokens):] = torch.tensor(tokens)
                attention[row, width - len(tokens):] = 1
        watch = _StepWatch(self.tokenizer, width, sampling.stop)
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                stopping_criteria=StoppingCriteriaList([watch]), **self._sampling_kwargs(sampling))
        completions = []
        for row, (tokens, prompt) in enumerate(zip(output[:, width:].tolist(), token_lists)):
            length = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
            finish = "stop" if length is not None else "length"
            if length is None:
                length = len(tokens)
            if row in watch.stopped_at and watch.stopped_at[row] <= length:
                length, finish = watch.stopped_at[row], "stop"
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=False)
            cuts = [text.find(s) for s in sampling.stop if s and s in text]
            if cuts:
                text, finish = text[:min(cuts)], "stop"
            steps = watch.times
            first = steps[0] if steps else time.perf_counter()
            last = steps[min(length, len(steps)) - 1] if steps and length else first
            ended = length < len(tokens) and tokens[length] in self.eos_ids
            completions.append(Completion(
                text=text, finish_reason=finish, prompt_tokens=len(prompt),
                completion_tokens=length, ttft_s=first - started, decode_s=last - first,
                token_ids=tokens[:length + 1] if ended else tokens[:length]))
        return completions

    def _sampling_kwargs(self, sampling: Sampling) -> dict:
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=self.eos_ids,
                      pad_token_id=self.pad_id, min_p=None, repetition_penalty=1.0)
        if sampling.temperature > 0:
            # top_k=0 turns off the top-k=50 a checkpoint's generation_config may carry.
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=None)
        return kwargs

    def close(self) -> None:
        self.model = None


def _eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = getattr(model.config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids = [i for i in dict.fromkeys(ids) if i is not None]
    if not ids:
        raise UserError("model: neither the generation config nor the tokenizer names an "
                        "end-of-sequence token")
    return ids


class _StepWatch:
    """A stopping criterion that notes when each token of the batch was produced and stops a
    row when its generated text (never the prompt) contains a stop string."""

    def __init__(self, tokenizer, prompt_width: int, stops: list[str]):
        self.tokenizer, self.width = tokenizer, prompt_width
        self.stops = [s for s in stops if s]
        self.tail = max((len(s) for s in self.stops), default=0) + 2
        self.times: list[float] = []
        self.stopped_at: dict[int, int] = {}

    def __call__(self, ids, scores, **kwargs):
        import torch
        self.times.append(time.perf_counter())
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        if self.stops:
            generated = ids.shape[1] - self.width
            for row in range(ids.shape[0]):
                if row in self.stopped_at:
                    continue
                tail = ids[row, max(self.width, ids.shape[1] - self.tail):].tolist()
                if any(s in self.tokenizer.decode(tail, skip_special_tokens=False) for s in self.stops):
                    self.stopped_at[row] = generated
                    done[row] = True
        return done
