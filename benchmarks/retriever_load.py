"""Bounded loopback load test of `ssrl-trl serve-retriever` (BM25 over the mini corpus).

    python benchmarks/retriever_load.py                         # 10,000 requests, 64 in flight
    python benchmarks/retriever_load.py --requests 20000 --concurrency 128

Starts the server as a subprocess on a free 127.0.0.1 port and sends a fixed, seeded mix:
~85% valid requests (Search-R1 with and without scores, R1-Searcher; 1-4 mini_eval questions,
topk 1-5), ~13% invalid ones (bad JSON, missing fields, wrong types, topk 0 / 10^6, unknown
fields) and ~2% oversize ones (10k queries, a 1 MB query, a 9 MB body). It prints QPS, latency
percentiles, failed valid requests (must be 0; exit status 1 otherwise), invalid requests that
did not get a 4xx, and the server's resident memory; then in-process BM25 ms/query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.corpus import INDEX_META, iter_corpus

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

INVALID = [
    b'{"queries": ["who"',
    b"",
    b'{"topk": 3}',
    b'{"queries": "who"}',
    b'{"queries": [1, 2]}',
    b'{"queries": ["a"], "topk": 0}',
    b'{"queries": ["a"], "topk": 1000000}',
    b'{"queries": ["a"], "topk": "3"}',
    b'{"queries": ["a"], "return_scores": "yes"}',
    b'{"queries": ["a"], "top_k": 3}',
    b"[1, 2, 3]",
]
OVERSIZE = [
    json.dumps({"queries": ["who"] * 10_000}).encode(),
    json.dumps({"queries": ["x" * 1_000_000]}).encode(),
]
HUGE = json.dumps({"queries": ["x" * 9_000_000]}).encode()  # over the 8 MiB body limit: 413


def make_requests(n: int, questions: list[str], seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(kind, path, body) triples: a seeded mix of valid, invalid and oversize requests."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        roll = rng.random()
        path = "/retrieve" if rng.random() < 0.7 else "/queries"
        if roll < 0.85:
            qs = rng.sample(questions, rng.randint(1, 4))
            k = rng.randint(1, 5)
            if path == "/retrieve":
                body = {"queries": qs, "topk": k, "return_scores": rng.random() < 0.5}
            else:
                body = {"queries": qs, "k": k}
            out.append(("valid", path, json.dumps(body).encode()))
        elif roll < 0.98:
            out.append(("invalid", path, rng.choice(INVALID)))
        else:
            out.append(("oversize", path, HUGE if i % 10 == 0 else rng.choice(OVERSIZE)))
    return out


def _valid_shape(path: str, body: bytes, resp: httpx.Response) -> bool:
    if resp.status_code != 200:
        return False
    n = len(json.loads(body)["queries"])
    data = resp.json()
    rows = data.get("result") if path == "/retrieve" else data.get("answers")
    return isinstance(rows, list) and len(rows) == n


async def run_load(base: str, requests: list[tuple[str, str, bytes]], concurrency: int) -> list[dict]:
    """Send ``requests`` with ``concurrency`` in flight; one record per request.

    Workers share small httpx clients (8 connections each): httpx's pool costs grow with its
    size, and one 64-connection pool made the load generator, not the server, the bottleneck.
    """
    records: list[dict] = []
    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    per_client = 8
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    headers = {"content-type": "application/json"}
    clients = [
        httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
        for _ in range(-(-concurrency // per_client))
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            kind, path, body = queue.get_nowait()
            start = time.perf_counter()
            try:
                resp = await client.post(path, content=body, headers=headers)
                status, ok = resp.status_code, (_valid_shape(path, body, resp) if kind == "valid" else None)
            except httpx.HTTPError as e:
                status, ok = f"{type(e).__name__}", False
            records.append({"kind": kind, "status": status, "ok": ok, "s": time.perf_counter() - start})

    try:
        await asyncio.gather(*(worker(clients[i // per_client]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    return records


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _start_server(index: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ssrl_trl.cli", "serve-retriever", "--index", str(index)]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--log-level", "warning"], cwd=REPO)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("retrieval server did not start")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--index", type=Path, default=REPO / "indexes" / "mini_wiki_bm25")
    p.add_argument("--corpus", type=Path, default=DATA / "corpus" / "mini_wiki.jsonl")
    p.add_argument("--eval", type=Path, default=DATA / "qa" / "mini_eval.jsonl")
    args = p.parse_args(argv)

    if not (args.index / INDEX_META).exists():
        BM25Index.build(iter_corpus(args.corpus), args.index, show_progress=False)
    lines = args.eval.read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    requests = make_requests(args.requests, questions)

    proc, base = _start_server(args.index)
    try:
        rss_idle = _rss_mb(proc.pid)[0]
        start = time.perf_counter()
        records = asyncio.run(run_load(base, requests, args.concurrency))
        wall = time.perf_counter() - start
        rss, peak = _rss_mb(proc.pid)
        health = httpx.get(base + "/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    by_kind = {k: [r for r in records if r["kind"] == k] for k in ("valid", "invalid", "oversize")}
    failed_valid = sum(not r["ok"] for r in by_kind["valid"])
    bad_rejects = [
        r for r in by_kind["invalid"] + by_kind["oversize"] if not str(r["status"]).startswith("4")
    ]
    lat = [r["s"] for r in records]
    vlat = [r["s"] for r in by_kind["valid"]]
    print(
        f"requests: {len(records)} ({', '.join(f'{k} {len(v)}' for k, v in by_kind.items())}), concurrency {args.concurrency}"
    )
    print(f"wall: {wall:.1f}s   QPS: {len(records) / wall:.0f}")
    print(
        f"latency all:   p50 {_pct(lat, 0.5):.1f} ms   p99 {_pct(lat, 0.99):.1f} ms   max {max(lat) * 1000:.0f} ms"
    )
    print(f"latency valid: p50 {_pct(vlat, 0.5):.1f} ms   p99 {_pct(vlat, 0.99):.1f} ms")
    print(f"failed valid requests: {failed_valid}")
    print(f"invalid/oversize requests not answered 4xx: {len(bad_rejects)}")
    valid_queries = sum(len(json.loads(body)["queries"]) for kind, _, body in requests if kind == "valid")
    print(
        f"batched search calls: {health['search_calls']} for {valid_queries} queries in {len(by_kind['valid'])} requests"
    )
    print(f"server RSS: {rss:.0f} MB after the run (idle {rss_idle:.0f} MB, peak {peak:.0f} MB)")

    retriever = BM25Index.load(args.index)
    retriever.search(questions[:10], 5)  # warm up
    t = time.perf_counter()
    for q in questions:
        retriever.search([q], 5)
    single = (time.perf_counter() - t) * 1000 / len(questions)
    t = time.perf_counter()
    retriever.search(questions, 5)
    batched = (time.perf_counter() - t) * 1000 / len(questions)
    print(
        f"in-process BM25 (k=5, {len(questions)} questions): {single:.2f} ms/query single, {batched:.2f} batched"
    )
    return 1 if failed_valid or bad_rejects else 0


if __name__ == "__main__":
    sys.exit(main())
