"""The ``web`` retriever kind against a local fake server that speaks each provider's documented
JSON (SerpAPI, Brave, Serper.dev, Tavily): request and response mapping, where the key goes,
retries, errors as masked observations, the rate limit, the cost counter and the cache. Never
the network: every request goes to 127.0.0.1."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ssrl_trl.environments.retrieval import RetrievalEnv
from ssrl_trl.evaluation.arms import parse_retriever, retriever_section
from ssrl_trl.protocol import Action
from ssrl_trl.retrieval import RetrieverError
from ssrl_trl.retrieval.cache import CachedRetriever
from ssrl_trl.retrieval.factory import RetrieverSpec, build_retriever
from ssrl_trl.retrieval.server import running_server
from ssrl_trl.retrieval.web import TokenBucket, WebRetriever

KEY = "test-key-123"
PATHS = {
    "serpapi": "/serpapi/search.json",
    "brave": "/brave/res/v1/web/search",
    "serper": "/serper/search",
    "tavily": "/tavily/search",
}
HITS = [
    (
        "https://en.wikipedia.org/wiki/Hamlet",
        "Hamlet - Wikipedia",
        "Hamlet is a tragedy by William Shakespeare.",
    ),
    ("https://www.britannica.com/topic/Hamlet", "Hamlet | Britannica", "Written about 1599-1601."),
    ("https://example.org/3", "Third", "A third result."),
]


def _answer(provider: str, k: int) -> dict[str, Any]:
    """A documented success body of ``provider`` with ``k`` results."""
    hits = HITS[:k]
    if provider == "serpapi":
        return {
            "search_metadata": {"status": "Success"},
            "organic_results": [
                {"position": i + 1, "title": t, "link": u, "snippet": s} for i, (u, t, s) in enumerate(hits)
            ],
        }
    if provider == "brave":  # Brave marks matched words up in the description
        return {
            "type": "search",
            "web": {
                "type": "search",
                "results": [
                    {
                        "title": t,
                        "url": u,
                        "description": s.replace("Shakespeare", "<strong>Shakespeare</strong>"),
                    }
                    for u, t, s in hits
                ],
            },
        }
    if provider == "serper":
        return {
            "searchParameters": {"type": "search"},
            "organic": [
                {"title": t, "link": u, "snippet": s, "position": i + 1} for i, (u, t, s) in enumerate(hits)
            ],
        }
    return {
        "query": "q",
        "results": [
            {"title": t, "url": u, "content": s, "score": 0.9 - 0.1 * i} for i, (u, t, s) in enumerate(hits)
        ],
    }


class Fake:
    """The fake server's log and script: ``script[provider]`` lists statuses to answer first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: dict[str, list[int]] = {}
        self.body: dict[str, Any] = {}
        self.lock = threading.Lock()

    def app(self) -> FastAPI:
        app = FastAPI()

        async def handle(provider: str, request: Request) -> JSONResponse:
            payload = await request.json() if request.method == "POST" else dict(request.query_params)
            with self.lock:
                self.requests.append(
                    {
                        "provider": provider,
                        "method": request.method,
                        "payload": payload,
                        "headers": dict(request.headers),
                        "t": time.monotonic(),
                    }
                )
                queued = self.script.get(provider) or []
                status = queued.pop(0) if queued else 200
            if status != 200:
                return JSONResponse({"error": f"scripted {status} for key {KEY}"}, status_code=status)
            if provider in self.body:
                return JSONResponse(self.body[provider])
            k = int(payload.get("num") or payload.get("count") or payload.get("max_results") or 10)
            return JSONResponse(_answer(provider, k))

        def route(provider: str):
            async def endpoint(request: Request) -> JSONResponse:
                return await handle(provider, request)

            return endpoint

        for provider, path in PATHS.items():
            app.add_api_route(path, route(provider), methods=["GET", "POST"])
        return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Fake]]:
    fake = Fake()
    with running_server(fake.app()) as url:
        yield url, fake


@pytest.fixture
def fake(server, monkeypatch) -> Fake:
    for env in ("SERPAPI_API_KEY", "BRAVE_API_KEY", "SERPER_API_KEY", "TAVILY_API_KEY", "MY_SEARCH_KEY"):
        monkeypatch.setenv(env, KEY)
    server[1].requests.clear()
    server[1].script.clear()
    server[1].body.clear()
    return server[1]


