"""A served teacher for on-policy distillation (`--teacher openai:BASE_URL --model NAME`): the
teacher's log-prob of every token the student sampled, through the OpenAI-compatible
completions API (a one-token completion of the whole sequence, with the prompt's log-probs).

Servers differ, and the difference decides whether the numbers are right:

- token-ids (vLLM, SGLang): the prompt is sent as token ids, so the server scores exactly the
  sampled sequence; the log-probs come from `prompt_logprobs` (vLLM; keyed by token id, which
  is checked) or from `echo` + `logprobs` (entry k is token k's log-prob, entry 0 is null).
- text (llama.cpp, llama-cpp-python's server): token-id prompts are rejected (422), so the text
  is sent and the server tokenizes it; its tokenize endpoint (`/extras/tokenize`, `/tokenize`)
  must give back the sampled ids, else the sequence is refused (not trained on). Its echoed
  log-probs drop a leading BOS, so entry k belongs to token k + 1 of what the model read: they
  are right only when the model read a BOS first (llama_cpp/llama.py, the echo path: without a
  BOS each token is paired with the next position's distribution, which no reordering undoes).
  `max_tokens` 0 means "unlimited" there, so every request asks for one token.

Checks before training: the server tokenizes a probe exactly as the student does (tokenize
endpoint, or the echoed tokens), and returns log-probs for given tokens; a server that does not
is refused, naming what it must support. Requests run `concurrency` at a time and are retried
as `generate`'s openai backend retries (429, 5xx, stalls, dropped connections; exponential
waits, Retry-After); a request that still fails stops the run, which resumes from its last
checkpoint: no step is trained on partial scores."""

from __future__ import annotations

import asyncio
import os

import numpy as np

from distill.backends.retry import RetriesExhausted, describe, retryable, with_retries
from distill.core.chat import render_prompt
from distill.core.errors import UserError

PROBE_USER = "Probe: Ava has 12 apples and gets 7 more.  Tabs\tand ünïcödé too?"
PROBE_REPLY = "<think>\n12 + 7 = 19\n</think>\n\nThe answer is \\boxed{19}."
NEEDS = ("it must answer the completions API with the log-probs of a given prompt: vLLM or SGLang "
         "(token-id prompt with prompt_logprobs, or echo with logprobs) or llama-cpp-python's server "
         "(text prompt with echo and logprobs; started with logits_all, its default)")


def connect(config, tokenizer, teacher_tokenizer=None):
    """The openai: teacher, checked (it reads as `tokenizer`, returns log-probs of given tokens,
    has room for the sequences) before anything heavy loads. With `teacher_tokenizer` (another
    family's), a scorer that aligns the two tokenizations (cross_tokenizer.py): the server must
    then take token ids and read as that tokenizer."""
    base = config.teacher.split(":", 1)[1]
    if not base.startswith(("http://", "https://")):
        raise UserError(f"teacher: {config.teacher}: expected a base URL such as openai:http://127.0.0.1:8000/v1")
    api_key = "EMPTY"
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env, "")
        if not api_key:
            raise UserError(f"api_key_env: the environment variable {config.api_key_env} is not set")
    teacher = ServedTeacher(base, config.model, api_key, config.teacher_api, config.concurrency,
                            config.max_retries, config.request_timeout, config.retry_wait)
    if teacher_tokenizer is None:
        teacher.check(tokenizer)
        return teacher
    from .cross_tokenizer import CrossTokenizerScorer, teacher_end_of_turn
    if teacher.api == "text":
        raise UserError(f"teacher_api: a teacher of another tokenizer is scored on its own token ids, which a "
                        f"text-only server does not take; serve it with vLLM or SGLang")
    teacher.api = "token-ids"
    teacher.check(teacher_tokenizer)
    scorer = CrossTokenizerScorer(tokenizer, teacher_tokenizer, teacher_end_of_turn(teacher_tokenizer, teacher.where),
                                  teacher.logprobs_of, teacher.where)
    scorer.require_room, scorer.api, scorer.retries_of = teacher.require_room, teacher.api, teacher
    return scorer


