"""`gguf:FILE`: llama.cpp through llama-cpp-python (`llama_cpp.Llama`), in this process.

The prompt is rendered with the GGUF's own chat template (`tokenizer.chat_template`, with the
model's BOS/EOS strings) and the assistant turn opened with "<think>\\n", then tokenized with
special tokens parsed and no BOS added (the template writes it where the model wants it), which
is how transformers tokenizes a rendered chat. A sample stops at any end-of-generation token of
the vocabulary (llama.cpp's `is_eog`), at a stop string, or at the token limit or the end of the
context ("length"). Sampling uses temperature and top-p only (top-k, min-p and the repeat penalty
are off; temperature 0 is greedy); sample j of a prompt is seeded with `seed + j`. Every sample
evaluates its whole prompt afresh (no prefix reuse), so the same prompt and seed always give the
same text.

Options of `load` (unknown ones are ignored, so callers can pass one set to every backend):
    n_ctx      context window in tokens (8192; 0 takes the model's training context)
    threads    CPU threads (default: all cores)
    n_batch    prompt tokens evaluated per batch (512)

Beyond the contract the backend exposes `llm` (the `llama_cpp.Llama`) and `count_tokens(text)`.
`ttft_s` includes the prompt evaluation; `decode_s` runs from the first token to the last.
"""

from __future__ import annotations

import codecs
import os
import time
from pathlib import Path
from typing import Iterator

from distill.core.chat import THINK_OPEN, open_think_block
from distill.core.errors import UserError

from . import Completion, Sampling


def load(target: str, n_ctx: int = 8192, threads: int | None = None, n_batch: int = 512,
         **_unused) -> "GGUFBackend":
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
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, n_batch=n_batch, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"gguf:{target}: llama.cpp cannot load it ({e})") from None
    return GGUFBackend(target, llm)


class GGUFBackend:
    kind = "gguf"

    def __init__(self, target: str, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.target, self.llm = target, llm
        template = llm.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            token_text = lambda i: llm._model.token_get_text(i) if i != -1 else ""  # noqa: E731
            self._formatter = Jinja2ChatFormatter(template, eos_token=token_text(llm.token_eos()),
                                                  bos_token=token_text(llm.token_bos()))

    def render(self, user_text: str) -> str:
        if self._formatter is None:
            raise UserError(f"gguf:{self.target}: the GGUF has no chat template "
                            "(tokenizer.chat_template); export it from a model with one")
        text = self._formatter(messages=[{"role": "user", "content": user_text}]).prompt
        if not text.rstrip().endswith(THINK_OPEN):
            return text + f"{THINK_OPEN}\n"
        return text if text.endswith("\n") else text + "\n"

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate(self, prompts: list[str], sampling: Sampling, on_done=None) -> list[list[Completion]]:
        results = []
        for i, prompt in enumerate(prompts):
            tokens = self.tokenize(prompt)
            if sampling.temperature == 0:
                completions = [self._sample(tokens, sampling, sampling.seed)] * sampling.n
            else:
                completions = [self._sample(tokens, sampling, sampling.seed + j) for j in range(sampling.n)]
            results.append(completions)
            if on_done is not None:
                on_done(i, completions)
        return results

    def _sample(self, prompt_tokens: list[int], sampling: Sampling, seed: int) -> Completion:
        import llama_cpp

        llm = self.llm
        budget = min(sampling.max_new_tokens, llm.n_ctx() - len(prompt_tokens))
        if budget <= 0:
            return Completion("", "length", len(prompt_tokens), 0, ttft_s=0.0, decode_s=0.0)
        llm.set_seed(seed & 0xFFFFFFFF)
        # evaluate the whole prompt every time: reusing a cached prefix re-evaluates its last
        # token in a batch of another size, which changes the logits slightly and with them
        # greedy near-ties, so the same prompt would not always give the same answer
        llm.reset()
        out: list[int] = []
        tail = b""
        finish, first = "length", None
        started = time.perf_counter()
        for token in llm.generate(prompt_tokens, top_k=0, top_p=sampling.top_p if sampling.temperature else 1.0,
                                  min_p=0.0, typical_p=1.0, temp=sampling.temperature,
                                  repeat_penalty=1.0, reset=False):
            now = time.perf_counter()
            first = first or now
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                finish = "stop"
                break
            out.append(token)
            if sampling.stop:
                tail = (tail + llm.detokenize([token], special=True))[-4096:]
                if any(s.encode("utf-8") in tail for s in sampling.stop if s):
                    finish = "stop"
                    break
            if len(out) >= budget:
                break
        last = time.perf_counter()
        text = llm.detokenize(out, special=True).decode("utf-8", errors="replace")
        cuts = [text.find(s) for s in sampling.stop if s and s in text]
        if cuts:
            text = text[:min(cuts)]
        first = first or last
        return Completion(text=text, finish_reason=finish, prompt_tokens=len(prompt_tokens),
                          completion_tokens=len(out), ttft_s=first - started, decode_s=last - first)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


# `distill chat`: a whole conversation rendered, and one sample streamed as it is decoded.

def _render_messages(self, messages: list[dict], think_prefill: bool = True) -> str:
    """The prompt of a conversation (system, user and assistant turns), rendered like `render`."""
    if self._formatter is None:
        raise UserError(f"gguf:{self.target}: the GGUF has no chat template "
                        "(tokenizer.chat_template); export it from a model with one")
    text = self._formatter(messages=messages).prompt
    return open_think_block(text) if think_prefill else text


def _stream(self, prompt: str, sampling: Sampling) -> Iterator[str]:
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


GGUFBackend.render_messages = _render_messages
GGUFBackend.stream = _stream
