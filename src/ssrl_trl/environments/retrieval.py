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
from typing import Any, Literal

from ..protocol import SEARCH_R1, Action, TagSet, parse_action
from ..retrieval.base import Doc, Retriever, RetrieverError
from .base import Observation, encode_observation

__all__ = ["RetrievalEnv", "RetrieverUnavailable", "format_docs"]

logger = logging.getLogger(__name__)

DocStyle = Literal["search_r1", "r1_searcher"]


class RetrieverUnavailable(RuntimeError):
    """The retriever failed for too many consecutive calls: stop instead of training on errors."""


def format_docs(docs: list[Doc], style: DocStyle) -> str:
    """Search-R1: ``Doc 1(Title: "t") text`` lines. R1-Searcher: ``(1) title\\ntext`` paragraphs."""
    if style == "search_r1":
        return "\n".join(f'Doc {i}(Title: "{d.title}") {d.text}' for i, d in enumerate(docs, 1))
    return "\n".join(f"({i}) {d.title}\n{d.text}" for i, d in enumerate(docs, 1))


class RetrievalEnv:
    answers_searches = True

    def __init__(
        self,
        retriever: Retriever,
        tokenizer: Any,
        tags: TagSet = SEARCH_R1,
        *,
        topk: int = 3,
        doc_style: DocStyle | None = None,
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
        self.doc_style: DocStyle = doc_style or ("r1_searcher" if tags.name == "r1_searcher" else "search_r1")
        self.max_consecutive_failures = max_consecutive_failures
        self.retriever_exceptions = retriever_exceptions
        self.consecutive_failures = 0
        self.total_failures = 0

    def stop_strings(self, last_turn: bool) -> list[str]:
        # Every turn, the last included, ends at the first closing search tag (Search-R1's loop): a
        # last turn that searches ends without an answer instead of letting the model write its own
        # documents and an answer the retriever never backed.
        return self.tags.stop_on_search

    def parse(self, turn_text: str) -> Action:
        return parse_action(turn_text, self.tags)

    def _wrap(self) -> tuple[str, str]:
        opening, closing = self.tags.information
        if self.doc_style == "search_r1":
            return f"\n\n{opening}", f"{closing}\n\n"
        return f"\n{opening}\n", f"\n{closing}\n"

    def observe(self, actions: list[Action], budgets: list[int]) -> list[Observation]:
        queries = [a.content for a in actions]
        try:
            results = self.retriever.search(queries, self.topk)
            if len(results) != len(queries):
                raise RetrieverError(
                    f"retriever returned {len(results)} result lists for {len(queries)} queries"
                )
        except self.retriever_exceptions as exc:
            self.consecutive_failures += 1
            self.total_failures += 1
            logger.warning("retrieval failed (%d in a row): %s", self.consecutive_failures, exc)
            if self.consecutive_failures >= self.max_consecutive_failures:
                raise RetrieverUnavailable(
                    f"the retriever failed {self.consecutive_failures} times in a row (last error: {exc}); "
                    "is the retrieval server up? Stopping rather than training on error messages."
                ) from exc
            return [self._error(str(exc), b) for b in budgets]
        self.consecutive_failures = 0
        prefix, suffix = self._wrap()
        out = []
        for docs, budget in zip(results, budgets, strict=True):
            docs = list(docs)[: self.topk]
            obs = encode_observation(
                self.tokenizer, prefix, format_docs(docs, self.doc_style), suffix, budget
            )
            if obs is not None:
                obs.doc_ids = [d.id for d in docs]
            out.append(obs)
        return out  # type: ignore[return-value]

    def _error(self, message: str, budget: int) -> Observation | None:
        prefix, suffix = self._wrap()
        body = f"Search failed ({message[:200]}). No documents; continue with what you know."
        return encode_observation(self.tokenizer, prefix, body, suffix, budget, kind="error")

    def correction(self, action: Action, budget: int) -> Observation | None:
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

    def on_model_turn(self, traj, start: int, texts) -> None:
        return None
