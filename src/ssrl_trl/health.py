"""Training-health guards, as TRL/transformers ``TrainerCallback``s, on by default.

``build_health_callbacks(config)`` reads the recipe's ``health:`` mapping. Every guard is on by
default; ``<guard>: false`` switches it off and a mapping sets its options, e.g.::

    health:
      entropy: {collapse_ratio: 0.1, stop: true}
      kl: {max: 0.5}
      zero_std: false
      healthy_checkpoints: {keep: 3}

The guards read the metrics TRL and the rollout already log (``loss``, ``grad_norm``,
``entropy``, ``kl``, ``reward``, ``*/format``, ``frac_reward_zero_std``,
``rollout/truncated_fraction`` or ``completions/clipped_ratio``). An alarm is printed, sets
``health/<guard>`` to 1 in the log entry, and (with ``stop: true``) ends the run with a final
checkpoint. Non-finite loss or gradients always stop the run. See docs/health.md for the TRL
settings that prevent these failures.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .paths import check_subfolder, inside

__all__ = [
    "DropGuard",
    "EntropyGuard",
    "HealthState",
    "HealthyCheckpoints",
    "KLGuard",
    "MetricGuard",
    "NaNGuard",
    "ThresholdGuard",
    "build_health_callbacks",
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


def _number(logs: dict | None, key: str) -> float | None:
    value = (logs or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _any_rank(flag: bool, device: Any = None) -> bool:
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


def _record(state, logs: dict | None, values: dict[str, float]) -> None:
    """Put values in this log entry (reporters after us see them) and in the trainer's history."""
    if logs is not None:
        logs.update(values)
    if state.log_history and state.log_history[-1].get("step") == state.global_step:
        state.log_history[-1].update(values)


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
        if _any_rank(not finite, grads[0].device if grads else None):
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
            self._trip(
                f"non-finite gradients at step {state.global_step + 1} (update skipped)", state, control
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self.keys:
            value = _number(logs, key)
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
        _record(state, logs, {f"health/{self.name}": 1.0 if alarming else 0.0})
        if self.stop and _any_rank(alarming):
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
        value = _number(logs, self.key)
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
            value = _number(logs, key)
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
                        (k for k in logs if k.endswith(pattern[1:]) and _number(logs, k) is not None), None
                    )
                else:
                    match = pattern if _number(logs, pattern) is not None else None
                if match is not None:
                    self.key = match
                    break
        return _number(logs, self.key) if self.key is not None else None

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


class HealthyCheckpoints(TrainerCallback):
    """Keep the last ``keep`` checkpoints saved while no alarm was active, under
    ``<output_dir>/healthy/`` (hard links: no extra disk, and they survive ``save_total_limit``).
    ``--resume auto`` still picks the newest checkpoint; pass a healthy one to go back."""

    def __init__(self, keep: int = 2, dirname: str = "healthy", state: HealthState | None = None) -> None:
        if keep < 1:
            raise ValueError(f"health.healthy_checkpoints.keep must be >= 1, got {keep}")
        # The folder is pruned below: "", ".", ".." or an absolute path would prune real checkpoints.
        self.keep, self.dirname = int(keep), check_subfolder("health.healthy_checkpoints.dirname", dirname)
        self.health = state or HealthState()

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.health.is_healthy:
            return
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not source.is_dir():
            return
        root = Path(args.output_dir) / self.dirname
        if not inside(args.output_dir, root):  # e.g. a symbolic link pointing out of output_dir
            print(
                f"{PREFIX} not keeping healthy checkpoints: {root} is outside {args.output_dir}", flush=True
            )
            return
        target = root / source.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, copy_function=_link_or_copy)
        self.health.healthy = [h for h in self.health.healthy if h != str(target)] + [str(target)]
        kept = sorted(
            (p for p in root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        for old in kept[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
            self.health.healthy = [h for h in self.health.healthy if h != str(old)]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_ALARM = ("patience", "stop")
_DROP = ("drop", "min_drop", "smoothing", "warmup", *_ALARM)


def _guards() -> dict[str, tuple[Any, dict[str, Any], tuple[str, ...]]]:
    """guard name -> (factory, fixed arguments, options a recipe may set)."""
    return {
        "nan_guard": (NaNGuard, {}, ("keys", "check_gradients")),
        "entropy": (
            EntropyGuard,
            {},
            ("collapse_ratio", "explode_ratio", "min", "max", "warmup", "key", *_ALARM),
        ),
        "kl": (KLGuard, {}, ("max", *_ALARM)),
        "reward_drop": (DropGuard, {"name": "reward_drop", "keys": ("reward",)}, ("keys", *_DROP)),
        "format_drop": (
            DropGuard,
            {"name": "format_drop", "keys": ("*/format", "rewards/format/mean")},
            ("keys", *_DROP),
        ),
        "zero_std": (
            ThresholdGuard,
            {
                "name": "zero_std",
                "keys": ("frac_reward_zero_std",),
                "max": 0.9,
                "patience": 5,
                "what": "no learning signal (groups with identical rewards)",
            },
            ("max", *_ALARM),
        ),
        "truncation": (
            ThresholdGuard,
            {
                "name": "truncation",
                "keys": ("rollout/truncated_fraction", "completions/clipped_ratio"),
                "max": 0.5,
                "patience": 3,
                "what": "completions hit the length or turn cap",
            },
            ("keys", "max", *_ALARM),
        ),
        "healthy_checkpoints": (HealthyCheckpoints, {}, ("keep", "dirname")),
    }


def build_health_callbacks(config: dict[str, Any] | None) -> list[TrainerCallback]:
    """The recipe's ``health:`` section -> callbacks (every guard on unless set to false).

    Each key is a guard name with ``true``/``false`` or a mapping of its options (``enabled:
    false`` also switches it off); ``cost`` (``ssrl_trl.cost.CostCallback``) logs per-step time
    shares and token counts and writes ``<output_dir>/cost.json`` at the end.
    """
    from .cost import COST_OPTIONS, CostCallback

    config = dict(config or {})
    guards = _guards()
    allowed = sorted([*guards, "cost"])
    unknown = set(config) - set(allowed)
    if unknown:
        raise ValueError(f"unknown health options {sorted(unknown)}; allowed: {allowed}")
    shared = HealthState()
    callbacks: list[TrainerCallback] = []
    cost = _options("cost", config.get("cost", True), COST_OPTIONS)
    if cost is not None:
        callbacks.append(CostCallback(**cost))
    for name, (factory, fixed, names) in guards.items():
        options = _options(name, config.get(name, True), names)
        if options is not None:
            callbacks.append(factory(**{**fixed, **options}, state=shared))
    return callbacks


def _options(name: str, value: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"health.{name} must be true, false or a mapping of options, got {value!r}")
    if value.get("enabled", True) is False:
        return None
    options = {k: v for k, v in value.items() if k != "enabled"}
    unknown = set(options) - set(names)
    if unknown:
        raise ValueError(
            f"unknown options {sorted(unknown)} for health.{name}; allowed: {sorted([*names, 'enabled'])}"
        )
    if "keys" in options:
        options["keys"] = (
            tuple(options["keys"]) if not isinstance(options["keys"], str) else (options["keys"],)
        )
    return options
