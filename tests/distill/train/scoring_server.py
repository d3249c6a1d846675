"""A vLLM-style scoring server on 127.0.0.1 for the on-policy tests: llama-cpp-python evaluates
the prompt (token ids, as vLLM takes them) and the server answers `prompt_logprobs` as vLLM does
(entry 0 null, then {token id: {logprob, rank, decoded_token}} for each prompt token), plus
vLLM's `/tokenize`. It can fail on purpose (HTTP 500, stalls past the client's timeout) and
counts what it served, so that retries and duplicates can be checked."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tests.distill.generate.servers import JSONHandler, serve


class VLLMStyleScorer:
    def __init__(self, gguf: Path, faults: dict[str, float] | None = None, seed: int = 0, stall_s: float = 3.0,
                 prompt_logprobs: bool = True, tokenize: bool = True, max_model_len: int | None = None):
        from llama_cpp import Llama
        self.llm = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, n_threads=1, n_threads_batch=1,
                         verbose=False)
        self.faults, self.rng, self.stall_s = dict(faults or {}), random.Random(seed), stall_s
        self.prompt_logprobs = prompt_logprobs  # False: a server that scores nothing
        self.tokenize, self.max_model_len = tokenize, max_model_len  # no /tokenize; vLLM's context limit
        self.lock = threading.Lock()
        self.scored: Counter = Counter()      # tuple(ids) -> successful answers
        self.faults_served: Counter = Counter()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "VLLMStyleScorer":
        scorer = self

        class Handler(JSONHandler):
            models = ("teacher",)

            def do_GET(self):
                entry = {"id": "teacher", "object": "model", "max_model_len": scorer.max_model_len}
                self._json(200, {"object": "list", "data": [entry]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/tokenize" and not scorer.tokenize:
                    return self._json(404, {"error": {"message": "not found"}})
                if self.path == "/tokenize":
                    with scorer.lock:
                        tokens = scorer.llm.tokenize(body["prompt"].encode(), add_bos=False, special=True)
                    return self._json(200, {"tokens": tokens, "count": len(tokens)})
                if self.path != "/v1/completions":
                    return self._json(404, {"error": {"message": "not found"}})
                if scorer.max_model_len and isinstance(body["prompt"], list) and \
                        len(body["prompt"]) + body.get("max_tokens", 1) > scorer.max_model_len:
                    return self._json(400, {"error": {"message": f"This model's maximum context length is "
                                                      f"{scorer.max_model_len} tokens.", "code": 400}})
                fault = scorer._roll()
                if fault == "error500":
                    return self._json(500, {"error": {"message": "internal error"}})
                if fault == "stall":
                    time.sleep(scorer.stall_s)
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                return self._json(200, scorer.complete(body))

        self._server = serve(Handler)
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.llm.close()

    def _roll(self) -> str | None:
        with self.lock:
            x = self.rng.random()
            for name in ("error500", "stall"):
                p = self.faults.get(name, 0.0)
                if x < p:
                    self.faults_served[name] += 1
                    return name
                x -= p
        return None

    def complete(self, body: dict) -> dict:
        ids = body["prompt"]
        if isinstance(ids, str):
            ids = self.llm.tokenize(ids.encode(), add_bos=False, special=True)
        with self.lock:
            self.llm.reset()
            self.llm.eval(ids)
            logits = np.array(self.llm.scores[: len(ids)], dtype=np.float64)
            self.scored[tuple(ids)] += 1
        logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        entries = [None]
        for j in range(1, len(ids)):
            row = logprobs[j - 1]
            entries.append({str(ids[j]): {"logprob": float(row[ids[j]]), "rank": int((row > row[ids[j]]).sum()) + 1,
                                          "decoded_token": self.llm.detokenize([ids[j]], special=True).decode("utf-8", "replace")}})
        choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
        if self.prompt_logprobs and body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = entries
        return {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": body.get("model"),
                "choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                                               "total_tokens": len(ids) + 1}}
