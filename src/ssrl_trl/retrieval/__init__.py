"""Retrievers: the engine's interface (:mod:`.base`), in-process BM25 / dense indexes, and the
HTTP server and client speaking the Search-R1 and R1-Searcher APIs."""

from .base import Doc, Retriever, RetrieverError

__all__ = ["Doc", "Retriever", "RetrieverError"]
