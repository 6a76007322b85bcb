"""Micro-batching for the retrieval server: many concurrent requests, few batched searches.

A GRPO step sends hundreds of single-query requests at once; searching them one by one wastes
what makes BM25/dense fast. :class:`MicroBatcher` queues requests and searches whatever arrived
within ``max_wait_s`` of the first in one ``retriever.search`` call on a worker thread.

Large requests are cut into chunks of at most ``max_batch_queries`` and a request queues its
next chunk only when the previous one is answered, so a 4,000-query request cannot hold the
worker while one-query requests wait behind all of it. A request whose client went away is
cancelled: its queued chunk is skipped and the rest is never queued. The batcher also keeps
what ``/health`` reports: failed calls in a row, the last error, abandoned queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .base import Doc, Retriever

__all__ = ["BatcherBusy", "MicroBatcher", "SearchFailed"]

log = logging.getLogger("ssrl_trl.retrieval.server")


class BatcherBusy(RuntimeError):
    """The queue is full: answer 503 and let the client retry."""


class SearchFailed(RuntimeError):
    """The retriever raised for the batch this request was in."""


@dataclass
class _Item:
    queries: list[str]
    k: int
    fut: asyncio.Future[Any]
    queued_at: float


class MicroBatcher:
    """Merge concurrent ``search`` calls into one ``retriever.search`` on a worker thread.

    The first waiting chunk opens a batch; chunks arriving within ``max_wait_s`` of it (or
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
        self.calls = 0  # batched search calls made
        self.failed_calls = 0
        self.failures_in_a_row = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # time.time()
        self.last_success_at: float | None = None
        self.abandoned_queries = 0  # queries of requests whose client left before the answer
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever")

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def state(self) -> dict[str, Any]:
        """``ok``; ``degraded`` while the last search call failed (with its error); ``down`` when
        the batching loop is not running."""
        status = "down" if not self.running else ("degraded" if self.failures_in_a_row else "ok")
        now = time.time()
        return {
            "status": status,
            "running": self.running,
            "pending": self.pending,
            "search_calls": self.calls,
            "failed_calls": self.failed_calls,
            "failures_in_a_row": self.failures_in_a_row,
            "last_error": self.last_error,
            "last_error_age_s": None if self.last_error_at is None else round(now - self.last_error_at, 1),
            "last_success_age_s": None
            if self.last_success_at is None
            else round(now - self.last_success_at, 1),
            "abandoned_queries": self.abandoned_queries,
        }

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_pending)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def submit(self, queries: list[str], k: int) -> asyncio.Future[list[list[Doc]]]:
        """The results of ``queries`` as an awaitable; cancel it to drop what is not searched yet.

        A request that fits in one chunk (nearly all of them) is queued right here and gets its
        chunk's future back, with no task per request; a larger one gets a task running
        :meth:`search`. Raises :class:`BatcherBusy` at once when the queue is full."""
        if len(queries) > self.max_batch_queries:
            return asyncio.ensure_future(self.search(queries, k))
        item = self._enqueue(queries, k)
        item.fut.add_done_callback(lambda fut: self._abandoned(fut, len(queries)))
        return item.fut

    def _abandoned(self, fut: asyncio.Future[Any], n: int) -> None:
        if fut.cancelled():
            self.abandoned_queries += n

    def _enqueue(self, queries: list[str], k: int) -> _Item:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        item = _Item(queries, k, asyncio.get_running_loop().create_future(), time.monotonic())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise BatcherBusy(
                f"server busy: {self.max_pending} requests already queued; retry later"
            ) from None
        return item

    async def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        """Results of ``queries`` in order. Cancelling the caller drops what is not searched yet."""
        results: list[list[Doc]] = []
        for start in range(0, len(queries), self.max_batch_queries):
            item = self._enqueue(queries[start : start + self.max_batch_queries], k)
            try:
                results.extend(await item.fut)
            except asyncio.CancelledError:
                self.abandoned_queries += len(queries) - start
                item.fut.cancel()
                raise
        return results

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            if first.fut.done():  # its client went away while it waited
                continue
            batch, n = [first], len(first.queries)
            deadline = first.queued_at + self.max_wait_s
            while n < self.max_batch_queries:
                # take what is queued; sleep out the window only while the batch has room (one
                # timer per batch: a wait_for per request cost more than the search at load)
                while n < self.max_batch_queries and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if not item.fut.done():
                        batch.append(item)
                        n += len(item.queries)
                left = deadline - time.monotonic()
                if n >= self.max_batch_queries or left <= 0:
                    break
                await asyncio.sleep(left)
            await self._execute(batch)

    async def _execute(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.fut.done()]
        if not batch:
            return
        queries = [q for item in batch for q in item.queries]
        k = max(item.k for item in batch)
        loop = asyncio.get_running_loop()
        self.calls += 1
        try:
            results = await loop.run_in_executor(self._executor, self.retriever.search, queries, k)
            if len(results) != len(queries):
                raise RuntimeError(
                    f"retriever returned {len(results)} result lists for {len(queries)} queries"
                )
        except Exception as e:  # the retriever failed: the batch's requests get a 500, the loop goes on
            self._failed(e, len(queries))
            for item in batch:
                if not item.fut.done():
                    item.fut.set_exception(SearchFailed(f"retrieval failed: {type(e).__name__}: {e}"))
            return
        self.failures_in_a_row, self.last_success_at = 0, time.time()
        start = 0
        for item in batch:
            if not item.fut.done():  # a request cancelled during the search is skipped
                item.fut.set_result(
                    [list(docs[: item.k]) for docs in results[start : start + len(item.queries)]]
                )
            start += len(item.queries)

    def _failed(self, error: Exception, n: int) -> None:
        self.failed_calls += 1
        self.failures_in_a_row += 1
        self.last_error = f"{type(error).__name__}: {error}"
        self.last_error_at = time.time()
        if self.failures_in_a_row == 1:  # the traceback once per streak, then one line per failure
            log.exception("batched search of %d queries failed", n)
        else:
            log.error(
                "batched search of %d queries failed (%d in a row): %s",
                n,
                self.failures_in_a_row,
                self.last_error,
            )
