"""Format checks of whole completions: each method's grammar, as a value a tag set carries.

A :class:`FormatCheck` scores a completion in [0, 1] (0: the format is broken). Every tag set
holds the check of its grammar (``TagSet.format_check``), so the format reward, the held-out
evaluation and ``ssrl-trl eval`` ask the tag set instead of switching on a method's name; a
recipe's custom tag set names one of :data:`FORMAT_CHECKS` (or inherits its method's).

The checks read the tag set, never hard-coded tags, and never raise on model output. The rewards
combine them with the answer metrics of :mod:`ssrl_trl.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .refine_format import autorefine_format_score
from .spans import find_spans

if TYPE_CHECKING:
    from .protocol import TagSet

__all__ = [
    "AUTOREFINE_FORMAT",
    "FORMAT_CHECKS",
    "PLACEHOLDER_QUERIES",
    "R1_SEARCHER_FORMAT",
    "SEARCH_R1_FORMAT",
    "SSRL_FORMAT",
    "FormatCheck",
    "get_format_check",
    "r1_searcher_format_valid",
    "search_r1_format_valid",
    "ssrl_format_score",
]

#: Queries that copy the prompt's instructions instead of asking something.
PLACEHOLDER_QUERIES = frozenset(
    {"", "query", "your query", "search query", "...", "…", "q", "question", "none"}
)


def _tags(tags: TagSet | None, name: str) -> TagSet:
    """The given tag set, or the named built-in one (the tag sets import this module, so the
    default is looked up when a check is called without tags)."""
    if tags is not None:
        return tags
    from .protocol import TAG_SETS

    return TAG_SETS[name]


def _queries_ok(text: str, tags: TagSet) -> bool:
    """Every query is non-empty, single-line and not a placeholder, and is followed (after
    whitespace) by an information block."""
    for span in find_spans(text, tags.search):
        query = span.content(text).strip()
        if "\n" in query or query.lower().strip(" .:") in PLACEHOLDER_QUERIES:
            return False
        if not text[span.end :].lstrip().startswith(tags.information[0]):
            return False
    return True


def _balance(text: str, tags: TagSet) -> float:
    """Mean over tag kinds of min(#open, #close) / max(#open, #close); 1.0 when all pairs match."""
    ratios = []
    for opening, closing in tags.pairs().values():
        n_open, n_close = text.count(opening), text.count(closing)
        if n_open or n_close:
            ratios.append(min(n_open, n_close) / max(n_open, n_close))
    return sum(ratios) / len(ratios) if ratios else 0.0


def ssrl_format_score(text: str, tags: TagSet | None = None, *, max_think: int = 8) -> float:
    """SSRL's format score in [0, 1].

    Zero unless the completion starts with the think tag, ends with the answer's closing tag,
    every search is followed by an information block, and every query is a single non-placeholder
    line. Otherwise ``min(0.5 * #think_blocks, 1) * balance`` where balance is the mean
    open/close agreement of the tag kinds; zero beyond ``max_think`` think blocks (the cap against
    padding the output with empty thoughts).

    >>> ssrl_format_score("<think>a</think><search>who wrote Dune</search><information>i</information>"
    ...                   "<think>b</think><answer>x</answer>")
    1.0
    """
    if not isinstance(text, str):
        return 0.0
    tags = _tags(tags, "ssrl")
    body = text.strip()
    think_open = tags.think[0] if tags.think else None
    if think_open and not body.startswith(think_open):
        return 0.0
    if not body.endswith(tags.answer[1]) or not _queries_ok(body, tags):
        return 0.0
    n_think = len(find_spans(body, tags.think)) if tags.think else 2
    if n_think > max_think:
        return 0.0
    return min(0.5 * n_think, 1.0) * _balance(body, tags)


def search_r1_format_valid(text: str, tags: TagSet | None = None) -> bool:
    """Search-R1's sequence grammar: ``think (search information think?)* answer``.

    Only whitespace may stand between blocks; after an information block the model may think,
    search again or answer; nothing but whitespace may follow the answer.

    >>> search_r1_format_valid("<think>x</think><search>q</search>"
    ...     "<information>d</information><think>y</think><answer>a</answer>")
    True
    """
    if not isinstance(text, str):
        return False
    tags = _tags(tags, "search_r1")
    allowed_after = {
        "start": {"think"} if tags.think else {"search", "answer"},
        "think": {"search", "answer"},
        "search": {"information"},
        "information": {"think", "search", "answer"},
        "answer": set(),
    }
    return follows_grammar(text, tags, allowed_after)


def follows_grammar(
    text: str, tags: TagSet, allowed_after: dict[str, set[str]], non_empty: frozenset[str] = frozenset()
) -> bool:
    """Whether ``text`` is a sequence of the tag set's blocks, each kind followed only by a kind
    ``allowed_after`` it allows (from ``"start"``), ending with the answer. Only whitespace may
    stand between blocks; a block the model writes (all but information) may not contain another
    block's opening tag; kinds in ``non_empty`` must have content."""
    blocks = tags.pairs()
    state, pos = "start", 0
    while True:
        rest = text[pos:]
        stripped = rest.lstrip()
        if not stripped:
            return state == "answer"
        pos += len(rest) - len(stripped)
        kind = next((k for k, pair in blocks.items() if stripped.startswith(pair[0])), None)
        if kind is None or kind not in allowed_after[state]:
            return False
        opening, closing = blocks[kind]
        close_at = text.find(closing, pos + len(opening))
        if close_at < 0:
            return False
        inner = text[pos + len(opening) : close_at]
        if kind != "information" and any(pair[0] in inner for pair in blocks.values()):
            return False
        if kind in non_empty and not inner.strip():
            return False
        state, pos = kind, close_at + len(closing)


def r1_searcher_format_valid(text: str, tags: TagSet) -> bool:
    """R1-Searcher's format: queries live inside the reasoning, so the grammar is looser.

    Valid when the completion starts with the think tag, ends with exactly one answer block, think
    tags are balanced, every query block is non-empty, single-line and followed by a documents
    block, and no query comes after the answer opens.
    """
    if not isinstance(text, str):
        return False
    body = text.strip()
    if tags.think is not None:
        if not body.startswith(tags.think[0]):
            return False
        if body.count(tags.think[0]) != body.count(tags.think[1]):
            return False
    answers = find_spans(body, tags.answer)
    if len(answers) != 1 or answers[0].end != len(body) or body.count(tags.answer[0]) != 1:
        return False
    if tags.search[0] in body[answers[0].start :]:
        return False
    if body.count(tags.search[0]) != body.count(tags.search[1]):
        return False
    return _queries_ok(body, tags)


@dataclass(frozen=True)
class FormatCheck:
    """A method's grammar as a value: ``score(text, tags)`` in [0, 1], 0 when the format is broken.

    ``valid`` is the yes/no question evaluation reports (``format_valid``): SSRL's score above 0,
    Search-R1's and R1-Searcher's grammars as they are.
    """

    name: str
    score: Callable[[str, TagSet], float] = field(repr=False)

    def __call__(self, text: str, tags: TagSet) -> float:
        return self.score(text, tags)

    def valid(self, text: str, tags: TagSet) -> bool:
        return self.score(text, tags) > 0


def _search_r1_score(text: str, tags: TagSet) -> float:
    return float(search_r1_format_valid(text, tags))


def _r1_searcher_score(text: str, tags: TagSet) -> float:
    return float(r1_searcher_format_valid(text, tags))


def _ssrl_score(text: str, tags: TagSet) -> float:
    return ssrl_format_score(text, tags)


SEARCH_R1_FORMAT = FormatCheck("search_r1", _search_r1_score)
SSRL_FORMAT = FormatCheck("ssrl", _ssrl_score)
R1_SEARCHER_FORMAT = FormatCheck("r1_searcher", _r1_searcher_score)
#: AutoRefine: a refine note after every information block (:mod:`.refine_format`).
AUTOREFINE_FORMAT = FormatCheck("autorefine", autorefine_format_score)
#: The checks a recipe can name (``tags: {format: ...}``); register a new grammar by adding it here.
FORMAT_CHECKS: dict[str, FormatCheck] = {
    c.name: c for c in (SEARCH_R1_FORMAT, SSRL_FORMAT, R1_SEARCHER_FORMAT, AUTOREFINE_FORMAT)
}


def get_format_check(name: str | FormatCheck) -> FormatCheck:
    """The check named ``name`` (a recipe value); unknown names list the known ones."""
    if isinstance(name, FormatCheck):
        return name
    if name not in FORMAT_CHECKS:
        raise ValueError(f"unknown format check {name!r}; known: {', '.join(sorted(FORMAT_CHECKS))}")
    return FORMAT_CHECKS[name]
