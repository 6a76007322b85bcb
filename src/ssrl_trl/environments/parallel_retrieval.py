"""ParallelSearch: one search action holds several queries, all answered in one retriever call.

The model writes ``<search> q1 ## q2 ## q3 </search>`` (the separator is the tag set's
``query_separator``); the action is split into distinct queries (:mod:`ssrl_trl.parallel_queries`
says what happens to empty, repeated and surplus ones). Every query of every episode waiting for a
reply goes to the retriever in **one** ``search`` call (repeated queries across episodes are
searched once), and each episode gets one information block with its documents grouped per query::

    <information>Query 1: q1
    Doc 1(Title: "...") ...
    Query 2: q2
    Doc 1(Title: "...") ...</information>

The block is cut to the observation budget fairly across queries: every ``Query n:`` header is
kept, and the documents share the rest in max-min fair token shares
(:func:`~ssrl_trl.parallel_queries.fair_shares`), so a long first result cannot crowd out the
others; the closing tag always survives. Retriever failures, corrective messages and stop
strings are those of :class:`~ssrl_trl.environments.retrieval.RetrievalEnv`. (Under the
independent schedule the engine asks each episode's reply on its own; the queries of one action
still go in one call.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from ..parallel_queries import fair_shares, join_queries, split_queries
from ..protocol import SEARCH_R1, Action, TagSet, parse_action
from ..retrieval.base import Doc, Retriever
from ..retrieval.factory import RetrieverSpec
from .base import Observation
from .registry import EnvironmentOptions, EnvironmentParts, register_environment
from .retrieval import RetrievalEnv

__all__ = ["ParallelRetrievalEnv", "ParallelRetrievalOptions", "ParallelSearchAction"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelSearchAction(Action):
    """A search whose ``content`` is the canonical ``q1 ## q2`` text of its distinct queries;
    ``over_cap`` counts the distinct queries beyond ``max_queries`` that were dropped."""

    over_cap: int = 0


class ParallelRetrievalEnv(RetrievalEnv):
    """Replies to a search of several queries with their top-``topk`` documents, grouped per query."""

    def __init__(
        self,
        retriever: Retriever,
        tokenizer: Any,
        tags: TagSet = SEARCH_R1,
        *,
        topk: int = 3,
        max_queries: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(retriever, tokenizer, tags, topk=topk, **kwargs)
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.max_queries = max_queries

    def parse(self, turn_text: str) -> Action:
        """The turn's action; a search is split into its distinct queries (none left: invalid)."""
        action = parse_action(turn_text, self.tags)
        if action.kind != "search":
            return action
        split = split_queries(action.content, self.tags.query_separator, self.max_queries)
        if not split.queries:
            return Action("invalid", error="empty search query", end=action.end)
        content = join_queries(split.queries, self.tags.query_separator)
        return ParallelSearchAction("search", content, end=action.end, over_cap=split.over_cap)

    def queries(self, action: Action) -> tuple[str, ...]:
        """The distinct queries of a search action (at most ``max_queries``)."""
        return split_queries(action.content, self.tags.query_separator, self.max_queries).queries

    def respond(self, actions: list[Action], budgets: list[int]) -> list[Observation | None]:
        """Grouped documents for the searches (one retriever call for all), corrections for the rest."""
        replies: list[Observation | None] = [None] * len(actions)
        searches = [i for i, a in enumerate(actions) if a.kind == "search"]
        per_action = [self.queries(actions[i]) for i in searches]
        found = self._search_all(per_action) if searches else []
        for n, i in enumerate(searches):
            if isinstance(found, str):
                replies[i] = self._error(found, budgets[i])
                continue
            over_cap = getattr(actions[i], "over_cap", 0)
            replies[i] = self._grouped(per_action[n], found[n], over_cap, budgets[i])
        for i, action in enumerate(actions):
            if action.kind != "search":
                replies[i] = self._correction(action, budgets[i])
        return replies

    def _search_all(self, per_action: list[tuple[str, ...]]) -> list[list[list[Doc]]] | str:
        """Each action's documents per query, from one retriever call over the distinct queries of
        all actions; the error message instead when the retriever fails (counted, as in
        :class:`RetrievalEnv`, and fatal after ``max_consecutive_failures`` in a row)."""
        unique = list(dict.fromkeys(q for queries in per_action for q in queries))
        results = self._search(unique)
        if isinstance(results, str):
            return results
        by_query = {q: list(docs)[: self.topk] for q, docs in zip(unique, results, strict=True)}
        return [[by_query[q] for q in queries] for queries in per_action]

    def _grouped(
        self, queries: Sequence[str], docs: Sequence[Sequence[Doc]], over_cap: int, budget: int
    ) -> Observation | None:
        """One information block, a section per query (header, then documents), tokenised piecewise
        like :func:`~ssrl_trl.environments.base.encode_observation` so the tags are never cut.

        Every header is kept whole when the headers fit, and the documents share what is left
        (max-min fair); otherwise the headers share the room. ``None`` when not even the empty
        block fits (the engine then ends the episode)."""
        prefix, suffix = self.tags.observation_wrap()
        pre = self.tokenizer.encode(prefix, add_special_tokens=False)
        suf = self.tokenizer.encode(suffix, add_special_tokens=False)
        room = budget - len(pre) - len(suf)
        if room < 0:
            return None
        sections = [self._section(j, q, d) for j, (q, d) in enumerate(zip(queries, docs, strict=True), 1)]
        if over_cap:
            many = "query was" if over_cap == 1 else "queries were"
            note = f"\n({over_cap} more {many} not searched: at most {self.max_queries} per search.)"
            sections.append((note, ""))
        heads = [self.tokenizer.encode(h, add_special_tokens=False) for h, _ in sections]
        bodies = [self.tokenizer.encode(b, add_special_tokens=False) if b else [] for _, b in sections]
        head_room = sum(len(h) for h in heads)
        if room >= head_room:
            shares = fair_shares([len(b) for b in bodies], room - head_room)
            kept = [(h, b[:n]) for h, b, n in zip(heads, bodies, shares, strict=True)]
        else:
            shares = fair_shares([len(h) for h in heads], room)
            kept = [(h[:n], []) for h, n in zip(heads, shares, strict=True)]
        pieces = [p for pair in kept for p in pair if p]
        text = prefix + "".join(self.tokenizer.decode(p) for p in pieces) + suffix
        obs = Observation("observation", pre + [t for p in pieces for t in p] + suf, text)
        obs.doc_ids = [d.id for group in docs for d in group]
        return obs

    def _section(self, number: int, query: str, docs: Sequence[Doc]) -> tuple[str, str]:
        """``Query n: text`` (on a new line after the first) and the query's documents in the tag
        set's style, numbered from 1; the query is echoed without any tag of the tag set, so it
        cannot open or close a block inside the reply."""
        for tag in (t for pair in self.tags.pairs().values() for t in pair):
            query = query.replace(tag, " ")
        before = "" if number == 1 else "\n"
        header = f"{before}Query {number}: {' '.join(query.split())}\n"
        return header, self.tags.documents.render(docs) if docs else "(no documents found)"


