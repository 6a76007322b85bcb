"""The environment interface the rollout engine drives.

The engine owns the loop and the budgets; an environment answers four questions about one
episode's newest model turn:

* where generation pauses (:meth:`Environment.stop_strings`);
* what the turn asked for (:meth:`Environment.parse`: a search, an answer, or invalid);
* whether it replies to that action (:meth:`Environment.replies_to`) and with what
  (:meth:`Environment.respond`, batched over every episode waiting for a reply);
* what the turn's own tokens mean for the loss (:meth:`Environment.on_model_turn`, e.g. SSRL
  masks the information the model wrote itself).

An episode is done when the model answers or a budget runs out; an action the environment does
not reply to ends it as well (single-pass self-search). Inserted text is tokenised on its own and
appended, never merged with model tokens, so the mask is exact. A new environment subclasses
:class:`Environment`, overrides what differs, and registers its kind
(:mod:`ssrl_trl.environments.registry`).
"""

from __future__ import annotations

from typing import Any

from ..detok import TokenTexts
from ..protocol import SEARCH_R1, Action, TagSet, parse_action
from ..trajectory import Observation, Trajectory

__all__ = ["Environment", "Observation", "encode_observation"]


class Environment:
    """Defaults: pause after a search or an answer, parse with the tag set, reply to nothing."""

    tags: TagSet = SEARCH_R1

    def stop_strings(self, last_turn: bool) -> list[str]:
        """Strings that end a model turn (``last_turn``: no reply can follow this one)."""
        return self.tags.stop_on_search

    def parse(self, turn_text: str) -> Action:
        """The action of the model text written since the last reply."""
        return parse_action(turn_text, self.tags)

    def replies_to(self, action: Action) -> bool:
        """Whether the episode waits for :meth:`respond` after ``action`` (an answer never does)."""
        return False

    def respond(self, actions: list[Action], budgets: list[int]) -> list[Observation | None]:
        """One reply per action (each at most ``budgets[i]`` tokens), or ``None`` where not even an
        empty reply fits: that episode ends. Called only for actions :meth:`replies_to` accepts."""
        raise NotImplementedError(f"{type(self).__name__} replies to an action but has no respond()")

    def on_model_turn(self, traj: Trajectory, start: int, texts: TokenTexts) -> None:
        """Hook after a model turn: ``texts`` covers tokens ``[start, len)``, all model text since
        the last reply (a tag split across turns included)."""
        return None


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
