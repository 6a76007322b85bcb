"""A dependency-free in-memory retriever: the ``memory`` kind, and a stand-in for tests."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .base import Doc, check_k

__all__ = ["InMemoryRetriever"]

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
