"""Hybrid self/real search: answer from self-search, and search for real only when unsure.

Both arms are run on every question once (greedy self-search with its uncertainty signals, and
the same policy with real retrieval, i.e. the Sim2Real arm); a threshold ``t`` then routes a
question to real search when its uncertainty is ``> t`` (a missing signal, e.g. no answer, is
always routed). Because the two outcomes are known per question, the whole threshold sweep costs
nothing extra, and each point's ``frac_real`` is exactly the share of questions a deployed
hybrid would send to the retriever. Scores are means over questions (micro average).

Reference points: ``self`` (route nothing), ``real`` (route everything), ``oracle`` (route exactly
the questions real search gets right and self-search does not); a signal is useful where its
curve lies above the straight line from ``self`` to ``real`` (random routing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["METRICS", "hybrid_sweep", "oracle_point", "uncertainties"]

METRICS = ("em", "cover_em", "f1")


def uncertainties(
    self_records: Sequence[Mapping[str, Any]],
    signal: str,
    samples: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Uncertainty per question id (``inf`` where undefined). ``disagreement`` reads the
    ``answers`` of the sampled arm's records (``samples``, by id)."""
    from .signals import answer_disagreement

    out: dict[str, float] = {}
    for rec in self_records:
        if signal == "disagreement":
            if samples is None or rec["id"] not in samples:
                raise ValueError("signal 'disagreement' needs the sampled self-search arm (--hybrid-samples)")
            other = samples[rec["id"]]
            value = answer_disagreement(other.get("answers", [other.get("prediction")]))
        else:
            signals = rec.get("signals") or {}
            if signal not in signals:
                raise ValueError(
                    f"signal {signal!r} missing from the self-search predictions; "
                    f"available: {sorted(signals)}"
                )
            value = signals[signal]
        if rec.get("prediction") is None:
            value = None  # no self answer: nothing to keep
        out[rec["id"]] = math.inf if value is None else float(value)
    return out


def _point(
    self_recs: Sequence[Mapping[str, Any]],
    real: Mapping[str, Mapping[str, Any]],
    route: Sequence[bool],
    **extra: Any,
) -> dict[str, Any]:
    n = len(self_recs)
    point: dict[str, Any] = dict(extra)
    point["frac_real"] = sum(route) / n if n else math.nan
    for metric in METRICS:
        total = sum(
            float(real[rec["id"]][metric] if r else rec[metric])
            for rec, r in zip(self_recs, route, strict=True)
        )
        point[metric] = total / n if n else math.nan
    return point


def hybrid_sweep(
    self_records: Sequence[Mapping[str, Any]],
    real_records: Sequence[Mapping[str, Any]],
    unc: Mapping[str, float],
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy and real-search share for each threshold, sorted by ``frac_real``.

    Default thresholds: ``-inf`` (all real) and every distinct finite uncertainty (the largest
    routes only the questions without a signal).
    """
    real = {rec["id"]: rec for rec in real_records}
    missing = [rec["id"] for rec in self_records if rec["id"] not in real]
    if missing:
        raise ValueError(f"{len(missing)} question(s) lack a real-search record, e.g. {missing[:3]}")
    values = [unc[rec["id"]] for rec in self_records]
    if thresholds is None:
        finite = sorted({v for v in values if math.isfinite(v)})
        thresholds = [-math.inf, *finite] if finite else [-math.inf, math.inf]
    points = [
        _point(self_records, real, [v > t or v == math.inf for v in values], threshold=t) for t in thresholds
    ]
    return sorted(points, key=lambda p: (p["frac_real"], -p["threshold"]))


def oracle_point(
    self_records: Sequence[Mapping[str, Any]], real_records: Sequence[Mapping[str, Any]], metric: str = "em"
) -> dict[str, Any]:
    """Route exactly the questions where real search scores higher on ``metric``."""
    real = {rec["id"]: rec for rec in real_records}
    route = [float(real[rec["id"]][metric]) > float(rec[metric]) for rec in self_records]
    return _point(self_records, real, route, threshold=None)
