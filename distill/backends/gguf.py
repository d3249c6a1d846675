"""`gguf:FILE`: llama.cpp through llama-cpp-python, in this process, many sequences at a time.

The prompt is rendered with the GGUF's own chat template (`tokenizer.chat_template`, with the
model's BOS/EOS strings) and the assistant turn opened with "<think>\\n", then tokenized with
special tokens parsed and no BOS added (the template writes it where the model wants it), which
is how transformers tokenizes a rendered chat.

Generation is batched (distill/backends/gguf_batch.py): up to `batch_size` samples are decoded
together in one llama.cpp context, one sequence id each, and a finished sample's slot is given to
the next waiting one at once. A prompt is evaluated once for its k samples (its KV cache is copied
to their sequences). A sample stops at any end-of-generation token of the vocabulary (llama.cpp's
`is_eog`), at a stop string, or at the token limit or the end of its context window ("length").
Sampling is temperature, then top-p, then a draw (top-k, min-p and the repeat penalty are off;
temperature 0 is greedy: the argmax, once per prompt); sample j of a prompt draws with its own
generator seeded `seed + j`, so a sample does not depend on what else is in the batch. The batch
shape does change llama.cpp's logits in the last bits, so greedy text can differ from
one-at-a-time decoding where the model's top two tokens are a near tie; for a given list of
prompts and settings the schedule, and so the text, is the same on every run.

Options of `load` (unknown ones are ignored, so callers can pass one set to every backend):
    n_ctx       context window of one sample in tokens (8192; 0 takes the model's training context)
    threads     CPU threads (default: all cores)
    n_batch     prompt tokens evaluated per llama.cpp batch (512)
    batch_size  samples decoded together; the KV cache holds batch_size x window tokens, the
                window being the longest prompt plus max_new_tokens (at most n_ctx). Default
                (None): 32, fewer when that cache would take more than a quarter of the memory
                available, so that a large model with long answers still fits a small device
    flash_attn  llama.cpp's fused attention (off, as in llama-cpp-python: slower on CPUs, below)

Beyond the contract the backend exposes `llm` (the `llama_cpp.Llama`, used for the vocabulary,
the chat template and anyone who wants llama-cpp-python's own API) and `count_tokens(text)`.
`ttft_s` runs from a sample's admission (prompt evaluation included) to its first token, and
`decode_s` from there to its last token, both in a shared batch.
"""

from __future__ import annotations

import codecs
import os
import time
from pathlib import Path
from typing import Iterator

from distill.core.chat import open_think_block
from distill.core.errors import UserError

from .types import Collector, Completion, Sampling
from .llamacpp import open_llama

MAX_SEQUENCES = 256   # llama.cpp's LLAMA_MAX_SEQ
# On two CPU cores a decode step of 32 sequences costs 3.3 ms a token at position 60 and 5.7 at
# 900, against 3.8 and 6.2 at 16 and 13.6 and 16.5 alone (SmolLM2 q8_0, bench/bench_sampling.py):
# the default batch, when its KV cache fits.
AUTO_BATCH = 32


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable), or free pages where the
    system has no /proc/meminfo."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def load(target: str, n_ctx: int = 8192, threads: int | None = None, n_batch: int = 512,
         batch_size: int | None = None, flash_attn: bool = False, **_unused) -> "GGUFBackend":
    path = Path(target)
    if not path.is_file():
        raise UserError(f"gguf:{target}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"gguf:{target}: not a GGUF file")
    try:
        import llama_cpp
    except ImportError:
        raise UserError("gguf: llama-cpp-python is not installed (pip install llama-cpp-python)") from None
    threads = threads or os.cpu_count() or 1
    try:
        # Flash attention stays off: on two CPU cores its decode step grows with the position
        # twice as fast (SmolLM2 q8_0, 32 sequences: 2.98 against 3.31 ms a token at position 60,
        # 13.5 against 5.7 at 900; bench/bench_sampling.py prints both), and reasoning is long.
        llm = open_llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_batch,
                         flash_attn=flash_attn, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"gguf:{target}: llama.cpp cannot load it ({e})") from None
    return GGUFBackend(target, llm, batch_size)


