"""Several queries in one search action (ParallelSearch's ``<search> q1 ## q2 </search>``).

A question that needs independent facts ("Which was born first, A or B?") is answered faster
when the model asks for all of them at once instead of one search turn each. The tag set carries
the separator (``TagSet.query_separator``, ``##`` by default) so the prompt, the environment
(:mod:`ssrl_trl.environments.parallel_retrieval`) and the reward
(:mod:`ssrl_trl.parallel_rewards`) split a search the same way.

Splitting never raises on model output. What it does with odd input, in this order:

* every part is whitespace-collapsed; empty parts (``q1 ## ## q2``, a leading or trailing
  separator) are dropped;
* a repeated part (same text up to case and whitespace) is dropped, the first one kept: asking the
  same thing twice retrieves the same documents twice and is not a decomposition;
* the distinct parts beyond ``max_queries`` are dropped and counted (the environment says so in
  its reply), so one action cannot flood the retriever;
* no part left: the search is empty (the environment treats it as an invalid action).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SplitQueries", "fair_shares", "join_queries", "split_queries"]


@dataclass(frozen=True)
class SplitQueries:
    """The distinct queries of one search, in order, and what was dropped on the way."""

    queries: tuple[str, ...]
    empty: int = 0
    duplicates: int = 0
    over_cap: int = 0


def _key(query: str) -> str:
    """Two queries with the same key ask the same thing (case and spacing aside)."""
    return query.casefold()


def split_queries(content: str, separator: str, max_queries: int | None = None) -> SplitQueries:
    """The distinct non-empty queries of a search's content (see the module docstring).

    >>> split_queries("Paris ## ## paris ## Rome ## Oslo", "##", max_queries=2)
    SplitQueries(queries=('Paris', 'Rome'), empty=1, duplicates=1, over_cap=1)
    """
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    if not isinstance(content, str) or not separator:
        return SplitQueries(())
    kept: list[str] = []
    seen: set[str] = set()
    empty = duplicates = over_cap = 0
    for part in content.split(separator):
        query = " ".join(part.split())
        if not query:
            empty += 1
        elif _key(query) in seen:
            duplicates += 1
        elif max_queries is not None and len(kept) >= max_queries:
            over_cap += 1
        else:
            seen.add(_key(query))
            kept.append(query)
    return SplitQueries(tuple(kept), empty, duplicates, over_cap)


def join_queries(queries: Sequence[str], separator: str) -> str:
    """The canonical text of a parallel search (``q1 ## q2``): what a trajectory records, and what
    :func:`split_queries` reads back unchanged."""
    return f" {separator} ".join(queries)


def fair_shares(lengths: Sequence[int], room: int) -> list[int]:
    """Max-min fair token shares: how much of each section fits in ``room`` tokens.

    Sections that fit in an equal share keep everything and leave what they do not use to the
    others (water-filling), so a query with one short document does not waste budget that a
    query with long documents could show. With ``room >= len(lengths)`` every non-empty section
    keeps at least one token; the shares never exceed the lengths nor sum above ``room``.

    >>> fair_shares([5, 100, 100], 65)
    [5, 30, 30]
    """
    shares = [max(n, 0) for n in lengths]
    left = max(room, 0)
    order = sorted(range(len(lengths)), key=lambda i: (shares[i], i))
    for pos, i in enumerate(order):
        rest = order[pos:]
        share = left // len(rest)
        if shares[i] <= share:  # fits whole; what it leaves goes to the longer ones
            left -= shares[i]
            continue
        # Every section from here on is longer than an equal share: cut them all to it, and give
        # the division's remainder one token each to the first ones in reading order.
        extra = left - share * len(rest)
        for rank, j in enumerate(sorted(rest)):
            shares[j] = share + (rank < extra)
        break
    return shares