def web(server, provider: str, **options: Any) -> CachedRetriever:
    options = {"rate_limit": 1000, "burst": 100, "backoff": 0.01, "max_backoff": 0.02, **options}
    return build_retriever("web", provider=provider, url=server[0] + PATHS[provider], **options)


@pytest.mark.parametrize("provider", sorted(PATHS))
def test_each_provider_maps_request_and_response(server, fake: Fake, provider: str) -> None:
    r = web(server, provider)
    docs = r.search(["who wrote hamlet"], k=2)[0]
    assert [d.id for d in docs] == [HITS[0][0], HITS[1][0]]
    assert (
        docs[0].contents == '"Hamlet - Wikipedia"\nHamlet is a tragedy by William Shakespeare.'
    )  # markup gone
    assert docs[0].title == "Hamlet - Wikipedia" and docs[1].text == "Written about 1599-1601."
    assert (docs[0].score is not None) == (provider == "tavily")
    (req,) = fake.requests
    p, h = req["payload"], req["headers"]
    expected = {
        "serpapi": ("GET", p.get("q"), p.get("num"), p.get("api_key"), p.get("engine")),
        "brave": ("GET", p.get("q"), p.get("count"), h.get("x-subscription-token"), h.get("accept")),
        "serper": ("POST", p.get("q"), p.get("num"), h.get("x-api-key"), None),
        "tavily": (
            "POST",
            p.get("query"),
            p.get("max_results"),
            h.get("authorization"),
            p.get("search_depth"),
        ),
    }[provider]
    key = f"Bearer {KEY}" if provider == "tavily" else KEY
    extra = {"serpapi": "google", "brave": "application/json", "serper": None, "tavily": "basic"}[provider]
    assert expected == (req["method"], "who wrote hamlet", expected[2], key, extra)
    assert str(expected[2]) == "2"


def test_429_then_success_is_retried_and_counted(server, fake: Fake) -> None:
    fake.script["brave"] = [429]
    r = web(server, "brave", retries=2, price_per_1k=5.0)
    assert r.search(["hamlet"], 1)[0][0].id == HITS[0][0]
    assert len(fake.requests) == 2
    s = r.stats()
    assert (s["inner.requests"], s["inner.billed"], s["inner.cost_usd"]) == (2, 1, 0.005)


def test_persistent_500_is_a_retriever_error_and_a_masked_observation(server, fake: Fake) -> None:
    fake.script["serper"] = [500] * 3
    r = web(server, "serper", retries=2)
    with pytest.raises(RetrieverError, match=r"serper search .* failed after 3 attempt\(s\): HTTP 500"):
        r.search(["hamlet"], 1)
    fake.script["serper"] = [500] * 3

    class Chars:  # a character tokenizer is enough to build an observation
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    env = RetrievalEnv(r, Chars(), topk=1)
    (obs,) = env.respond([Action("search", "hamlet again")], [400])
    assert obs.kind == "error" and "Search failed" in obs.text and env.consecutive_failures == 1
    assert r.stats()["errors"] == 2 and r.stats()["inner.billed"] == 0  # nothing cached, nothing billed


def test_a_rejected_key_is_not_retried_and_not_echoed(server, fake: Fake) -> None:
    fake.script["serpapi"] = [401]
    r = web(server, "serpapi", retries=3, backoff=1.0)
    start = time.monotonic()
    with pytest.raises(RetrieverError, match="HTTP 401") as info:
        r.search(["hamlet"], 1)
    assert time.monotonic() - start < 0.5 and len(fake.requests) == 1
    assert KEY not in str(info.value) and "***" in str(info.value)


def test_error_and_empty_answers(server, fake: Fake) -> None:
    fake.body["serpapi"] = {"error": "Google hasn't returned any results for this query."}
    assert web(server, "serpapi").search(["zzqx"], 3) == [[]]
    fake.body["serpapi"] = {"error": "Your account has run out of searches."}
    with pytest.raises(RetrieverError, match="run out of searches"):
        web(server, "serpapi").search(["hamlet"], 3)
    fake.body["brave"] = {"type": "search"}  # no web section: no results
    assert web(server, "brave").search(["zzqx"], 3) == [[]]
    fake.body["tavily"] = {"results": "nope"}
    with pytest.raises(RetrieverError, match="expected a list at results"):
        web(server, "tavily").search(["hamlet"], 3)


