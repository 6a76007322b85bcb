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
settings that prevent these failures. The guards live in :mod:`ssrl_trl.health_guards`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .health_guards import (
    PREFIX,
    DropGuard,
    EntropyGuard,
    HealthState,
    KLGuard,
    MetricGuard,
    NaNGuard,
    ThresholdGuard,
)
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
