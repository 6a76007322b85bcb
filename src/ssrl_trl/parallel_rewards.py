"""ParallelSearch's reward: exact match, plus a bonus when a correct answer came from a
decomposed search.

ParallelSearch (Zhao et al., 2025) rewards the model for splitting a question into independent
queries searched together, but only in service of the answer. Here:

``reward = EM + bonus · [EM = 1 and some search action held ≥ min_queries distinct queries]``

so a correct answer found with one decomposed search (``<search> a ## b </search>``) scores
``1 + bonus`` (``1.2`` by default), a correct answer without one ``1``, and a wrong answer ``0``
however many queries it asked: decomposition alone is never rewarded, so the model cannot farm
the bonus with padded or repeated queries. Distinct means different up to case and whitespace
(``a ## A`` is one query); paraphrases count as distinct, which the EM gate keeps harmless.

The queries come from the rollout (``queries``: each search action's canonical text, already
split and capped by the ``parallel_retrieval`` environment), else from the completion's search
blocks split with the tag set's ``query_separator``.
"""

from __future__ import annotations

from .parallel_queries import split_queries
from .protocol import find_spans
from .rewards import _Reward
from .scoring import em

__all__ = ["ParallelSearchReward", "widest_search"]


def widest_search(searches: list[str], separator: str) -> int:
    """The most distinct queries any one search action held (0 without a search).

    >>> widest_search(["who wrote dune", "dune author ## dune year ## DUNE year"], "##")
    2
    """
    return max((len(split_queries(s, separator).queries) for s in searches), default=0)


class ParallelSearchReward(_Reward):
    """``EM + bonus`` for a correct answer from a search of ``min_queries`` or more distinct
    queries, ``EM`` otherwise (see the module docstring). Logs ``em``, ``decomposed`` (fraction of
    completions with such a search) and ``width`` (mean widest search)."""

    __name__ = "parallel_search"

    def __init__(self, bonus: float = 0.2, min_queries: int = 2, **kw) -> None:
        super().__init__(**kw)
        if bonus < 0:
            raise ValueError(f"bonus must be >= 0 (decomposition is rewarded, never required), got {bonus}")
        if min_queries < 2:
            raise ValueError(
                f"min_queries must be >= 2 (one query is not a decomposition), got {min_queries}"
            )
        self.bonus, self.min_queries = bonus, min_queries

    def _searches(self, kwargs: dict, texts: list[str]) -> list[list[str]]:
        """Each completion's search actions: the rollout's, else the text's search blocks."""
        given = kwargs.get("queries")
        if given is not None and len(given) == len(texts):
            return [[str(q) for q in row] for row in given]
        return [[span.content(t) for span in find_spans(t, self.tags.search)] for t in texts]

    def score(self, texts: list[str], kwargs: dict) -> list[float]:
        golden = self._golden(kwargs, len(texts))
        ems = [em(a, g) for a, g in zip(self._answers(kwargs, texts), golden, strict=True)]
        sep = self.tags.query_separator
        widths = [widest_search(s, sep) for s in self._searches(kwargs, texts)]
        decomposed = [float(w >= self.min_queries) for w in widths]
        self._log(kwargs, em=ems, decomposed=decomposed, width=[float(w) for w in widths])
        return [e + self.bonus * d * (e == 1.0) for e, d in zip(ems, decomposed, strict=True)]