class ServedTeacher:
    def __init__(self, base_url: str, model: str, api_key: str, api: str = "auto", concurrency: int = 8,
                 max_retries: int = 6, request_timeout: float = 120.0, retry_wait: float = 1.0):
        self.base_url, self.model, self._api_key = base_url.rstrip("/"), model, api_key
        self.root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.where = f"openai:{base_url}"
        self.api = api                 # "token-ids" or "text" once checked
        self.concurrency, self.max_retries = concurrency, max_retries
        self.request_timeout, self.retry_wait = request_timeout, retry_wait
        self.retries = 0               # retried requests over the run, for the summary and tests
        self.tokenize_route = None     # text api: (path, body field)
        self.bos_id = None             # text api: the BOS the server puts in front, if any
        self.max_len = None            # the server's context (vLLM's /v1/models max_model_len), when it says
        self.tokenizer = None          # the student's (same-tokenizer scoring decodes with it)

    # --- running requests -------------------------------------------------------------------
    def _run(self, coroutine_factory):
        from openai import AsyncOpenAI, Timeout

        async def main():
            client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                                 timeout=Timeout(self.request_timeout, connect=min(30.0, self.request_timeout)))
            try:
                return await coroutine_factory(client)
            finally:
                await client.close()
        return asyncio.run(main())

    async def _retried(self, call):
        import openai

        def counted():
            self.retries += 1
        try:
            return await with_retries(call, max_retries=self.max_retries, retry_wait=self.retry_wait,
                                      timeout=self.request_timeout, on_retry=counted)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise UserError(f"teacher: {self.where}: {describe(e)} (check --api-key-env)") from None
        except RetriesExhausted as e:
            raise UserError(f"teacher: {self.where}: scoring failed after {e.attempts} retries ({e.last}); "
                            "rerun the same command to resume from the last checkpoint") from None

    async def _complete(self, client, prompt, logprobs: int = 0) -> dict:
        """A one-token completion of `prompt` (ids or text) with the prompt's log-probs."""
        extra = {"prompt_logprobs": 0} if self.api == "token-ids" else {}
        response = await client.completions.create(
            model=self.model, prompt=prompt, max_tokens=1, temperature=0.0, echo=True, logprobs=logprobs,
            extra_body=extra or None)
        return response.choices[0].model_dump()

    async def _tokenize(self, client, text: str) -> list[int]:
        path, field = self.tokenize_route
        body = {"model": self.model, field: text}
        if field == "prompt":  # vLLM: the chat template already wrote the special tokens
            body["add_special_tokens"] = False
        answer = await client.post(f"{self.root}{path}", cast_to=object, body=body)
        return list(answer["tokens"])

    # --- checks -------------------------------------------------------------------------------
    def check(self, tokenizer) -> None:
        import openai
        self.tokenizer = tokenizer
        probe = render_prompt(tokenizer, PROBE_USER, think_prefill=False, where="student") + PROBE_REPLY
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]

        async def probe_server(client):
            if self.api in ("auto", "token-ids"):
                self.api = "token-ids"
                try:
                    choice = await self._token_id_probe(client, ids)
                    return choice, await self._server_ids(client, probe)
                except openai.APIStatusError:
                    if self.api_given == "token-ids":
                        raise
                    self.api = "text"
            await self._find_tokenize_route(client, probe)
            server_ids = await self._tokenize(client, probe)
            return await self._retried(lambda: self._complete(client, probe)), server_ids

        self.api_given = self.api
        try:
            self.max_len = self._run(self._context_length)
            choice, server_ids = self._run(probe_server)
        except openai.APIStatusError as e:
            raise UserError(f"teacher: {self.where}: the server refuses to score a given prompt ({describe(e)}); "
                            f"{NEEDS}") from None
        except openai.APIConnectionError as e:
            raise UserError(f"teacher: {self.where}: cannot connect ({type(e).__name__}); is the server running?") from None
        except asyncio.TimeoutError:
            raise UserError(f"teacher: {self.where}: no answer to a scoring probe within {self.request_timeout:g} s "
                            "(--request-timeout)") from None
        if server_ids is None and not self._echo_agrees(choice, ids, tokenizer):
            raise UserError(f"teacher: {self.where}: its tokenizer differs from the student's, or cannot be checked (no "
                            "tokenize endpoint, and the tokens it echoes are not the student's); on-policy distillation "
                            "from token ids needs the student's tokenizer, or --teacher-tokenizer for another family")
        if server_ids is not None:
            lead = server_ids[:len(server_ids) - len(ids)]
            if server_ids[len(lead):] != ids or len(lead) > 1:
                raise UserError(f"teacher: {self.where}: its tokenizer differs from the student's (a probe gives "
                                f"{len(server_ids)} tokens on the server, {len(ids)} for the student); on-policy "
                                "distillation scores the student's tokens id by id, so it needs the same tokenizer")
            self.bos_id = lead[0] if lead else None
        if self.api == "text" and self.bos_id is None and not self._starts_with_bos(tokenizer, ids):
            raise UserError(
                f"teacher: {self.where}: a text-only (llama.cpp-style) server pairs each echoed token of a prompt "
                "without BOS with the next position's distribution (llama_cpp/llama.py, echo), which no "
                "realignment undoes; serve a model whose prompts begin with its BOS token (add_bos_token), "
                "or a server that takes token ids (vLLM, SGLang)")
        if self._read_logprobs(choice, ids, server_ids) is None:
            raise UserError(f"teacher: {self.where}: returns no log-probs for the tokens of a given prompt; {NEEDS}")

    async def _context_length(self, client) -> int | None:
        """The served model's context, where the server says (vLLM: max_model_len in /v1/models)."""
        try:
            models = await client.models.list()
        except Exception:  # noqa: BLE001 - a server without /v1/models just does not say
            return None
        for entry in models.data:
            if entry.id == self.model and isinstance(getattr(entry, "max_model_len", None), int):
                return entry.max_model_len
        return None

    def _echo_agrees(self, choice: dict, ids: list[int], tokenizer) -> bool:
        """Without a tokenize endpoint, the tokens a token-id server echoes must be the student's:
        vLLM's prompt_logprobs name each token's text (`decoded_token`), echo names them in
        `logprobs.tokens`. A token the student decodes to a partial character is not compared."""
        texts = []
        for j, entry in enumerate(choice.get("prompt_logprobs") or []):
            got = (entry or {}).get(str(ids[j])) if j < len(ids) else None
            if isinstance(got, dict) and "decoded_token" in got:
                texts.append((j, got["decoded_token"]))
        if not texts:
            echoed = (choice.get("logprobs") or {}).get("tokens") or []
            texts = [(j, t) for j, t in enumerate(echoed[:len(ids)]) if isinstance(t, str)]
        specials = set(tokenizer.all_special_ids)
        compared = [(j, t) for j, t in texts if ids[j] not in specials and "\ufffd" not in tokenizer.decode([ids[j]])]
        return bool(compared) and all(tokenizer.decode([ids[j]]) == t for j, t in compared)

    async def _token_id_probe(self, client, ids: list[int]) -> dict:
        """llama-cpp-python answers a token-id prompt with 422 or 500, every time; a flaky server
        fails only now and then, so a 5xx or a stall is tried three times before it counts."""
        import openai

        for attempt in range(3):
            try:
                return await asyncio.wait_for(self._complete(client, ids), timeout=self.request_timeout)
            except Exception as e:  # noqa: BLE001 - a rejection, or a fault worth another try
                if isinstance(e, openai.APIStatusError) and e.status_code < 500 or attempt == 2 or not retryable(e):
                    raise
                self.retries += 1
                await asyncio.sleep(self.retry_wait * 2 ** attempt)

    def _starts_with_bos(self, tokenizer, ids: list[int]) -> bool:
        return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id

    async def _server_ids(self, client, text: str) -> list[int] | None:
        """The server's own tokenization of the probe, where it offers a tokenize endpoint."""
        try:
            await self._find_tokenize_route(client, text)
        except UserError:
            return None
        return await self._tokenize(client, text)

    async def _find_tokenize_route(self, client, text: str) -> None:
        import openai
        for route in (("/extras/tokenize", "input"), ("/tokenize", "prompt"), ("/tokenize", "content")):
            self.tokenize_route = route
            try:
                await self._tokenize(client, text)
                return
            except (openai.NotFoundError, openai.UnprocessableEntityError, openai.BadRequestError, KeyError,
                    TypeError, openai.APIStatusError):
                continue
        self.tokenize_route = None
        raise UserError(f"teacher: {self.where}: offers no tokenize endpoint (/extras/tokenize on "
                        "llama-cpp-python, /tokenize on vLLM and llama.cpp), which a text-only server needs "
                        "so that the sampled tokens can be checked")

    # --- reading the log-probs ----------------------------------------------------------------
    def _read_logprobs(self, choice: dict, ids: list[int], server_ids: list[int] | None) -> list[float] | None:
        """log p_teacher(ids[j] | ids[:j]) for j = 1..len(ids)-1, or None when the answer holds
        no such log-probs or names other tokens than `ids`."""
        prompt_logprobs = choice.get("prompt_logprobs")
        if self.api == "token-ids" and prompt_logprobs:
            values = []
            for j in range(1, len(ids)):
                entry = prompt_logprobs[j] if j < len(prompt_logprobs) else None
                got = (entry or {}).get(str(ids[j]))
                if got is None:
                    return None
                values.append(got["logprob"] if isinstance(got, dict) else float(got))
            return values
        echoed = (choice.get("logprobs") or {}).get("token_logprobs")
        if not echoed:
            return None
        if self.api == "token-ids":  # entry j is token j (entry 0 null)
            return [float(v) for v in echoed[1:len(ids)]] if len(echoed) >= len(ids) else None
        # llama.cpp: the entries follow what the model read after its leading BOS, and skip every
        # later token equal to the BOS (SmolLM2's BOS <|im_start|> opens every turn).
        read = server_ids if server_ids is not None else ids
        offset = len(read) - len(ids)   # 1 when the server put a BOS in front of ours
        entry_of = {}
        for k, token in enumerate(read[1:]):
            if token != read[0]:
                entry_of[k] = len(entry_of)
        if len(echoed) != len(entry_of) + 1:  # + the generated token
            return None
        values = []
        for j in range(1, len(ids)):
            k = j + offset - 1
            value = echoed[entry_of[k]] if k in entry_of else None
            values.append(float("nan") if value is None else float(value))
        return values

    def score(self, rollouts: list[dict]) -> list[dict | None]:
        """The teacher's log-prob of each completion token of each rollout ({input_ids,
        prompt_len}), as the per-position data of the policy loss (each token its own span), or
        None for a sequence the server reads as other tokens."""
        tokenizer = self.tokenizer
        sequences = [(r["input_ids"].tolist(), r["prompt_len"]) for r in rollouts]
        self.require_room(max(len(ids) for ids, _ in sequences) + 1)

        async def score_all(client):
            gate = asyncio.Semaphore(self.concurrency)

            async def one(ids, prompt_len):
                async with gate:
                    if self.api == "token-ids":
                        server_ids = None
                        choice = await self._retried(lambda: self._complete(client, ids))
                    else:
                        # a server that puts BOS in front gets the text without ours (else it reads two)
                        doubled = self.bos_id is not None and ids[:1] == [self.bos_id]
                        text = tokenizer.decode(ids[1:] if doubled else ids, skip_special_tokens=False)
                        server_ids = await self._retried(lambda: self._tokenize(client, text))
                        if server_ids[len(server_ids) - len(ids):] != ids or len(server_ids) - len(ids) not in (0, 1):
                            return None
                        choice = await self._retried(lambda: self._complete(client, text))
                values = self._read_logprobs(choice, ids, server_ids)
                mine = None if values is None else values[prompt_len - 1:]
                if mine is None or any(v != v for v in mine):  # NaN: no entry
                    return None
                return {"teacher": np.asarray(mine, dtype=np.float32), "span": np.arange(len(mine))}
            return await asyncio.gather(*(one(ids, n) for ids, n in sequences))
        return self._scoring(score_all, max(len(ids) for ids, _ in sequences))

    def logprobs_of(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p_teacher(ids[j] | ids[:j]) for j >= 1 of each id sequence (a token-id server)."""
        self.require_room(max(len(ids) for ids in sequences) + 1)

        async def all_of(client):
            gate = asyncio.Semaphore(self.concurrency)

            async def one(ids):
                async with gate:
                    choice = await self._retried(lambda: self._complete(client, ids))
                values = self._read_logprobs(choice, ids, None)
                if values is None or any(v != v for v in values):
                    raise UserError(f"teacher: {self.where}: returned no log-prob for some tokens of a sequence")
                return values
            return await asyncio.gather(*(one(ids) for ids in sequences))
        return self._scoring(all_of, max(len(ids) for ids in sequences))

    def _scoring(self, factory, longest: int):
        import openai
        try:
            return self._run(factory)
        except openai.BadRequestError as e:  # not retried: the same request fails the same way
            raise UserError(f"teacher: {self.where}: the server refused a sequence of up to {longest} tokens "
                            f"({describe(e)}); its context is {self.max_len or 'unknown'} tokens: lower "
                            "--max-new-tokens or serve a longer --max-model-len") from None

    def require_room(self, length: int) -> None:
        """A sequence of `length` tokens (prompt, completion and the one token asked for) must fit
        the server's context: checked before training, and for every step's longest sequence."""
        if self.max_len and length > self.max_len:
            raise UserError(f"teacher: {self.where}: a sequence of {length} tokens (prompt + --max-new-tokens + 1) "
                            f"does not fit the server's context of {self.max_len} tokens: lower --max-new-tokens "
                            "or serve a longer --max-model-len")
