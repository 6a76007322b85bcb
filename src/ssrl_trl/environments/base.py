"""The environment interface the rollout engine drives.

An environment owns three decisions: where generation pauses (stop strings), what the newest
turn asked for (parsing), and what is inserted in reply (observations, as token ids). Inserted
text is tokenised on its own and appended, never merged with model tokens, so the mask is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..protocol import Action, TagSet

if TYPE_CHECKING:
    from ..rollout.detok import TokenTexts
    from ..rollout.trajectory import Trajectory

__all__ = ["Environment", "Observation", "encode_observation"]


@dataclass
class Observation:
    """Tokens to insert after a model turn (always masked from the loss)."""

    kind: Literal["observation", "correction", "error"]
    ids: list[int]
    text: str
    doc_ids: list[str] = field(default_factory=list)


class Environment(Protocol):
    tags: TagSet
    #: Whether a search action pauses generation for a reply (False for single-pass self-search).
    answers_searches: bool

    def stop_strings(self, last_turn: bool) -> list[str]: ...

    def parse(self, turn_text: str) -> Action: ...

    def observe(self, actions: list[Action], budgets: list[int]) -> list[Observation]:
        """Replies to search actions, one per action, each at most ``budgets[i]`` tokens."""
        ...

    def correction(self, action: Action, budget: int) -> Observation | None:
        """Reply to an invalid turn, or ``None`` to end the episode."""
        ...

    def on_model_turn(self, traj: Trajectory, start: int, texts: TokenTexts) -> None:
        """Hook after a model turn of tokens ``[start, len)``; SSRL masks information here."""
        ...


def encode_observation(
    tokenizer: Any, prefix: str, body: str, suffix: str, budget: int, kind: str = "observation"
) -> Observation | None:
    """Tokenise ``prefix + body + suffix`` piecewise and cut the **body** to fit ``budget``
    tokens, so the closing tag always survives. ``None`` when even prefix+suffix do not fit."""
    pre = tokenizer.encode(prefix, add_special_tokens=False)
    suf = tokenizer.encode(suffix, add_special_tokens=False)
    room = budget - len(pre) - len(suf)
    if room < 0:
        return None
    body_ids = tokenizer.encode(body, add_special_tokens=False)[:room] if body else []
    ids = pre + body_ids + suf
    text = prefix + tokenizer.decode(body_ids) + suffix
    return Observation(kind, ids, text)  # type: ignore[arg-type]
