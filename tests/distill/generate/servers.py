"""Local teacher servers for the tests, both on 127.0.0.1 and a free port:

- `FakeOpenAI`: a stdlib http.server speaking the chat-completions API (streamed and not), whose
  answers come from a Python function (handwritten responses) and which, when asked, fails at
  random: HTTP 500, 429 with Retry-After, dropped connections, stalls past the client's timeout
  and streams cut short. It counts what it served so tests can check retries and duplicates.
- `llama_server()`: the real `python -m llama_cpp.server` serving a GGUF.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

FAULTS = ("error500", "error429", "drop", "stall", "cut_stream")


class QuietHTTPServer(ThreadingHTTPServer):
    """A client hanging up mid-response is what these tests provoke; socketserver would print
    its traceback to stderr, where the CLI's one-line error is being checked."""

    def handle_error(self, request, client_address) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JSONHandler(BaseHTTPRequestHandler):
    """What every test server's handler shares: HTTP/1.0, no request log, JSON answers."""
    protocol_version = "HTTP/1.0"
    models = ("fake",)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]})

    def _json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def serve(handler: type) -> QuietHTTPServer:
    """`handler` served on 127.0.0.1 and a free port from a daemon thread."""
    server = QuietHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def default_respond(user_text: str, request: dict) -> dict:
    return {"content": "<think>\nThinking.\n</think>\n\nThe answer is \\boxed{1}."}


class FakeOpenAI:
    """`respond(user_text, request) -> {content, reasoning_content?, finish_reason?,
    completion_tokens?}`; `faults` maps a fault name to its probability per request."""

    def __init__(self, respond: Callable[[str, dict], dict] = default_respond,
                 faults: dict[str, float] | None = None, seed: int = 0, delay: float = 0.0,
                 stall_s: float = 3.0, reject_seed: bool = False, api_key: str | None = None,
                 usage: bool = True, fail_when: Callable[[str], bool] | None = None,
                 logprobs: bool = False, max_logprobs: int = 20):
        self.respond, self.faults = respond, dict(faults or {})
        self.fail_when = fail_when  # user text -> answer HTTP 500, every time
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.delay, self.stall_s = delay, stall_s
        self.reject_seed, self.api_key, self.usage = reject_seed, api_key, usage
        self.logprobs, self.max_logprobs = logprobs, max_logprobs  # answer `logprobs` requests (vLLM's cap)
        self.requests = 0
        self.served: Counter = Counter()       # (user text, seed) -> successful responses
        self.faults_served: Counter = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self._server = None

    def __enter__(self) -> "FakeOpenAI":
        fake = self

        class Handler(JSONHandler):
            def do_POST(self):
                # small SSE writes would otherwise wait for delayed ACKs (Nagle)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.handle(self, body)

        self._server = serve(Handler)
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _roll(self) -> str | None:
        with self.lock:
            self.requests += 1
            x = self.rng.random()
        for name in FAULTS:
            p = self.faults.get(name, 0.0)
            if x < p:
                return name
            x -= p
        return None

    def handle(self, handler, body: dict) -> None:
        with self.lock:
            self.bodies.append(body)
            self.headers.append(dict(handler.headers))
        if self.api_key and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return handler._json(401, {"error": {"message": "Invalid API key", "type": "auth"}})
        if self.reject_seed and "seed" in body:
            return handler._json(400, {"error": {"message": "Unrecognized request argument supplied: seed"}})
        if body.get("logprobs") and body.get("top_logprobs", 0) > self.max_logprobs:
            return handler._json(400, {"error": {"message": f"Requested sample logprobs of {body['top_logprobs']}, which "
                                                 f"is greater than max allowed: {self.max_logprobs}", "code": 400}})
        fault = self._roll()
        if self.fail_when is not None and self.fail_when(body["messages"][-1]["content"]):
            fault = "error500"
        if self.delay:
            time.sleep(self.delay)
        stream = bool(body.get("stream"))
        if fault == "cut_stream" and not stream:
            fault = "drop"
        if fault:
            with self.lock:
                self.faults_served[fault] += 1
        if fault == "error500":
            return handler._json(500, {"error": {"message": "internal error", "type": "server_error"}})
        if fault == "error429":
            return handler._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if fault == "drop":
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "stall":
            time.sleep(self.stall_s)
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        user = body["messages"][-1]["content"]
        answer = self.respond(user, body)
        content = answer.get("content", "")
        channel = "reasoning" if "reasoning" in answer else "reasoning_content"   # newer vLLM: "reasoning"
        reasoning = answer.get(channel)
        finish = answer.get("finish_reason", "stop")
        tokens = answer.get("completion_tokens", len((reasoning or "").split()) + len(content.split()))
        usage = {"prompt_tokens": len(user.split()), "completion_tokens": tokens,
                 "total_tokens": len(user.split()) + tokens}
        want_logprobs = self.logprobs and body.get("logprobs")
        if not stream:
            message = {"role": "assistant", "content": content}
            if reasoning is not None:
                message[channel] = reasoning
            with self.lock:
                self.served[(user, body.get("seed"))] += 1
            choice = {"index": 0, "message": message, "finish_reason": finish}
            if want_logprobs:
                choice["logprobs"] = {"content": _char_logprobs(content, body)}
            return handler._json(200, {"id": "x", "object": "chat.completion", "created": 0,
                                       "model": body.get("model"), "usage": usage if self.usage else None,
                                       "choices": [choice]})
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()

        def event(delta: dict, finish_reason=None, usage_=None, choices=True):
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if want_logprobs and delta.get("content"):
                choice["logprobs"] = {"content": _char_logprobs(delta["content"], body)}
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                     "choices": [choice] if choices else []}
            if usage_ is not None:
                chunk["usage"] = usage_
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            handler.wfile.flush()

        try:
            event({"role": "assistant", "content": ""})
            pieces = [(channel, p) for p in _split(reasoning or "")] + \
                     [("content", p) for p in _split(content)]
            for k, (field, piece) in enumerate(pieces):
                if fault == "cut_stream" and k == len(pieces) // 2:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return None
                event({field: piece})
            event({}, finish_reason=finish)
            if self.usage:
                event({}, usage_=usage, choices=False)
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
            with self.lock:
                self.served[(user, body.get("seed"))] += 1
        except OSError:
            return None


def _char_logprobs(text: str, body: dict) -> list[dict]:
    """Log-prob entries of a text whose every character is a token of id ord(c), as vLLM shapes them
    (token strings "token_id:N" when asked for ids)."""
    as_ids = bool(body.get("return_tokens_as_token_ids"))

    def token(c: str, logprob: float) -> dict:
        return {"token": f"token_id:{ord(c)}" if as_ids else c, "logprob": logprob, "bytes": list(c.encode())}
    k = int(body.get("top_logprobs") or 0)
    return [{**token(c, -0.25), "top_logprobs": [token(chr(ord(c) + i), -0.25 - i) for i in range(k)]}
            for c in text]


def _split(text: str, parts: int = 3) -> list[str]:
    if not text:
        return []
    step = max(1, len(text) // parts)
    return [text[i:i + step] for i in range(0, len(text), step)]


@contextlib.contextmanager
def llama_server(gguf: Path, alias: str = "teacher", n_ctx: int = 1024, threads: int = 1,
                 log: Path | None = None):
    """The real llama-cpp-python server on 127.0.0.1; yields its base URL."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.backends.llamacpp", "server", "--model", str(gguf), "--model_alias", alias,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
         "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False"],
        stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("llama_cpp.server did not come up within 120 s") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
