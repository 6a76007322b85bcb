"""Paired before/after comparison of two evaluations of the same questions.

A training result is the change in held-out scores, with its uncertainty: for every metric the
per-question difference (after − before) is averaged, and a paired bootstrap over questions
(resample questions with replacement, recompute the mean difference) gives the 95% interval.
Pairing matters: both models answered the same questions, so question difficulty cancels out
and the interval is much tighter than two independent intervals would suggest.

    ssrl-trl compare runs/eval/base runs/eval/trained          # two `ssrl-trl eval` folders
    ssrl-trl eval --model runs/x --baseline-model models/base …  # evaluates both, then compares

Writes ``before_after.json`` (``before`` / ``after`` means, ``diff`` with ``{"mean", "ci95"}`` per
metric, ``n``) and ``before_after.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "compare_records",
    "format_line",
    "main",
    "paired_bootstrap",
    "plot_before_after",
    "write_comparison",
]

#: Per-question values compared (each record of :func:`~.runner.run_arm` carries them).
METRICS = ("em", "cover_em", "f1", "format_valid", "answered", "searches")
_LABELS = {
    "em": "EM",
    "cover_em": "cover-EM",
    "f1": "F1",
    "format_valid": "format valid",
    "answered": "answered",
    "searches": "searches / question",
}


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``after - before`` and its 95% percentile interval over ``resamples`` resamplings
    of the question pairs. Deterministic for a given ``seed``.

    >>> paired_bootstrap([0, 0, 0, 0], [1, 1, 1, 1])
    {'mean': 1.0, 'ci95': [1.0, 1.0]}
    """
    import numpy as np

    if len(before) != len(after):
        raise ValueError(f"paired values need equal lengths, got {len(before)} and {len(after)}")
    if not before:
        return {"mean": math.nan, "ci95": [math.nan, math.nan]}
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # Resample in blocks to bound memory for large evaluations.
    block = max(1, 2_000_000 // len(diff))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, len(diff), size=(stop - start, len(diff)))
        means[start:stop] = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)]}


