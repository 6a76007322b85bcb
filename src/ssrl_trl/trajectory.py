"""The data every layer shares: a trajectory (tokens, loss mask, what happened) and the
observations environments insert into it.

This module sits at the bottom of the import graph: environments, the rollout engine, evaluation
and rewards all read these types, and it imports nothing of theirs.

``completion_ids`` holds every token after the prompt (model turns and inserted observations),
``env_mask`` is 1 where the model sampled the token and the loss should see it, 0 where the
environment inserted it (retrieved documents, corrective messages) or where the method masks a
sampled span (SSRL's self-written information). ``logprobs`` holds the sampling log-prob of each
sampled token and 0.0 for inserted ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Observation", "Segment", "StopReason", "Trajectory", "TrajectoryError"]

StopReason = Literal[
    "answer",  # a complete answer block ended the episode
    "no_answer",  # the model ended (EOS) without answering and no turn was left to correct it
    "max_turns",  # the turn budget ran out before an answer
    "max_completion_tokens",  # the total token budget ran out
]

SegmentKind = Literal["prefix", "model", "observation", "correction", "error", "eos"]


class TrajectoryError(ValueError):
    """A trajectory violates the TRL contract (lengths, mask values): a bug, never model output."""


@dataclass
class Observation:
    """Tokens an environment inserts after a model turn (always masked from the loss).

    ``kind`` names the segment it becomes: retrieved documents (``observation``), a corrective
    message (``correction``) or a retrieval failure (``error``); ``doc_ids`` are the documents shown.
    """

    kind: Literal["observation", "correction", "error"]
    ids: list[int]
    text: str
    doc_ids: list[str] = field(default_factory=list)


@dataclass
class Segment:
    """A contiguous run of completion tokens from one source, ``[start, end)``."""

    kind: SegmentKind
    start: int
    end: int


@dataclass
class Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    turns: int = 0
    num_searches: int = 0
    queries: list[str] = field(default_factory=list)
    doc_ids: list[list[str]] = field(default_factory=list)
    invalid_actions: int = 0
    retriever_errors: int = 0
    observation_tokens: int = 0
    stop_reason: StopReason | None = None
    answer: str | None = None

    @property
    def truncated(self) -> bool:
        """Cut by a budget rather than ended by the model."""
        return self.stop_reason in ("max_turns", "max_completion_tokens")

    @property
    def masked_fraction(self) -> float:
        n = len(self.env_mask)
        return (n - sum(self.env_mask)) / n if n else 0.0

    def append(self, ids: list[int], kind: SegmentKind, logprobs: list[float] | None = None) -> None:
        """Append a run of tokens; model tokens get mask 1 and their log-probs, others mask 0."""
        if not ids:
            return
        start = len(self.completion_ids)
        self.completion_ids.extend(ids)
        if kind == "model":
            if logprobs is None or len(logprobs) != len(ids):
                raise TrajectoryError(
                    f"model segment of {len(ids)} tokens needs as many log-probs, got {logprobs}"
                )
            self.logprobs.extend(float(x) for x in logprobs)
            self.env_mask.extend([1] * len(ids))
        else:
            self.logprobs.extend([0.0] * len(ids))
            self.env_mask.extend([0] * len(ids))
        self.segments.append(Segment(kind, start, len(self.completion_ids)))

    def is_model_token(self, index: int) -> bool:
        """Whether completion token ``index`` was sampled by the model (not inserted)."""
        return any(seg.kind == "model" and seg.start <= index < seg.end for seg in self.segments)

    def mask_range(self, start: int, end: int) -> None:
        """Exclude already-appended sampled tokens ``[start, end)`` from the loss (SSRL information)."""
        for i in range(max(0, start), min(end, len(self.env_mask))):
            self.env_mask[i] = 0

    def validate(self, max_completion_tokens: int | None = None) -> None:
        """Raise :class:`TrajectoryError` unless the TRL contract holds."""
        n = len(self.completion_ids)
        if not (n == len(self.env_mask) == len(self.logprobs)):
            raise TrajectoryError(
                f"length mismatch: completion_ids={n} env_mask={len(self.env_mask)} logprobs={len(self.logprobs)}"
            )
        if any(m not in (0, 1) for m in self.env_mask):
            raise TrajectoryError("env_mask values must be 0 or 1")
        if max_completion_tokens is not None and n > max_completion_tokens:
            raise TrajectoryError(f"completion has {n} tokens, over the budget of {max_completion_tokens}")
        for seg in self.segments:
            if seg.kind != "model" and any(self.env_mask[seg.start : seg.end]):
                raise TrajectoryError(f"inserted {seg.kind} tokens [{seg.start}, {seg.end}) are not masked")
        covered = sum(seg.end - seg.start for seg in self.segments)
        if covered != n:
            raise TrajectoryError(f"segments cover {covered} of {n} tokens")

    def extras(self) -> dict:
        """Per-trajectory values handed to reward functions as keyword arguments."""
        return {
            # The answer the engine parsed from the model's own final turn: rewards score this one,
            # so training and evaluation agree (never an answer found inside inserted text).
            "final_answer": self.answer,
            "num_searches": self.num_searches,
            "queries": list(self.queries),
            "doc_ids": [list(d) for d in self.doc_ids],
            "turns": self.turns,
            "stop_reason": self.stop_reason,
            "truncated": self.truncated,
            "invalid_actions": self.invalid_actions,
            "retriever_errors": self.retriever_errors,
            "observation_tokens": self.observation_tokens,
            "masked_fraction": self.masked_fraction,
        }
