"""Training-health guards, as TRL/transformers ``TrainerCallback``s, on by default.

``build_health_callbacks(config)`` reads the recipe's ``health:`` mapping; every guard can be
configured or switched off there.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

__all__ = ["NaNGuard", "build_health_callbacks"]


class NaNGuard(TrainerCallback):
    """Stop with a clear message and a final checkpoint when loss or grad norm is NaN/inf."""

    def __init__(self, keys: tuple[str, ...] = ("loss", "grad_norm")) -> None:
        self.keys = keys
        self.tripped: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.keys:
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                self.tripped = f"{key} is {value} at step {state.global_step}"
                print(f"[ssrl-trl health] stopping: {self.tripped}; saving a final checkpoint", flush=True)
                control.should_save = True
                control.should_training_stop = True
        return control


def build_health_callbacks(config: dict[str, Any]) -> list[TrainerCallback]:
    allowed = {"nan_guard"}
    unknown = set(config) - allowed
    if unknown:
        raise ValueError(f"unknown health options {sorted(unknown)}; allowed: {sorted(allowed)}")
    callbacks: list[TrainerCallback] = []
    if config.get("nan_guard", True):
        callbacks.append(NaNGuard())
    return callbacks
