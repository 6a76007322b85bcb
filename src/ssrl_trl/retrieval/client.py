"""HTTP client :class:`Retriever` for a Search-R1 (``POST /retrieve``) or R1-Searcher
(``POST /queries``) retrieval server, ours (``ssrl-trl serve-retriever``) or theirs.

    retriever = HTTPRetriever("http://127.0.0.1:8000")                 # Search-R1 API
    retriever = HTTPRetriever("http://127.0.0.1:5004", api="r1_searcher")
    retriever.search(["who wrote hamlet"], k=3)

Why: in training the retriever is "the world". Transient failures (connection refused or reset,
timeouts, HTTP 408/429/5xx) are retried a bounded number of times with exponential backoff and
jitter (:mod:`ssrl_trl.http_retry`, the policy the vLLM server client uses too); whatever is left
is raised as :class:`RetrieverError`, which the environment turns into a masked error observation
instead of crashing the step. A 4xx is not retried: the request itself is bad (say a query over
the server's length limit) and would fail again. One ``httpx.Client`` keeps connections alive
across calls, and large batches are split to stay under server limits.
"""

from __future__ import annotations

from typing import Any, Literal

from ..http_retry import PicklableHTTPClient, RetriesExhausted, RetryPolicy, response_detail, send
from .base import Doc, RetrieverError, check_k

__all__ = ["HTTPRetriever"]

_ENDPOINTS = {"search_r1": "/retrieve", "r1_searcher": "/queries"}


class HTTPRetriever(PicklableHTTPClient):
    """Batched ``search`` over HTTP with timeouts, bounded retries and connection reuse.

    Args:
        url: server base URL (``http://host:port``; the API's path is appended) or the full
            endpoint URL (used as given when it has a path).
        api: ``"search_r1"`` (ids and scores come back) or ``"r1_searcher"`` (passage strings
            only: docs get ``id=""`` and ``score=None``).
        timeout: seconds per attempt (connect, read, write each).
        retries: extra attempts after the first for transient failures.
        backoff: first retry delay in seconds; doubles per retry up to ``max_backoff``, with
            jitter in [50%, 100%] so many workers do not retry in lockstep.
        max_batch: most queries per request; larger batches are split.
    """

    def __init__(
        self,
        url: str,
        *,
        api: Literal["search_r1", "r1_searcher"] = "search_r1",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch: int = 512,
    ) -> None:
        if api not in _ENDPOINTS:
            raise ValueError(f"unknown retrieval API {api!r}; choose from {sorted(_ENDPOINTS)}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_batch < 1:
            raise ValueError(
                f"need timeout > 0, retries >= 0, backoff >= 0, max_batch >= 1; got "
                f"timeout={timeout}, retries={retries}, backoff={backoff}, max_batch={max_batch}"
            )
        self.url = url
        self.api = api
        self.endpoint = _endpoint(url, api)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_batch = max_batch
        self.policy = RetryPolicy(retries, backoff, max_backoff, timeout=timeout)
        self._client = self._make_client()

    def _make_client(self) -> Any:
        import httpx

        return httpx.Client(
            timeout=httpx.Timeout(self.timeout), limits=httpx.Limits(max_keepalive_connections=8)
        )

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        results: list[list[Doc]] = []
        for start in range(0, len(queries), self.max_batch):
            batch = list(queries[start : start + self.max_batch])
            results.extend(self._search_batch(batch, k))
        return results

    def _search_batch(self, queries: list[str], k: int) -> list[list[Doc]]:
        if self.api == "search_r1":
            data = self._post({"queries": queries, "topk": k, "return_scores": True})
            rows = _field(data, "result")
            parse = _search_r1_hit
        else:
            data = self._post({"queries": queries, "k": k})
            rows = _field(data, "answers")
            parse = _r1_searcher_hit
        if not isinstance(rows, list) or len(rows) != len(queries):
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise RetrieverError(
                f"malformed response from {self.endpoint}: {got} result lists for {len(queries)} queries"
            )
        try:
            return [[parse(hit) for hit in row[:k]] for row in rows]
        except (KeyError, TypeError, ValueError) as e:
            raise RetrieverError(f"malformed response from {self.endpoint}: {type(e).__name__}: {e}") from e

    def _post(self, payload: dict[str, Any]) -> Any:
        try:
            resp = send(self.policy, lambda: self._client.post(self.endpoint, json=payload))
        except RetriesExhausted as exc:
            raise RetrieverError(
                f"retrieval failed after {exc.attempts} attempt(s) to {self.endpoint}: {exc.problem}"
            ) from None
        if resp.status_code >= 400:
            raise RetrieverError(
                f"retrieval server {self.endpoint} rejected the request (HTTP {resp.status_code}): "
                f"{response_detail(resp)}"
            )
        try:
            return resp.json()
        except ValueError as e:
            raise RetrieverError(
                f"retrieval server {self.endpoint} answered non-JSON: {resp.text[:200]!r}"
            ) from e

    def __enter__(self) -> HTTPRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPRetriever({self.endpoint!r}, api={self.api!r})"


def _endpoint(url: str, api: str) -> str:
    import httpx

    parsed = httpx.URL(url)
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise ValueError(f"retriever url must look like http://host:port, got {url!r}")
    if parsed.path in {"", "/"}:
        return str(parsed.copy_with(path=_ENDPOINTS[api]))
    return url


def _field(data: Any, name: str) -> Any:
    if not isinstance(data, dict) or name not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise RetrieverError(f"malformed response: expected a JSON object with {name!r}, got {keys}")
    return data[name]


def _search_r1_hit(hit: dict[str, Any]) -> Doc:
    doc, score = (hit["document"], hit.get("score")) if "document" in hit else (hit, None)
    # some Search-R1 corpora store title and text instead of contents
    contents = doc["contents"] if "contents" in doc else f'"{doc["title"]}"\n{doc["text"]}'
    return Doc(str(doc.get("id", "")), str(contents), None if score is None else float(score))


def _r1_searcher_hit(hit: str) -> Doc:
    if not isinstance(hit, str):
        raise TypeError(f"expected a passage string, got {type(hit).__name__}")
    return Doc("", hit, None)