class ParallelRetrievalOptions(EnvironmentOptions):
    """``environment: {kind: parallel_retrieval, ...}``; the separator is the tag set's
    ``query_separator``, so the prompt, this environment and the rewards agree on it."""

    topk: int = Field(3, ge=1, le=50, description="documents per query")
    max_queries: int = Field(
        4, ge=1, le=16, description="distinct queries searched per action; the reply names any dropped"
    )
    retriever: RetrieverSpec | None = None
    max_consecutive_failures: int = Field(
        20, ge=1, description="retriever failures in a row that stop the run"
    )

    @model_validator(mode="after")
    def _needs_retriever(self) -> ParallelRetrievalOptions:
        if self.retriever is None:
            raise ValueError("environment kind 'parallel_retrieval' needs a retriever section")
        return self


def build_parallel_retrieval(
    options: ParallelRetrievalOptions, parts: EnvironmentParts
) -> ParallelRetrievalEnv:
    """The environment a recipe's ``parallel_retrieval`` section describes (opens its retriever)."""
    return ParallelRetrievalEnv(
        options.retriever.build(parts.resolve),  # type: ignore[union-attr]
        parts.tokenizer,
        parts.tags,
        topk=options.topk,
        max_queries=options.max_queries,
        max_consecutive_failures=options.max_consecutive_failures,
    )


register_environment("parallel_retrieval", ParallelRetrievalOptions, build_parallel_retrieval)
