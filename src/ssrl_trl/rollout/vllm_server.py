"""Client backend for a stock vLLM server (``vllm serve`` / TRL's ``vllm_mode="server"``).

Every rank talks to the server directly through the OpenAI ``/v1/completions`` endpoint with
token-id prompts, asking for the sampled token ids (``return_token_ids``) and their log-probs
(``return_tokens_as_token_ids``), so nothing is re-tokenised. Requests are sent one episode-turn
at a time with bounded concurrency: the server batches them continuously, and an episode whose
observation is ready sends its next turn at once instead of waiting for its whole batch.

Weights reach the server through TRL (``GRPOTrainer`` pushes them over vLLM's NCCL weight-transfer
engine before every rollout, which needs CUDA); this module only generates. Start the server with
``--logprobs-mode processed_logprobs`` so the returned log-probs are the ones TRL's importance
sampling correction expects, and with prefix caching (vLLM's default).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from ..http_retry import RetriesExhausted, RetryPolicy, asend
from .backends import (
    GenRequest,
    GenResult,
    SamplingConfig,
    cut_generation,
    resolve_eos_ids,
    vllm_sampling_fields,
)

__all__ = ["VLLMServerBackend", "VLLMServerError"]

_SERVER_ERRORS = frozenset(range(500, 600))


class VLLMServerError(RuntimeError):
    """The vLLM server is unreachable, timed out, or refused a request (message says which)."""


class VLLMServerBackend:
    """Per-rank async client of a vLLM OpenAI-compatible server.

    ``max_concurrency`` bounds the requests in flight from this rank; ``timeout`` bounds one
    request (connect and read); connection failures and 5xx answers are retried ``retries`` times
    with backoff (:mod:`ssrl_trl.http_retry`), then raised as :class:`VLLMServerError` naming the
    URL and how to start a server.
    """

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        *,
        model: str | None = None,
        max_concurrency: int = 64,
        timeout: float = 300.0,
        retries: int = 2,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.tokenizer, self.model = tokenizer, model
        self.max_concurrency, self.timeout, self.retries = max_concurrency, timeout, retries
        # A timed-out generation is not retried (it would only time out again, doubling the load).
        self.policy = RetryPolicy(
            retries, backoff=0.5, retry_status=_SERVER_ERRORS, retry_timeouts=False, timeout=timeout
        )
        self.eos_token_ids = resolve_eos_ids(tokenizer, eos_token_ids)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None

    # -- connection ------------------------------------------------------------------------------
    def _session(self) -> tuple[Any, asyncio.Semaphore]:
        """One client and semaphore per event loop (each engine run has its own loop)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._slots = asyncio.Semaphore(self.max_concurrency)
        return self._client, self._slots  # type: ignore[return-value]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client, self._loop, self._slots = None, None, None

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        client, slots = self._session()

        async def attempt() -> Any:
            async with slots:
                return await client.request(method, path, **kwargs)

        try:
            response = await asend(self.policy, attempt)
        except httpx.TimeoutException as exc:
            raise VLLMServerError(
                f"vLLM server at {self.base_url} did not answer {path} within {self.timeout:.0f}s"
            ) from exc
        except RetriesExhausted as exc:
            if exc.response is not None:
                raise VLLMServerError(
                    f"vLLM server at {self.base_url} failed {path} {exc.attempts} time(s): {exc.problem}"
                ) from None
            raise VLLMServerError(
                f"vLLM server at {self.base_url} is not reachable ({exc.problem}). Start one with "
                f"`vllm serve MODEL --host 127.0.0.1 --port PORT --logprobs-mode processed_logprobs` "
                f"(or `trl vllm-serve`) and point vllm_server_base_url at it."
            ) from None
        if response.status_code != 200:
            raise VLLMServerError(
                f"vLLM server at {self.base_url} refused {path} (HTTP {response.status_code}): "
                f"{response.text[:500]}"
            )
        return response.json()

    async def _model_name(self) -> str:
        if self.model is None:
            models = (await self._call("GET", "/v1/models")).get("data") or []
            if not models:
                raise VLLMServerError(f"vLLM server at {self.base_url} serves no model")
            self.model = models[0]["id"]
        return self.model

    # -- generation --------------------------------------------------------------------------------
    def payload(self, model: str, request: GenRequest, sampling: SamplingConfig) -> dict[str, Any]:
        """The ``/v1/completions`` body: token-id prompt, the shared vLLM sampling fields, and the
        sampled token ids with their log-probs in the answer."""
        return {
            "model": model,
            "prompt": list(request.prompt_ids),
            **vllm_sampling_fields(request, sampling),
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }

    async def agenerate(self, request: GenRequest, sampling: SamplingConfig) -> GenResult:
        model = await self._model_name()
        body = await self._call("POST", "/v1/completions", json=self.payload(model, request, sampling))
        return self.parse_choice(body, request, ignore_eos=sampling.ignore_eos)

    def parse_choice(
        self, body: dict[str, Any], request: GenRequest, *, ignore_eos: bool = False
    ) -> GenResult:
        """Token ids and sampled log-probs of a ``/v1/completions`` answer, cut by the shared rule."""
        try:
            choice = body["choices"][0]
            token_ids = [int(t) for t in choice["token_ids"]]
            lps = choice["logprobs"]
            logprobs = [-math.inf if lp is None else float(lp) for lp in lps["token_logprobs"]]
            tokens = lps["tokens"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise VLLMServerError(
                f"unexpected /v1/completions answer from {self.base_url} (needs vLLM >= 0.10 with "
                f"return_token_ids): {str(body)[:300]}"
            ) from exc
        if len(tokens) != len(token_ids) or len(logprobs) != len(token_ids):
            raise VLLMServerError(f"server returned {len(token_ids)} token ids but {len(logprobs)} log-probs")
        for tok, tid in zip(tokens, token_ids, strict=True):
            if tok != f"token_id:{tid}":
                raise VLLMServerError(f"log-prob entry {tok!r} does not belong to sampled token {tid}")
        return cut_generation(
            self.tokenizer,
            token_ids,
            logprobs,
            stop=request.stop,
            max_tokens=request.max_tokens,
            eos_token_ids=[] if ignore_eos else self.eos_token_ids,
        )

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """All requests concurrently (bounded), results in request order."""
        from .engine import run_coroutine

        async def run_all() -> list[GenResult]:
            try:
                return list(await asyncio.gather(*(self.agenerate(r, sampling) for r in requests)))
            finally:
                await self.aclose()

        return run_coroutine(run_all())
