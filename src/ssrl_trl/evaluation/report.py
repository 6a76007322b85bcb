"""Summaries, tables (markdown, CSV, JSON) and plots (matplotlib PNG) of an evaluation.

Scores are kept as fractions in JSON/CSV and shown as percentages in markdown. Per dataset the
table gives EM, cover-EM and F1 (means over questions, and over the ``n`` samples of each question
when ``n > 1``); ``average`` is the unweighted mean over datasets (how the papers report it) and
``all`` the mean over all questions.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .passk import mean_pass_at_k

__all__ = [
    "jsonable",
    "passk_curves",
    "plot_hybrid",
    "plot_passk",
    "plot_passk_datasets",
    "summarize",
    "write_hybrid",
    "write_passk",
    "write_summary",
]

_COLUMNS = ("questions", "em", "cover_em", "f1", "format_valid", "answered", "searches", "tokens")
_LABELS = {
    "em": "EM",
    "cover_em": "cover-EM",
    "f1": "F1",
    "format_valid": "format %",
    "answered": "answered %",
}


def _group(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(str(rec["dataset"]), []).append(rec)
    return dict(sorted(groups.items()))


def _means(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {"questions": len(records)}
    for key in _COLUMNS[1:]:
        # Records written before a column existed (resumed folders) lack it: NaN, not a crash.
        out[key] = sum(float(r.get(key, math.nan)) for r in records) / len(records) if records else math.nan
    return out


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{dataset: metrics, ..., "average": macro mean, "all": micro mean}`` of one arm."""
    per = {name: _means(recs) for name, recs in _group(records).items()}
    table = dict(per)
    if per:
        table["average"] = {k: sum(m[k] for m in per.values()) / len(per) for k in _COLUMNS}
        table["average"]["questions"] = sum(m["questions"] for m in per.values())
    table["all"] = _means(records)
    return table


def _fmt(key: str, value: float) -> str:
    if key == "questions":
        return str(int(value))
    if key in ("searches", "tokens"):
        return f"{value:.1f}"
    return f"{100 * value:.1f}"


