"""Evaluation: benchmark EM / cover-EM / F1, pass@k, Sim2Real and hybrid self/real search.

An evaluation is the training rollout engine run over prompts with a training environment
(``RolloutEngine.run``), scored by :mod:`ssrl_trl.scoring`. ``ssrl-trl eval`` is the door
(:mod:`.cli`); the pieces are importable on their own:

* :mod:`.passk` — the unbiased pass@k estimator and the k grid;
* :mod:`.runner` — :class:`Arm` and :func:`run_arm` (chunked, resumable, seeded);
* :mod:`.signals` / :mod:`.hybrid` — uncertainty signals and the routing sweep;
* :mod:`.report` — tables (markdown, CSV, JSON) and plots (PNG).
"""

from __future__ import annotations

import importlib
from typing import Any

from .passk import k_grid, mean_pass_at_k, pass_at_k, pass_at_k_curve

__all__ = ["Arm", "k_grid", "mean_pass_at_k", "pass_at_k", "pass_at_k_curve", "run_arm"]

_LAZY = {"Arm": ".runner", "run_arm": ".runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
