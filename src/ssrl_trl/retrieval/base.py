"""The retriever interface the rollout engine talks to.

A retriever is anything with a batched ``search(queries, k) -> list[list[Doc]]``: the rollout
collects all queries of a step into one call so that BM25, a dense index or an HTTP server can
batch them. Failures are raised as :class:`RetrieverError` (the world misbehaving); the
environment turns them into masked error observations and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Doc", "Retriever", "RetrieverError", "check_k", "split_contents"]


class RetrieverError(RuntimeError):
    """A retrieval failed (timeout, server down, bad response) after any retries."""


@dataclass(frozen=True)
class Doc:
    """One retrieved passage. ``contents`` is the FlashRAG/Search-R1 ``"Title"\\ntext`` string."""

    id: str
    contents: str
    score: float | None = None

    @property
    def title(self) -> str:
        return split_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_contents(self.contents)[1]


def check_k(k: int, size: int | None = None) -> int:
    """Every retriever's ``k`` rule: at least 1 (a clear error otherwise), at most ``size`` passages."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k if size is None else min(k, size)


def split_contents(contents: str) -> tuple[str, str]:
    """Split ``"Title"\\ntext`` into (title, text); a passage without a title line gives ("", text)."""
    head, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    return head.strip().strip('"'), rest.strip()


@runtime_checkable
class Retriever(Protocol):
    """Batched search: one list of up to ``k`` docs per query, in query order."""

    def search(self, queries: list[str], k: int) -> list[list[Doc]]: ...
