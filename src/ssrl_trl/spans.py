"""Tagged blocks in text, found by plain substring search (linear time, never raises).

The bottom of the text layer: the tag sets (:mod:`.protocol`), the format checks
(:mod:`.formats`) and the environments locate blocks with :func:`find_spans`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Span", "find_spans"]


@dataclass(frozen=True)
class Span:
    """A tagged block: ``text[start:end]`` is the whole block including tags (if closed);
    ``text[inner_start:inner_end]`` is its content."""

    start: int
    end: int
    inner_start: int
    inner_end: int
    closed: bool

    def content(self, text: str) -> str:
        return text[self.inner_start : self.inner_end]


def find_spans(text: str, tags: tuple[str, str], *, include_unclosed: bool = False) -> list[Span]:
    """All blocks opened by ``tags[0]`` and closed by the next ``tags[1]``, left to right.

    Blocks may span many lines (the DOTALL bug of public self-search code cannot happen: this is
    substring search). A nested opening tag inside a block belongs to that block's content, so a
    span is never shorter than what the model wrote between the outermost open and the first close.
    A close without an open is ignored. With ``include_unclosed`` a trailing open block without a
    close is returned with ``closed=False`` running to the end of the text (used to mask a
    self-written information block cut off by the token budget).
    """
    if not isinstance(text, str):
        return []
    opening, closing = tags
    spans: list[Span] = []
    pos = 0
    while True:
        start = text.find(opening, pos)
        if start < 0:
            break
        inner_start = start + len(opening)
        close = text.find(closing, inner_start)
        if close < 0:
            if include_unclosed:
                spans.append(Span(start, len(text), inner_start, len(text), closed=False))
            break
        end = close + len(closing)
        spans.append(Span(start, end, inner_start, close, closed=True))
        pos = end
    return spans