def write_summary(
    out_dir: Path, summaries: Mapping[str, Mapping[str, Mapping[str, float]]], meta: dict
) -> str:
    """``summary.md``, ``summary.csv`` (long format) and ``summary.json``; returns the markdown."""
    arms = list(summaries)
    datasets = list(next(iter(summaries.values())))
    with (out_dir / "summary.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arm", "dataset", *_COLUMNS])
        for arm, table in summaries.items():
            for ds, m in table.items():
                writer.writerow([arm, ds, *(m[k] for k in _COLUMNS)])
    if len(arms) == 1:
        keys = ["questions", "em", "cover_em", "f1", "format_valid", "answered", "searches", "tokens"]
        head = [_LABELS.get(k, k) for k in keys]
        rows = [[ds, *(_fmt(k, summaries[arms[0]][ds][k]) for k in keys)] for ds in datasets]
    else:
        keys = ["em", "cover_em", "f1"]
        head = ["questions"] + [f"{arm} {_LABELS[k]}" for arm in arms for k in keys]
        tail = ["format_valid", "answered", "searches"]
        head += [f"{arm} {_LABELS.get(k, k)}" for k in tail for arm in arms]
        rows = []
        for ds in datasets:
            row = [ds, _fmt("questions", summaries[arms[0]][ds]["questions"])]
            row += [_fmt(k, summaries[arm][ds][k]) for arm in arms for k in keys]
            row += [_fmt(k, summaries[arm][ds][k]) for k in tail for arm in arms]
            rows.append(row)
    md = _markdown(["dataset", *head], rows)
    (out_dir / "summary.md").write_text(md, encoding="utf-8")
    (out_dir / "summary.json").write_text(
        json.dumps({"meta": meta, "summary": summaries}, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return md


def jsonable(value: Any) -> Any:
    """``value`` with infinities as the strings ``"inf"`` / ``"-inf"`` (strict JSON has none)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# -- pass@k -----------------------------------------------------------------------------------
def passk_curves(records: Sequence[Mapping[str, Any]], ks: Sequence[int], metric: str = "em") -> dict:
    """Mean pass@k per dataset plus ``average`` (over datasets) and ``all`` (over questions)."""
    key = f"c_{metric}"
    per = {
        ds: mean_pass_at_k([(int(r["n"]), int(r[key])) for r in recs], ks)
        for ds, recs in _group(records).items()
    }
    curves = dict(per)
    if per:
        curves["average"] = [sum(c[j] for c in per.values()) / len(per) for j in range(len(ks))]
    curves["all"] = mean_pass_at_k([(int(r["n"]), int(r[key])) for r in records], ks)
    return curves


def write_passk(
    out_dir: Path, arm: str, ks: Sequence[int], curves: Mapping[str, Mapping[str, list[float]]]
) -> str:
    """``passk_<arm>.csv`` / ``.json`` / ``.md`` for each metric's curves; returns the markdown."""
    rows_csv, md_parts = [], []
    for metric, by_ds in curves.items():
        for ds, vals in by_ds.items():
            rows_csv += [[arm, metric, ds, k, v] for k, v in zip(ks, vals, strict=True)]
        rows = [[ds, *(f"{100 * v:.1f}" for v in vals)] for ds, vals in by_ds.items()]
        md_parts.append(
            f"pass@k ({_LABELS.get(metric, metric)}, %)\n\n" + _markdown(["dataset", *map(str, ks)], rows)
        )
    with (out_dir / f"passk_{arm}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arm", "metric", "dataset", "k", "pass_at_k"])
        writer.writerows(rows_csv)
    (out_dir / f"passk_{arm}.json").write_text(json.dumps({"k": list(ks), "curves": curves}, indent=2) + "\n")
    md = "\n".join(md_parts)
    (out_dir / f"passk_{arm}.md").write_text(md, encoding="utf-8")
    return md


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_passk(
    path: Path, ks: Sequence[int], curves: Mapping[str, Mapping[str, list[float]]], title: str
) -> None:
    """One log2-x plot: a line per metric (solid EM, dashed cover-EM) for one dataset."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (metric, vals), style in zip(curves.items(), ("-o", "--s", ":^"), strict=False):
        ax.plot(ks, [100 * v for v in vals], style, label=_LABELS.get(metric, metric), markersize=4)
    _log2_axis(ax, ks)
    _ylim(ax)
    ax.set_ylabel("pass@k (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_passk_datasets(path: Path, ks: Sequence[int], by_ds: Mapping[str, list[float]], title: str) -> None:
    """All datasets of one metric on one log2-x plot (the SSRL paper's headline figure)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for ds, vals in by_ds.items():
        if ds == "all":
            continue
        bold = ds == "average"
        ax.plot(
            ks,
            [100 * v for v in vals],
            "-o" if bold else "-",
            label=ds,
            linewidth=2.5 if bold else 1.2,
            markersize=3,
        )
    _log2_axis(ax, ks)
    _ylim(ax)
    ax.set_ylabel("pass@k (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ylim(ax) -> None:
    """From 0 to a little above the highest point (at least 5%, so an all-zero run still reads)."""
    top = max((max(line.get_ydata(), default=0) for line in ax.get_lines()), default=0)
    ax.set_ylim(0, max(5.0, 1.15 * float(top)))


def _log2_axis(ax, ks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks))
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (samples)")


# -- hybrid -----------------------------------------------------------------------------------
def write_hybrid(out_dir: Path, sweeps: Mapping[str, list[dict]], refs: Mapping[str, dict]) -> str:
    """``hybrid.csv`` / ``.json`` / ``.md``: one row per (signal, threshold) plus reference rows."""
    keys = ("frac_real", "em", "cover_em", "f1")
    with (out_dir / "hybrid.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["signal", "threshold", *keys])
        for name, point in refs.items():
            writer.writerow([name, "", *(point[k] for k in keys)])
        for signal, points in sweeps.items():
            writer.writerows([signal, p["threshold"], *(p[k] for k in keys)] for p in points)
    (out_dir / "hybrid.json").write_text(
        json.dumps(jsonable({"reference": refs, "sweeps": sweeps}), indent=2) + "\n", encoding="utf-8"
    )
    rows = [[name, "", *(f"{100 * p[k]:.1f}" for k in keys)] for name, p in refs.items()]
    for signal, points in sweeps.items():
        rows += [
            [signal, f"{p['threshold']:.3g}", *(f"{100 * p[k]:.1f}" for k in keys)] for p in _thin(points)
        ]
    md = _markdown(["routing", "threshold", "real search %", "EM", "cover-EM", "F1"], rows)
    (out_dir / "hybrid.md").write_text(md, encoding="utf-8")
    return md


def _thin(points: list[dict], most: int = 11) -> list[dict]:
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def plot_hybrid(
    path: Path, sweeps: Mapping[str, list[dict]], refs: Mapping[str, dict], metric: str = "em"
) -> None:
    """Accuracy vs the share of questions sent to real search, one curve per signal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    self_p, real_p = refs["self only"], refs["real only"]
    ax.plot(
        [0, 100], [100 * self_p[metric], 100 * real_p[metric]], "k--", linewidth=1, label="random routing"
    )
    for signal, points in sweeps.items():
        ax.plot(
            [100 * p["frac_real"] for p in points],
            [100 * p[metric] for p in points],
            "-",
            marker=".",
            label=signal,
        )
    if "oracle" in refs:
        o = refs["oracle"]
        ax.plot([100 * o["frac_real"]], [100 * o[metric]], "r*", markersize=10, label="oracle")
    _ylim(ax)
    ax.set_xlabel("questions sent to real search (%)")
    ax.set_ylabel(f"{_LABELS.get(metric, metric)} (%)")
    ax.set_title("Hybrid self/real search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
