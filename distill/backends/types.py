"""What every backend takes and returns: the sampling settings, one completion, and the collector
that hands each prompt's completions over as soon as they are all there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.core.teacher_logprobs import TokenLogprobs


@dataclass
class Sampling:
    n: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    logprobs: int = 0                 # K > 0: keep the model's top-K log-probs of every generated token
    sampler_logprobs: bool = False    # keep each drawn token's log-prob under the sampling distribution
                                      # (after temperature and top-p; hf: on-policy importance weights)


@dataclass
class Completion:
    text: str                          # generated text after the prompt (after the "<think>\n" prefill)
    finish_reason: str                 # "stop" (end-of-turn or stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None       # a separate reasoning channel (DeepSeek API `reasoning_content`)
    ttft_s: float | None = None        # time to first token
    decode_s: float | None = None      # time from the first token to the last
    error: str | None = None           # set when the request failed for good (openai)
    token_ids: list[int] | None = None # the generated ids, end-of-turn excluded (hf, gguf)
    stop_token: int | None = None      # the end-of-turn id the sample stopped on (hf; on-policy
                                       # training scores it too)
    logprobs: "TokenLogprobs | None" = None  # with Sampling.logprobs: every generated token's id and
                                       # log-prob and the top-K, the stop token included
    sampler_logprobs: list[float] | None = None  # with Sampling.sampler_logprobs (hf): one per
                                       # generated token, the stop token included


class Collector:
    """Gathers the completions of `n_prompts` prompts as they finish, in any order, and calls
    `on_done(i, completions)` as soon as prompt i has all of them. Greedy decoding asks for one
    copy per prompt and repeats it `n` times (every sample would be the same)."""

    def __init__(self, n_prompts: int, sampling: Sampling, on_done=None):
        self.copies = 1 if sampling.temperature == 0 else sampling.n
        self.n, self.on_done = sampling.n, on_done
        self.results: list[list] = [[None] * sampling.n for _ in range(n_prompts)]
        self._missing = [self.copies] * n_prompts

    def jobs(self) -> list[tuple[int, int]]:
        """(prompt index, copy index) for every generation to run."""
        return [(i, j) for i in range(len(self.results)) for j in range(self.copies)]

    def add(self, i: int, j: int, completion: Completion) -> None:
        if self.copies == 1:
            self.results[i] = [completion] * self.n
        else:
            self.results[i][j] = completion
        self._missing[i] -= 1
        if self._missing[i] == 0 and self.on_done is not None:
            self.on_done(i, self.results[i])
