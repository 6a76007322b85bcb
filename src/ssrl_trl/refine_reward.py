"""AutoRefine's reward: the outcome, plus partial credit when a refine note found the answer.

Exact match alone is zero for every sample of a group until the model answers right, which leaves
GRPO with nothing to compare. AutoRefine (Shi et al., 2025) adds a retrieval-specific term: did
the model's own refine notes (:func:`~ssrl_trl.refine_format.refine_blocks`) pick the gold answer
out of the documents it read? That rewards the step the method adds, distilling evidence, even
when the final answer is still wrong. The combination, with the defaults:

=====================================  =====================================================
the episode                            reward (``combine="fallback"``, AutoRefine's)
=====================================  =====================================================
no answer (cut by a budget, or none)   0
right answer (EM 1)                    1.0
wrong answer, gold in a refine note    ``refine_weight`` = 0.1
wrong answer, gold in no refine note   0 (+ ``format_weight`` when the format holds; 0 by default)
=====================================  =====================================================

``combine="sum"`` adds the terms instead (``outcome + refine_weight * hit + format_weight *
format``), so a right answer found through a refine note scores 1.1. Fallback keeps the outcome
the whole reward whenever it is earned, so the refine term can never outweigh being right and a
note stuffed with candidate answers is worth at most ``refine_weight``. ``outcome="f1"`` scores
the answer with token F1 as the AutoRefine code does; EM is the default here, the metric every
other method of this package trains on and evaluation reports.

The answer is the one the rollout engine parsed from the model's final turn (rollout extra
``final_answer``, :meth:`ssrl_trl.rewards._Reward._answers`); the refine notes are read from the
completion with inserted documents skipped, so only model-written text earns the refine term.
"""

from __future__ import annotations

import math
from typing import Any

from .protocol import AUTOREFINE, TagSet
from .refine_format import refine_blocks
from .rewards import _Reward
from .scoring import cover_em, em, f1

__all__ = ["AutoRefineReward", "refine_hit"]

_OUTCOMES = {"em": em, "f1": f1}
_COMBINES = ("fallback", "sum")


def refine_hit(text: str, golden: Any, tags: TagSet = AUTOREFINE) -> float:
    """1.0 when a golden answer appears (cover-EM: normalised substring, as evaluation scores it)
    in one of the model's refine notes of ``text``, else 0.0. Notes are checked one by one, so two
    notes never join into an answer neither holds.

    >>> refine_hit("<search>q</search><information>Doc 1 Paris.</information>"
    ...            "<refine>The capital is Paris.</refine><answer>Lyon</answer>", ["paris"])
    1.0
    """
    return float(any(cover_em(note, golden) for note in refine_blocks(text, tags)))


def _require_refine(tags: TagSet) -> None:
    """A tag set without a refine pair gives no notes: refuse it instead of scoring a silent 0."""
    if tags.refine is None:
        raise ValueError(
            f"the autorefine reward needs a tag set with a refine pair; {tags.name!r} has none "
            "(use tags: autorefine, or give the mapping refine: [open, close])"
        )


class AutoRefineReward(_Reward):
    """AutoRefine's outcome + refine reward (see the module docstring for the combination).

    ``refine_weight`` and ``format_weight`` are the partial credits, ``outcome`` is ``"em"`` or
    ``"f1"``, ``combine`` is ``"fallback"`` (AutoRefine's: partial credit only for a wrong answer)
    or ``"sum"``. Logs ``<name>/em`` (or ``f1``), ``refine`` (hit rate), ``refines`` (notes per
    completion), ``format`` and ``searches``.
    """

    __name__ = "autorefine"

    def __init__(
        self,
        refine_weight: float = 0.1,
        format_weight: float = 0.0,
        outcome: str = "em",
        combine: str = "fallback",
        **kw: Any,
    ) -> None:
        kw.setdefault("tags", AUTOREFINE)
        super().__init__(**kw)
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(_OUTCOMES)}, got {outcome!r}")
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {list(_COMBINES)}, got {combine!r}")
        for name, value in (("refine_weight", refine_weight), ("format_weight", format_weight)):
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        _require_refine(self.tags)
        self.refine_weight, self.format_weight = float(refine_weight), float(format_weight)
        self.outcome, self.combine = outcome, combine

    def with_tags(self, tags: TagSet | str | dict) -> AutoRefineReward:
        clone = super().with_tags(tags)
        _require_refine(clone.tags)
        return clone  # type: ignore[return-value]

    def score(self, texts: list[str], kwargs: dict) -> list[float]:
        golden = self._golden(kwargs, len(texts))
        answers = self._answers(kwargs, texts)
        metric = _OUTCOMES[self.outcome]
        outcomes = [metric(a, g) for a, g in zip(answers, golden, strict=True)]
        hits = [refine_hit(t, g, self.tags) for t, g in zip(texts, golden, strict=True)]
        fmts = [self.tags.format_score(t) for t in texts]
        self._log(
            kwargs,
            **{self.outcome: outcomes},
            refine=hits,
            refines=[float(len(refine_blocks(t, self.tags))) for t in texts],
            format=fmts,
            searches=[float(n) for n in self._num_searches(kwargs, texts)],
        )
        return [
            self._combine(a is not None, o, h, f)
            for a, o, h, f in zip(answers, outcomes, hits, fmts, strict=True)
        ]

    def _combine(self, answered: bool, outcome: float, hit: float, fmt: float) -> float:
        """One completion's reward from its terms: nothing without an answer (AutoRefine's rule:
        notes alone do not pay for a trajectory the budget cut off), else fallback or sum."""
        if not answered:
            return 0.0
        partial = self.refine_weight * hit + self.format_weight * fmt
        if self.combine == "sum":
            return outcome + partial
        return outcome if outcome > 0 else partial
