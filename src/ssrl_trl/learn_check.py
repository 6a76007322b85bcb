"""The learnability check: did a run reach its held-out learning target?

``make learn-check`` generates the fictional-facts task (:mod:`ssrl_trl.fictional_facts`), trains
the embedded model on it with the Search-R1 recipe ``recipes/cpu/learn_check.yaml`` (the real
path: recipe → rollout engine → BM25 → masks → rewards → GRPOTrainer) and then runs

    ssrl-trl check-learning runs/learn_check/run/before_after.json --min-after 0.5 --min-ci-low 0.3

which exits 1 unless held-out EM after training is at least ``--min-after`` and the lower end of
the 95% interval of the paired difference is above ``--min-ci-low``. A change that breaks masking,
GRPO grouping or rewards stops the model from learning the task, and this check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluation.compare import format_line

__all__ = ["check", "main"]


def check(result: dict, metric: str, min_after: float, min_ci_low: float) -> tuple[bool, str]:
    """(passed, reason) for a ``before_after.json`` mapping."""
    if metric not in result.get("diff", {}):
        return False, f"{metric!r} is not in the comparison (metrics: {sorted(result.get('diff', {}))})"
    after = result["after"][metric]
    low = result["diff"][metric]["ci95"][0]
    problems = []
    if not after >= min_after:
        problems.append(f"after {after:.3f} < {min_after}")
    if not low > min_ci_low:
        problems.append(f"95% CI lower end {low:+.3f} <= {min_ci_low}")
    return not problems, "; ".join(problems) or "target reached"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ssrl-trl check-learning", description=__doc__.split("\n\n")[0])
    p.add_argument("before_after", type=Path, help="a run's before_after.json")
    p.add_argument("--metric", default="em")
    p.add_argument("--min-after", type=float, default=0.5, help="held-out value the trained model must reach")
    p.add_argument(
        "--min-ci-low", type=float, default=0.3, help="the difference's 95%% CI must start above this"
    )
    a = p.parse_args(argv)
    if not a.before_after.is_file():
        print(
            f"error: {a.before_after} does not exist (did the run evaluate a held-out set?)", file=sys.stderr
        )
        return 2
    result = json.loads(a.before_after.read_text(encoding="utf-8"))
    passed, reason = check(result, a.metric, a.min_after, a.min_ci_low)
    print(format_line(result, a.metric))
    print(
        f"learn-check {'PASSED' if passed else 'FAILED'}: {reason} "
        f"(target: after >= {a.min_after}, CI low > {a.min_ci_low})"
    )
    return 0 if passed else 1