def compare_records(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of two record lists (one record per question id, as ``run_arm`` writes).

    Both evaluations must cover the same question ids: a comparison over different questions
    would measure the questions, not the model."""
    b = {str(r["id"]): r for r in before}
    a = {str(r["id"]): r for r in after}
    if set(b) != set(a):
        only_b, only_a = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        raise ValueError(
            f"before and after cover different questions ({len(only_b)} only before, e.g. {only_b[:2]}; "
            f"{len(only_a)} only after, e.g. {only_a[:2]}): compare evaluations of the same question set"
        )
    ids = sorted(b)
    metrics = [m for m in METRICS if all(m in b[i] and m in a[i] for i in ids)]
    out: dict[str, Any] = {"n": len(ids), "before": {}, "after": {}, "diff": {}}
    for m in metrics:
        xb = [float(b[i][m]) for i in ids]
        xa = [float(a[i][m]) for i in ids]
        out["before"][m] = sum(xb) / len(xb) if xb else math.nan
        out["after"][m] = sum(xa) / len(xa) if xa else math.nan
        out["diff"][m] = paired_bootstrap(xb, xa, resamples=resamples, seed=seed)
    out["before"]["n"] = out["after"]["n"] = len(ids)
    out["bootstrap"] = {
        "resamples": resamples,
        "seed": seed,
        "paired_over": "questions",
        "interval": "95% percentile",
    }
    return out


def format_line(result: Mapping[str, Any], metric: str = "em", label: str = "held-out") -> str:
    """One line for a run summary: ``held-out EM 0.020 -> 0.610 (+0.590, 95% CI [+0.49, +0.69], n=100)``."""
    if metric not in result.get("diff", {}):
        return f"{label} {_LABELS.get(metric, metric)}: n/a"
    d = result["diff"][metric]
    lo, hi = d["ci95"]
    return (
        f"{label} {_LABELS.get(metric, metric)} {result['before'][metric]:.3f} -> {result['after'][metric]:.3f} "
        f"({d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}], n={result['n']})"
    )


def write_comparison(
    out_dir: str | Path, result: Mapping[str, Any], *, title: str = "", plot: bool = True
) -> Path:
    """``before_after.json`` (and ``before_after.png`` when matplotlib is installed) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "before_after.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is not None:
            plot_before_after(result, out / "before_after.png", title)
    return path


def plot_before_after(result: Mapping[str, Any], out_png: str | Path, title: str = "") -> Path:
    """Left: before vs after per metric (fractions). Right: the paired difference with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in result["diff"] and m != "searches"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = range(len(metrics))
    width = 0.38
    left.bar(
        [x - width / 2 for x in xs],
        [result["before"][m] for m in metrics],
        width,
        label="before",
        color="#999",
    )
    left.bar(
        [x + width / 2 for x in xs], [result["after"][m] for m in metrics], width, label="after", color="#2a7"
    )
    left.set_xticks(list(xs), [_LABELS[m] for m in metrics], rotation=20)
    left.set_ylim(0, 1)
    left.set_title(f"held-out, n={result['n']}")
    left.legend(loc="upper left")
    means = [result["diff"][m]["mean"] for m in metrics]
    lows = [result["diff"][m]["mean"] - result["diff"][m]["ci95"][0] for m in metrics]
    highs = [result["diff"][m]["ci95"][1] - result["diff"][m]["mean"] for m in metrics]
    right.errorbar(list(xs), means, yerr=[lows, highs], fmt="o", capsize=5, color="#2a7")
    right.axhline(0, color="#555", lw=0.8)
    right.set_xticks(list(xs), [_LABELS[m] for m in metrics], rotation=20)
    right.set_title("after − before (paired bootstrap 95% CI)")
    if "searches" in result["diff"]:
        right.text(
            0.02,
            0.95,
            f"searches/question {result['before']['searches']:.2f} -> {result['after']['searches']:.2f}",
            transform=right.transAxes,
            va="top",
            fontsize=8,
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def _load_arm(folder: Path, arm: str | None) -> tuple[str, list[dict[str, Any]]]:
    from .runner import read_predictions

    files = sorted(folder.glob("predictions_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no predictions_*.jsonl (an `ssrl-trl eval --out` folder)")
    names = [f.name[len("predictions_") : -len(".jsonl")] for f in files]
    if arm is None:
        if len(names) > 1:
            raise ValueError(f"{folder} holds several arms {names}; choose one with --arm")
        arm = names[0]
    if arm not in names:
        raise ValueError(f"{folder} has no arm {arm!r}; it has {names}")
    return arm, list(read_predictions(folder / f"predictions_{arm}.jsonl").values())


def main(argv: list[str] | None = None) -> int:
    """``ssrl-trl compare BEFORE AFTER``: paired before/after of two evaluation folders."""
    p = argparse.ArgumentParser(prog="ssrl-trl compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="evaluation folder of the baseline (ssrl-trl eval --out)")
    p.add_argument("after", type=Path, help="evaluation folder of the model to compare")
    p.add_argument("--arm", default=None, help="which arm's predictions (default: the only one)")
    p.add_argument("--out", type=Path, default=None, help="where to write before_after.json (default: AFTER)")
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        arm, before = _load_arm(a.before, a.arm)
        _, after = _load_arm(a.after, arm)
        result = compare_records(before, after, resamples=a.resamples, seed=a.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ssrl-trl compare: {exc}", file=sys.stderr)
        return 2
    result["before_source"], result["after_source"], result["arm"] = str(a.before), str(a.after), arm
    path = write_comparison(a.out or a.after, result, title=f"{a.before.name} -> {a.after.name} ({arm})")
    for m in result["diff"]:
        print(format_line(result, m, label=arm))
    print(f"wrote {path}")
    return 0
