"""HTTPRetriever against real loopback servers: our own server for both APIs, and a scripted
server that is deliberately slow, failing or malformed to pin down retry/timeout behaviour."""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ssrl_trl.retrieval import Doc, RetrieverError
from ssrl_trl.retrieval.client import HTTPRetriever
from ssrl_trl.retrieval.factory import InMemoryRetriever, build_retriever
from ssrl_trl.retrieval.server import ServerLimits, create_app, running_server

DOCS = [
    '"Paris"\nParis is the capital and largest city of France.',
    '"Rome"\nRome is the capital city of Italy.',
    '"Berlin"\nBerlin is the capital of Germany.',
]


@pytest.fixture(scope="module")
def real_url() -> Iterator[str]:
    app = create_app(InMemoryRetriever(DOCS), ServerLimits(max_query_chars=100))
    with running_server(app) as url:
        yield url


def test_search_r1_api_round_trip(real_url: str) -> None:
    with HTTPRetriever(real_url) as r:
        assert r.endpoint == real_url + "/retrieve"
        results = r.search(["capital of Italy", "largest city of France", "qqq"], k=2)
    expected = InMemoryRetriever(DOCS).search(["capital of Italy", "largest city of France", "qqq"], k=2)
    assert results == expected and results[0][0] == Doc("1", DOCS[1], 3.0)


def test_r1_searcher_api_round_trip(real_url: str) -> None:
    with HTTPRetriever(real_url, api="r1_searcher") as r:
        assert r.endpoint == real_url + "/queries"
        results = r.search(["capital of Italy"], k=2)
    assert [d.contents for d in results[0]] == [DOCS[1], DOCS[0]]  # ties keep corpus order
    assert all(d.id == "" and d.score is None for d in results[0])  # that API has no ids or scores


def test_full_endpoint_url_is_kept_and_bad_urls_rejected(real_url: str) -> None:
    assert HTTPRetriever(real_url + "/retrieve").search(["Rome"], 1)[0][0].id == "1"
    with pytest.raises(ValueError, match="http://host:port"):
        HTTPRetriever("localhost:8000")
    with pytest.raises(ValueError, match="choose from"):
        HTTPRetriever(real_url, api="flashrag")  # type: ignore[arg-type]


def test_4xx_is_not_retried_and_says_why(real_url: str) -> None:
    r = HTTPRetriever(real_url, retries=3, backoff=1.0)
    start = time.monotonic()
    with pytest.raises(RetrieverError, match=r"HTTP 422.*queries\[0\] has 150 characters"):
        r.search(["x" * 150], k=3)
    assert time.monotonic() - start < 0.5  # no backoff sleeps


def test_large_batches_are_split(real_url: str) -> None:
    r = HTTPRetriever(real_url, max_batch=2)
    queries = ["Paris", "Rome", "Berlin", "France", "Italy"]
    assert [docs[0].id for docs in r.search(queries, k=1)] == ["0", "1", "2", "0", "1"]


def test_pickle_round_trip(real_url: str) -> None:
    r = pickle.loads(pickle.dumps(HTTPRetriever(real_url, timeout=5)))
    assert r.timeout == 5 and r.search(["Berlin"], 1)[0][0].id == "2"


def test_factory_builds_http(real_url: str) -> None:
    r = build_retriever("http", url=real_url, api="search_r1", timeout=5, retries=0)
    assert isinstance(r, HTTPRetriever) and r.search(["Paris"], 1)[0][0].id == "0"


# ---------------------------------------------------------------- scripted misbehaving server


class Script:
    """What the next requests get: a queue of behaviours ('ok' once it runs out)."""

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.attempts = 0
        self.client_ports: set[int] = set()


