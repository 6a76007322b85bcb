"""Web search as a retriever (kind ``web``): Sim2Real and hybrid evaluation against a real engine.

    build_retriever("web", provider="serpapi")                 # key from $SERPAPI_API_KEY
    build_retriever("web", provider="brave", rate_limit=1, price_per_1k=5.0)

Why: the SSRL paper's Sim2Real numbers come from a web search engine, and Search-R1 has a SerpAPI
path; a policy trained against a local index is judged against the web the same way here. Each
provider is one request and one response mapping (documented in :data:`PROVIDERS` and
``docs/retrieval_cache_web.md``); every result becomes a :class:`~.base.Doc` with ``id`` = its URL
and ``contents`` = ``"Title"\\nsnippet``, so documents render exactly like an index's.

* **Key**: read from the environment variable ``api_key_env`` (default per provider), never from
  the recipe (recipes are logged and committed); a missing variable is an error naming it when
  the recipe loads, before any weights.
* **Rate limit**: a token bucket (``rate_limit`` requests/s, ``burst``) shared by all threads of
  the retriever; every HTTP attempt, retries included, takes a token.
* **Retries**: 408/429/5xx and transport failures through :mod:`ssrl_trl.http_retry` (exponential
  backoff, jitter); what is left, and any other error answer, is a :class:`~.base.RetrieverError`,
  which the environment turns into a masked error observation.
* **Cost**: requests answered (billed) × ``price_per_1k`` / 1000, in ``stats()`` and the run's logs
  (``retrieval/web_requests``, ``retrieval/web_cost_usd``).
* **Always cached**: the kind is built behind :class:`~.cache.CachedRetriever` (in memory unless
  the recipe's ``cache`` section names a file), so a repeated query is never paid twice.
* **Base URL** overridable (``url``): a proxy, or the fake servers of the tests.
"""

from __future__ import annotations

import html
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import Field, field_validator, model_validator

from ..api_keys import check_env_var_name
from ..http_retry import RetriesExhausted, RetryPolicy, response_detail, send
from .base import Doc, RetrieverError, check_k
from .cache import CachedRetriever, fingerprint
from .factory import RetrieverOptions, register_retriever

__all__ = [
    "PROVIDERS",
    "Provider",
    "TokenBucket",
    "WebOptions",
    "WebRetriever",
    "build_web",
    "web_section",
]

_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Provider:
    """One web-search API: where and how a query is sent, and where the results are in the answer.

    ``request(query, k, key, params)`` gives ``(method, params_or_json, headers)``; ``parse(body,
    k)`` gives ``[(url, title, snippet, score)]`` or raises ``ValueError`` for an error answer.
    """

    name: str
    url: str
    key_env: str
    max_k: int
    request: Callable[[str, int, str, dict[str, Any]], tuple[str, dict[str, Any], dict[str, str]]]
    parse: Callable[[Any, int], list[tuple[str, str, str, float | None]]]


def _rows(body: Any, path: tuple[str, ...], fields: tuple[str, str, str], k: int, score: str | None = None):
    """The result rows at ``path`` of ``body`` as ``(url, title, snippet, score)``; a missing list is
    no results, anything else malformed is a ``ValueError``."""
    node = body
    for part in path:
        if not isinstance(node, dict):
            raise ValueError(f"expected a JSON object at {'.'.join(path)}, got {type(node).__name__}")
        node = node.get(part)
        if node is None:
            return []
    if not isinstance(node, list):
        raise ValueError(f"expected a list at {'.'.join(path)}, got {type(node).__name__}")
    url, title, snippet = fields
    out = []
    for row in node[:k]:
        if not isinstance(row, dict):
            raise ValueError(f"expected result objects at {'.'.join(path)}, got {type(row).__name__}")
        value = row.get(score) if score else None
        out.append(
            (
                str(row.get(url) or ""),
                _plain(row.get(title)),
                _plain(row.get(snippet)),
                float(value) if isinstance(value, (int, float)) else None,
            )
        )
    return out


def _plain(text: Any) -> str:
    """Snippet text without the markup some engines add (``<strong>`` around matched words)."""
    return " ".join(html.unescape(_TAG.sub("", str(text or ""))).split())


# SerpAPI, Google engine (Search-R1's serp path): GET /search.json?engine=google&q=..&num=..&api_key=..
# -> {"organic_results": [{"position", "title", "link", "snippet"}, ...]}; an error is {"error": "..."},
# except Google finding nothing, which SerpAPI also reports in "error".
def _serpapi_request(query: str, k: int, key: str, params: dict[str, Any]):
    return "GET", {"engine": "google", **params, "q": query, "num": k, "api_key": key}, {}


def _serpapi_parse(body: Any, k: int):
    if isinstance(body, dict) and "organic_results" not in body and body.get("error"):
        if "hasn't returned any results" in str(body["error"]):
            return []
        raise ValueError(f"SerpAPI error: {body['error']}")
    return _rows(body, ("organic_results",), ("link", "title", "snippet"), k)


