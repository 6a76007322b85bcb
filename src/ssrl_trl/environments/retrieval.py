"""Search-R1 / R1-Searcher: a retriever answers each ``<search>``.

Generation pauses at the closing search tag; the queries of all paused episodes go to the
retriever in one batched call; each reply is inserted as an information block (tokenised on its
own, masked, documents cut to the observation budget, tags kept). A turn without a valid action
gets a short corrective message. A retriever failure is the world misbehaving, not a bug: the
episode gets a masked error observation and goes on; only a retriever that keeps failing stops
the run, with a message saying so.
"""

from __future__ import annotations

import logging
from typing import Any

from ..protocol import SEARCH_R1, Action, TagSet
from ..retrieval.base import Doc, Retriever, RetrieverError
from .base import Environment, Observation, encode_observation

__all__ = ["RetrievalEnv", "RetrieverUnavailable"]

logger = logging.getLogger(__name__)


class RetrieverUnavailable(RuntimeError):
    """The retriever failed for too many consecutive calls: stop instead of training on errors."""


class RetrievalEnv(Environment):
    """Replies to every search with the retriever's top-``topk`` documents, written in the tag
    set's document style, and to every invalid turn with a short corrective message."""

    def __init__(
        self,
        retriever: Retriever,
        tokenizer: Any,
        tags: TagSet = SEARCH_R1,
        *,
        topk: int = 3,
        max_consecutive_failures: int = 20,
        retriever_exceptions: tuple[type[BaseException], ...] = (
            RetrieverError,
            TimeoutError,
            ConnectionError,
        ),
    ) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.retriever, self.tokenizer, self.tags, self.topk = retriever, tokenizer, tags, topk
        self.max_consecutive_failures = max_consecutive_failures
        self.retriever_exceptions = retriever_exceptions
        self.consecutive_failures = 0

    def stop_strings(self, last_turn: bool) -> list[str]:
        # Every turn, the last included, ends at the first closing search tag (Search-R1's loop): a
        # last turn that searches ends without an answer instead of letting the model write its own
        # documents and an answer the retriever never backed.
        return self.tags.stop_on_search

    def replies_to(self, action: Action) -> bool:
        return action.kind != "answer"

    def respond(self, actions: list[Action], budgets: list[int]) -> list[Observation | None]:
        """Documents for the searches (one batched retriever call), corrections for the rest."""
        replies: list[Observation | None] = [None] * len(actions)
        searches = [i for i, a in enumerate(actions) if a.kind == "search"]
        if searches:
            found = self._documents([actions[i].content for i in searches], [budgets[i] for i in searches])
            for i, obs in zip(searches, found, strict=True):
                replies[i] = obs
        for i, action in enumerate(actions):
            if action.kind != "search":
                replies[i] = self._correction(action, budgets[i])
        return replies

    def _search(self, queries: list[str]) -> list[list[Doc]] | str:
        """The retriever's result list per query, or the error message when it fails: a failure
        is counted and becomes a masked message, fatal after ``max_consecutive_failures`` in a row
        (training on error messages teaches nothing)."""
        try:
            results = self.retriever.search(queries, self.topk)
            if len(results) != len(queries):
                raise RetrieverError(
                    f"retriever returned {len(results)} result lists for {len(queries)} queries"
                )
        except self.retriever_exceptions as exc:
            self.consecutive_failures += 1
            logger.warning("retrieval failed (%d in a row): %s", self.consecutive_failures, exc)
            if self.consecutive_failures >= self.max_consecutive_failures:
                raise RetrieverUnavailable(
                    f"the retriever failed {self.consecutive_failures} times in a row (last error: {exc}); "
                    "is the retrieval server up? Stopping rather than training on error messages."
                ) from exc
            return str(exc)
        self.consecutive_failures = 0
        return [list(docs) for docs in results]

    def _documents(self, queries: list[str], budgets: list[int]) -> list[Observation | None]:
        results = self._search(queries)
        if isinstance(results, str):
            return [self._error(results, b) for b in budgets]
        prefix, suffix = self.tags.observation_wrap()
        out: list[Observation | None] = []
        for docs, budget in zip(results, budgets, strict=True):
            docs = list(docs)[: self.topk]
            obs = encode_observation(self.tokenizer, prefix, self.tags.documents.render(docs), suffix, budget)
            if obs is not None:
                obs.doc_ids = [d.id for d in docs]
            out.append(obs)
        return out

    def _error(self, message: str, budget: int) -> Observation | None:
        prefix, suffix = self.tags.observation_wrap()
        body = f"Search failed ({message[:200]}). No documents; continue with what you know."
        return encode_observation(self.tokenizer, prefix, body, suffix, budget, kind="error")

    def _correction(self, action: Action, budget: int) -> Observation | None:
        # No literal tags here: the rewards read the decoded trajectory, and a message containing
        # "<answer> and </answer>" would itself parse as an answer ("and") and a format block.
        text = (
            f"\nThat turn had no valid action ({action.error}). To search, write a query inside the search "
            "tags and stop. To finish, write only the final answer inside the answer tags.\n"
        )
        return (
            encode_observation(self.tokenizer, "", text, "", budget, kind="correction")
            if budget > 0
            else None
        )
