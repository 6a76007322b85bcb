"""Tag sets and the parsing of model output.

Tags are defined once, here. A :class:`TagSet` is the whole grammar of a method: its tag pairs,
its format check (:mod:`.formats`) and how documents are written into its information block
(:mod:`.documents`). The prompt templates, the rollout engine (stop strings, action parsing,
masking), the environments, the rewards and evaluation all read a tag set, so SSRL, Search-R1,
R1-Searcher and a recipe's own tags are *values* of the same protocol, not separate code paths.

Every function in this module takes arbitrary model output and never raises on it: malformed,
unclosed, nested or repeated tags, empty content and 100k characters of garbage are all valid
inputs that produce a well-defined result. Parsing is plain substring search (no backtracking
regexes), so its cost is linear in the length of the text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from .documents import R1_SEARCHER_DOCUMENTS, SEARCH_R1_DOCUMENTS, DocumentStyle, get_document_style
from .formats import (
    AUTOREFINE_FORMAT,
    R1_SEARCHER_FORMAT,
    SEARCH_R1_FORMAT,
    SSRL_FORMAT,
    FormatCheck,
    get_format_check,
)
from .spans import Span, find_spans

__all__ = [
    "AUTOREFINE",
    "Action",
    "R1_SEARCHER",
    "SEARCH_R1",
    "SSRL",
    "TAG_SETS",
    "Span",
    "TagSet",
    "extract_answer",
    "find_spans",
    "get_tag_set",
    "parse_action",
]

#: Queries longer than this are cut before they reach a retriever.
MAX_QUERY_CHARS = 1000
#: Between the queries of one parallel search (ParallelSearch's ``<search> q1 ## q2 </search>``).
DEFAULT_QUERY_SEPARATOR = "##"

_PAIRS = ("search", "information", "answer", "think", "refine")


@dataclass(frozen=True)
class TagSet:
    """The grammar of one method: tag pairs (opening, closing), the format check that scores a
    completion, and the style in which retrieved documents are inserted.

    ``think`` may be ``None`` for protocols without a reasoning tag; ``refine`` is set only by
    grammars with a refine step after each information block (AutoRefine). The other pairs are
    required.
    """

    name: str
    search: tuple[str, str]
    information: tuple[str, str]
    answer: tuple[str, str]
    think: tuple[str, str] | None = ("<think>", "</think>")
    format_check: FormatCheck = SEARCH_R1_FORMAT
    documents: DocumentStyle = SEARCH_R1_DOCUMENTS
    #: AutoRefine's note after each information block, written by the model (so in the loss).
    refine: tuple[str, str] | None = None
    #: Splits one search into several queries where an environment searches them in parallel
    #: (``parallel_retrieval``); other environments read the whole content as one query.
    query_separator: str = DEFAULT_QUERY_SEPARATOR

    def __post_init__(self) -> None:
        sep = self.query_separator
        if not (isinstance(sep, str) and sep and not any(c.isspace() for c in sep)):
            # Queries are whitespace-collapsed before they are split, so a separator with
            # whitespace in it could never be found.
            raise ValueError(
                f"tag set {self.name!r}: query_separator must be non-empty, without spaces, got {sep!r}"
            )
        pairs = {k: getattr(self, k) for k in _PAIRS if getattr(self, k) is not None}
        for key, pair in pairs.items():
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise ValueError(f"tag set {self.name!r}: {key} must be a pair [open, close], got {pair!r}")
            opening, closing = pair
            if not (isinstance(opening, str) and isinstance(closing, str) and opening and closing):
                raise ValueError(f"tag set {self.name!r}: {key} tags must be non-empty strings, got {pair!r}")
            if opening == closing:
                raise ValueError(
                    f"tag set {self.name!r}: {key} open and close tags are identical ({opening!r})"
                )
        flat = [t for pair in pairs.values() for t in pair]
        if len(set(flat)) != len(flat):
            raise ValueError(f"tag set {self.name!r}: tags must be distinct, got {flat}")

    def pairs(self) -> dict[str, tuple[str, str]]:
        """Every tag pair by kind (search, information, answer, then think and refine when set)."""
        return {k: getattr(self, k) for k in _PAIRS if getattr(self, k) is not None}

    def format_score(self, text: str) -> float:
        """This grammar's format score of a completion, in [0, 1] (0: broken)."""
        return self.format_check(text, self)

    def format_valid(self, text: str) -> bool:
        """Whether a completion follows this grammar (what evaluation reports as ``format_valid``)."""
        return self.format_check.valid(text, self)

    def observation_wrap(self) -> tuple[str, str]:
        """The text before and after inserted documents (the information tags in this style)."""
        return self.documents.wrap(self.information)

    @property
    def stop_on_search(self) -> list[str]:
        """Stop strings for a multi-turn retrieval loop: pause after a query or an answer."""
        return [self.search[1], self.answer[1]]

    @property
    def stop_on_answer(self) -> list[str]:
        """Stop strings for single-pass self-search and for a final answer-only turn."""
        return [self.answer[1]]

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: TagSet | None = None) -> TagSet:
        """Build a user-defined tag set from a recipe mapping (``{name, search: [o, c], ...}``).

        ``format`` and ``documents`` name a format check and a document style, ``query_separator``
        splits a parallel search; left out, they are those of ``base`` (the recipe method's tag
        set), else Search-R1's.
        """
        allowed = {
            *("name", "search", "information", "answer", "think", "format", "documents"),
            "query_separator",
            "refine",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown tag-set keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        missing = {"search", "information", "answer"} - set(data)
        if missing:
            raise ValueError(f"tag set is missing {sorted(missing)}")
        think = data.get("think", ("<think>", "</think>"))
        base = base or SEARCH_R1
        refine = data.get("refine", base.refine)
        return cls(
            name=str(data.get("name", "custom")),
            search=tuple(data["search"]),
            information=tuple(data["information"]),
            answer=tuple(data["answer"]),
            think=tuple(think) if think is not None else None,
            refine=tuple(refine) if refine is not None else None,
            format_check=get_format_check(data.get("format", base.format_check)),
            documents=get_document_style(data.get("documents", base.documents)),
            query_separator=data.get("query_separator", base.query_separator),
        )


SEARCH_R1 = TagSet(
    name="search_r1",
    search=("<search>", "</search>"),
    information=("<information>", "</information>"),
    answer=("<answer>", "</answer>"),
)
#: SSRL uses exactly the Search-R1 tags; the model writes the information block itself.
SSRL = replace(SEARCH_R1, name="ssrl", format_check=SSRL_FORMAT)
R1_SEARCHER = TagSet(
    name="r1_searcher",
    search=("<|begin_of_query|>", "<|end_of_query|>"),
    information=("<|begin_of_documents|>", "<|end_of_documents|>"),
    answer=("<answer>", "</answer>"),
    format_check=R1_SEARCHER_FORMAT,
    documents=R1_SEARCHER_DOCUMENTS,
)
#: AutoRefine: Search-R1's tags plus a refine note after every information block.
AUTOREFINE = replace(
    SEARCH_R1, name="autorefine", refine=("<refine>", "</refine>"), format_check=AUTOREFINE_FORMAT
)
TAG_SETS: dict[str, TagSet] = {t.name: t for t in (SEARCH_R1, SSRL, R1_SEARCHER, AUTOREFINE)}


def get_tag_set(spec: str | dict | TagSet, base: str | TagSet | None = None) -> TagSet:
    """Resolve a recipe value (a name, a mapping, or a TagSet) to a TagSet; a mapping takes the
    format check and document style it does not name from ``base`` (a method's tag set)."""
    if isinstance(spec, TagSet):
        return spec
    if isinstance(spec, dict):
        return TagSet.from_dict(spec, get_tag_set(base) if base is not None else None)
    if isinstance(spec, str) and spec in TAG_SETS:
        return TAG_SETS[spec]
    raise ValueError(f"unknown tag set {spec!r}; choose one of {sorted(TAG_SETS)} or give a mapping")


def _innermost_content(text: str, tags: tuple[str, str], close_at: int) -> tuple[int, str] | None:
    """Content between the closing tag at ``close_at`` and the nearest opening tag before it."""
    opening = tags[0]
    start = text.rfind(opening, 0, close_at)
    if start < 0:
        return None
    return start, text[start + len(opening) : close_at]


def extract_answer(completion: str, tags: TagSet = SEARCH_R1) -> str | None:
    """The content of the **last complete** answer block of ``completion``, stripped.

    Pass only the completion, never the prompt: a prompt's format example (``<answer> Beijing
    </answer>``) would otherwise be scored (a known Search-R1 pitfall). Decisions:

    * zero complete answer blocks -> ``None`` (the rewards treat this as "no answer");
    * several -> the last one, the model's final word after any self-correction;
    * nested ``<answer><answer>x</answer></answer>`` -> the innermost content ``x``;
    * an empty block ``<answer> </answer>`` -> ``""`` (an answer, and a wrong one).
    """
    if not isinstance(completion, str):
        return None
    opening, closing = tags.answer
    # The last opening tag that some closing tag follows opens the last complete block; its first
    # closing tag ends the innermost content (a later stray or outer close is not part of it).
    last_close = completion.rfind(closing)
    start = completion.rfind(opening, 0, last_close) if last_close >= 0 else -1
    if start < 0:
        return None
    inner_start = start + len(opening)
    return completion[inner_start : completion.find(closing, inner_start)].strip()


@dataclass(frozen=True)
class Action:
    """What the newest turn asks for.

    ``kind`` is ``"search"`` (``content`` is the query), ``"answer"`` (``content`` is the answer)
    or ``"invalid"`` (``content`` is empty and ``error`` says why). ``end`` is the character offset
    in the turn text just after the tag that defines the action (``-1`` when invalid).
    """

    kind: Literal["search", "answer", "invalid"]
    content: str = ""
    error: str = ""
    end: int = -1


def _clean_query(raw: str) -> str:
    """One line, at most :data:`MAX_QUERY_CHARS` characters."""
    return " ".join(raw.split())[:MAX_QUERY_CHARS]


def parse_action(turn_text: str, tags: TagSet = SEARCH_R1) -> Action:
    """Decide the action of the newest turn (all model text since the last observation).

    The action is the complete ``search`` or ``answer`` block whose closing tag comes **first**,
    matching Search-R1's ``<(search|answer)>(.*?)</\\1>`` rule: generation stops at the first
    closing tag, so that is the block the model meant. Whitespace in queries is collapsed (a
    multi-line query becomes one line); an empty query or answer-less turn is ``invalid`` with a
    reason the environment can show. Never raises.
    """
    if not isinstance(turn_text, str) or not turn_text:
        return Action("invalid", error="empty turn")
    candidates: list[tuple[int, str]] = []
    for kind, pair in (("search", tags.search), ("answer", tags.answer)):
        # The first closing tag with an opening tag before it: the first close after the first open
        # (one forward scan, so the cost stays linear however many stray closes there are).
        first_open = turn_text.find(pair[0])
        close_at = turn_text.find(pair[1], first_open + len(pair[0])) if first_open >= 0 else -1
        if close_at >= 0:
            candidates.append((close_at, kind))
    if not candidates:
        return Action("invalid", error="no complete search or answer block")
    close_at, kind = min(candidates)
    pair = tags.search if kind == "search" else tags.answer
    found = _innermost_content(turn_text, pair, close_at)
    content = found[1] if found else ""
    end = close_at + len(pair[1])
    if kind == "answer":
        return Action("answer", content=content.strip(), end=end)
    query = _clean_query(content)
    if not query:
        return Action("invalid", error="empty search query", end=end)
    return Action("search", content=query, end=end)
