"""pass@k: the unbiased estimator of Chen et al. (2021), as the SSRL paper reports it.

With ``n`` samples of which ``c`` are correct, the chance that at least one of ``k`` samples
drawn without replacement is correct is ``1 - C(n-c, k) / C(n, k)``. The binomials overflow a
float long before ``n = 1024``, so the ratio is computed as the product
``prod_{i=n-c+1}^{n} (1 - k / i)``, whose factors all lie in ``[0, 1]``: no overflow, no
cancellation, and exactly 1.0 whenever fewer than ``k`` samples are wrong.

>>> pass_at_k(4, 1, 2)
0.5
>>> k_grid(10)
[1, 2, 4, 8, 10]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["k_grid", "mean_pass_at_k", "pass_at_k", "pass_at_k_curve"]


def _check(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass@k: {name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"pass@k needs at least one sample, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: the number of correct samples c={c} must lie in [0, n={n}]")
    if k < 1:
        raise ValueError(f"pass@k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(
            f"pass@k: k={k} exceeds the n={n} samples drawn; the estimator needs n >= k "
            f"(sample more with --n {k} or lower --k-max)"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct, for ``1 <= k <= n``.

    Raises ``ValueError`` when ``k > n`` (the estimator is undefined there), ``c`` is outside
    ``[0, n]`` or ``k < 1``.
    """
    _check(n, c, k)
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def k_grid(n: int, k_max: int | None = None) -> list[int]:
    """``1, 2, 4, ...`` up to ``k_max`` (default ``n``), with ``k_max`` itself appended when it
    is not a power of two, so the curve always ends at the largest k asked for."""
    k_max = n if k_max is None else k_max
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    if k_max > n:
        raise ValueError(f"k_max={k_max} exceeds the n={n} samples per question; use --n >= --k-max")
    ks, k = [], 1
    while k <= k_max:
        ks.append(k)
        k *= 2
    if ks[-1] != k_max:
        ks.append(k_max)
    return ks


def pass_at_k_curve(n: int, c: int, ks: Iterable[int]) -> list[float]:
    """pass@k of one question at every k in ``ks``."""
    return [pass_at_k(n, c, k) for k in ks]


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> list[float]:
    """Mean over questions of pass@k, for ``counts = [(n_i, c_i), ...]``; NaN for no questions."""
    if not counts:
        return [math.nan] * len(ks)
    totals = [0.0] * len(ks)
    for n, c in counts:
        for j, value in enumerate(pass_at_k_curve(n, c, ks)):
            totals[j] += value
    return [t / len(counts) for t in totals]
