"""How retrieved passages are written into an information block: a value a tag set carries.

Search-R1 inserts ``\\n\\n<information>Doc 1(Title: "t") text ...</information>\\n\\n``;
R1-Searcher inserts ``\\n<|begin_of_documents|>\\n(1) t\\ntext ...\\n<|end_of_documents|>\\n``.
The tag set holds its style (``TagSet.documents``), so an environment that inserts documents
asks the tag set instead of testing its name; a recipe's custom tag set names one of
:data:`DOCUMENT_STYLES` (or inherits its method's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DOCUMENT_STYLES",
    "R1_SEARCHER_DOCUMENTS",
    "SEARCH_R1_DOCUMENTS",
    "DocumentStyle",
    "get_document_style",
]


class _Passage(Protocol):
    title: str
    text: str


@dataclass(frozen=True)
class DocumentStyle:
    """The text around the information tags and the rendering of each passage (numbered from 1).

    ``wrap(information)`` gives what goes before and after the documents: ``before_open``, the
    opening tag, ``after_open`` ... ``before_close``, the closing tag, ``after_close``.
    """

    name: str
    before_open: str
    after_open: str
    before_close: str
    after_close: str
    passage: Callable[[int, _Passage], str] = field(repr=False)

    def wrap(self, information: tuple[str, str]) -> tuple[str, str]:
        opening, closing = information
        return (
            f"{self.before_open}{opening}{self.after_open}",
            f"{self.before_close}{closing}{self.after_close}",
        )

    def render(self, docs: Sequence[_Passage]) -> str:
        return "\n".join(self.passage(i, d) for i, d in enumerate(docs, 1))


def _search_r1_passage(i: int, doc: _Passage) -> str:
    return f'Doc {i}(Title: "{doc.title}") {doc.text}'


def _r1_searcher_passage(i: int, doc: _Passage) -> str:
    return f"({i}) {doc.title}\n{doc.text}"


SEARCH_R1_DOCUMENTS = DocumentStyle("search_r1", "\n\n", "", "", "\n\n", _search_r1_passage)
R1_SEARCHER_DOCUMENTS = DocumentStyle("r1_searcher", "\n", "\n", "\n", "\n", _r1_searcher_passage)
#: The styles a recipe can name (``tags: {documents: ...}``).
DOCUMENT_STYLES: dict[str, DocumentStyle] = {s.name: s for s in (SEARCH_R1_DOCUMENTS, R1_SEARCHER_DOCUMENTS)}


def get_document_style(name: str | DocumentStyle) -> DocumentStyle:
    """The style named ``name`` (a recipe value); unknown names list the known ones."""
    if isinstance(name, DocumentStyle):
        return name
    if name not in DOCUMENT_STYLES:
        raise ValueError(f"unknown document style {name!r}; known: {', '.join(sorted(DOCUMENT_STYLES))}")
    return DOCUMENT_STYLES[name]
