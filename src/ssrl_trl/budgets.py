"""Token and turn budgets of one episode: the one definition, read by the recipe and the engine.

A recipe's ``budgets:`` section is validated into :class:`Budgets` and handed to the rollout
engine as is; the limits live here once, so a value the recipe accepts is one the engine runs.
The completion cap is the exception: a recipe sets it once, as TRL's
``grpo.max_completion_length``, and the assembly copies it into ``max_completion_tokens``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Budgets"]


class Budgets(BaseModel):
    """Budgets of one episode (Search-R1 defaults: ~500 tokens a turn, top-3 documents cut to
    ~500 tokens, a few searches).

    ``max_completion_tokens`` is a hard cap on the whole completion (TRL's
    ``max_completion_length``); an observation is only inserted if at least
    ``answer_reserve_tokens`` remain after it, so the model always has room to answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(4, ge=1, description="model turns (a search and its reply end a turn)")
    max_tokens_per_turn: int = Field(500, ge=1, description="tokens the model may write in one turn")
    max_obs_tokens: int = Field(500, ge=0, description="tokens of one inserted observation (tags kept)")
    max_completion_tokens: int = Field(
        2048, ge=1, description="all completion tokens; set through grpo.max_completion_length in a recipe"
    )
    answer_reserve_tokens: int = Field(32, ge=0, description="room kept free to answer after an observation")
