"""HTTP client :class:`Retriever` for a Search-R1 (``POST /retrieve``) or R1-Searcher
(``POST /queries``) retrieval server, ours (``ssrl-trl serve-retriever``) or theirs, or for
several replicas of one.

    retriever = HTTPRetriever("http://127.0.0.1:8000")                 # Search-R1 API
    retriever = HTTPRetriever("http://127.0.0.1:5004", api="r1_searcher")
    retriever = HTTPRetriever(urls=["http://10.0.0.1:8000", "http://10.0.0.2:8000"])  # replicas
    retriever.search(["who wrote hamlet"], k=3)

Why: in training the retriever is "the world". Transient failures (connection refused or reset,
timeouts, HTTP 408/429/5xx) are retried a bounded number of times with exponential backoff and
jitter (:mod:`ssrl_trl.http_retry`, the policy the vLLM server client uses too); whatever is left
is raised as :class:`RetrieverError`, which the environment turns into a masked error observation
instead of crashing the step. A 4xx is not retried: the request itself is bad (say a query over
the server's length limit) and would fail again. One ``httpx.Client`` keeps connections alive
across calls, and large batches are split to stay under server limits.

With several replicas (a multi-node run with a retriever per node, or one node serving more than
one process can answer) each request goes to the healthy replica with the fewest requests in
flight, ties taken in turn; a transient failure fails over to the next replica at once, with no
backoff, and marks the failed one down for a cool-off (doubling while it keeps failing). After the
cool-off one real request probes it back. ``retries`` counts rounds: one round tries each replica
at most once, healthy ones first, and only between rounds does the client back off, so a dead
replica costs one refused connection, not a lost query. Counters per replica are in
:meth:`HTTPRetriever.replica_stats` (and, per log interval, in the training logs through
:meth:`HTTPRetriever.training_metrics`), and each change of a replica's state is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..http_retry import PicklableHTTPClient, RetriesExhausted, RetryPolicy, response_detail, send
from .base import Doc, RetrieverError, check_k

__all__ = ["HTTPRetriever", "Replica"]

log = logging.getLogger(__name__)

_ENDPOINTS = {"search_r1": "/retrieve", "r1_searcher": "/queries"}
#: the longest cool-off of a replica that keeps failing, whatever ``cooloff`` says
_MAX_COOLOFF_S = 60.0


@dataclass
class Replica:
    """One server's endpoint, its health and its counters (read them via ``replica_stats``)."""

    endpoint: str
    requests: int = 0  # attempts sent to it
    errors: int = 0  # attempts that failed transiently (connection, timeout, 408/429/5xx)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    failures_in_a_row: int = 0
    down_until: float = 0.0  # time.monotonic(); 0: never marked down
    last_error: str | None = None

    def state(self, now: float) -> str:
        if not self.failures_in_a_row:
            return "up"
        return "down" if now < self.down_until else "probing"

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "state": self.state(now),
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "in_flight": self.in_flight,
            "failures_in_a_row": self.failures_in_a_row,
            "down_for_s": round(max(0.0, self.down_until - now), 2),
            "last_error": self.last_error,
        }


