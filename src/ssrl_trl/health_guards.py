"""The training-health guards: ``TrainerCallback``s that watch logged metrics.

:func:`ssrl_trl.health.build_health_callbacks` builds them from a recipe's ``health:`` section;
this module holds the guards themselves. An alarm is printed, sets ``health/<guard>`` to 1 in the
log entry, and (with ``stop: true``) ends the run with a final checkpoint. Non-finite loss or
gradients always stop the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from .callbacks import log_number, record_log

__all__ = [
    "DropGuard",
    "EntropyGuard",
    "HealthState",
    "KLGuard",
    "MetricGuard",
    "NaNGuard",
    "ThresholdGuard",
    "any_rank",
]

PREFIX = "[ssrl-trl health]"


@dataclass
class HealthState:
    """Shared by the guards of one run: which alarms are active, and whether the run has gone bad."""

    active: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    healthy: list[str] = field(default_factory=list)

    @property
    def is_healthy(self) -> bool:
        return not self.active and self.stopped is None

    def resume_hint(self) -> str:
        if not self.healthy:
            return "no healthy checkpoint kept yet"
        return f"resume from before the problem with --resume {self.healthy[-1]}"


def any_rank(flag: bool, device: Any = None) -> bool:
    """True on every rank if it is true on one (so all ranks stop together); local otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class NaNGuard(TrainerCallback):
    """Stop with a clear message and a final checkpoint when loss or grad norm is NaN/inf.

    transformers hides a non-finite loss from the logs (``logging_nan_inf_filter`` replaces it
    with the running mean), so with ``check_gradients`` the guard also looks at the gradients
    just before the optimizer step: if any is non-finite it drops them (the optimizer skips the
    poisoned update, so the final checkpoint holds the last finite weights) and stops. The
    logged ``loss`` and ``grad_norm`` are checked as well.
    """

    def __init__(
        self,
        keys: tuple[str, ...] = ("loss", "grad_norm"),
        check_gradients: bool = True,
        state: HealthState | None = None,
    ) -> None:
        self.keys, self.check_gradients = tuple(keys), check_gradients
        self.health = state or HealthState()
        self.tripped: str | None = None

    def _trip(self, message: str, state, control) -> None:
        if self.tripped is None:
            self.tripped = message
            self.health.stopped = message
            if state.is_world_process_zero:
                print(
                    f"{PREFIX} STOPPING: {message}. Saving a final checkpoint; {self.health.resume_hint()}. "
                    "Lower the learning rate, add warmup or clip gradients (docs/health.md).",
                    flush=True,
                )
        control.should_save = True
        control.should_training_stop = True

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.check_gradients or model is None:
            return
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = True
        if grads:
            norms = torch._foreach_norm(grads)  # one fused pass; NaN/inf anywhere shows in a norm
            finite = bool(torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all())
        if any_rank(not finite, grads[0].device if grads else None):
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
            self._trip(
                f"non-finite gradients at step {state.global_step + 1} (update skipped)", state, control
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.keys:
            value = log_number(logs, key)
            if value is not None and not math.isfinite(value):
                self._trip(f"{key} is {value} at step {state.global_step}", state, control)
        return control


class MetricGuard(TrainerCallback):
    """Base of the alarm guards: ``problem(logs)`` returns a description or None.

    An alarm needs ``patience`` consecutive problem logs; it is printed once when it starts,
    ``health/<name>`` is logged as 0/1 whenever the metric is present, and ``stop`` ends the run
    (with a checkpoint) instead of only warning.
    """

    name = "guard"

    def __init__(self, *, patience: int = 2, stop: bool = False, state: HealthState | None = None) -> None:
        if patience < 1:
            raise ValueError(f"health.{self.name}.patience must be >= 1, got {patience}")
        self.patience, self.stop = int(patience), bool(stop)
        self.health = state or HealthState()
        self.streak = 0
        self.alarms: list[tuple[int, str]] = []  # (step, message) of each alarm raised

    def problem(self, logs: dict) -> str | None | bool:
        """Description of what is wrong, None if healthy, False if the metric is absent."""
        raise NotImplementedError

    def on_log(self, args, state, control, logs=None, **kwargs):
        found = self.problem(logs or {})
        if found is False:
            return control
        self.streak = self.streak + 1 if found else 0
        alarming = self.streak >= self.patience
        if alarming and self.name not in self.health.active:
            message = f"{self.name}: {found} at step {state.global_step}"
            self.alarms.append((state.global_step, message))
            if state.is_world_process_zero:
                print(f"{PREFIX} ALARM {message}", flush=True)
        if alarming:
            self.health.active[self.name] = str(found)
        elif self.name in self.health.active:
            del self.health.active[self.name]
            if state.is_world_process_zero:
                print(f"{PREFIX} {self.name} back to normal at step {state.global_step}", flush=True)
        record_log(state, logs, {f"health/{self.name}": 1.0 if alarming else 0.0})
        if self.stop and any_rank(alarming):
            self.health.stopped = self.health.stopped or f"{self.name}: {found}"
            if state.is_world_process_zero:
                print(
                    f"{PREFIX} STOPPING on {self.name} (stop: true); saving a final checkpoint; "
                    f"{self.health.resume_hint()}",
                    flush=True,
                )
            control.should_save = True
            control.should_training_stop = True
        return control


class EntropyGuard(MetricGuard):
    """Policy entropy (TRL's ``entropy``) collapsing or exploding.

    The baseline is the mean of the first ``warmup`` values; an alarm when entropy falls below
    ``collapse_ratio`` × baseline (or ``min``) or rises above ``explode_ratio`` × baseline (or
    ``max``). Collapse: the policy has stopped exploring, every sample in a group looks alike and
    advantages vanish. Explosion: the policy is drifting towards noise (usually too high a
    learning rate).
    """

    name = "entropy"

    def __init__(
        self,
        collapse_ratio: float = 0.2,
        explode_ratio: float = 3.0,
        min: float | None = None,  # noqa: A002 - the recipe-facing name
        max: float | None = None,  # noqa: A002
        warmup: int = 3,
        key: str = "entropy",
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.collapse_ratio, self.explode_ratio = collapse_ratio, explode_ratio
        self.min, self.max, self.warmup, self.key = min, max, warmup if warmup > 1 else 1, key
        self.seen: list[float] = []

    def problem(self, logs):
        value = log_number(logs, self.key)
        if value is None:
            return False
        if len(self.seen) < self.warmup:
            self.seen.append(value)
        base = sum(self.seen) / len(self.seen)
        if self.min is not None and value < self.min:
            return f"entropy {value:.4g} below min {self.min}"
        if self.max is not None and value > self.max:
            return f"entropy {value:.4g} above max {self.max}"
        if len(self.seen) >= self.warmup and base > 0:
            if self.collapse_ratio and value < self.collapse_ratio * base:
                return f"entropy collapsed to {value:.4g} ({value / base:.2f}x its start {base:.4g})"
            if self.explode_ratio and value > self.explode_ratio * base:
                return f"entropy exploded to {value:.4g} ({value / base:.2f}x its start {base:.4g})"
        return None


class ThresholdGuard(MetricGuard):
    """A metric above ``max`` for ``patience`` logs in a row; the first key present is used."""

    def __init__(self, name: str, keys: tuple[str, ...], max: float, what: str, **kw) -> None:  # noqa: A002
        self.name = name
        super().__init__(**kw)
        self.keys, self.max, self.what = tuple(keys), float(max), what

    def problem(self, logs):
        for key in self.keys:
            value = log_number(logs, key)
            if value is not None:
                return f"{self.what}: {key} = {value:.4g} > {self.max:g}" if value > self.max else None
        return False


def KLGuard(max: float = 1.0, patience: int = 2, **kw) -> ThresholdGuard:  # noqa: A002, N802
    """KL to the reference (TRL's ``kl``, logged only when ``beta`` > 0) past a bound."""
    return ThresholdGuard("kl", ("kl",), max, "policy far from the reference", patience=patience, **kw)


class DropGuard(MetricGuard):
    """A metric that falls sharply from its running best (reward, valid-format rate).

    The metric is smoothed (EMA with weight ``smoothing`` on the past: 0.9 averages about ten
    logs, so that the running best of a noisy metric does not drift to its luckiest batch); after
    ``warmup`` logs the best smoothed value is remembered, and an alarm raised when the smoothed value falls more than
    ``max(drop × |best|, min_drop)`` below it. ``keys`` names the metric; a key ending in ``/*``
    matches any logged key with that suffix (e.g. ``*/format`` matches ``ssrl/format``).
    """

    def __init__(
        self,
        name: str,
        keys: tuple[str, ...],
        drop: float = 0.5,
        min_drop: float = 0.05,
        smoothing: float = 0.9,
        warmup: int = 5,
        **kw,
    ) -> None:
        self.name = name
        super().__init__(**kw)
        if not 0 <= smoothing < 1:
            raise ValueError(f"health.{name}.smoothing must be in [0, 1), got {smoothing}")
        self.keys, self.drop, self.min_drop = tuple(keys), drop, min_drop
        self.smoothing, self.warmup = smoothing, max(1, warmup)
        self.ema: float | None = None
        self.best: float | None = None
        self.count = 0
        self.key: str | None = None

    def _value(self, logs: dict) -> float | None:
        if self.key is None:
            for pattern in self.keys:
                if pattern.startswith("*"):
                    match = next(
                        (k for k in logs if k.endswith(pattern[1:]) and log_number(logs, k) is not None), None
                    )
                else:
                    match = pattern if log_number(logs, pattern) is not None else None
                if match is not None:
                    self.key = match
                    break
        return log_number(logs, self.key) if self.key is not None else None

    def problem(self, logs):
        value = self._value(logs)
        if value is None:
            return False
        self.count += 1
        self.ema = value if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * value
        if self.count < self.warmup:
            return None
        if self.best is None or self.ema > self.best:
            self.best = self.ema
        fall = self.best - self.ema
        if fall > max(self.drop * abs(self.best), self.min_drop):
            return f"{self.key} fell to {self.ema:.4g} (smoothed) from its best {self.best:.4g}"
        return None
