"""Many samples decoded together in one llama.cpp context (llama-cpp-python's low-level API).

Each slot of the context is one sequence id with a KV stream of its own (`kv_unified` off: a
token attends only to its own sequence, which is what keeps a batch of long samples cheap). A
sample enters a free slot with its prompt's first L-1 tokens in the cache. When a sample in
another slot shares a beginning with it (a sample of the same prompt, or of another prompt with
the same system prompt and template), that slot's stream is copied (`llama_memory_seq_cp`; a
copy across streams takes the whole stream), cut back to the shared tokens, and only the rest is
evaluated. Every decode step then feeds one token per active slot (the prompt's last token
first) and asks for the logits of each. So a prompt is evaluated once for its k samples, a
shared system prompt once while a sample holds it, and the samples of several prompts share
every weight read of a step.
"""

from __future__ import annotations

import ctypes
import heapq
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from distill.core.errors import UserError

from .types import Completion, Sampling


# Fewer shared tokens than this are evaluated again rather than copied: a copy moves the whole
# stream, and a few tokens evaluated with the prompt's rest cost almost nothing.
MIN_SHARED = 8


def _shared(a: list[int], b: list[int], limit: int) -> int:
    """How many tokens `a` and `b` begin with in common, at most `limit`."""
    n = 0
    for x, y in zip(a, b):
        if x != y or n == limit:
            break
        n += 1
    return n