# Brave Search API: GET /res/v1/web/search?q=..&count=.. with header X-Subscription-Token
# -> {"type": "search", "web": {"results": [{"title", "url", "description"}, ...]}}; count <= 20.
def _brave_request(query: str, k: int, key: str, params: dict[str, Any]):
    headers = {"X-Subscription-Token": key, "Accept": "application/json"}
    return "GET", {**params, "q": query, "count": k}, headers


def _brave_parse(body: Any, k: int):
    return _rows(body, ("web", "results"), ("url", "title", "description"), k)


# Serper.dev (Google): POST /search {"q", "num"} with header X-API-KEY
# -> {"organic": [{"title", "link", "snippet", "position"}, ...]}.
def _serper_request(query: str, k: int, key: str, params: dict[str, Any]):
    return "POST", {**params, "q": query, "num": k}, {"X-API-KEY": key}


def _serper_parse(body: Any, k: int):
    return _rows(body, ("organic",), ("link", "title", "snippet"), k)


# Tavily: POST /search {"query", "max_results", "search_depth"} with header Authorization: Bearer KEY
# -> {"query", "results": [{"title", "url", "content", "score"}, ...]}; max_results <= 20.
def _tavily_request(query: str, k: int, key: str, params: dict[str, Any]):
    body = {"search_depth": "basic", **params, "query": query, "max_results": k}
    return "POST", body, {"Authorization": f"Bearer {key}"}


def _tavily_parse(body: Any, k: int):
    return _rows(body, ("results",), ("url", "title", "content"), k, score="score")


