"""Trainer callbacks that bring rollout metrics into TRL's logs, and the two helpers every
callback of this package uses to read and add logged values."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

__all__ = ["RolloutMetricsCallback", "log_number", "record_log"]


def log_number(logs: dict | None, key: str) -> float | None:
    """The logged value ``key`` as a float, or ``None`` when it is absent or not a number."""
    value = (logs or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def record_log(state: Any, logs: dict | None, values: dict[str, float]) -> None:
    """Add ``values`` to this log entry (the reporters after the caller see them) and to the
    history entry the trainer has just appended (summaries, plots and checkpoints see them)."""
    if logs is not None:
        logs.update(values)
    if state.log_history and state.log_history[-1].get("step") == state.global_step:
        state.log_history[-1].update(values)


class RolloutMetricsCallback(TrainerCallback):
    """Adds the rollout's metrics (searches, turns, masked fraction, timings) to each log entry.

    It must run before the reporting callbacks, so ``build_trainer`` puts it first.
    """

    def __init__(self, rollout) -> None:
        self.rollout = rollout

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = self.rollout.pop_metrics()
        if logs is None or not metrics:
            return
        record_log(state, logs, metrics)
