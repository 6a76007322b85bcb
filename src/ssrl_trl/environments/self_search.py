"""SSRL self-search: the model is its own search engine.

In one generation pass the model writes ``<search>`` and then its own ``<information>`` block.
Those self-written tokens stay in the trajectory with their real log-probs but leave the loss:
the engine gives this environment each model turn with per-token character offsets, and it masks
every token that overlaps an information block (optionally including the tags). Multi-line
blocks, blocks cut off by the token budget and tags merged into one BPE token are all handled
on token offsets, never by re-tokenising text.
"""

from __future__ import annotations

from ..protocol import SSRL, Action, TagSet, extract_answer, find_spans
from .base import Observation

__all__ = ["SelfSearchEnv"]


class SelfSearchEnv:
    answers_searches = False

    def __init__(self, tags: TagSet = SSRL, *, mask_tags: bool = True) -> None:
        self.tags = tags
        self.mask_tags = mask_tags

    def stop_strings(self, last_turn: bool) -> list[str]:
        return self.tags.stop_on_answer

    def parse(self, turn_text: str) -> Action:
        answer = extract_answer(turn_text, self.tags)
        if answer is None:
            return Action("invalid", error="no complete answer block")
        return Action("answer", content=answer)

    def observe(self, actions: list[Action], budgets: list[int]) -> list[Observation]:
        raise RuntimeError("self-search inserts nothing; the engine must not ask it to observe")

    def correction(self, action: Action, budget: int) -> Observation | None:
        return None  # single pass: an answer-less generation ends the episode

    def on_model_turn(self, traj, start: int, texts) -> None:
        # The model answers its own searches: count them here, as a retriever would have.
        searches = find_spans(texts.text, self.tags.search)
        traj.num_searches = len(searches)
        traj.queries = [" ".join(sp.content(texts.text).split()) for sp in searches]
        for span in find_spans(texts.text, self.tags.information, include_unclosed=True):
            lo, hi = (span.start, span.end) if self.mask_tags else (span.inner_start, span.inner_end)
            if hi <= lo:
                continue
            for i, (s, e) in enumerate(texts.offsets):
                if s < hi and e > lo:  # the token overlaps the block
                    traj.mask_range(start + i, start + i + 1)