class HTTPRetriever(PicklableHTTPClient):
    """Batched ``search`` over HTTP with timeouts, bounded retries, connection reuse and failover.

    Args:
        url: server base URL (``http://host:port``; the API's path is appended) or the full
            endpoint URL (used as given when it has a path). A list means replicas, like ``urls``.
        urls: several replicas of one index (give ``url`` or ``urls``, not both).
        api: ``"search_r1"`` (ids and scores come back) or ``"r1_searcher"`` (passage strings
            only: docs get ``id=""`` and ``score=None``).
        timeout: seconds per attempt (connect, read, write each).
        retries: extra rounds after the first for transient failures (a round tries every
            replica at most once; with one URL, a round is one attempt).
        backoff: first delay between rounds in seconds; doubles per round up to ``max_backoff``,
            with jitter in [50%, 100%] so many workers do not retry in lockstep.
        max_batch: most queries per request; larger batches are split.
        cooloff: seconds a failed replica is passed over (doubling while it keeps failing, at
            most 60 s) before one request probes it again.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        urls: Sequence[str] | None = None,
        api: Literal["search_r1", "r1_searcher"] = "search_r1",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch: int = 512,
        cooloff: float = 2.0,
    ) -> None:
        if api not in _ENDPOINTS:
            raise ValueError(f"unknown retrieval API {api!r}; choose from {sorted(_ENDPOINTS)}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_batch < 1 or cooloff <= 0:
            raise ValueError(
                f"need timeout > 0, retries >= 0, backoff >= 0, max_batch >= 1, cooloff > 0; got "
                f"timeout={timeout}, retries={retries}, backoff={backoff}, max_batch={max_batch}, "
                f"cooloff={cooloff}"
            )
        self.urls = _url_list(url, urls)
        self.url = self.urls[0]
        self.api = api
        self.endpoints = [_endpoint(u, api) for u in self.urls]
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"retriever urls name the same endpoint twice: {self.urls}")
        self.endpoint = self.endpoints[0]
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_batch = max_batch
        self.cooloff = cooloff
        self.policy = RetryPolicy(retries, backoff, max_backoff, timeout=timeout)
        self._init_runtime()
        self._client = self._make_client()

    def _init_runtime(self) -> None:
        """Replica state and its lock: fresh in every process (a pickled copy starts healthy)."""
        self._replicas = [Replica(e) for e in self.endpoints]
        self._lock = threading.Lock()
        self._turn = 0
        self._logged = [(0, 0)] * len(self._replicas)  # (requests, errors) at the last training log

    def _make_client(self) -> Any:
        import httpx

        keepalive = 8 * len(self.endpoints)
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_keepalive_connections=keepalive),
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_replicas", "_lock", "_turn", "_logged"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()
        self._client = self._make_client()

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica: endpoint, state (``up``/``down``/``probing``), requests, errors (and by
        kind: ``connect``, ``timeout``, ``transport``, ``http_503``...), in flight, last error."""
        now = time.monotonic()
        with self._lock:
            return [r.stats(now) for r in self._replicas]

    def stats(self) -> dict[str, float]:
        """Counters since construction, flat (a wrapper such as the result cache reports them as
        ``inner.*``): ``requests``, ``errors``, and per replica ``replica<i>.requests`` /
        ``replica<i>.errors`` / ``replica<i>.down`` for ``urls[i]``."""
        now = time.monotonic()
        with self._lock:
            out = {
                "requests": float(sum(r.requests for r in self._replicas)),
                "errors": float(sum(r.errors for r in self._replicas)),
            }
            for i, r in enumerate(self._replicas):
                out[f"replica{i}.requests"] = float(r.requests)
                out[f"replica{i}.errors"] = float(r.errors)
                out[f"replica{i}.down"] = float(r.state(now) == "down")
        return out

    def training_metrics(self) -> dict[str, float]:
        """This log interval's attempts and transient errors (``retrieval/http_requests``,
        ``retrieval/http_errors``); with replicas also each one's (``retrieval/replica<i>_requests``,
        ``retrieval/replica<i>_errors``, ``<i>`` indexing ``urls``) and ``retrieval/replicas_down``
        now, so a replica that fails shows in the training logs, not only in a warning line."""
        now = time.monotonic()
        with self._lock:
            counts = [(r.requests, r.errors) for r in self._replicas]
            deltas = [(n - n0, e - e0) for (n, e), (n0, e0) in zip(counts, self._logged, strict=True)]
            self._logged = counts
            down = sum(r.state(now) == "down" for r in self._replicas)
        out = {
            "retrieval/http_requests": float(sum(n for n, _ in deltas)),
            "retrieval/http_errors": float(sum(e for _, e in deltas)),
        }
        if len(deltas) > 1:
            for i, (n, e) in enumerate(deltas):
                out[f"retrieval/replica{i}_requests"] = float(n)
                out[f"retrieval/replica{i}_errors"] = float(e)
            out["retrieval/replicas_down"] = float(down)
        return out

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        results: list[list[Doc]] = []
        for start in range(0, len(queries), self.max_batch):
            batch = list(queries[start : start + self.max_batch])
            results.extend(self._search_batch(batch, k))
        return results

    def _search_batch(self, queries: list[str], k: int) -> list[list[Doc]]:
        if self.api == "search_r1":
            endpoint, data = self._post({"queries": queries, "topk": k, "return_scores": True})
            rows = _field(data, "result")
            parse = _search_r1_hit
        else:
            endpoint, data = self._post({"queries": queries, "k": k})
            rows = _field(data, "answers")
            parse = _r1_searcher_hit
        if not isinstance(rows, list) or len(rows) != len(queries):
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise RetrieverError(
                f"malformed response from {endpoint}: {got} result lists for {len(queries)} queries"
            )
        try:
            return [[parse(hit) for hit in row[:k]] for row in rows]
        except (KeyError, TypeError, ValueError) as e:
            raise RetrieverError(f"malformed response from {endpoint}: {type(e).__name__}: {e}") from e

    def _post(self, payload: dict[str, Any]) -> tuple[str, Any]:
        """(endpoint that answered, its JSON) after failover and retries."""
        import httpx

        sent: list[int] = [0]
        problems: dict[str, str] = {}

        def one_round() -> Any:
            return self._round(payload, sent, problems)

        try:
            resp = send(self.policy, one_round)
        except httpx.HTTPError as exc:  # not transient, so not retried: say what and where
            raise RetrieverError(f"retrieval request failed: {type(exc).__name__}: {exc}") from exc
        except RetriesExhausted as exc:
            if len(self._replicas) == 1:
                raise RetrieverError(
                    f"retrieval failed after {exc.attempts} attempt(s) to {self.endpoint}: {exc.problem}"
                ) from None
            last = "; ".join(f"{e}: {p}" for e, p in problems.items())
            raise RetrieverError(
                f"retrieval failed after {sent[0]} attempt(s) in {exc.attempts} round(s) over "
                f"{len(self._replicas)} replicas; last error of each: {last}"
            ) from None
        endpoint = str(resp.request.url)
        if resp.status_code >= 400:
            raise RetrieverError(
                f"retrieval server {endpoint} rejected the request (HTTP {resp.status_code}): "
                f"{response_detail(resp)}"
            )
        try:
            return endpoint, resp.json()
        except ValueError as e:
            raise RetrieverError(f"retrieval server {endpoint} answered non-JSON: {resp.text[:200]!r}") from e

    def _round(self, payload: dict[str, Any], sent: list[int], problems: dict[str, str]) -> Any:
        """Try each replica at most once, best first; the first answer that is not transient, else
        the last transient answer or error (for :func:`send` to judge and back off)."""
        import httpx

        last_error: httpx.TransportError | None = None
        last_response: Any = None
        for replica in self._order():
            sent[0] += 1
            with self._lock:
                replica.in_flight += 1
            try:
                resp = self._client.post(replica.endpoint, json=payload)
            except httpx.TransportError as exc:
                kind = (
                    "timeout"
                    if isinstance(exc, httpx.TimeoutException)
                    else ("connect" if isinstance(exc, httpx.ConnectError) else "transport")
                )
                problems[replica.endpoint] = f"{type(exc).__name__}: {exc}"
                self._done(replica, kind, problems[replica.endpoint])
                last_error, last_response = exc, None
                continue
            except BaseException:  # not transient (a body that will not decode, an interrupt)
                with self._lock:
                    replica.in_flight -= 1
                    replica.requests += 1
                raise
            if resp.status_code in self.policy.retry_status:
                problems[replica.endpoint] = f"HTTP {resp.status_code}: {response_detail(resp)}"
                self._done(replica, f"http_{resp.status_code}", problems[replica.endpoint])
                last_error, last_response = None, resp
                continue
            self._done(replica, None, None)
            return resp
        if last_error is not None:
            raise last_error
        return last_response

    def _order(self) -> list[Replica]:
        """This round's replicas, best first: one whose cool-off ran out (one probe at a time; if
        it fails the round goes on at once), the up ones by fewest in flight (ties in turn), then
        those still cooling off, soonest back first (with every replica down they are tried all
        the same: a round never waits for a cool-off)."""
        now = time.monotonic()
        with self._lock:
            self._turn += 1
            n = len(self._replicas)
            turn = [self._replicas[(self._turn + i) % n] for i in range(n)]
            up = sorted((r for r in turn if r.state(now) == "up"), key=lambda r: r.in_flight)
            probe = [r for r in turn if r.state(now) == "probing"][:1]
            for r in probe:  # others pass it over while this probe is out (a hung one costs one timeout)
                r.down_until = now + self.cooloff
            rest = sorted((r for r in turn if r not in up and r not in probe), key=lambda r: r.down_until)
            return probe + up + rest

    def _done(self, replica: Replica, kind: str | None, problem: str | None) -> None:
        """Record one attempt's outcome: a failure marks the replica down, a success brings it back."""
        now = time.monotonic()
        with self._lock:
            replica.requests += 1
            replica.in_flight -= 1
            if kind is None:
                if replica.failures_in_a_row:
                    log.info(
                        "retrieval replica %s is back after %d failure(s)",
                        replica.endpoint,
                        replica.failures_in_a_row,
                    )
                replica.failures_in_a_row = 0
                return
            replica.errors += 1
            replica.errors_by_kind[kind] = replica.errors_by_kind.get(kind, 0) + 1
            replica.last_error = problem
            replica.failures_in_a_row += 1
            was_down = now < replica.down_until
            cool = min(
                max(_MAX_COOLOFF_S, self.cooloff), self.cooloff * 2 ** min(replica.failures_in_a_row - 1, 16)
            )
            replica.down_until = now + cool
        if len(self._replicas) > 1 and not was_down:
            log.warning(
                "retrieval replica %s marked down for %.1fs (%d error(s) so far): %s",
                replica.endpoint,
                cool,
                replica.errors,
                problem,
            )

    def __enter__(self) -> HTTPRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if len(self.endpoints) == 1:
            return f"HTTPRetriever({self.endpoint!r}, api={self.api!r})"
        return f"HTTPRetriever({self.endpoints!r}, api={self.api!r})"


def _url_list(url: str | Sequence[str] | None, urls: Sequence[str] | None) -> list[str]:
    """The replica URLs from ``url`` (one, or a list) or ``urls``; exactly one of them."""
    if url is not None and urls is not None:
        raise ValueError("give the retriever url (one server) or urls (replicas), not both")
    given = urls if urls is not None else url
    if given is None:
        raise ValueError("the retriever needs url (one server) or urls (a list of replicas)")
    listed = [given] if isinstance(given, str) else list(given)
    if not listed or not all(isinstance(u, str) for u in listed):
        raise ValueError(f"retriever urls must be a non-empty list of strings, got {given!r}")
    return listed


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
