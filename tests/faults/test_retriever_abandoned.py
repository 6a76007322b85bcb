"""The retrieval server under abandoned large requests: five 4,000-query requests whose clients
disconnect at once must not keep it busy; valid requests sent right after are answered within 1 s."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ssrl_trl.retrieval import Doc
from ssrl_trl.retrieval.server import create_app, running_server

pytestmark = pytest.mark.timeout(60)


class SlowRetriever:
    """Costs 0.3 ms per query (a 4,000-query request: 1.2 s) and counts what it searched."""

    def __init__(self, per_query_s: float = 0.0003) -> None:
        self.per_query_s, self.searched = per_query_s, 0
        self.lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        time.sleep(self.per_query_s * len(queries))
        with self.lock:
            self.searched += len(queries)
        return [[Doc(str(i), f"passage {i} about {q}", 1.0) for i in range(k)] for q in queries]


def _abandon(host: str, port: int, n_requests: int, n_queries: int) -> None:
    """Send whole requests, then close every connection before the answers come."""
    body = json.dumps({"queries": [f"query {i}" for i in range(n_queries)], "topk": 3}).encode()
    head = f"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    socks = [socket.create_connection((host, port)) for _ in range(n_requests)]
    for sock in socks:
        sock.sendall(head + body)
    time.sleep(0.3)  # the server has read them and queued their first chunks
    for sock in socks:
        sock.close()


def test_abandoned_large_requests_do_not_delay_valid_ones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ssrl_trl.retrieval.server")
    retriever = SlowRetriever()
    with running_server(create_app(retriever)) as base:
        host, port = base.removeprefix("http://").split(":")
        _abandon(host, int(port), n_requests=5, n_queries=4000)

        def valid(i: int) -> tuple[int, float]:
            start = time.perf_counter()
            resp = httpx.post(base + "/retrieve", json={"queries": [f"valid {i}"], "topk": 2}, timeout=30)
            return resp.status_code, time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(valid, range(10)))
        health = httpx.get(base + "/health").json()
    failed = [a for a in answers if a[0] != 200]
    slowest = max(seconds for _, seconds in answers)
    assert not failed and slowest < 1.0, answers
    # Of the 20,000 abandoned queries only the chunks searched before the disconnect (about 0.3 s) ran.
    assert retriever.searched <= 3 * 1024 + 10, retriever.searched
    assert health["batcher"]["abandoned_queries"] >= 5 * 4000 - 3 * 1024
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 5 and not [r for r in caplog.records if r.exc_info]