class GGUFBackend:
    kind = "gguf"

    def __init__(self, target: str, llm, batch_size: int | None = None):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.target, self.llm = target, llm
        self.batch_size = None if batch_size is None else max(1, min(int(batch_size), MAX_SEQUENCES))
        self.template = llm.metadata.get("tokenizer.chat_template")
        token_text = lambda i: llm._model.token_get_text(i) if i != -1 else ""  # noqa: E731
        self.eos_text, self.bos_text = token_text(llm.token_eos()), token_text(llm.token_bos())
        self._formatter = None
        if self.template:
            self._formatter = Jinja2ChatFormatter(self.template, eos_token=self.eos_text, bos_token=self.bos_text)

    def has_template(self) -> bool:
        return self._formatter is not None

    def render(self, user_text: str, think: bool = True) -> str:
        return self.render_messages([{"role": "user", "content": user_text}], think)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def detokenize(self, tokens: list[int]) -> bytes:
        return self.llm.detokenize(tokens, special=True)

    def generate(self, prompts: list[str], sampling: Sampling, on_done=None,
                 batch_size: int | None = None) -> list[list[Completion]]:
        """`batch_size` overrides the backend's for this call (1: one sample at a time)."""
        from .gguf_batch import BatchDecoder, Job

        collector = Collector(len(prompts), sampling, on_done)
        encoded = [self.tokenize(p) for p in prompts]
        jobs = []
        for i, j in collector.jobs():
            tokens = encoded[i]
            budget = min(sampling.max_new_tokens, self.llm.n_ctx() - len(tokens))
            if not tokens or budget <= 0:
                error = None if tokens else "the prompt is empty"
                collector.add(i, j, Completion("", "length", len(tokens), 0, ttft_s=0.0, decode_s=0.0,
                                               error=error))
                continue
            seed = sampling.seed + j if sampling.temperature > 0 else None
            jobs.append(Job(i, j, tokens, budget, seed))
        if jobs:
            window = max(len(job.prompt) + job.budget for job in jobs)
            slots = min(batch_size or self.batch_size or self.auto_batch(window), len(jobs))
            with BatchDecoder(self, slots, window=window) as decoder:
                decoder.run(jobs, sampling, lambda job, completion: collector.add(job.index, job.copy, completion))
        return collector.results

    def kv_bytes_per_token(self) -> int:
        """Bytes of f16 KV cache one token takes: layers x KV heads x (key + value width) x 2."""
        import llama_cpp
        model = self.llm._model.model
        arch = self.llm.metadata.get("general.architecture", "")
        n_head = llama_cpp.llama_model_n_head(model)
        head_dim = llama_cpp.llama_model_n_embd(model) // max(1, n_head)
        key = int(self.llm.metadata.get(f"{arch}.attention.key_length", head_dim))
        value = int(self.llm.metadata.get(f"{arch}.attention.value_length", head_dim))
        return llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model) * (key + value) * 2

    def auto_batch(self, window: int) -> int:
        """AUTO_BATCH sequences, fewer when their KV cache (window rounded up to llama.cpp's
        256-cell padding) would take more than a quarter of the available memory."""
        from .gguf_batch import padded_cells
        fits = available_memory() // 4 // max(1, padded_cells(window) * self.kv_bytes_per_token())
        return int(max(1, min(AUTO_BATCH, fits)))

    # `distill chat`: a whole conversation rendered, and one sample streamed as it is decoded.

    def render_messages(self, messages: list[dict], think_prefill: bool = True) -> str:
        """The prompt of a conversation (system, user and assistant turns), rendered like `render`."""
        if self._formatter is None:
            raise UserError(f"gguf:{self.target}: the GGUF has no chat template "
                            "(tokenizer.chat_template); export it from a model with one")
        text = self._formatter(messages=messages).prompt
        return open_think_block(text) if think_prefill else text

    def stream(self, prompt: str, sampling: Sampling) -> Iterator[str]:
        """Yield the text of one sample as llama.cpp decodes it, and return its Completion (stop
        strings are not applied). Unlike `generate`, the KV cache of the previous call is kept for
        the common prefix of the prompt: a conversation grows a turn at a time, and evaluating it
        afresh every turn would cost minutes on a Raspberry Pi."""
        import llama_cpp

        llm = self.llm
        tokens = self.tokenize(prompt)
        budget = min(sampling.max_new_tokens, llm.n_ctx() - len(tokens))
        if budget <= 0:
            return Completion("", "length", len(tokens), 0, error=f"the prompt of {len(tokens)} tokens "
                              f"fills the context of {llm.n_ctx()}")
        llm.set_seed(sampling.seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        finish, count, first = "length", 0, None
        started = time.perf_counter()
        for token in llm.generate(tokens, top_k=0, top_p=sampling.top_p if sampling.temperature else 1.0,
                                  min_p=0.0, typical_p=1.0, temp=sampling.temperature, repeat_penalty=1.0):
            first = first or time.perf_counter()
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                finish = "stop"
                break
            count += 1
            piece = decoder.decode(llm.detokenize([token], special=True))
            if piece:
                pieces.append(piece)
                yield piece
            if count >= budget:
                break
        rest = decoder.decode(b"", final=True)
        if rest:
            pieces.append(rest)
            yield rest
        last = time.perf_counter()
        first = first or last
        return Completion("".join(pieces), finish, len(tokens), count, ttft_s=first - started, decode_s=last - first)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