def scripted_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve(request: Request):
        script.attempts += 1
        if request.client is not None:
            script.client_ports.add(request.client.port)
        body = await request.json()
        action = script.plan.pop(0) if script.plan else "ok"
        if action == "slow":
            await asyncio.sleep(2.0)
        elif action in {"500", "503", "429"}:
            return JSONResponse({"detail": f"scripted {action}"}, status_code=int(action))
        elif action == "not_json":
            return PlainTextResponse("<html>proxy error</html>")
        elif action == "short":
            return JSONResponse({"result": []})
        hit = {"document": {"id": "7", "contents": '"T"\ntext'}, "score": 1.5}
        return JSONResponse({"result": [[hit] for _ in body["queries"]]})

    return app


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    with running_server(scripted_app(script)) as url:
        yield url, script


@pytest.fixture
def script(scripted: tuple[str, Script]) -> Script:
    s = scripted[1]
    s.plan.clear()
    s.attempts = 0
    s.client_ports.clear()
    return s


def test_retries_transient_failures_then_succeeds(scripted: tuple[str, Script], script: Script) -> None:
    script.plan = ["500", "503", "429"]
    r = HTTPRetriever(scripted[0], retries=3, backoff=0.01)
    assert r.search(["q"], k=1) == [[Doc("7", '"T"\ntext', 1.5)]]
    assert script.attempts == 4


def test_gives_up_after_bounded_retries(scripted: tuple[str, Script], script: Script) -> None:
    script.plan = ["503"] * 10
    r = HTTPRetriever(scripted[0], retries=2, backoff=0.01)
    with pytest.raises(RetrieverError, match=r"after 3 attempt\(s\).*HTTP 503: scripted 503"):
        r.search(["q"], k=1)
    assert script.attempts == 3


def test_timeout_then_retry_succeeds(scripted: tuple[str, Script], script: Script) -> None:
    script.plan = ["slow"]
    r = HTTPRetriever(scripted[0], timeout=0.3, retries=1, backoff=0.01)
    start = time.monotonic()
    assert r.search(["q"], k=1)[0][0].id == "7"
    assert 0.3 <= time.monotonic() - start < 1.5  # waited one timeout, not the 2 s the server takes


def test_timeouts_exhaust_retries(scripted: tuple[str, Script], script: Script) -> None:
    script.plan = ["slow", "slow"]
    r = HTTPRetriever(scripted[0], timeout=0.2, retries=1, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(RetrieverError, match=r"after 2 attempt\(s\).*timed out after 0.2s"):
        r.search(["q"], k=1)
    assert time.monotonic() - start < 1.5


def test_malformed_responses_raise(scripted: tuple[str, Script], script: Script) -> None:
    r = HTTPRetriever(scripted[0], retries=2, backoff=0.01)
    script.plan = ["not_json"]
    with pytest.raises(RetrieverError, match="non-JSON"):
        r.search(["q"], k=1)
    script.plan = ["short"]
    with pytest.raises(RetrieverError, match="0 result lists for 2 queries"):
        r.search(["q", "q2"], k=1)


def test_connection_is_reused(scripted: tuple[str, Script], script: Script) -> None:
    r = HTTPRetriever(scripted[0])
    for _ in range(5):
        r.search(["q"], k=1)
    assert script.attempts == 5 and len(script.client_ports) == 1


def test_server_down_raises_after_backoff() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = HTTPRetriever(f"http://127.0.0.1:{port}", retries=2, backoff=0.1, timeout=2)
    start = time.monotonic()
    with pytest.raises(RetrieverError, match=r"after 3 attempt\(s\).*ConnectError"):
        r.search(["q"], k=1)
    elapsed = time.monotonic() - start
    assert 0.5 * (0.1 + 0.2) <= elapsed < 2.0  # two jittered backoff sleeps, bounded


def test_empty_and_invalid_arguments(real_url: str) -> None:
    r = HTTPRetriever(real_url)
    assert r.search([], k=3) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["q"], k=0)
    with pytest.raises(ValueError, match="retries >= 0"):
        HTTPRetriever(real_url, retries=-1)
