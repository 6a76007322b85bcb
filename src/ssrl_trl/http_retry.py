"""One retry policy for the project's HTTP clients (the retriever client, the vLLM server client).

Transient failures — connection refused or reset, a timeout (when the policy says so), a status
the policy names (429, 5xx) — are retried a bounded number of times with exponential backoff and
jitter in [50%, 100%], so many workers do not retry in lock-step. Whatever is left raises
:class:`RetriesExhausted`, which each client turns into its own error type. Any other answer
(2xx, or a 4xx: the request itself is bad and would fail again) is returned for the caller to
judge. The synchronous and the asynchronous loop share the policy and the judgement of an attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TRANSIENT_STATUS",
    "PicklableHTTPClient",
    "RetriesExhausted",
    "RetryPolicy",
    "asend",
    "response_detail",
    "send",
]

#: Statuses worth another attempt: request timeout, rate limit, server errors and gateways.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts after the first; the first retry waits about ``backoff`` seconds,
    doubling up to ``max_backoff``. ``timeout`` (seconds per attempt) only names the limit in
    messages; ``retry_timeouts=False`` re-raises a timeout at once (a generation that timed out
    would only time out again)."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    retry_status: frozenset[int] = TRANSIENT_STATUS
    retry_timeouts: bool = True
    timeout: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1 = the first retry)."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class RetriesExhausted(Exception):
    """Every attempt failed transiently. ``problem`` says how the last one failed; ``response`` is
    its answer when it got one (a transient status), ``None`` after a transport failure."""

    def __init__(self, attempts: int, problem: str, response: Any = None) -> None:
        super().__init__(f"failed after {attempts} attempt(s): {problem}")
        self.attempts, self.problem, self.response = attempts, problem, response


def response_detail(response: Any) -> str:
    """A short reason from an error answer: its JSON ``detail``, else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:200]


def _problem(policy: RetryPolicy, response: Any, error: BaseException | None) -> str | None:
    """Why an attempt should be retried, or ``None`` when its answer goes to the caller."""
    import httpx

    if isinstance(error, httpx.TimeoutException):
        if not policy.retry_timeouts:
            raise error
        limit = f" after {policy.timeout}s" if policy.timeout is not None else ""
        return f"timed out{limit} ({type(error).__name__})"
    if error is not None:
        return f"{type(error).__name__}: {error}"
    if response.status_code in policy.retry_status:
        return f"HTTP {response.status_code}: {response_detail(response)}"
    return None


def send(policy: RetryPolicy, attempt: Callable[[], Any]) -> Any:
    """Call ``attempt`` (one HTTP request) until its answer is not transient; return that answer."""
    import httpx

    problem, response = "no attempt made", None
    for n in range(policy.retries + 1):
        if n:
            time.sleep(policy.delay(n))
        try:
            response, error = attempt(), None
        except httpx.TransportError as exc:  # timeouts included
            response, error = None, exc
        problem = _problem(policy, response, error)
        if problem is None:
            return response
    raise RetriesExhausted(policy.retries + 1, problem, response)


async def asend(policy: RetryPolicy, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """:func:`send` for an ``async`` attempt (the backoff sleeps without blocking the loop)."""
    import httpx

    problem, response = "no attempt made", None
    for n in range(policy.retries + 1):
        if n:
            await asyncio.sleep(policy.delay(n))
        try:
            response, error = await attempt(), None
        except httpx.TransportError as exc:
            response, error = None, exc
        problem = _problem(policy, response, error)
        if problem is None:
            return response
    raise RetriesExhausted(policy.retries + 1, problem, response)


class PicklableHTTPClient:
    """Owns an ``httpx.Client`` (``self._client``, made by ``_make_client``) and survives
    pickling: a client cannot be pickled, so a copy (e.g. in a worker process) opens its own."""

    _client: Any

    def _make_client(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._client.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = self._make_client()
