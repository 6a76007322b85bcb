"""Build a :class:`Retriever` by name: the one registry, used at the recipe boundary.

    build_retriever("bm25", index="indexes/mini_wiki_bm25")
    build_retriever("dense", index="indexes/mini_wiki_minilm", nprobe=64)
    build_retriever("http", url="http://127.0.0.1:8000", api="search_r1", timeout=10)
    build_retriever("index", index="indexes/whatever")      # bm25 or dense, read from its metadata
    build_retriever("memory", docs=["\\"Paris\\"\\nParis is the capital of France."])

Everything below the recipe takes a retriever object; only recipes name one. Unknown kinds and
unknown options are errors that list the valid ones, so a typo in a YAML fails at start-up.
:class:`InMemoryRetriever` is a dependency-free stand-in for tests of other modules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from .base import Doc, Retriever, check_k

__all__ = [
    "RETRIEVER_KINDS",
    "InMemoryRetriever",
    "build_retriever",
    "check_retriever_options",
    "load_retriever",
]

_TOKEN = re.compile(r"\w+")


class InMemoryRetriever:
    """Rank a small list of passages by how many distinct query words each contains.

    Docs may be :class:`Doc`, ``"Title"\\ntext`` strings (ids become "0", "1", ...), ``(id,
    contents)`` pairs or ``{"id", "contents"}`` dicts. Passages sharing no word with the query
    are not returned; ties keep the input order, so results are deterministic.

    >>> r = InMemoryRetriever(['"Paris"\\nParis is in France.', '"Rome"\\nRome is in Italy.'])
    >>> [d.id for d in r.search(["capital of italy"], k=2)[0]]
    ['1']
    """

    def __init__(self, docs: Iterable[Doc | str | tuple[str, str] | dict[str, Any]]) -> None:
        self.docs = [_as_doc(d, i) for i, d in enumerate(docs)]
        self._tokens = [set(_TOKEN.findall(d.contents.lower())) for d in self.docs]

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        check_k(k)
        results = []
        for query in queries:
            words = set(_TOKEN.findall(query.lower()))
            scored = [(len(words & toks), i) for i, toks in enumerate(self._tokens)]
            ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:k]
            results.append([Doc(self.docs[i].id, self.docs[i].contents, float(s)) for s, i in ranked])
        return results

    def __repr__(self) -> str:
        return f"InMemoryRetriever({len(self.docs)} passages)"


def _as_doc(d: Doc | str | tuple[str, str] | dict[str, Any], i: int) -> Doc:
    if isinstance(d, Doc):
        return d
    if isinstance(d, str):
        return Doc(str(i), d)
    if isinstance(d, dict):
        return Doc(str(d.get("id", i)), str(d["contents"]))
    doc_id, contents = d
    return Doc(str(doc_id), str(contents))


def _bm25(index: str | os.PathLike[str], mmap: bool = True) -> Retriever:
    from .bm25 import BM25Retriever

    return BM25Retriever.load(index, mmap=mmap)


def _dense(
    index: str | os.PathLike[str],
    model: str | None = None,
    device: str | None = None,
    mmap: bool = False,
    nprobe: int = 32,
    ef_search: int = 128,
) -> Retriever:
    from .dense import DenseRetriever

    return DenseRetriever.load(
        index, model=model, device=device, mmap=mmap, nprobe=nprobe, ef_search=ef_search
    )


def _http(url: str, **options: Any) -> Retriever:
    from .client import HTTPRetriever

    return HTTPRetriever(url, **options)


def _memory(docs: Iterable[Any]) -> Retriever:
    return InMemoryRetriever(docs)


def _from_index(index: str | os.PathLike[str], **options: Any) -> Retriever:
    return load_retriever(index, **options)


_HTTP_OPTIONS = ("url", "api", "timeout", "retries", "backoff", "max_backoff", "max_batch")
_DENSE_OPTIONS = ("index", "model", "device", "mmap", "nprobe", "ef_search")

#: kind -> (builder, accepted options, required options)
_KINDS: dict[str, tuple[Callable[..., Retriever], tuple[str, ...], tuple[str, ...]]] = {
    "bm25": (_bm25, ("index", "mmap"), ("index",)),
    "dense": (_dense, _DENSE_OPTIONS, ("index",)),
    "http": (_http, _HTTP_OPTIONS, ("url",)),
    "index": (_from_index, _DENSE_OPTIONS, ("index",)),
    "memory": (_memory, ("docs",), ("docs",)),
}
RETRIEVER_KINDS = tuple(sorted(_KINDS))


def check_retriever_options(kind: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` for an unknown kind, an unknown option or a missing one, without
    building anything (a recipe is checked before any weights or indexes load)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown retriever kind {kind!r}; valid kinds: {', '.join(RETRIEVER_KINDS)}")
    _builder, accepted, required = _KINDS[kind]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"retriever kind {kind!r} got unknown option(s) {unknown}; valid options: {list(accepted)}"
        )
    missing = [name for name in required if options.get(name) is None]
    if missing:
        raise ValueError(f"retriever kind {kind!r} needs option(s) {missing}")
    url = options.get("url")
    if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^/\s]+", url)):
        raise ValueError(f"retriever url must start with http:// or https:// and name a host, got {url!r}")


def build_retriever(kind: str, **options: Any) -> Retriever:
    """A retriever of ``kind`` (one of :data:`RETRIEVER_KINDS`) built from keyword ``options``."""
    check_retriever_options(kind, options)
    return _KINDS[kind][0](**options)


def load_retriever(index: str | os.PathLike[str], **options: Any) -> Retriever:
    """The in-process retriever for an index directory, by the kind saved in its metadata.

    ``options`` go to the loader: ``mmap`` for BM25; ``model``, ``device``, ``mmap``,
    ``nprobe``, ``ef_search`` for dense.
    """
    from .corpus import read_index_meta

    kind = read_index_meta(index).get("kind")
    if kind == "bm25":
        return build_retriever("bm25", index=index, **options)
    if kind == "dense":
        return build_retriever("dense", index=index, **options)
    raise ValueError(f"{index}: unknown index kind {kind!r} in its metadata (expected 'bm25' or 'dense')")
