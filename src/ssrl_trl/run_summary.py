"""The end of a training run in a few lines: start-vs-end figures from TRL's log history, the
held-out comparison first, and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "print_summary", "summarize"]


def summarize(history: list[dict], output_dir: str, log_path: str | None) -> dict[str, Any]:
    """Start-vs-end figures of a run from TRL's log history (first and last quarter of steps)."""
    rows = [h for h in history if "reward" in h]
    if not rows:
        return {}
    q = max(1, len(rows) // 4)

    def mean(key, part):
        vals = [r[key] for r in part if key in r]
        return sum(vals) / len(vals) if vals else None

    fmt_key = next((k for k in rows[-1] if k.endswith("/format")), None)
    summary = {
        "steps": rows[-1].get("step", len(rows)),
        "reward_start": mean("reward", rows[:q]),
        "reward_end": mean("reward", rows[-q:]),
        "format_start": mean(fmt_key, rows[:q]) if fmt_key else None,
        "format_end": mean(fmt_key, rows[-q:]) if fmt_key else None,
        "searches_end": mean("rollout/searches_per_trajectory", rows[-q:]),
        "answered_end": mean("rollout/answered_fraction", rows[-q:]),
        "output_dir": output_dir,
        "rollout_log": log_path,
    }
    return summary


def plot_curves(history: list[dict], out: Path, title: str) -> None:
    rows = [h for h in history if "reward" in h]
    if not rows:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # an extra; the run itself does not need it
        return
    from .plots import plot_run

    plot_run(rows, out, title)
    print(f"curves:           {out}")


def print_summary(s: dict[str, Any]) -> None:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print("\n=== ssrl-trl run summary ===")
    if s.get("heldout"):
        from .evaluation.compare import format_line

        h = s["heldout"]
        print(format_line(h, "em"))
        for metric in ("f1", "format_valid", "answered"):
            if metric in h["diff"]:
                print(format_line(h, metric))
        print(f"held-out table:   {Path(s['output_dir']) / 'before_after.json'}")
    print(f"steps:            {s.get('steps')}")
    print(
        f"mean reward:      {f(s.get('reward_start'))} (first quarter) -> {f(s.get('reward_end'))} (last quarter)"
    )
    print(f"format score:     {f(s.get('format_start'))} -> {f(s.get('format_end'))}")
    print(f"searches/answer:  {f(s.get('searches_end'))}   answered: {f(s.get('answered_end'))}")
    print(f"checkpoint:       {s.get('output_dir')}")
    print(f"rollout log:      {s.get('rollout_log')}")
