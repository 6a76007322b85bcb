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
from .base import Environment

__all__ = ["SelfSearchEnv"]


class SelfSearchEnv(Environment):
    """Replies to nothing: one pass until the answer, self-written information masked."""

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

    def on_model_turn(self, traj, start: int, texts) -> None:
        # The model answers its own searches: count them here, as a retriever would have.
        searches = find_spans(texts.text, self.tags.search)
        traj.num_searches = len(searches)
        traj.queries = [" ".join(sp.content(texts.text).split()) for sp in searches]
        # The hook sees all model text since the last reply, so the mask of that whole range is
        # recomputed: a block that was still open (or a closing tag only half written) at the end
        # of an earlier turn is judged again now that more text exists.
        masked = self._masked_tokens(texts)
        for i in range(len(texts.offsets)):
            if traj.is_model_token(start + i):
                traj.env_mask[start + i] = 0 if i in masked else 1

    def _masked_tokens(self, texts) -> set[int]:
        """Token indices (relative to the turn) inside a self-written information block.

        A token is masked when it contributes characters to the block (its tags too, with
        ``mask_tags``). Tokens whose own text is empty — the first bytes of a multi-byte character,
        credited to the token that completes it — belong with that completing token."""
        out: set[int] = set()
        offsets = texts.offsets
        for span in find_spans(texts.text, self.tags.information, include_unclosed=True):
            lo, hi = (span.start, span.end) if self.mask_tags else (span.inner_start, span.inner_end)
            if hi <= lo:
                continue
            pending: list[int] = []  # empty-text tokens waiting for the token that completes their character
            for i, (s, e) in enumerate(offsets):
                if s == e:
                    pending.append(i)
                    continue
                if s < hi and e > lo:  # the token overlaps the block
                    out.add(i)
                    out.update(pending)
                pending = []
        return out
