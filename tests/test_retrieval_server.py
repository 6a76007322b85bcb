"""The retrieval server over a real uvicorn on a loopback port: exact Search-R1 / R1-Searcher
schemas, 4xx on bad input with the server staying up, micro-batching, and the CLI entry point."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ssrl_trl.retrieval import Doc
from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.corpus import iter_corpus
from ssrl_trl.retrieval.factory import InMemoryRetriever
from ssrl_trl.retrieval.server import ServerLimits, create_app, running_server

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "corpus" / "mini_wiki.jsonl"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not CORPUS.is_file(), reason=f"shared data kit not found at {DATA}")

LIMITS = ServerLimits(max_queries=64, max_query_chars=512, max_topk=50, max_body_bytes=256 * 1024)
QUERIES = ["history of the roman empire", "who won the football world cup", "zzzqqqxx"]


@pytest.fixture(scope="module")
def bm25_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bm25")
    BM25Index.build(iter_corpus(CORPUS, limit=1000), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def retriever(bm25_dir: Path) -> BM25Index:
    return BM25Index.load(bm25_dir)


@pytest.fixture(scope="module")
def url(retriever: BM25Index):
    with running_server(create_app(retriever, LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def http(url: str):
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def test_search_r1_schema_with_scores(http: httpx.Client, retriever: BM25Index) -> None:
    resp = http.post("/retrieve", json={"queries": QUERIES, "topk": 4, "return_scores": True})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"result"} and len(body["result"]) == len(QUERIES)
    expected = retriever.search(QUERIES, 4)
    for hits, docs in zip(body["result"], expected, strict=True):
        assert [set(h) for h in hits] == [{"document", "score"}] * len(docs)
        assert [set(h["document"]) for h in hits] == [{"id", "contents"}] * len(docs)
        assert [Doc(h["document"]["id"], h["document"]["contents"], h["score"]) for h in hits] == docs
    assert len(body["result"][0]) == 4 and body["result"][2] == []  # no shared term: no hits


def test_search_r1_schema_without_scores(http: httpx.Client, retriever: BM25Index) -> None:
    body = http.post("/retrieve", json={"queries": QUERIES[:2]}).json()  # Search-R1 defaults
    expected = retriever.search(QUERIES[:2], 3)  # default topk is 3
    assert body == {"result": [[{"id": d.id, "contents": d.contents} for d in docs] for docs in expected]}
    assert http.post("/retrieve", json={"queries": [], "topk": 3}).json() == {"result": []}


def test_r1_searcher_schema(http: httpx.Client, retriever: BM25Index) -> None:
    resp = http.post("/queries", json={"queries": QUERIES, "k": 2})
    assert resp.status_code == 200
    expected = retriever.search(QUERIES, 2)
    assert resp.json() == {"queries": QUERIES, "answers": [[d.contents for d in docs] for docs in expected]}
    assert len(http.post("/queries", json={"queries": QUERIES[:1]}).json()["answers"][0]) == 3


def test_health(http: httpx.Client) -> None:
    resp = http.get("/health")
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "ok"
    assert "BM25Index" in body["retriever"]["name"] and body["retriever"]["last_error"] is None
    assert body["batcher"]["running"] is True and body["batcher"]["search_calls"] == body["search_calls"]


BAD_BODIES = {
    "invalid json": (b'{"queries": ["a"', 400),
    "empty body": (b"", 400),
    "not an object": (b'["a", "b"]', 422),
    "missing queries": (b'{"topk": 3}', 422),
    "queries not a list": (b'{"queries": "who"}', 422),
    "query not a string": (b'{"queries": [1, 2]}', 422),
    "null query": (b'{"queries": [null]}', 422),
    "topk zero": (b'{"queries": ["a"], "topk": 0}', 422),
    "topk huge": (b'{"queries": ["a"], "topk": 1000000}', 422),
    "topk negative": (b'{"queries": ["a"], "topk": -3}', 422),
    "topk string": (b'{"queries": ["a"], "topk": "3"}', 422),
    "topk float": (b'{"queries": ["a"], "topk": 2.5}', 422),
    "return_scores string": (b'{"queries": ["a"], "return_scores": "yes"}', 422),
    "unknown field": (b'{"queries": ["a"], "top_k": 3}', 422),
    "10k queries": (json.dumps({"queries": ["who"] * 10_000}).encode(), 422),
    "long query": (json.dumps({"queries": ["x" * 600]}).encode(), 422),
    "1 MB query": (json.dumps({"queries": ["x" * 1_000_000]}).encode(), 413),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_requests_get_4xx_and_server_stays_up(http: httpx.Client, case: str) -> None:
    body, status = BAD_BODIES[case]
    for path in ("/retrieve", "/queries"):
        if path == "/queries":
            body = body.replace(b'"topk"', b'"k"')
        resp = http.post(path, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == status, (path, resp.text[:300])
        assert isinstance(resp.json()["detail"], str) and resp.json()["detail"]
    assert http.get("/health").status_code == 200
    assert http.post("/retrieve", json={"queries": ["roman empire"], "topk": 1}).status_code == 200


def test_error_messages_are_specific(http: httpx.Client) -> None:
    detail = http.post("/retrieve", json={"queries": ["a"], "topk": 0}).json()["detail"]
    assert "between 1 and 50" in detail
    detail = http.post("/retrieve", json={"queries": ["a"] * 65}).json()["detail"]
    assert "too many queries: 65 > limit 64" in detail
    body = http.post("/retrieve", json={"queries": ["a"], "top_k": 3}).json()
    assert "top_k" in body["detail"] and "expected fields: queries, topk, return_scores" in body["detail"]
    assert http.get("/retrieve").status_code == 405
    assert http.post("/nope", json={}).status_code == 404


class CountingRetriever:
    """InMemoryRetriever that records each batched call and takes a little time per call."""

    def __init__(self, docs: list[str], delay: float = 0.02, fail: bool = False) -> None:
        self.inner = InMemoryRetriever(docs)
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        with self.lock:
            self.calls.append(len(queries))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("index file vanished")
        return self.inner.search(queries, k)


def test_concurrent_requests_are_micro_batched() -> None:
    docs = [f'"Topic {i}"\nword{i} is the subject of passage {i}.' for i in range(40)]
    retriever = CountingRetriever(docs)
    limits = ServerLimits(batch_wait_ms=20)
    with running_server(create_app(retriever, limits)) as base, httpx.Client(base_url=base) as client:

        def ask(i: int) -> list:
            payload = {"queries": [f"word{i} passage"], "topk": 1 + i % 3, "return_scores": True}
            return client.post("/retrieve", json=payload).json()["result"][0]

        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(ask, range(40)))
        health = client.get("/health").json()
    for i, hits in enumerate(answers):  # each request got its own results and its own topk
        assert hits[0]["document"]["id"] == str(i)
        assert len(hits) == min(1 + i % 3, 40)
    assert sum(retriever.calls) == 40
    assert len(retriever.calls) <= 20, retriever.calls  # far fewer search calls than requests
    assert health["search_calls"] == len(retriever.calls)


def test_retriever_failure_is_500_and_server_survives() -> None:
    retriever = CountingRetriever(['"A"\nalpha'], delay=0, fail=True)
    with running_server(create_app(retriever)) as base, httpx.Client(base_url=base) as client:
        resp = client.post("/retrieve", json={"queries": ["alpha"]})
        assert resp.status_code == 500 and "index file vanished" in resp.json()["detail"]
        retriever.fail = False
        assert client.post("/retrieve", json={"queries": ["alpha"]}).status_code == 200


def test_running_server_stops_cleanly() -> None:
    with running_server(create_app(InMemoryRetriever(['"A"\nalpha']))) as base:
        assert httpx.get(base + "/health").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/health", timeout=2)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_topk=0"):
        ServerLimits(max_topk=0)
    with pytest.raises(ValueError, match="exceeds max_topk"):
        ServerLimits(default_topk=10, max_topk=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_retriever_cli(bm25_dir: Path) -> None:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "ssrl_trl.cli",
        "serve-retriever",
        "--index",
        str(bm25_dir),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        resp = httpx.post(
            base + "/retrieve", json={"queries": ["roman empire"], "topk": 2, "return_scores": True}
        )
        assert resp.status_code == 200 and len(resp.json()["result"][0]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_queries_times_topk_is_capped_with_413() -> None:
    app = create_app(
        InMemoryRetriever([f'"T{i}"\nword{i}' for i in range(50)]), ServerLimits(max_results=100)
    )
    with running_server(app) as base, httpx.Client(base_url=base) as client:
        resp = client.post("/retrieve", json={"queries": ["word1"] * 10, "topk": 20})
        assert resp.status_code == 413
        assert resp.json()["detail"] == (
            "request asks for 10 queries x topk 20 = 200 results; the limit is 100 per request: "
            "split it or lower topk"
        )
        assert client.post("/queries", json={"queries": ["word1"] * 10, "k": 10}).status_code == 200


def test_an_oversized_answer_is_refused_with_413() -> None:
    docs = [f'"T{i}"\nword ' + "x" * 2000 for i in range(10)]
    app = create_app(InMemoryRetriever(docs), ServerLimits(max_response_bytes=20_000))
    with running_server(app) as base, httpx.Client(base_url=base) as client:
        resp = client.post("/retrieve", json={"queries": ["word"] * 5, "topk": 3})
        assert resp.status_code == 413 and "over the limit of" in resp.json()["detail"]
        assert client.post("/retrieve", json={"queries": ["word"], "topk": 2}).status_code == 200


def test_health_degrades_when_the_document_store_is_truncated_under_the_server(tmp_path: Path) -> None:
    BM25Index.build(iter_corpus(CORPUS, limit=200), tmp_path / "idx", show_progress=False)
    retriever = BM25Index.load(tmp_path / "idx")
    with running_server(create_app(retriever)) as base, httpx.Client(base_url=base) as client:
        query = {"queries": ["history of the roman empire"], "topk": 3}
        assert client.post("/retrieve", json=query).status_code == 200
        assert client.get("/health").json()["retriever"]["status"] == "ok"
        (tmp_path / "idx" / "docs.jsonl").write_bytes(b"")  # the store truncated under the server
        assert client.post("/retrieve", json=query).status_code == 500
        resp = client.get("/health")
        body = resp.json()
        assert resp.status_code == 503 and body["status"] == "degraded"
        assert (
            body["retriever"]["status"] == "failing" and "JSONDecodeError" in body["retriever"]["last_error"]
        )
        assert body["retriever"]["failures_in_a_row"] == 1 and body["batcher"]["failed_calls"] == 1


def test_health_probe_finds_a_broken_retriever_before_any_request() -> None:
    retriever = CountingRetriever(['"A"\nalpha'], delay=0, fail=True)
    with running_server(create_app(retriever)) as base, httpx.Client(base_url=base) as client:
        assert client.get("/health").json()["retriever"]["status"] == "unused"
        resp = client.get("/health", params={"probe": "true"})
        assert resp.status_code == 503 and "index file vanished" in resp.json()["retriever"]["probe_error"]
        retriever.fail = False
        assert client.get("/health", params={"probe": "true"}).json()["status"] == "ok"


def test_a_client_gone_mid_upload_is_one_log_line_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="ssrl_trl.retrieval.server")
    errors: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = errors.append  # type: ignore[method-assign]
    with running_server(create_app(InMemoryRetriever(['"A"\nalpha']))) as base:
        logging.getLogger("uvicorn.error").addHandler(handler)  # after uvicorn configured its logging
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"queries": ["alpha"] * 2000}).encode()
        head = f"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for _ in range(3):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(head + body[: len(body) // 2])
                time.sleep(0.05)
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if "disconnected" in r.getMessage()]) < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
        assert httpx.get(base + "/health").status_code == 200
    logging.getLogger("uvicorn.error").removeHandler(handler)
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 3 and all("while sending its request" in r.getMessage() for r in gone)
    assert not [r for r in errors + caplog.records if r.exc_info], [r.getMessage() for r in errors]


def test_search_routes_skip_fastapi_layers_but_fail_like_it(caplog: pytest.LogCaptureFixture) -> None:
    """POST /retrieve and /queries bypass FastAPI's middleware (their CPU cost per request was about
    a BM25 search's); every other path still goes through it, and an unexpected error in a search
    route is still a logged 500, not a dropped connection."""
    import logging

    class Broken(InMemoryRetriever):
        def search(self, queries: list[str], k: int) -> list[list[Doc]]:
            return [[object()] for _ in queries]  # type: ignore[list-item]  # not a Doc: fails encoding

    seen: list[str] = []
    app = create_app(InMemoryRetriever(['"A"\nalpha beta']))

    @app.middleware("http")
    async def count(request, call_next):  # type: ignore[no-untyped-def]
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    with running_server(app) as base, httpx.Client(base_url=base) as http:
        hit = http.post("/retrieve", json={"queries": ["alpha"], "topk": 1, "return_scores": True})
        assert (
            hit.status_code == 200 and hit.json()["result"][0][0]["document"]["contents"] == '"A"\nalpha beta'
        )
        assert http.post("/queries", json={"queries": ["alpha"], "k": 1}).json()["answers"] == [
            ['"A"\nalpha beta']
        ]
        assert http.get("/health").status_code == 200
        assert http.get("/retrieve").status_code == 405  # not a search: FastAPI answers
    assert seen == ["GET /health", "GET /retrieve"]
    caplog.set_level(logging.ERROR, logger="ssrl_trl.retrieval.server")
    with running_server(create_app(Broken(['"A"\nalpha']))) as base:
        resp = httpx.post(base + "/retrieve", json={"queries": ["alpha"], "topk": 1})
        assert resp.status_code == 500 and resp.json() == {"detail": "Internal Server Error"}
        assert httpx.get(base + "/health").status_code == 200  # the server stays up
    assert any(
        "unhandled error serving POST /retrieve" in r.getMessage() and r.exc_info for r in caplog.records
    )