def test_the_rate_limit_spaces_requests_across_threads(server, fake: Fake) -> None:
    r = web(server, "tavily", rate_limit=20, burst=1, concurrency=4)
    start = time.monotonic()
    r.search([f"query {i}" for i in range(9)], 1)
    elapsed = time.monotonic() - start
    assert len(fake.requests) == 9
    assert 8 / 20 * 0.9 <= elapsed < 3.0  # 9 requests, one token every 50 ms after the first
    gaps = sorted(b["t"] - a["t"] for a, b in zip(fake.requests, fake.requests[1:], strict=False))
    assert gaps[len(gaps) // 2] >= 0.03  # the median gap between arrivals is near 1/rate


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=50, burst=3)
    waits = [bucket.take() for _ in range(3)]
    assert waits == [0.0, 0.0, 0.0]
    start = time.monotonic()
    threads = [threading.Thread(target=bucket.take) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 5 / 50 * 0.8 <= time.monotonic() - start < 1.0
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0)


def test_the_cache_avoids_a_second_request_and_cost_reaches_the_logs(server, fake: Fake) -> None:
    r = web(server, "serper", price_per_1k=1.0)
    assert isinstance(r, CachedRetriever)  # always cached, even without a cache section
    first = r.search(["hamlet", "hamlet"], 2)
    second = r.search([" hamlet "], 2)
    assert second[0] == first[0] == first[1] and len(fake.requests) == 1
    metrics = r.training_metrics()
    assert metrics["retrieval/cache_hit_rate"] == pytest.approx(2 / 3)
    assert metrics["retrieval/web_requests"] == 1 and metrics["retrieval/web_cost_usd"] == pytest.approx(
        0.001
    )
    assert r.training_metrics()["retrieval/web_requests"] == 0  # a new log interval


def test_a_recipe_cache_section_replaces_the_default_one(server, fake: Fake, tmp_path) -> None:
    section = {
        "kind": "web",
        "url": server[0] + PATHS["brave"],
        "options": {"provider": "brave", "api_key_env": "MY_SEARCH_KEY", "rate_limit": 100},
        "cache": {"path": str(tmp_path / "web.sqlite")},
    }
    r = RetrieverSpec.from_values(section).build()
    assert isinstance(r, CachedRetriever) and isinstance(r.inner, WebRetriever) and r.store is not None
    r.search(["hamlet"], 1)
    again = RetrieverSpec.from_values(section).build()  # a new run: served from the file
    assert again.search(["hamlet"], 1)[0][0].id == HITS[0][0] and len(fake.requests) == 1


def test_a_missing_key_fails_at_validation_naming_the_variable(monkeypatch) -> None:
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable BRAVE_API_KEY, which is not set"):
        RetrieverSpec.from_values({"kind": "web", "options": {"provider": "brave"}})
    with pytest.raises(ValueError, match="not a key"):
        RetrieverSpec.from_values({"kind": "web", "options": {"provider": "brave", "api_key_env": "sk-1/2"}})
    with pytest.raises(ValueError, match="provider"):
        RetrieverSpec.from_values({"kind": "web", "options": {"provider": "altavista"}})


def test_eval_names_a_web_retriever(server, fake: Fake, tmp_path) -> None:
    spec = f"web:serpapi?url={server[0]}{PATHS['serpapi']}&rate_limit=50&cache={tmp_path / 'eval.sqlite'}"
    assert retriever_section(spec)["cache"] == {"path": str(tmp_path / "eval.sqlite")}
    r = parse_retriever(spec)
    assert r.search(["hamlet"], 1)[0][0].id == HITS[0][0]
    assert r.inner.bucket.rate == 50 and r.store is not None
    from ssrl_trl.errors import UserError

    with pytest.raises(UserError, match="--retriever web:bing"):
        parse_retriever("web:bing")


def test_pickled_web_retriever_opens_its_own_client(server, fake: Fake) -> None:
    r = pickle.loads(pickle.dumps(web(server, "tavily")))
    assert r.search(["hamlet"], 1)[0][0].id == HITS[0][0]
