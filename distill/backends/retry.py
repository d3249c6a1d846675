"""Retries of requests to OpenAI-compatible servers: the one home of what is retried, how long to
wait, and how a failure is described. `generate`'s and `eval`'s openai backend and the served
on-policy teacher all go through `with_retries`.

Retried: 408, 409, 429, 5xx, timeouts, dropped connections and streams cut short; waits are
exponential with jitter (`retry_wait * 2**attempt`, half to full of it, at most 60 s, or the
server's Retry-After when it asks for longer)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")
MAX_WAIT_S = 60.0


class StreamCutShort(Exception):
    """The stream ended without a finish reason (the server dropped the connection)."""


class RetriesExhausted(Exception):
    """A request still failed after the last retry; the message describes the last failure."""

    def __init__(self, last: str, attempts: int):
        super().__init__(f"{last} (after {attempts} retries)")
        self.last, self.attempts = last, attempts


def _transport_errors() -> tuple[type, ...]:
    """The HTTP library's transport errors (raised raw while a stream is read): `httpx2` for
    openai >= 3, `httpx` before."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, (openai.APIConnectionError, openai.APIError, *_transport_errors(),
                            asyncio.TimeoutError, StreamCutShort, json.JSONDecodeError))


def describe(exc: BaseException) -> str:
    """One line: `HTTP 429: ...` for a status error, `TypeName: ...` otherwise."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def backoff_s(attempt: int, base_s: float, hinted: float | None) -> float:
    """Seconds to wait before retry `attempt`: exponential with jitter, at least what the server's
    Retry-After asked for, at most MAX_WAIT_S."""
    wait = min(MAX_WAIT_S, base_s * 2 ** attempt) * random.uniform(0.5, 1.0)
    return wait if hinted is None else min(MAX_WAIT_S, max(wait, hinted))


async def with_retries(call: Callable[[], Awaitable[T]], *, max_retries: int, retry_wait: float,
                       timeout: float, on_retry: Callable[[], None] | None = None) -> T:
    """`await call()`, each attempt limited to `timeout` seconds, retried while the failure is
    `retryable`. Anything else propagates at once; the last retryable failure becomes
    RetriesExhausted. `on_retry()` runs before each retry (for counters)."""
    attempt = 0
    while True:
        try:
            return await asyncio.wait_for(call(), timeout=timeout)
        except Exception as e:  # noqa: BLE001 - sorted into retryable or not
            if not retryable(e):
                raise
            last, hinted = describe(e), retry_after(e)
        if attempt >= max_retries:
            raise RetriesExhausted(last, attempt)
        wait = backoff_s(attempt, retry_wait, hinted)
        attempt += 1
        if on_retry is not None:
            on_retry()
        await asyncio.sleep(wait)
