"""pass@k: the unbiased estimator against brute-force enumeration and exact binomials."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssrl_trl.evaluation.passk import k_grid, mean_pass_at_k, pass_at_k, pass_at_k_curve


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(1024, 1, 1), (1024, 3, 512), (1024, 100, 7), (1000, 999, 2), (200, 17, 64)]
)
def test_stable_for_large_n(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_edge_cases():
    assert pass_at_k(5, 0, 3) == 0.0  # nothing correct
    assert pass_at_k(5, 5, 1) == 1.0  # everything correct
    assert pass_at_k(1024, 1024, 1024) == 1.0
    assert pass_at_k(1024, 0, 1024) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples: any k-subset holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share of correct samples


def test_k_above_n_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match=r"k=5 exceeds the n=4 samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match=r"c=5 must lie in \[0, n=4\]"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="at least one sample"):
        pass_at_k(0, 0, 1)
    with pytest.raises(TypeError):
        pass_at_k(4, 1.5, 1)  # type: ignore[arg-type]


def test_k_grid():
    assert k_grid(1) == [1]
    assert k_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert k_grid(1024)[-1] == 1024 and len(k_grid(1024)) == 11
    assert k_grid(10) == [1, 2, 4, 8, 10]
    assert k_grid(64, 16) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="k_max=8 exceeds the n=4"):
        k_grid(4, 8)


def test_mean_over_questions():
    ks = [1, 2]
    assert mean_pass_at_k([(2, 0), (2, 2)], ks) == [0.5, 0.5]
    assert mean_pass_at_k([(4, 1)], ks) == pass_at_k_curve(4, 1, ks)
    assert all(math.isnan(v) for v in mean_pass_at_k([], ks))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_curve_is_monotone_and_bounded(nc):
    n, c = nc
    curve = pass_at_k_curve(n, c, k_grid(n))
    assert all(0.0 <= v <= 1.0 for v in curve)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(curve))
    assert curve[0] == pytest.approx(c / n)
