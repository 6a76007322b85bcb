"""A retrieval server speaking the Search-R1 and R1-Searcher HTTP APIs, for any :class:`Retriever`.

    ssrl-trl serve-retriever --index indexes/mini_wiki_bm25            # http://127.0.0.1:8000
    ssrl-trl serve-retriever --index indexes/mini_wiki_bm25 --workers 2  # two processes, one port

Endpoints (schemas exactly as the public Search-R1 / R1-Searcher servers answer them):

- ``POST /retrieve`` ``{"queries": [...], "topk": 3, "return_scores": true}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``; with
  ``return_scores`` false (the Search-R1 default) each hit is just ``{"id", "contents"}``.
- ``POST /queries`` ``{"queries": [...], "k": 3}`` -> ``{"queries": [...], "answers": [[contents, ...]]}``
  (R1-Searcher's server returns the raw passage strings; there are no ids or scores).
- ``GET /health`` -> ``{"status": "ok" | "degraded" | "down", "retriever": {...}, "batcher": {...}, "pid"}``:
  ``degraded`` (HTTP 503) while the last batched search failed, with the error; ``down`` when the
  batching loop died. ``?probe=true`` runs a one-query search first, so an idle server whose index
  broke under it says so too.

Why it is built this way: a GRPO step sends hundreds of single-query requests at once, so
concurrent requests arriving within ``batch_wait_ms`` are searched in one batched call
(:class:`MicroBatcher`), which is what makes BM25/dense fast. Bodies are read with a size cap and
validated with strict pydantic models plus explicit limits, so a rollout that writes a 1 MB
"query" gets a clear 4xx instead of stalling the server; queries x topk and the size of an answer
are capped too (413). A client that disconnects stops its work: its queued chunks are skipped,
and the disconnect is one log line. It binds 127.0.0.1 unless told otherwise.

``--workers N`` runs N processes on the one port (uvicorn's supervisor; the kernel spreads the
connections): each maps the same index files, so the score matrix and passages sit once in the
page cache whatever N is, and a worker that dies is restarted. For replicas on several machines,
give the client a list of URLs (:class:`~.client.HTTPRetriever`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from ..errors import UserError
from .base import Doc, Retriever
from .batcher import BatcherBusy, MicroBatcher, SearchFailed
from .limits import (
    HTTPError,
    R1SearcherRequest,
    SearchR1Request,
    ServerLimits,
    Strict,
    check_limits,
    check_response_size,
    parse,
    read_body,
)

__all__ = ["MicroBatcher", "ServerLimits", "app_from_env", "create_app", "main", "running_server"]

#: Status for a request whose client left (nginx's convention); nobody receives it.
CLIENT_GONE = 499

log = logging.getLogger(__name__)


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

    app = _RetrieverApp(title="ssrl-trl retriever", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.limits = limits

    @app.post("/retrieve", openapi_extra=_openapi_body(SearchR1Request))
    async def retrieve(request: Request) -> Response:
        """Search-R1 API."""
        return await _handle(request, SearchR1Request, _search_r1_body, batcher, limits)

    @app.post("/queries", openapi_extra=_openapi_body(R1SearcherRequest))
    async def queries(request: Request) -> Response:
        """R1-Searcher API."""
        return await _handle(request, R1SearcherRequest, _r1_searcher_body, batcher, limits)

    app.search_routes = {"/retrieve": retrieve, "/queries": queries}

    @app.get("/health")
    async def health(probe: bool = False) -> JSONResponse:
        """``ok``, ``degraded`` (the last search failed) or ``down`` (no batching loop); 503 unless ok."""
        return await _health(retriever, batcher, probe)

    return app


class _RetrieverApp(FastAPI):
    """FastAPI, except that ``POST /retrieve`` and ``POST /queries`` go straight to their handler.

    Why: under many single-query clients FastAPI's per-request layers (five middlewares, routing,
    dependency solving) cost about as much CPU as the BM25 search of the query itself. The search
    handlers take the bare request and do their own reading, validation, limits and error answers,
    so they need none of it; everything else (``/health``, ``/docs``, 404s) goes through FastAPI,
    and the two routes stay registered there for the OpenAPI schema."""

    search_routes: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.search_routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            response = await handler(Request(scope, receive, send))
        except Exception:  # what FastAPI's error middleware would do: log it, answer 500
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        await response(scope, receive, send)


async def _handle(
    request: Request, model: type[Strict], respond: Any, batcher: MicroBatcher, limits: ServerLimits
) -> Response:
    """Read, validate and answer one search request (a departed client gets no answer)."""
    started = time.monotonic()
    n_queries = 0
    try:
        body = await read_body(request, limits.max_body_bytes)
        req = parse(body, model)
        n_queries = len(req.queries)
        k = check_limits(req.queries, req.requested_k, limits)
        results = await _search_unless_gone(request, batcher, req.queries, k) if req.queries else []
        if results is None:
            raise ClientDisconnect()
        check_response_size(results, limits)
    except ClientDisconnect:
        where = "while sending its request" if not n_queries else f"with {n_queries} queries pending"
        log.info(
            "client %s disconnected %s after %.2fs; its work was dropped",
            _client(request),
            where,
            time.monotonic() - started,
        )
        return Response(status_code=CLIENT_GONE)
    except HTTPError as e:
        content: dict[str, Any] = {"detail": e.detail}
        if e.errors is not None:
            content["errors"] = e.errors
        return JSONResponse(content, status_code=e.status)
    except BatcherBusy as e:
        return JSONResponse({"detail": str(e)}, status_code=503)
    except SearchFailed as e:
        return JSONResponse({"detail": str(e)}, status_code=500)
    # orjson: the answer is most of a request's encoding work, and it is ~5x faster than json
    return Response(orjson.dumps(respond(req, results)), media_type="application/json")


def _search_r1_body(req: Any, results: list[list[Doc]]) -> dict[str, Any]:
    if req.return_scores:
        return {"result": [[{"document": _doc(d), "score": d.score} for d in docs] for docs in results]}
    return {"result": [[_doc(d) for d in docs] for docs in results]}


def _r1_searcher_body(req: Any, results: list[list[Doc]]) -> dict[str, Any]:
    return {"queries": req.queries, "answers": [[d.contents for d in docs] for docs in results]}


async def _health(retriever: Retriever, batcher: MicroBatcher, probe: bool) -> JSONResponse:
    probe_error = await _probe(batcher) if probe and batcher.running else None
    state = batcher.state()
    retriever_state = {
        "name": repr(retriever),
        "status": "failing" if state["failures_in_a_row"] else ("ok" if state["search_calls"] else "unused"),
        "last_error": state["last_error"],
        "last_error_age_s": state["last_error_age_s"],
        "last_success_age_s": state["last_success_age_s"],
        "failures_in_a_row": state["failures_in_a_row"],
    }
    if probe_error is not None:
        retriever_state["probe_error"] = probe_error
    body = {
        "status": state["status"],
        "retriever": retriever_state,
        "batcher": {
            k: state[k] for k in ("running", "pending", "search_calls", "failed_calls", "abandoned_queries")
        },
        "pending": state["pending"],
        "search_calls": state["search_calls"],
        "pid": os.getpid(),  # which --workers process answered
    }
    return JSONResponse(body, status_code=200 if state["status"] == "ok" else 503)


async def _probe(batcher: MicroBatcher, timeout_s: float = 10.0) -> str | None:
    """Run one tiny search through the batcher (so its outcome lands in the state); the error or None."""
    try:
        await asyncio.wait_for(batcher.search(["health probe"], 1), timeout_s)
    except SearchFailed as e:
        return str(e)
    except (BatcherBusy, asyncio.TimeoutError) as e:
        return f"probe not run: {type(e).__name__}: {e}"
    return None


async def _search_unless_gone(
    request: Request, batcher: MicroBatcher, queries: list[str], k: int
) -> list[list[Doc]] | None:
    """The search results, or ``None`` if the client disconnected first (the search is cancelled,
    so its chunks still queued are skipped and the rest never queued)."""
    search = batcher.submit(queries, k)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({search, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not search.done():
            search.cancel()
        await asyncio.gather(search, gone, return_exceptions=True)
    if search.cancelled():
        return None
    return search.result()


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def _doc(d: Doc) -> dict[str, str]:
    return {"id": d.id, "contents": d.contents}


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _parser() -> argparse.ArgumentParser:
    d = ServerLimits()
    p = argparse.ArgumentParser(prog="ssrl-trl serve-retriever", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="index directory built by `ssrl-trl index`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 0-65535 (0: any free port)")
    p.add_argument("--max-queries", type=int, default=d.max_queries, help="queries per request")
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    p.add_argument("--max-topk", type=int, default=d.max_topk)
    p.add_argument("--default-topk", type=int, default=d.default_topk)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms, help="micro-batching window")
    p.add_argument("--max-batch-queries", type=int, default=d.max_batch_queries)
    p.add_argument("--max-results", type=int, default=d.max_results, help="queries x topk per request")
    p.add_argument(
        "--max-response-mb", type=float, default=d.max_response_bytes / 2**20, help="size of one answer"
    )
    p.add_argument("--no-mmap", action="store_true", help="read the BM25 matrix / faiss vectors into RAM")
    p.add_argument("--model", default=None, help="dense: encoder name/path overriding the saved one")
    p.add_argument("--device", default=None, help="dense: encoder device (cpu, cuda)")
    p.add_argument("--nprobe", type=int, default=32, help="dense IVF: lists visited per query")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, each mapping the index (the page cache is shared)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (slow under load)")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from .corpus import read_index_meta

    args = _parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"serve-retriever: --workers must be >= 1, got {args.workers}")
    try:
        limits = ServerLimits(
            max_queries=args.max_queries,
            max_query_chars=args.max_query_chars,
            max_topk=args.max_topk,
            default_topk=args.default_topk,
            batch_wait_ms=args.batch_wait_ms,
            max_batch_queries=args.max_batch_queries,
            max_results=args.max_results,
            max_response_bytes=int(args.max_response_mb * 2**20),
        )
    except ValueError as exc:
        raise UserError(f"serve-retriever: {exc}") from None
    _log_setup(args.log_level)
    options: dict[str, Any] = {"mmap": not args.no_mmap}
    try:
        if read_index_meta(args.index).get("kind") == "dense":
            options.update(model=args.model, device=args.device, nprobe=args.nprobe)
    except (OSError, ValueError) as exc:  # a missing, partial or foreign index directory
        raise UserError(f"--index {args.index}: cannot load the index ({exc})") from None
    retriever = _load(args.index, options)  # checked here, so a bad index is one clear error
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        log.warning(
            "binding %s: the retriever is reachable from other machines and has no authentication", args.host
        )
    log.info(
        "serving %r on http://%s:%d with %d worker process(es) (POST /retrieve, POST /queries, GET /health)",
        retriever,
        args.host,
        args.port,
        args.workers,
    )
    run: dict[str, Any] = dict(
        host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )
    if args.workers == 1:
        uvicorn.run(create_app(retriever, limits), **run)
        return 0
    # uvicorn binds the port here and spawns the workers; each builds its app with app_from_env
    del retriever
    config = {
        "index": str(args.index),
        "options": options,
        "limits": asdict(limits),
        "log_level": args.log_level,
    }
    os.environ[_CONFIG_ENV] = json.dumps(config)
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=args.workers, **run)
    return 0


#: how ``main`` hands the index and limits to ``--workers`` processes (spawned, not forked)
_CONFIG_ENV = "SSRL_TRL_SERVE_RETRIEVER_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one ``--workers`` process: it loads the index the parent named (memory-mapped
    unless ``--no-mmap``, so N workers share one copy of the matrix and passages in the page
    cache) with the parent's limits."""
    config = json.loads(os.environ[_CONFIG_ENV])
    _log_setup(config["log_level"])
    retriever = _load(config["index"], config["options"])
    log.info("worker %d serving %r", os.getpid(), retriever)
    return create_app(retriever, ServerLimits(**config["limits"]))


def _load(index: str, options: dict[str, Any]) -> Retriever:
    from .factory import load_retriever

    try:
        return load_retriever(index, **options)
    except (OSError, ValueError) as exc:  # a missing, partial or foreign index directory
        raise UserError(f"--index {index}: cannot load the index ({exc})") from None


def _log_setup(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