#: The providers by name: endpoint, default key variable, most results per request, mapping.
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "serpapi",
            "https://serpapi.com/search.json",
            "SERPAPI_API_KEY",
            100,
            _serpapi_request,
            _serpapi_parse,
        ),
        Provider(
            "brave",
            "https://api.search.brave.com/res/v1/web/search",
            "BRAVE_API_KEY",
            20,
            _brave_request,
            _brave_parse,
        ),
        Provider(
            "serper",
            "https://google.serper.dev/search",
            "SERPER_API_KEY",
            100,
            _serper_request,
            _serper_parse,
        ),
        Provider(
            "tavily", "https://api.tavily.com/search", "TAVILY_API_KEY", 20, _tavily_request, _tavily_parse
        ),
    )
}


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` blocks until a token is
    free. Thread-safe: a caller reserves its token under the lock (the count may go below zero) and
    sleeps its own wait outside it, so concurrent callers are spaced ``1/rate`` apart."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst = rate, burst
        self._tokens, self._last = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Wait for one token; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait

    def __getstate__(self) -> dict[str, Any]:
        return {"rate": self.rate, "burst": self.burst}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rate"], state["burst"])  # type: ignore[misc]


class WebRetriever:
    """Batched ``search`` over one web-search provider: one request per query, ``concurrency``
    at a time, through the rate limit, retried, mapped to :class:`Doc` (see the module docstring)."""

    def __init__(
        self,
        provider: str,
        *,
        api_key_env: str | None = None,
        url: str | None = None,
        params: dict[str, Any] | None = None,
        rate_limit: float = 1.0,
        burst: int = 1,
        concurrency: int = 4,
        price_per_1k: float = 0.0,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 16.0,
    ) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown web search provider {provider!r}; choose from {sorted(PROVIDERS)}")
        self.provider = PROVIDERS[provider]
        self.api_key_env = api_key_env or self.provider.key_env
        _key(self.api_key_env, provider)  # fail now, not at the first search
        self.url = url or self.provider.url
        self.params = dict(params or {})
        self.concurrency, self.price_per_1k, self.timeout = concurrency, price_per_1k, timeout
        self.policy = RetryPolicy(retries, backoff, max_backoff, timeout=timeout)
        self.bucket = TokenBucket(rate_limit, burst)
        self.counts = {"requests": 0, "billed": 0, "failed_queries": 0}
        self._window = dict(self.counts)
        self._lock = threading.Lock()
        self._client = self._make_client()

    def _make_client(self) -> Any:
        import httpx

        return httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

    # -- search ----------------------------------------------------------------------------------
    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        k = min(k, self.provider.max_k)
        if len(queries) <= 1 or self.concurrency == 1:
            return [self._one(q, k) for q in queries]
        with ThreadPoolExecutor(min(self.concurrency, len(queries)), thread_name_prefix="web-search") as pool:
            return list(pool.map(lambda q: self._one(q, k), queries))

    def _one(self, query: str, k: int) -> list[Doc]:
        key = _key(self.api_key_env, self.provider.name)
        method, payload, headers = self.provider.request(query, k, key, self.params)
        where = f"{self.provider.name} search ({self.url})"

        def attempt() -> Any:
            self.bucket.take()
            self._count("requests")
            if method == "GET":
                return self._client.get(self.url, params=payload, headers=headers)
            return self._client.post(self.url, json=payload, headers=headers)

        try:
            try:
                resp = send(self.policy, attempt)
            except RetriesExhausted as exc:
                raise RetrieverError(
                    f"{where} failed after {exc.attempts} attempt(s): {exc.problem}"
                ) from None
            if resp.status_code >= 400:
                raise RetrieverError(
                    f"{where} rejected the request (HTTP {resp.status_code}): {_redact(response_detail(resp), key)}"
                )
            self._count("billed")
            try:
                rows = self.provider.parse(resp.json(), k)
            except ValueError as exc:  # non-JSON, an error answer, or a malformed one
                raise RetrieverError(
                    f"{where}: malformed or error answer: {_redact(str(exc), key)[:300]}"
                ) from None
        except RetrieverError:
            self._count("failed_queries")
            raise
        return [Doc(url, f'"{title}"\n{snippet}', score) for url, title, snippet, score in rows]

    # -- metrics ---------------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
            self._window[name] += 1

    @property
    def cost_usd(self) -> float:
        return self.counts["billed"] * self.price_per_1k / 1000.0

    def stats(self) -> dict[str, float]:
        """Requests sent (retries included), answered (billed) and their cost since construction."""
        with self._lock:
            out = {name: float(v) for name, v in self.counts.items()}
        out["cost_usd"] = self.cost_usd
        return out

    def training_metrics(self) -> dict[str, float]:
        """Requests in this log interval, and the run's cost so far (what the bill will say)."""
        with self._lock:
            window, self._window = self._window, dict.fromkeys(self.counts, 0)
        return {
            "retrieval/web_requests": float(window["requests"]),
            "retrieval/web_failed_queries": float(window["failed_queries"]),
            "retrieval/web_cost_usd": self.cost_usd,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._client = self._make_client()

    def __repr__(self) -> str:
        return f"WebRetriever({self.provider.name!r}, url={self.url!r})"


def _key(env: str, provider: str) -> str:
    key = os.environ.get(env, "")
    if not key:
        raise ValueError(
            f"web search provider {provider!r} reads its API key from the environment variable {env}, "
            "which is not set (export it, or name another variable with api_key_env)"
        )
    return key


def _redact(text: str, key: str) -> str:
    """An error message without the key (some APIs echo the request URL, key included)."""
    return text.replace(key, "***") if key else text


# -- the registered kind ---------------------------------------------------------------------------
class WebOptions(RetrieverOptions):
    provider: Literal["serpapi", "brave", "serper", "tavily"]
    api_key_env: str | None = Field(
        None, description="environment variable with the key (default per provider)"
    )
    url: str | None = Field(None, description="endpoint override: a proxy, or a fake server in tests")
    params: dict[str, str | int | float | bool] = Field(
        {}, description="extra provider parameters, e.g. {gl: us, hl: en} (SerpAPI), {country: us} (Brave)"
    )
    rate_limit: float = Field(1.0, gt=0, description="requests per second (token bucket)")
    burst: int = Field(1, ge=1, description="requests that may go at once after a quiet spell")
    concurrency: int = Field(4, ge=1, description="requests in flight per search call")
    price_per_1k: float = Field(0.0, ge=0, description="USD per 1000 answered requests (your plan's)")
    timeout: float = Field(15.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff: float = Field(1.0, ge=0)
    max_backoff: float = Field(16.0, ge=0)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        return check_env_var_name(name)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(
                f"web search url must start with http:// or https:// and name a host, got {url!r}"
            )
        return url

    @model_validator(mode="after")
    def _key_is_set(self) -> WebOptions:
        _key(self.api_key_env or PROVIDERS[self.provider].key_env, self.provider)
        return self


def build_web(o: WebOptions) -> CachedRetriever:
    """The registry's builder: the provider's retriever, always behind an in-memory cache (a
    recipe's ``cache`` section replaces it, e.g. with a SQLite file)."""
    inner = WebRetriever(**o.model_dump())
    return CachedRetriever(inner, identity=fingerprint("web", o.model_dump()))


def web_section(target: str) -> dict[str, Any]:
    """``PROVIDER[?option=value&...]`` (the part after ``web:`` in ``ssrl-trl eval --retriever``) as
    a recipe's ``environment.retriever`` mapping; ``cache=FILE`` and ``cache_size=N`` make the
    cache section. Values are validated by the kind's options later."""
    provider, _, query = target.partition("?")
    options: dict[str, Any] = {"provider": provider}
    cache: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if name == "cache":
            cache["path"] = value
        elif name == "cache_size":
            cache["size"] = value
        else:
            options[name] = value
    section: dict[str, Any] = {"kind": "web", "options": options}
    if cache:
        section["cache"] = cache
    return section


register_retriever("web", WebOptions, build_web)
