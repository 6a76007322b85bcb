"""Training curves from a run's log history (what moved, step by step)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_history", "plot_run", "plot_run_main"]

#: (metric key suffix, label) drawn when present; the first two share the left axis.
_SERIES = [
    ("reward", "mean reward"),
    ("/format", "format score"),
    ("tag_presence/mean", "tag presence"),
    ("rollout/searches_per_trajectory", "searches / trajectory"),
    ("rollout/answered_fraction", "answered fraction"),
]


def load_history(run_dir: str | Path) -> list[dict]:
    """TRL's log history of a run: from the newest checkpoint's trainer_state.json, or the run's."""
    from .checkpoints import checkpoint_problem

    run = Path(run_dir)
    candidates = sorted(
        (p for p in run.glob("checkpoint-*/trainer_state.json") if checkpoint_problem(p.parent) is None),
        key=lambda p: int(p.parent.name.split("-")[-1]),
    )  # a checkpoint cut off mid-save has no (or a partial) trainer_state.json: skipped
    state = run / "trainer_state.json"
    path = state if state.is_file() else (candidates[-1] if candidates else None)
    if path is None:
        raise FileNotFoundError(
            f"{run}: no trainer_state.json (run with save_steps, or pass the checkpoint dir)"
        )
    return [h for h in json.loads(path.read_text())["log_history"] if "reward" in h]


def plot_run(history: list[dict], out_png: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for suffix, label in _SERIES:
        key = next(
            (
                k
                for k in history[0]
                if k == suffix or (suffix.startswith(("/", "tag")) and k.endswith(suffix))
            ),
            None,
        )
        if key is None:
            continue
        values = [h.get(key) for h in history]
        ax.plot(steps, values, marker=".", label=f"{label} ({key})")
    ax.set_xlabel("step")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run_main(argv: list[str]) -> int:
    """``ssrl-trl plot-run RUN_DIR [-o PNG]``: mean reward, format and searches over steps."""
    import argparse

    parser = argparse.ArgumentParser(prog="ssrl-trl plot-run", description=plot_run_main.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("-o", "--out", default=None)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    out = plot_run(
        load_history(args.run_dir), args.out or Path(args.run_dir) / "training_curve.png", args.title
    )
    print(f"wrote {out}")
    return 0
