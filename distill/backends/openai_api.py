"""`openai:BASE_URL`: any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp's
server, llama-cpp-python's server, the DeepSeek API). BASE_URL is what the `openai` client takes,
usually ending in `/v1` (`https://api.deepseek.com` works as it is).

The server renders the chat template, so `render(user_text)` returns the user text unchanged and
`generate` sends it as the only user message (no system prompt, no prefill). A reasoning model's
thinking comes back either inside the content (`<think>...</think>`) or on a separate channel,
`reasoning_content` (DeepSeek API, llama.cpp server, vLLM's reasoning parser) or `reasoning`
(newer vLLM); the latter is returned in `Completion.reasoning`.

`asyncio` with `concurrency` requests in flight; each sample is its own request, seeded with
`seed + j` (dropped for good if the server rejects the `seed` field). Greedy decoding
(temperature 0) sends one request per prompt and copies it. Responses are streamed so that
`ttft_s` and `decode_s` are measured; token counts come from the server's usage (the number of
streamed chunks when a server reports none).

Faults: 408, 409, 429, 5xx, timeouts (`request_timeout` seconds for the whole request), dropped
connections and streams cut short are retried up to `max_retries` times, waiting
`retry_wait * 2**attempt` seconds (half to full of it, at random; at most 60 s, or the server's
Retry-After when it gives one). A request that still fails, or that the server refuses (other
4xx), comes back as a Completion with `error` set and `finish_reason` "error"; 401, 403 and 404
(bad key, unknown model or URL) stop the whole run with a UserError.

Options of `load` (unknown ones are ignored, so callers can pass one set to every backend):
    model            the served model name (required)
    api_key_env      name of the environment variable holding the API key (the key is never
                     logged or stored); without it the key "EMPTY" is sent, as local servers expect
    concurrency (8), max_retries (6), request_timeout (600.0), retry_wait (1.0), stream (True)
    extra_body       a dict merged into every request (server-specific fields)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Iterator

from distill.core.chat import THINK_CLOSE, THINK_OPEN
from distill.core.errors import UserError

from .types import Collector, Completion, Sampling
from . import openai_logprobs
from .retry import RetriesExhausted, StreamCutShort, describe, with_retries


def load(target: str, model: str | None = None, api_key_env: str | None = None,
         concurrency: int = 8, max_retries: int = 6, request_timeout: float = 600.0,
         retry_wait: float = 1.0, stream: bool = True, extra_body: dict | None = None,
         served_model: str | None = None, teacher_tokenizer: str | None = None, **_unused) -> "OpenAIBackend":
    model = model or served_model
    if not target.startswith(("http://", "https://")):
        raise UserError(f"openai:{target}: expected a base URL such as http://127.0.0.1:8000/v1")
    if not model:
        raise UserError(f"model: openai:{target} needs the served model name (--model NAME)")
    api_key = "EMPTY"
    if api_key_env:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise UserError(f"api_key_env: the environment variable {api_key_env} is not set")
    backend = OpenAIBackend(target, model, api_key, max(1, concurrency), max(0, max_retries),
                            request_timeout, retry_wait, stream, dict(extra_body or {}))
    if teacher_tokenizer:
        from distill.core.tokenizers import load_tokenizer
        backend.tokenizer = load_tokenizer(teacher_tokenizer, "teacher_tokenizer")
        backend.mapper = openai_logprobs.TokenMapper(backend.tokenizer)
    return backend


def _reasoning_of(obj) -> str | None:
    for name in ("reasoning_content", "reasoning"):
        value = getattr(obj, name, None)
        if isinstance(value, str):
            return value
    return None


class OpenAIBackend:
    kind = "openai"

    def __init__(self, base_url, model, api_key, concurrency, max_retries, request_timeout,
                 retry_wait, stream, extra_body):
        self.base_url, self.model, self._api_key = base_url, model, api_key
        self.concurrency, self.max_retries = concurrency, max_retries
        self.request_timeout, self.retry_wait = request_timeout, retry_wait
        self.streaming, self.extra_body = stream, extra_body  # `stream` is the chat method
        self.send_seed = True
        self.retries = 0  # retried attempts over the backend's life, for reports and tests
        self.token_ids = True   # ask for log-prob tokens as ids (vLLM), until the server refuses
        self.tokenizer = self.mapper = None  # --teacher-tokenizer: maps log-prob token strings to ids

    def server_tokenize(self, text: str) -> list[int] | None:
        """The server's own token ids of `text` (vLLM's /tokenize), or None where it has no such route."""
        import openai

        root = self.base_url.rstrip("/").removesuffix("/v1")
        try:
            with openai.OpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=2, timeout=30.0) as client:
                answer = client.post(f"{root}/tokenize", cast_to=object,
                                     body={"model": self.model, "prompt": text, "add_special_tokens": False})
        except (openai.APIStatusError, openai.APIConnectionError):
            return None
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        return [int(t) for t in tokens] if isinstance(tokens, list) else None

    def check_logprobs(self, k: int) -> None:
        """One request for the top-k log-probs of a token, before any work: a server that refuses k
        or returns no log-probs is one line, and the way token ids come back is settled."""
        import openai

        from distill.core.errors import UserError

        sampling = Sampling(n=1, max_new_tokens=1, temperature=0.0, logprobs=k)

        async def ask():
            from openai import AsyncOpenAI
            async with AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=2) as client:
                while True:
                    try:  # not streamed: a refusal is then an HTTP status, not an error inside a stream
                        return await self._request(client, "Hi", sampling, 0, stream=False)
                    except openai.BadRequestError as e:
                        text = str(e)
                        if self.token_ids and "return_tokens_as_token_ids" in text:
                            self.token_ids = False  # a server that takes no such field: map strings
                            continue
                        if self.send_seed and "seed" in text.lower():
                            self.send_seed = False
                            continue
                        if "logprob" in text.lower():
                            raise openai_logprobs.refusal(text, k, f"openai:{self.base_url}") from None
                        raise UserError(f"openai:{self.base_url}: {describe(e)}") from None
        done = asyncio.run(ask())
        if done.logprobs is None or len(done.logprobs.token_ids) == 0:
            raise UserError(f"logprobs: openai:{self.base_url} returns no log-probs for generated tokens "
                            "(a server that supports `logprobs` and `top_logprobs` is needed)")
        if done.logprobs.k and not (done.logprobs.topk_ids >= 0).any():
            raise UserError(f"logprobs: openai:{self.base_url} returns no top log-probs (asked for {k})")

    def render(self, user_text: str, think: bool = True) -> str:
        return user_text  # the server renders (and decides whether its template opens a think block)

    def generate(self, prompts: list[str], sampling: Sampling, on_done=None) -> list[list[Completion]]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_all(prompts, sampling, on_done))
        box: dict = {}  # called from inside an event loop (a notebook): run in a thread

        def work():
            try:
                box["value"] = asyncio.run(self._generate_all(prompts, sampling, on_done))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = e
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    async def _generate_all(self, prompts, sampling, on_done):
        from openai import AsyncOpenAI, Timeout

        collector = Collector(len(prompts), sampling, on_done)
        client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                             timeout=Timeout(self.request_timeout, connect=min(30.0, self.request_timeout)))
        jobs = collector.jobs()
        queue = iter(jobs)

        async def worker():
            for i, j in queue:
                completion = await self._with_retries(client, prompts[i], sampling, sampling.seed + j)
                collector.add(i, j, completion)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(jobs)) or 1)))
        finally:
            await client.close()
        return collector.results

    async def _with_retries(self, client, user_text: str, sampling: Sampling, seed: int) -> Completion:
        import openai

        def counted():
            self.retries += 1
        while True:
            sent_seed = self.send_seed
            try:
                return await with_retries(lambda: self._request(client, user_text, sampling, seed),
                                          max_retries=self.max_retries, retry_wait=self.retry_wait,
                                          timeout=self.request_timeout, on_retry=counted)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise UserError(f"openai:{self.base_url}: {describe(e)} (check the URL, "
                                "--model and the API key variable)") from None
            except openai.BadRequestError as e:
                if sent_seed and "seed" in str(e).lower():  # a server that takes no seed: ask again without
                    self.send_seed = False
                    continue
                return Completion("", "error", error=describe(e))
            except openai.APIStatusError as e:  # refused for good (another 4xx)
                return Completion("", "error", error=describe(e))
            except RetriesExhausted as e:
                return Completion("", "error", error=str(e))

    def _request_args(self, user_text: str, sampling: Sampling, seed: int) -> dict:
        args = dict(model=self.model, messages=[{"role": "user", "content": user_text}],
                    max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p if sampling.temperature > 0 else 1.0)
        if sampling.stop:
            args["stop"] = list(sampling.stop)
        if self.send_seed:
            args["seed"] = seed
        if self.streaming:
            args.update(stream=True, stream_options={"include_usage": True})
        extra = dict(self.extra_body)
        if sampling.logprobs:
            fields, more = openai_logprobs.request_fields(sampling.logprobs, self.token_ids)
            args.update(fields)
            extra.update(more)
        if extra:
            args["extra_body"] = extra
        return args

    async def _request(self, client, user_text: str, sampling: Sampling, seed: int,
                       stream: bool | None = None) -> Completion:
        started = time.perf_counter()
        args = self._request_args(user_text, sampling, seed)
        if stream is False:
            args.pop("stream", None), args.pop("stream_options", None)
        response = await client.chat.completions.create(**args)
        if not args.get("stream"):
            done = time.perf_counter()
            choice = response.choices[0]
            usage = response.usage
            entries = getattr(choice.logprobs, "content", None) if getattr(choice, "logprobs", None) else None
            return Completion(text=choice.message.content or "", finish_reason=choice.finish_reason or "stop",
                              prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                              completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                              reasoning=_reasoning_of(choice.message), ttft_s=done - started, decode_s=0.0,
                              logprobs=self._logprobs(entries, sampling))
        content, reasoning, entries = [], [], []
        finish, usage, first, last, chunks = None, None, None, None, 0
        async for chunk in response:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            for choice in chunk.choices or []:
                delta = choice.delta
                piece, thought = (delta.content or "") if delta else "", _reasoning_of(delta) if delta else None
                if piece or thought:
                    last = time.perf_counter()
                    first = first or last
                    chunks += 1
                    content.append(piece)
                    reasoning.append(thought or "")
                if getattr(choice, "logprobs", None) is not None and choice.logprobs.content:
                    entries += choice.logprobs.content
                if choice.finish_reason:
                    finish = choice.finish_reason
        if finish is None:
            raise StreamCutShort("the stream ended without a finish reason")
        first = first or time.perf_counter()
        thinking = "".join(reasoning)
        return Completion(text="".join(content), finish_reason=finish,
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or chunks,
                          reasoning=thinking if any(r for r in reasoning) else None,
                          ttft_s=first - started, decode_s=(last or first) - first,
                          logprobs=self._logprobs(entries, sampling))

    def _logprobs(self, entries, sampling: Sampling):
        if not sampling.logprobs or not entries:
            return None
        return openai_logprobs.parse(entries, sampling.logprobs, self.mapper)

    # `distill chat`: the server renders the conversation, and one sample is streamed as it arrives.

    def render_messages(self, messages: list[dict], think_prefill: bool = True) -> list[dict]:
        """The conversation itself: the server applies the chat template (and decides whether the
        reply opens with a think block)."""
        return [dict(m) for m in messages]

    def stream(self, messages: list[dict] | str, sampling: Sampling) -> Iterator[str]:
        """Yield the text of one sample as the server streams it, and return its Completion. A
        reasoning channel (`reasoning_content`, `reasoning`) is yielded inside <think>...</think>,
        the layout local models write. Bad URLs, keys and models are user errors; the client's own
        retries cover 429, 5xx and dropped connections before the first token."""
        import openai

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=self.max_retries,
                               timeout=openai.Timeout(self.request_timeout, connect=min(30.0, self.request_timeout)))
        args = self._request_args("", sampling, sampling.seed)
        args.update(messages=messages, stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        thinking, finish, usage, first, chunks = False, None, None, None, 0
        started = time.perf_counter()
        try:
            for chunk in client.chat.completions.create(**args):
                usage = getattr(chunk, "usage", None) or usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    thought, piece = (_reasoning_of(delta), delta.content) if delta else (None, None)
                    out = ""
                    if thought:
                        out += ("" if thinking else f"{THINK_OPEN}\n") + thought
                        thinking = True
                    if piece:
                        out += (f"\n{THINK_CLOSE}\n\n" if thinking else "") + piece
                        thinking = False
                    if out:
                        first = first or time.perf_counter()
                        chunks += 1
                        pieces.append(out)
                        yield out
                    finish = choice.finish_reason or finish
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise UserError(f"openai:{self.base_url}: {describe(e)} (check the URL, the served model "
                            "name and the API key variable)") from None
        except (openai.APIConnectionError, openai.APIStatusError) as e:
            raise UserError(f"openai:{self.base_url}: {describe(e)}") from None
        finally:
            client.close()
        last = time.perf_counter()
        first = first or last
        return Completion("".join(pieces), finish or "stop", getattr(usage, "prompt_tokens", 0) or 0,
                          getattr(usage, "completion_tokens", 0) or chunks, ttft_s=first - started,
                          decode_s=last - first)

    def close(self) -> None:
        pass