def padded_cells(window: int) -> int:
    """The KV cells llama.cpp gives a sequence of `window` tokens: contexts are padded to 256."""
    return -(-window // 256) * 256


def draw(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Temperature, then top-p, then a draw: the distribution of llama.cpp's temp -> top-p -> dist
    chain (the nucleus is the shortest run of the most likely tokens whose mass reaches top_p, the
    token that crosses it included), at a tenth of its cost over a 49k vocabulary. The nucleus is
    found among the tokens above a small share of the total mass first; when those alone reach
    top_p they are a prefix of the sorted vocabulary, so the nucleus lies among them exactly, and
    only a flat distribution needs the whole vocabulary sorted."""
    probs = np.subtract(logits, logits.max(), dtype=np.float32)
    probs *= 1.0 / temperature
    np.exp(probs, out=probs)
    total = float(probs.sum(dtype=np.float64))
    keep = None
    if top_p < 1.0:
        keep = np.flatnonzero(probs > total * 1e-4)
        if probs[keep].sum(dtype=np.float64) < top_p * total:
            keep = np.arange(len(probs))
        keep = keep[np.argsort(-probs[keep], kind="stable")]
        mass = np.cumsum(probs[keep], dtype=np.float64)
        keep = keep[:int(np.searchsorted(mass, top_p * total)) + 1]
        return int(keep[_inverse_cdf(probs[keep], rng.random())])
    return _inverse_cdf(probs, rng.random())


# Tokens per block of the two-level draw below.
BLOCK = 1024


def _inverse_cdf(probs: np.ndarray, u: float) -> int:
    """The index whose cumulative mass first exceeds u x the total (the same rule as a cumsum
    over all of `probs`), found among block sums first and then inside one block: a float64
    cumsum over a 49k vocabulary was 1.9 s of a 62 s `distill eval` (12,000 draws at top_p = 1,
    the eval default); summing blocks is vectorised and the cumsum covers one block. A nucleus
    under BLOCK tokens is one block."""
    sums = np.add.reduceat(probs, np.arange(0, len(probs), BLOCK), dtype=np.float64)
    cumulative = np.cumsum(sums)
    target = u * cumulative[-1]
    block = min(int(np.searchsorted(cumulative, target, side="right")), len(sums) - 1)
    start = block * BLOCK
    inner = np.cumsum(probs[start:start + BLOCK], dtype=np.float64)
    rest = target - (cumulative[block - 1] if block else 0.0)
    return start + min(int(np.searchsorted(inner, rest, side="right")), len(inner) - 1)


@dataclass
class Job:
    """One sample to generate: prompt `index`, sample `copy`, its token budget, and its seed
    (None: greedy)."""
    index: int
    copy: int
    prompt: list[int]
    budget: int
    seed: int | None
    until_eog: bool = True   # False: exactly `budget` tokens, end-of-generation ids included (export's checks)
    # decoding state
    slot: int = -1
    pos: int = 0
    next_token: int = 0
    out: list[int] = field(default_factory=list)
    tail: bytes = b""
    rng: np.random.Generator | None = None
    finish: str = "length"
    started: float = 0.0
    first: float | None = None
    last: float = 0.0
    lp: list = field(default_factory=list)  # per generated token: (id, log-prob, top-K ids, top-K log-probs)


class BatchDecoder:
    def __init__(self, backend, slots: int, window: int):
        import llama_cpp

        self.backend, self.llm, self.slots = backend, backend.llm, slots
        params = llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)
        self.n_batch = max(int(params.n_batch), slots)
        params.n_seq_max = slots
        params.kv_unified = False
        window = padded_cells(window)
        params.n_ctx = slots * window     # llama.cpp gives each sequence n_ctx / n_seq_max
        params.n_batch = params.n_ubatch = self.n_batch
        params.embeddings = False
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not self.ctx:
            raise UserError(f"gguf:{backend.target}: llama.cpp cannot make a context of {slots} sequences "
                            f"x {window} tokens (lower --batch-size or the token limit)")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.vocab = self.llm._model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._pieces: dict[int, bytes] = {}

    def __enter__(self) -> "BatchDecoder":
        return self

    def __exit__(self, *exc) -> None:
        import llama_cpp
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    def run(self, jobs: list[Job], sampling: Sampling, on_done) -> None:
        """Decode every job; `on_done(job, completion)` as each one finishes."""
        stops = [s.encode("utf-8") for s in sampling.stop if s]
        self.temperature, self.top_p, self.logprobs = sampling.temperature, sampling.top_p, sampling.logprobs
        pending, free = deque(jobs), list(range(self.slots))  # a heap: the lowest free slot first
        active: dict[int, Job] = {}
        try:
            self._run(pending, free, active, sampling, stops, on_done)
        finally:
            for job in active.values():
                self._release(job)

    def _run(self, pending, free, active, sampling, stops, on_done) -> None:
        while pending or active:
            while pending and free:
                job = pending.popleft()
                self._admit(job, heapq.heappop(free), active)
                active[job.slot] = job
            # llama.cpp puts only consecutive sequence ids in one micro-batch when each sequence
            # has its own stream: in slot order, the busy slots (the lowest ones) decode in one pass
            order = sorted(active.values(), key=lambda job: job.slot)
            self._decode([(job.next_token, job.pos, job.slot, True) for job in order])
            # Drawn on this thread: a thread pool of as many threads as the decode uses made 32
            # samples 2.5% slower on two cores (draws are 3% of a step; llama.cpp's threads
            # compete with the pool's).
            drawn = [self._sample(job, k) for k, job in enumerate(order)]
            for job, token in zip(order, drawn):
                if self._advance(job, token, stops):
                    self._release(job)
                    del active[job.slot]
                    heapq.heappush(free, job.slot)
                    on_done(job, self._completion(job, sampling))

    def _admit(self, job: Job, slot: int, active: dict[int, Job]) -> None:
        import llama_cpp

        job.slot, job.started = slot, time.perf_counter()
        head = len(job.prompt) - 1
        # o.pos: the tokens in o's cache (a sample admitted in this same round has its prompt's
        # last token still to decode)
        shared, source = max(((_shared(o.prompt, job.prompt, min(head, o.pos)), o.slot) for o in active.values()),
                             default=(0, None))
        done = 0
        if shared >= MIN_SHARED or shared == head > 0:  # copy the whole stream, then cut it back
            llama_cpp.llama_memory_seq_cp(self.mem, source, slot, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.mem, slot, shared, -1)
            done = shared
        for start in range(done, head, self.n_batch):
            chunk = job.prompt[start:min(head, start + self.n_batch)]
            self._decode([(t, start + n, slot, False) for n, t in enumerate(chunk)])
        job.pos, job.next_token = head, job.prompt[-1]
        if job.seed is not None:
            job.rng = np.random.default_rng(job.seed)

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence id, wants logits) entries."""
        import llama_cpp

        batch = self.batch
        for k, (token, pos, seq, logits) in enumerate(tokens):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
            batch.seq_id[k][0], batch.logits[k] = seq, logits
        batch.n_tokens = len(tokens)
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise UserError(f"gguf:{self.backend.target}: llama.cpp failed to decode a batch of "
                            f"{len(tokens)} tokens (llama_decode returned {rc})")

    def _sample(self, job: Job, k: int) -> int:
        import llama_cpp
        logits = np.ctypeslib.as_array(ctypes.cast(llama_cpp.llama_get_logits_ith(self.ctx, k),
                                                   ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        token = int(logits.argmax()) if job.rng is None else draw(logits, self.temperature, self.top_p, job.rng)
        if self.logprobs:  # the model's own (temperature 1) log-probs, for `generate --logprobs`
            from distill.core.teacher_logprobs import top_k
            ids, lps, norm = top_k(logits, self.logprobs)
            job.lp.append((token, float(logits[token]) - norm, ids.tolist(), lps.tolist()))
        return token

    def _advance(self, job: Job, token: int, stops: list[bytes]) -> bool:
        """Take the sampled token; True when the sample is finished."""
        import llama_cpp
        job.last = time.perf_counter()
        job.first = job.first or job.last
        if job.until_eog and llama_cpp.llama_vocab_is_eog(self.vocab, token):
            job.finish = "stop"
            return True
        job.out.append(token)
        if stops:
            piece = self._pieces.get(token)
            if piece is None:
                piece = self._pieces[token] = self.backend.detokenize([token])
            job.tail = (job.tail + piece)[-(len(piece) + max(map(len, stops))):]
            if any(s in job.tail for s in stops):
                job.finish = "stop"
                return True
        job.next_token, job.pos = token, job.pos + 1
        return len(job.out) >= job.budget

    def _release(self, job: Job) -> None:
        import llama_cpp
        llama_cpp.llama_memory_seq_rm(self.mem, job.slot, -1, -1)
        job.rng = None

    def _completion(self, job: Job, sampling: Sampling) -> Completion:
        text = self.backend.detokenize(job.out).decode("utf-8", errors="replace")
        cuts = [text.find(s) for s in sampling.stop if s and s in text]
        if cuts:
            text = text[:min(cuts)]
        logprobs = None
        if job.lp:
            from distill.core.teacher_logprobs import TokenLogprobs
            ids, lps, top_ids, top_lps = zip(*job.lp)
            logprobs = TokenLogprobs.from_lists(ids, lps, top_ids, top_lps, sampling.logprobs)
        return Completion(text=text, finish_reason=job.finish, prompt_tokens=len(job.prompt),
                          completion_tokens=len(job.out), ttft_s=job.first - job.started,
                          decode_s=job.last - job.first, token_ids=job.out, logprobs=logprobs)
