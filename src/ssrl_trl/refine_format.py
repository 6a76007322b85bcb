"""AutoRefine's grammar ("search and refine during think"): a refine step after every search result.

AutoRefine (Shi et al., 2025) makes the model distil each retrieved information block into a
short ``<refine> ... </refine>`` note before it reasons on, searches again or answers:

    think (search information refine think?)* answer

This module holds what the tag set, the rewards and evaluation need to read that grammar:

* :func:`autorefine_format_score`: 1.0 when a completion follows the sequence above, else 0.0
  (the score of the ``autorefine`` :class:`~ssrl_trl.formats.FormatCheck`);
* :func:`refine_blocks`: the refine notes the *model* wrote after reading documents, which the
  AutoRefine reward (:mod:`ssrl_trl.refine_reward`) checks for the gold answer.

Both read the tag set (renamed tags work) and never raise on model output. A tag set without a
refine pair has no refine grammar: its completions score 0 and hold no refine notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spans import find_spans

if TYPE_CHECKING:
    from .protocol import TagSet

__all__ = ["autorefine_format_score", "autorefine_format_valid", "refine_blocks"]


def _allowed_after(tags: TagSet) -> dict[str, set[str]]:
    """The block kinds that may follow each kind. An information block must be refined before
    anything else, and a refine note may lead to more thought, another search or the answer."""
    return {
        "start": {"think"} if tags.think else {"search", "answer"},
        "think": {"search", "answer"},
        "search": {"information"},
        "information": {"refine"},
        "refine": {"think", "search", "answer"},
        "answer": set(),
    }


def autorefine_format_valid(text: str, tags: TagSet) -> bool:
    """Whether ``text`` follows ``think (search information refine think?)* answer``.

    Only whitespace may stand between blocks and after the answer. Blocks the model writes (all
    but information) may not contain another block's opening tag, and a refine note must say
    something: an empty note distils nothing, so it does not count as the refine step.

    >>> from ssrl_trl.protocol import AUTOREFINE
    >>> autorefine_format_valid("<think>x</think><search>q</search><information>d</information>"
    ...     "<refine>d says a</refine><answer>a</answer>", AUTOREFINE)
    True
    >>> autorefine_format_valid("<think>x</think><search>q</search><information>d</information>"
    ...     "<answer>a</answer>", AUTOREFINE)
    False
    """
    if not isinstance(text, str) or tags.refine is None:
        return False
    from .formats import follows_grammar  # formats imports this module for its FORMAT_CHECKS entry

    return follows_grammar(text, tags, _allowed_after(tags), non_empty=frozenset({"refine"}))


def autorefine_format_score(text: str, tags: TagSet) -> float:
    """:func:`autorefine_format_valid` as a score in {0.0, 1.0} (what a ``FormatCheck`` returns)."""
    return float(autorefine_format_valid(text, tags))


def refine_blocks(text: str, tags: TagSet) -> list[str]:
    """The contents of the refine notes the model wrote after it had read documents, in order.

    Information blocks are skipped first (their text was inserted, and a retrieved passage that
    happens to contain refine tags is not the model's note), and a note written before the first
    information block is left out: it distils nothing the model read, and crediting it would pay
    the model for guessing inside refine tags.

    >>> from ssrl_trl.protocol import AUTOREFINE
    >>> refine_blocks("<refine>guess</refine><search>q</search><information>d <refine>x</refine>"
    ...     "</information><refine> d says Paris </refine><answer>Paris</answer>", AUTOREFINE)
    ['d says Paris']
    """
    if not isinstance(text, str) or tags.refine is None:
        return []
    information = find_spans(text, tags.information)
    if not information:
        return []
    notes: list[str] = []
    for i, info in enumerate(information):
        stop = information[i + 1].start if i + 1 < len(information) else len(text)
        between = text[info.end : stop]
        notes.extend(span.content(between).strip() for span in find_spans(between, tags.refine))
    return notes
