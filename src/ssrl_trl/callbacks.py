"""Trainer callbacks that bring rollout metrics into TRL's logs."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["RolloutMetricsCallback"]


class RolloutMetricsCallback(TrainerCallback):
    """Adds the rollout's metrics (searches, turns, masked fraction, timings) to each log entry.

    It must run before the reporting callbacks, so ``build_trainer`` puts it first; it also
    updates the log-history entry the trainer has just appended, so summaries and plots see it.
    """

    def __init__(self, rollout) -> None:
        self.rollout = rollout

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = self.rollout.pop_metrics()
        if logs is None or not metrics:
            return
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)
