"""HTTPRetriever over several replicas, each a real loopback server (``running_server``): load is
spread, a replica stopped mid-run loses no query, errors are counted on the replica that failed, a
replica that comes back is probed back in, with every replica gone the client raises
RetrieverError within a bounded time instead of hanging, and the per-replica counters reach the
training metrics. Also ``serve-retriever --workers 2``: two processes over one mapped index."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from ssrl_trl.errors import UserError
from ssrl_trl.retrieval import Doc, RetrieverError
from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.client import HTTPRetriever
from ssrl_trl.retrieval.corpus import iter_corpus
from ssrl_trl.retrieval.factory import InMemoryRetriever, build_retriever
from ssrl_trl.retrieval.server import create_app, main, running_server

pytestmark = pytest.mark.timeout(60)

DOCS = [
    '"Paris"\nParis is the capital and largest city of France.',
    '"Rome"\nRome is the capital city of Italy.',
    '"Berlin"\nBerlin is the capital of Germany.',
]
QUERIES = ["capital of Italy", "largest city of France", "Berlin Germany", "Rome", "Paris"]
EXPECTED = InMemoryRetriever(DOCS).search(QUERIES, 2)


class Counting:
    """The in-memory retriever, counting the queries it answered (and optionally slow or broken)."""

    def __init__(self, delay_s: float = 0.0, broken: bool = False) -> None:
        self.inner = InMemoryRetriever(DOCS)
        self.delay_s, self.broken, self.queries = delay_s, broken, 0
        self.lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        if self.broken:
            raise RuntimeError("index file vanished")
        time.sleep(self.delay_s)
        with self.lock:
            self.queries += len(queries)
        return self.inner.search(queries, k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(r: HTTPRetriever, url: str) -> dict:
    return next(s for s in r.replica_stats() if s["endpoint"].startswith(url))


def test_load_is_spread_over_healthy_replicas() -> None:
    a, b = Counting(), Counting()
    with running_server(create_app(a)) as url_a, running_server(create_app(b)) as url_b:
        r = HTTPRetriever(urls=[url_a, url_b], retries=0)
        for _ in range(20):
            assert r.search(QUERIES[:1], 2) == EXPECTED[:1]
        with ThreadPoolExecutor(8) as pool:  # concurrent callers: fewest in flight wins
            assert all(res == EXPECTED for res in pool.map(lambda _: r.search(QUERIES, 2), range(40)))
    assert a.queries + b.queries == 20 + 40 * len(QUERIES)
    assert a.queries >= 0.3 * (a.queries + b.queries) and b.queries >= 0.3 * (a.queries + b.queries)
    assert [s["errors"] for s in r.replica_stats()] == [0, 0]
    assert sum(s["requests"] for s in r.replica_stats()) == 60


def test_replica_stopped_mid_run_loses_no_query(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ssrl_trl.retrieval.client")
    a, b = Counting(delay_s=0.002), Counting(delay_s=0.002)
    results: list[list[list[Doc]]] = []
    errors: list[Exception] = []
    with running_server(create_app(a)) as url_a, ExitStack() as b_server:
        url_b = b_server.enter_context(running_server(create_app(b)))
        # retries=0: failover happens inside one round, so no query may be lost even without retries
        r = HTTPRetriever(urls=[url_a, url_b], retries=0, timeout=5, cooloff=30)
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                try:
                    results.append(r.search(QUERIES, 2))
                except Exception as e:  # counted below: any is a lost query
                    errors.append(e)

        with ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(caller)
            time.sleep(0.5)
            b_before = b.queries
            b_server.close()  # replica B stops while requests are in flight
            time.sleep(0.7)
            stop.set()
    assert not errors, errors[:3]
    assert len(results) > 20 and all(res == EXPECTED for res in results)
    assert b_before > 0 and a.queries > 0
    stats_b = _stats(r, url_b)
    assert stats_b["errors"] >= 1 and stats_b["state"] == "down"
    assert set(stats_b["errors_by_kind"]) <= {"connect", "transport", "timeout", "http_503"}
    assert _stats(r, url_a)["errors"] == 0
    assert any("marked down" in m and url_b in m for m in caplog.messages)


def test_all_replicas_down_raises_fast_and_names_each() -> None:
    urls = [f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"]
    r = HTTPRetriever(urls=urls, retries=1, backoff=0.05, timeout=1)
    start = time.monotonic()
    with pytest.raises(RetrieverError, match=r"after 4 attempt\(s\) in 2 round\(s\) over 2 replicas") as exc:
        r.search(["q"], 1)
    assert time.monotonic() - start < 2.0
    assert all(u in str(exc.value) for u in urls) and "ConnectError" in str(exc.value)
    assert [s["errors_by_kind"] for s in r.replica_stats()] == [{"connect": 2}, {"connect": 2}]


def test_hung_replica_times_out_and_fails_over_then_all_hung_raises() -> None:
    hung, ok = Counting(delay_s=3.0), Counting()
    with running_server(create_app(hung)) as url_hung, running_server(create_app(ok)) as url_ok:
        r = HTTPRetriever(urls=[url_hung, url_ok], retries=0, timeout=0.3, cooloff=30)
        for _ in range(3):  # one of them lands on the hung replica first (turns alternate)
            start = time.monotonic()
            assert r.search(QUERIES[:2], 2) == EXPECTED[:2]
            assert time.monotonic() - start < 1.5
        assert _stats(r, url_hung)["errors_by_kind"] == {"timeout": 1}
        assert _stats(r, url_ok)["errors"] == 0
        r2 = HTTPRetriever(urls=[url_hung], retries=1, backoff=0.05, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(RetrieverError, match=r"after 2 attempt\(s\).*timed out after 0.3s"):
            r2.search(["q"], 1)
        assert time.monotonic() - start < 1.5  # two timeouts and a backoff, not a hang


def test_5xx_fails_over_and_counts_on_the_failing_replica() -> None:
    broken, ok = Counting(broken=True), Counting()
    with running_server(create_app(broken)) as url_broken, running_server(create_app(ok)) as url_ok:
        r = HTTPRetriever(urls=[url_broken, url_ok], retries=0, cooloff=30)
        for _ in range(4):
            assert r.search(QUERIES, 2) == EXPECTED
    assert _stats(r, url_broken)["errors_by_kind"] == {"http_500": 1}  # then it stays down
    assert "index file vanished" in _stats(r, url_broken)["last_error"]
    assert ok.queries == 4 * len(QUERIES)


def test_replica_back_after_cooloff_is_probed_in(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ssrl_trl.retrieval.client")
    a, b = Counting(), Counting()
    port_b = _free_port()
    url_b = f"http://127.0.0.1:{port_b}"
    with running_server(create_app(a)) as url_a:
        r = HTTPRetriever(urls=[url_a, url_b], retries=0, cooloff=0.3)
        for _ in range(4):  # B is not up yet
            assert r.search(QUERIES[:1], 2) == EXPECTED[:1]
        assert _stats(r, url_b)["state"] == "down" and _stats(r, url_b)["errors"] == 1
        with running_server(create_app(b), port=port_b):
            time.sleep(0.4)  # the cool-off runs out
            assert _stats(r, url_b)["state"] == "probing"
            for _ in range(6):
                assert r.search(QUERIES[:1], 2) == EXPECTED[:1]
            assert _stats(r, url_b)["state"] == "up" and b.queries >= 2
    assert any("is back" in m and url_b in m for m in caplog.messages)


def test_one_url_list_pickle_and_factory() -> None:
    a, b = Counting(), Counting()
    with running_server(create_app(a)) as url_a, running_server(create_app(b)) as url_b:
        r = HTTPRetriever([url_a, url_b], timeout=5)
        assert r.urls == [url_a, url_b] and r.url == url_a and r.endpoint == url_a + "/retrieve"
        r.search(QUERIES, 2)
        copy = pickle.loads(pickle.dumps(r))
        assert [s["requests"] for s in copy.replica_stats()] == [0, 0]  # a copy starts afresh
        assert copy.search(QUERIES, 2) == EXPECTED
        built = build_retriever("http", urls=[url_a, url_b], retries=0, cooloff=1)
        assert isinstance(built, HTTPRetriever) and built.search(QUERIES, 2) == EXPECTED
    with pytest.raises(ValueError, match="not both"):
        HTTPRetriever(url_a, urls=[url_b])
    with pytest.raises(ValueError, match="same endpoint twice"):
        HTTPRetriever(urls=[url_a, url_a + "/"])
    with pytest.raises(ValueError, match="needs url"):
        build_retriever("http", urls=None)


def test_replica_errors_reach_stats_and_training_metrics() -> None:
    a = Counting()
    dead = f"http://127.0.0.1:{_free_port()}"
    with running_server(create_app(a)) as url_a:
        r = HTTPRetriever(urls=[dead, url_a], retries=0, cooloff=30)
        for _ in range(3):
            assert r.search(QUERIES[:1], 2) == EXPECTED[:1]
        first = r.training_metrics()
        assert first["retrieval/replica0_errors"] == 1.0 and first["retrieval/replica0_requests"] == 1.0
        assert first["retrieval/replica1_errors"] == 0.0 and first["retrieval/replica1_requests"] == 3.0
        assert first["retrieval/http_requests"] == 4.0 and first["retrieval/http_errors"] == 1.0
        assert first["retrieval/replicas_down"] == 1.0
        r.search(QUERIES[:1], 2)
        second = r.training_metrics()  # one interval's counts, not the totals
        assert second["retrieval/http_requests"] == 1.0 and second["retrieval/http_errors"] == 0.0
        assert r.stats()["replica0.errors"] == 1.0 and r.stats()["requests"] == 5.0
        assert r.stats()["replica0.down"] == 1.0 and r.stats()["replica1.down"] == 0.0
        single = HTTPRetriever(url_a)
        single.search(QUERIES[:1], 2)
        assert single.training_metrics() == {"retrieval/http_requests": 1.0, "retrieval/http_errors": 0.0}


def test_serve_retriever_workers_share_one_mapped_index(tmp_path: Path) -> None:
    """``serve-retriever --workers 2``: two processes answer on one port with the in-process
    results, both map the same index files, and SIGTERM to the parent stops them all."""

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": d}) + "\n" for i, d in enumerate(DOCS)))
    index = BM25Index.build(iter_corpus(corpus), tmp_path / "idx", show_progress=False)
    expected = index.search(QUERIES, 2)
    port = _free_port()
    cmd = [sys.executable, "-m", "ssrl_trl.cli", "serve-retriever", "--index", str(tmp_path / "idx")]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--workers", "2", "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 45
        while len(pids) < 2 and time.monotonic() < deadline:
            try:  # a fresh connection each time, so the kernel may hand it to either worker
                with httpx.Client(timeout=5) as http:
                    pids.add(http.get(url + "/health").json()["pid"])
            except httpx.TransportError:
                time.sleep(0.2)
            assert proc.poll() is None, "serve-retriever --workers 2 exited"
        assert len(pids) == 2 and proc.pid not in pids
        body = httpx.post(
            url + "/retrieve", json={"queries": QUERIES, "topk": 2, "return_scores": True}
        ).json()
        assert [[hit["document"]["id"] for hit in row] for row in body["result"]] == [
            [d.id for d in docs] for docs in expected
        ]
        matrix = str((tmp_path / "idx").resolve())
        for pid in pids:  # each worker maps the index files (shared pages), none reads a copy
            assert matrix in Path(f"/proc/{pid}/maps").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for pid in pids:
        assert (
            not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def test_serve_retriever_rejects_zero_workers() -> None:
    with pytest.raises(UserError, match="--workers must be >= 1"):
        main(["--index", "nowhere", "--workers", "0"])


def test_a_body_that_will_not_decode_is_a_retriever_error_and_frees_the_replica() -> None:
    """A non-transient client error (here gzip that is not gzip) is not retried, comes out as
    RetrieverError naming it, and leaves no request counted in flight."""

    async def bad_gzip(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"not gzip at all"})

    with running_server(bad_gzip) as url:
        r = HTTPRetriever(urls=[url, f"http://127.0.0.1:{_free_port()}"], retries=2)
        for _ in range(2):  # whichever replica comes first
            with pytest.raises(RetrieverError, match="DecodingError"):
                r.search(["q"], 1)
    assert [s["in_flight"] for s in r.replica_stats()] == [0, 0]
    assert _stats(r, url)["requests"] >= 1 and _stats(r, url)["errors"] == 0
