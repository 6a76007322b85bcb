"""A retrieval server speaking the Search-R1 and R1-Searcher HTTP APIs, for any :class:`Retriever`.

    ssrl-trl serve-retriever --index indexes/mini_wiki_bm25            # http://127.0.0.1:8000

Endpoints (schemas exactly as the public Search-R1 / R1-Searcher servers answer them):

- ``POST /retrieve`` ``{"queries": [...], "topk": 3, "return_scores": true}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``; with
  ``return_scores`` false (the Search-R1 default) each hit is just ``{"id", "contents"}``.
- ``POST /queries`` ``{"queries": [...], "k": 3}`` -> ``{"queries": [...], "answers": [[contents, ...]]}``
  (R1-Searcher's server returns the raw passage strings; there are no ids or scores).
- ``GET /health`` -> ``{"status": "ok", ...}``.

Why it is built this way: a GRPO step sends hundreds of single-query requests at once, so
concurrent requests arriving within ``batch_wait_ms`` are searched in one batched call
(:class:`MicroBatcher`), which is what makes BM25/dense fast. Bodies are read with a size cap and
validated with strict pydantic models plus explicit limits, so a rollout that writes a 1 MB
"query" gets a clear 4xx instead of stalling the server. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from .base import Doc, Retriever

__all__ = ["MicroBatcher", "ServerLimits", "create_app", "main", "running_server"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """Request limits and batching knobs. Defaults fit a GRPO step that sends all queries at once."""

    max_queries: int = 4096  # queries in one request
    max_query_chars: int = 2048  # characters in one query
    max_topk: int = 100
    default_topk: int = 3  # Search-R1 and R1-Searcher both default to 3
    max_body_bytes: int = 8 * 1024 * 1024
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_batch_queries: int = 1024  # queries per batched search call
    max_pending_requests: int = 10_000  # beyond this, answer 503 instead of queueing

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in vars(self).items() if v < (0 if k == "batch_wait_ms" else 1)]
        if bad:
            raise ValueError(f"ServerLimits needs values >= 1 (batch_wait_ms >= 0), got {', '.join(bad)}")
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk={self.default_topk} exceeds max_topk={self.max_topk}")


class _Strict(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; forbid: a misspelt "top_k" is an error, not ignored
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchR1Request(_Strict):
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False

    @property
    def requested_k(self) -> int | None:
        return self.topk


class R1SearcherRequest(_Strict):
    queries: list[str]
    k: int | None = None

    @property
    def requested_k(self) -> int | None:
        return self.k


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, errors: list[Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


class MicroBatcher:
    """Merge concurrent ``search`` calls into one ``retriever.search`` on a worker thread.

    The first waiting request opens a batch; requests arriving within ``max_wait_s`` of it (or
    already queued while the previous batch ran) join, up to ``max_batch_queries`` queries. The
    batch is searched with the largest ``k`` asked and each request gets its own prefix back.
    """

    def __init__(
        self, retriever: Retriever, *, max_wait_s: float, max_batch_queries: int, max_pending: int
    ) -> None:
        self.retriever = retriever
        self.max_wait_s = max_wait_s
        self.max_batch_queries = max_batch_queries
        self.max_pending = max_pending
        self.calls = 0  # batched search calls made; /health reports it
        self._queue: asyncio.Queue[tuple[list[str], int, asyncio.Future[Any], float]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever")

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_pending)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((queries, k, fut, time.monotonic()))
        except asyncio.QueueFull:
            raise _HTTPError(
                503, f"server busy: {self.max_pending} requests already queued; retry later"
            ) from None
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            n = len(batch[0][0])
            deadline = batch[0][3] + self.max_wait_s
            while n < self.max_batch_queries:
                if self._queue.empty():
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                batch.append(item)
                n += len(item[0])
            await self._execute(batch)

    async def _execute(self, batch: list[tuple[list[str], int, asyncio.Future[Any], float]]) -> None:
        queries = [q for qs, _, _, _ in batch for q in qs]
        k = max(item[1] for item in batch)
        loop = asyncio.get_running_loop()
        self.calls += 1
        try:
            results = await loop.run_in_executor(self._executor, self.retriever.search, queries, k)
            if len(results) != len(queries):
                raise RuntimeError(
                    f"retriever returned {len(results)} result lists for {len(queries)} queries"
                )
            start = 0
            for qs, k_i, fut, _ in batch:
                if not fut.done():  # a cancelled request (client went away) is skipped
                    fut.set_result([list(docs[:k_i]) for docs in results[start : start + len(qs)]])
                start += len(qs)
        except Exception as e:  # the retriever failed: the batch's requests get a 500, the loop goes on
            log.exception("batched search of %d queries failed", len(queries))
            for _, _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(_HTTPError(500, f"retrieval failed: {type(e).__name__}: {e}"))


def create_app(retriever: Retriever, limits: ServerLimits | None = None) -> FastAPI:
    """A FastAPI app serving ``retriever``; run it with uvicorn or :func:`running_server`."""
    limits = limits or ServerLimits()
    batcher = MicroBatcher(
        retriever,
        max_wait_s=limits.batch_wait_ms / 1000,
        max_batch_queries=limits.max_batch_queries,
        max_pending=limits.max_pending_requests,
    )

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="ssrl-trl retriever", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.limits = limits

    async def handle(request: Request, model: type[_Strict], respond: Any) -> JSONResponse:
        try:
            body = await _read_body(request, limits.max_body_bytes)
            req = _parse(body, model)
            k = _check_limits(req.queries, req.requested_k, limits)
            results = await batcher.search(req.queries, k) if req.queries else []
        except _HTTPError as e:
            content: dict[str, Any] = {"detail": e.detail}
            if e.errors is not None:
                content["errors"] = e.errors
            return JSONResponse(content, status_code=e.status)
        return JSONResponse(respond(req, results))

    def search_r1(req: Any, results: list[list[Doc]]) -> dict[str, Any]:
        if req.return_scores:
            return {"result": [[{"document": _doc(d), "score": d.score} for d in docs] for docs in results]}
        return {"result": [[_doc(d) for d in docs] for docs in results]}

    def r1_searcher(req: Any, results: list[list[Doc]]) -> dict[str, Any]:
        return {"queries": req.queries, "answers": [[d.contents for d in docs] for docs in results]}

    @app.post("/retrieve", openapi_extra=_openapi_body(SearchR1Request))
    async def retrieve(request: Request) -> JSONResponse:
        """Search-R1 API."""
        return await handle(request, SearchR1Request, search_r1)

    @app.post("/queries", openapi_extra=_openapi_body(R1SearcherRequest))
    async def queries(request: Request) -> JSONResponse:
        """R1-Searcher API."""
        return await handle(request, R1SearcherRequest, r1_searcher)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "retriever": repr(retriever),
            "pending": batcher.pending,
            "search_calls": batcher.calls,
        }

    return app


def _doc(d: Doc) -> dict[str, str]:
    return {"id": d.id, "contents": d.contents}


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _read_body(request: Any, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _HTTPError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _HTTPError(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, model: type[_Strict]) -> Any:
    if not body.strip():
        raise _HTTPError(400, "empty request body: send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False, include_context=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise _HTTPError(400, f"request body is not valid JSON: {errors[0]['msg']}") from None
        summary = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors[:5])
        fields = ", ".join(model.model_fields)
        raise _HTTPError(422, f"invalid request ({summary}); expected fields: {fields}", errors) from None


def _check_limits(queries: list[str], k: int | None, limits: ServerLimits) -> int:
    if len(queries) > limits.max_queries:
        raise _HTTPError(
            422, f"too many queries: {len(queries)} > limit {limits.max_queries}; split the request"
        )
    for i, q in enumerate(queries):
        if len(q) > limits.max_query_chars:
            raise _HTTPError(
                422, f"queries[{i}] has {len(q)} characters; the limit is {limits.max_query_chars}"
            )
    k = limits.default_topk if k is None else k
    if not 1 <= k <= limits.max_topk:
        raise _HTTPError(422, f"topk/k must be between 1 and {limits.max_topk}, got {k}")
    return k


@contextmanager
def running_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Run ``app`` with uvicorn on a background thread; yields its base URL, stops it on exit.

    ``port=0`` picks a free port (the socket is bound here, so there is no race). Used by the
    tests and handy to serve an in-process retriever to code that only speaks HTTP.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start (see its log above)")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _parser() -> argparse.ArgumentParser:
    d = ServerLimits()
    p = argparse.ArgumentParser(prog="ssrl-trl serve-retriever", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="index directory built by `ssrl-trl index`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queries", type=int, default=d.max_queries, help="queries per request")
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    p.add_argument("--max-topk", type=int, default=d.max_topk)
    p.add_argument("--default-topk", type=int, default=d.default_topk)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms, help="micro-batching window")
    p.add_argument("--max-batch-queries", type=int, default=d.max_batch_queries)
    p.add_argument("--no-mmap", action="store_true", help="read the BM25 matrix / faiss vectors into RAM")
    p.add_argument("--model", default=None, help="dense: encoder name/path overriding the saved one")
    p.add_argument("--device", default=None, help="dense: encoder device (cpu, cuda)")
    p.add_argument("--nprobe", type=int, default=32, help="dense IVF: lists visited per query")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (slow under load)")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from .corpus import read_index_meta
    from .factory import load_retriever

    args = _parser().parse_args(argv)
    limits = ServerLimits(
        max_queries=args.max_queries,
        max_query_chars=args.max_query_chars,
        max_topk=args.max_topk,
        default_topk=args.default_topk,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_queries=args.max_batch_queries,
    )
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options: dict[str, Any] = {"mmap": not args.no_mmap}
    if read_index_meta(args.index).get("kind") == "dense":
        options.update(model=args.model, device=args.device, nprobe=args.nprobe)
    retriever = load_retriever(args.index, **options)
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        log.warning(
            "binding %s: the retriever is reachable from other machines and has no authentication", args.host
        )
    log.info(
        "serving %r on http://%s:%d (POST /retrieve, POST /queries, GET /health)",
        retriever,
        args.host,
        args.port,
    )
    uvicorn.run(
        create_app(retriever, limits),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
