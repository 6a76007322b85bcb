"""Trainer callbacks that bring rollout metrics into TRL's logs, and the two helpers every
callback of this package uses to read and add logged values."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

__all__ = ["RolloutMetricsCallback", "TrainingProgressCallback", "log_number", "record_log"]


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


class TrainingProgressCallback(TrainerCallback):
    """Tells the run's environment, and the retriever inside it, which step is about to run.

    Parts whose behaviour follows a schedule over training (the simulated search engine's noise
    curriculum, :mod:`ssrl_trl.retrieval.simulated`) learn the step here, through the public
    callback API, instead of reading trainer internals. A part opts in with
    ``set_training_progress(step, max_steps)`` (``step`` is ``None`` once training ends) and may
    offer ``training_metrics() -> dict[str, float]`` for the logs. The environment is the
    rollout's own (built on first use with the trainer's tokenizer), so the part told is the one
    that answers the rollouts.
    """

    def __init__(self, rollout) -> None:
        self.rollout = rollout

    def _parts(self, processing_class: Any) -> list[Any]:
        if processing_class is None:
            return []
        env = self.rollout.environment(getattr(processing_class, "tokenizer", processing_class))
        return [env, getattr(env, "retriever", None)]

    def _tell(self, step: int | None, max_steps: int | None, processing_class: Any) -> None:
        for part in self._parts(processing_class):
            setter = getattr(part, "set_training_progress", None)
            if callable(setter):
                setter(step, max_steps)

    def on_step_begin(self, args, state, control, processing_class=None, **kwargs):
        self._tell(state.global_step, state.max_steps or None, processing_class)

    def on_train_end(self, args, state, control, processing_class=None, **kwargs):
        self._tell(None, None, processing_class)

    def on_log(self, args, state, control, logs=None, processing_class=None, **kwargs):
        values: dict[str, float] = {}
        for part in self._parts(processing_class):
            metrics = getattr(part, "training_metrics", None)
            if callable(metrics):
                values.update(metrics())
        if values:
            record_log(state, logs, values)
