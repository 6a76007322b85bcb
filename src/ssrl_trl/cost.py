"""What a run costs: per-step time split and running totals, and ``<output_dir>/cost.json``.

``CostCallback`` (added by ``build_health_callbacks`` unless ``health: {cost: false}``) reads what
TRL and the rollout already log and adds, per log entry:

- ``cost/rollout_share`` / ``cost/optimisation_share``: split of TRL's ``step_time`` (which
  includes generation: TRL generates inside ``training_step``) between the rollout
  (``rollout/seconds``) and the rest (forward, backward, optimizer);
- ``cost/optimisation_seconds``: seconds per optimizer step outside the rollout;
- ``cost/tokens_generated``, ``cost/searches``: running totals.

At the end of training it writes ``cost.json`` and prints it. Rollout counts are rank 0's
figures times the number of processes (the rollout metrics are not gathered across ranks);
rollouts per step follow TRL's cadence, ``gradient_accumulation_steps / (steps_per_generation *
num_iterations)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .callbacks import log_number, record_log
from .machine import describe_machine

__all__ = ["COST_OPTIONS", "CostCallback"]

#: options a recipe may set under ``health: {cost: {...}}``
COST_OPTIONS = ("filename", "print_summary")


class CostCallback(TrainerCallback):
    """Per-step time split and run totals; writes ``<output_dir>/<filename>`` at train end.

    ``searches`` counts search actions: in a retrieval environment each is one retriever call; in
    self-search (SSRL) the model answers its own searches and no retriever is called.
    """

    def __init__(self, filename: str = "cost.json", print_summary: bool = True) -> None:
        self.filename, self.print_summary = filename, print_summary
        self.totals: dict[str, float] = {}
        self._start: float | None = None
        self._tokens_at_start = 0
        self._last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._tokens_at_start = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self._last_step = state.global_step
        self.totals = dict.fromkeys(
            (
                "steps",
                "step_seconds",
                "rollout_seconds",
                "generation_seconds",
                "environment_seconds",
                "trajectories",
                "tokens_generated",
                "observation_tokens",
                "searches",
                "retriever_errors",
            ),
            0.0,
        )

    def _rollouts_per_step(self, args) -> float:
        every = (getattr(args, "steps_per_generation", None) or 1) * (getattr(args, "num_iterations", 1) or 1)
        return (getattr(args, "gradient_accumulation_steps", 1) or 1) / every

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs if logs is not None else {}
        step_time = log_number(logs, "step_time")
        if step_time is None or not self.totals:
            return
        steps = max(state.global_step - self._last_step, 1)
        self._last_step = state.global_step
        world = getattr(args, "world_size", 1) or 1
        calls = steps * self._rollouts_per_step(args)
        rows = (
            calls
            * (getattr(args, "per_device_train_batch_size", 1) or 1)
            * (getattr(args, "steps_per_generation", None) or 1)
        )
        t = self.totals
        t["steps"] += steps
        t["step_seconds"] += step_time * steps
        rollout_s = log_number(logs, "rollout/seconds")
        out: dict[str, float] = {}
        if rollout_s is not None:
            per_step_rollout = rollout_s * calls / steps
            t["rollout_seconds"] += rollout_s * calls
            t["generation_seconds"] += (log_number(logs, "rollout/generation_seconds") or 0.0) * calls
            t["environment_seconds"] += (log_number(logs, "rollout/environment_seconds") or 0.0) * calls
            t["trajectories"] += rows * world
            t["tokens_generated"] += (
                (log_number(logs, "rollout/tokens_per_second") or 0.0) * rollout_s * calls * world
            )
            t["observation_tokens"] += (log_number(logs, "rollout/observation_tokens") or 0.0) * rows * world
            t["searches"] += (log_number(logs, "rollout/searches_per_trajectory") or 0.0) * rows * world
            t["retriever_errors"] += (log_number(logs, "rollout/retriever_errors") or 0.0) * calls * world
            if step_time > 0:
                share = min(per_step_rollout / step_time, 1.0)
                out["cost/rollout_share"] = share
                out["cost/optimisation_share"] = 1.0 - share
            out["cost/optimisation_seconds"] = max(step_time - per_step_rollout, 0.0)
            out["cost/tokens_generated"] = t["tokens_generated"]
            out["cost/searches"] = t["searches"]
        record_log(state, logs, out)

    def summary(self, args, state) -> dict[str, Any]:
        t = self.totals
        wall = time.perf_counter() - self._start if self._start is not None else 0.0
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens_at_start
        iters = getattr(args, "num_iterations", 1) or 1
        step_s = t.get("step_seconds", 0.0)
        rollout_s = t.get("rollout_seconds", 0.0)
        return {
            "wall_seconds": round(wall, 3),
            "steps": int(t.get("steps", 0)),
            "step_seconds": round(step_s, 3),
            "rollout_seconds": round(rollout_s, 3),
            "generation_seconds": round(t.get("generation_seconds", 0.0), 3),
            "environment_seconds": round(t.get("environment_seconds", 0.0), 3),
            "optimisation_seconds": round(max(step_s - rollout_s, 0.0), 3),
            "rollout_share": round(rollout_s / step_s, 4) if step_s > 0 else None,
            "trajectories": int(round(t.get("trajectories", 0.0))),
            "tokens_generated": int(round(t.get("tokens_generated", 0.0))),
            "observation_tokens": int(round(t.get("observation_tokens", 0.0))),
            # prompt + completion tokens through the training forward/backward (TRL's num_tokens,
            # gathered over ranks), once per GRPO iteration
            "tokens_trained": seen * iters,
            "searches": int(round(t.get("searches", 0.0))),
            "retriever_errors": int(round(t.get("retriever_errors", 0.0))),
            "world_size": getattr(args, "world_size", 1) or 1,
            # rank 0's host: timings (and, on CPU, sampled rollouts) depend on it
            "machine": describe_machine(),
        }

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._start is None:
            return
        summary = self.summary(args, state)
        path = Path(args.output_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if self.print_summary:
            print(_format(summary, path), flush=True)


def _format(s: dict[str, Any], path: Path) -> str:
    share = s["rollout_share"]
    split = "n/a" if share is None else f"{100 * share:.0f}% rollout / {100 * (1 - share):.0f}% optimisation"
    return "\n".join(
        [
            "\n=== ssrl-trl cost ===",
            f"wall time:        {s['wall_seconds']:.1f} s over {s['steps']} steps ({split})",
            f"tokens generated: {s['tokens_generated']}   observation tokens: {s['observation_tokens']}",
            f"tokens trained:   {s['tokens_trained']}",
            f"searches:         {s['searches']}   retriever errors: {s['retriever_errors']}",
            f"written to:       {path}",
        ]
    )
