"""Overhead of the health guards and the cost callback, against a CPU training step.

    python benchmarks/guard_overhead.py                      # 20k synthetic logs, 135M-parameter gradients
    python benchmarks/guard_overhead.py --trainer-state runs/ssrl_cpu/checkpoint-20/trainer_state.json

Times every callback ``build_health_callbacks({})`` returns over many synthetic log entries (the
``on_log`` path, run once per logged step), and the NaN guard's gradient check
(``on_pre_optimizer_step``, once per optimizer step) on gradients the size of SmolLM2-135M. The
CPU step time comes from a trainer_state.json (mean ``step_time``) or ``--step-seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import TrainerControl, TrainerState

from ssrl_trl.health import build_health_callbacks


def synthetic_logs(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = random.Random(seed)
    keys = ["completions/mean_length", "rewards/ssrl/mean", "rewards/tag_presence/mean", "num_tokens"]
    return [
        {
            "loss": rng.uniform(-0.1, 0.1),
            "grad_norm": rng.uniform(0.1, 1.0),
            "learning_rate": 5e-6,
            "entropy": rng.uniform(1.5, 2.0),
            "kl": rng.uniform(0.0, 0.05),
            "reward": rng.uniform(0.2, 0.6),
            "ssrl/format": rng.uniform(0.5, 1.0),
            "frac_reward_zero_std": rng.uniform(0.1, 0.5),
            "rollout/truncated_fraction": rng.uniform(0.0, 0.2),
            "completions/clipped_ratio": rng.uniform(0.0, 0.2),
            "step_time": 60.0,
            "rollout/seconds": 40.0,
            "rollout/tokens_per_second": 20.0,
            "rollout/searches_per_trajectory": 1.0,
            **{k: rng.random() for k in keys},
        }
        for _ in range(n)
    ]


def time_on_log(n: int, output_dir: str) -> tuple[float, int]:
    """Seconds per log entry for all callbacks together, and the alarms raised (should be 0)."""
    callbacks = build_health_callbacks({})
    args = SimpleNamespace(
        output_dir=output_dir,
        world_size=1,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        per_device_train_batch_size=8,
    )
    state, control = TrainerState(), TrainerControl()
    for cb in callbacks:
        cb.on_train_begin(args, state, control)
    logs = synthetic_logs(n)
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        for entry in logs:
            state.global_step += 1
            entry["step"] = state.global_step
            state.log_history.append(dict(entry))
            for cb in callbacks:
                cb.on_log(args, state, control, logs=entry)
    return (time.perf_counter() - start) / n, printed.getvalue().count("ALARM")


def time_gradient_check(n_params: float, repeats: int) -> float:
    """Seconds per NaN-guard gradient check on ``n_params`` float32 gradients (30 tensors)."""
    guard = next(c for c in build_health_callbacks({}) if type(c).__name__ == "NaNGuard")
    per = int(n_params // 30)
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(per)) for _ in range(30)])
    for p in model:
        p.grad = torch.randn(per)
    state, control = TrainerState(), TrainerControl()
    guard.on_pre_optimizer_step(None, state, control, model=model)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        guard.on_pre_optimizer_step(None, state, control, model=model)
        times.append(time.perf_counter() - start)
    assert not control.should_training_stop
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logs", type=int, default=20000, help="synthetic log entries")
    parser.add_argument("--params", type=float, default=135e6, help="gradient elements for the NaN check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trainer-state", help="trainer_state.json of a CPU run (mean step_time)")
    parser.add_argument("--step-seconds", type=float, default=None, help="CPU step time, if no trainer state")
    args = parser.parse_args()

    step = args.step_seconds
    source = "--step-seconds"
    if args.trainer_state:
        history = json.loads(Path(args.trainer_state).read_text())["log_history"]
        times = [h["step_time"] for h in history if "step_time" in h]
        step, source = statistics.mean(times), f"{args.trainer_state} ({len(times)} steps)"
    with tempfile.TemporaryDirectory() as tmp:
        per_log, alarms = time_on_log(args.logs, tmp)
    per_check = time_gradient_check(args.params, args.repeats)
    print(f"on_log, all {len(build_health_callbacks({}))} callbacks: {per_log * 1e6:.1f} us per log entry")
    print(f"alarms on {args.logs} stationary noisy logs: {alarms}")
    print(
        f"gradient check, {args.params / 1e6:.0f}M gradients:   {per_check * 1e3:.1f} ms per optimizer step"
    )
    if step:
        share = (per_log + per_check) / step
        print(f"CPU step time:                      {step:.1f} s  [{source}]")
        print(
            f"overhead per step:                  {(per_log + per_check) * 1e3:.1f} ms = {100 * share:.4f}%"
        )


if __name__ == "__main__":
    main()
