"""tfopt.stats: Wilson intervals and paired comparisons, checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfopt.errors import ConfigError, DataError
from tfopt.stats import paired_comparison, wilson_interval

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def _wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return center - half, center + half


@pytest.mark.parametrize("k,n", [(95, 100), (1, 7), (500, 1000), (999, 1000)])
def test_wilson_equals_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)


def test_wilson_known_bounds_and_edges():
    low, high = wilson_interval(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    assert low < 0.95 < high
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(10, 10)[0] == pytest.approx(_wilson_by_hand(10, 10)[0], abs=1e-9)
    # a wider interval at higher confidence, a narrower one with more examples
    assert wilson_interval(95, 100, 0.99)[0] < low
    assert wilson_interval(950, 1000)[1] - wilson_interval(950, 1000)[0] < high - low


@pytest.mark.parametrize("args,match", [
    ((11, 10), "k=11 is larger than n=10"),
    ((0, 0), "n=0 is not allowed; allowed: an integer >= 1"),
    ((-1, 10), "k=-1 is not allowed"),
    ((1.5, 10), r"k=1\.5 is not allowed"),
    ((5, 10, 1.0), "confidence=1.0 is out of range; allowed: 0 < confidence < 1"),
    ((5, 10, "high"), "confidence='high' is out of range"),
])
def test_wilson_bad_input(args, match):
    with pytest.raises(ConfigError, match=match):
        wilson_interval(*args)


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_on_a_table_computed_by_hand():
    # 2x2 table: 80 both right, 2 only a, 8 only b, 10 neither. Discordant d = 10, b_only = 8:
    # p = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024 = 0.109375
    a, b = _pairs(80, 2, 8, 10)
    r = paired_comparison(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (100, 2, 8)
    assert r["accuracy_a"] == 0.82 and r["accuracy_b"] == 0.88
    assert r["delta"] == pytest.approx(0.06)
    assert r["p_value"] == pytest.approx(112 / 1024)
    assert r["significant"] is False
    low, high = r["delta_ci"]
    assert low <= 0 < r["delta"] < high  # not significant: the bootstrap interval reaches 0 here too
    # exact interval: Clopper-Pearson of the share b wins, 8 of 10: [0.44390, 0.97479] (tables), as a
    # difference d/n (2 share - 1) = 0.1 * [-0.11220, 0.94958]
    exact = paired_comparison(a, b, interval="exact")
    assert exact["delta_ci"] == pytest.approx([-0.011220, 0.094958], abs=2e-6)
    assert {k: v for k, v in exact.items() if k != "delta_ci"} == {k: v for k, v in r.items() if k != "delta_ci"}
    # the same table from b's side: the difference changes sign, the p-value does not
    back = paired_comparison(b, a)
    assert back["delta"] == pytest.approx(-0.06) and back["p_value"] == r["p_value"]


def test_a_clear_drop_is_significant():
    # 0 only a... 12 only b lost: p = 2 / 2**12
    a, b = _pairs(80, 12, 0, 8)
    r = paired_comparison(a, b)
    assert r["delta"] == pytest.approx(-0.12)
    assert r["p_value"] == pytest.approx(2 / 4096)
    assert r["significant"] is True and r["delta_ci"][1] < 0
    # the bootstrap reaches past -12 points (d = 12 is itself uncertain); the exact interval stops there
    assert r["delta_ci"][0] < -0.13 and paired_comparison(a, b, interval="exact")["delta_ci"][0] == pytest.approx(-0.12)


def test_a_model_against_itself():
    a, _ = _pairs(70, 10, 5, 15)
    r = paired_comparison(a, a)
    assert r["delta"] == 0 and r["p_value"] == 1.0 and r["significant"] is False
    assert r["delta_ci"] == [0.0, 0.0] and r["a_only"] == r["b_only"] == 0


def test_the_exact_interval_excludes_zero_exactly_when_the_test_is_significant():
    for n_disagree in range(1, 41):
        for b_only in range(n_disagree + 1):
            a, b = _pairs(100, n_disagree - b_only, b_only, 20)
            r = paired_comparison(a, b, interval="exact")
            low, high = r["delta_ci"]
            assert low <= r["delta"] <= high
            assert r["significant"] == (not low <= 0 <= high), (n_disagree, b_only)


def test_bootstrap_is_fixed_by_its_seed_and_accepts_zeros_and_ones():
    a, b = _pairs(50, 7, 3, 40)
    first = paired_comparison(a, b, seed=3)
    assert paired_comparison(a.astype(int), b.astype(float), seed=3) == first
    assert first["delta_ci"][0] <= first["delta"] <= first["delta_ci"][1]
    narrow = paired_comparison(a, b, confidence=0.5)["delta_ci"]
    assert narrow[1] - narrow[0] < first["delta_ci"][1] - first["delta_ci"][0]
    # the same p-value and significance whichever interval
    exact = paired_comparison(a, b, interval="exact")
    assert (exact["p_value"], exact["significant"]) == (first["p_value"], first["significant"])


@pytest.mark.parametrize("a,b,kw,error,match", [
    ([1, 0, 1], [1, 0], {}, DataError, "correct_a has 3 examples but correct_b has 2"),
    ([], [], {}, DataError, "no examples"),
    ([1, 2], [1, 0], {}, DataError, "correct_a must hold only True/False or 1/0"),
    ([[1, 0]], [[1, 0]], {}, DataError, r"1-D sequence .* got shape \[1, 2\]"),
    ([1, 0], [1, 0], {"confidence": 0}, ConfigError, "confidence=0 is out of range"),
    ([1, 0], [1, 0], {"seed": -1}, ConfigError, "seed=-1 is out of range"),
    ([1, 0], [1, 0], {"interval": "wald"}, ConfigError, "interval='wald' is not allowed; allowed: 'bootstrap', 'exact'"),
])
def test_paired_comparison_bad_input(a, b, kw, error, match):
    with pytest.raises(error, match=match):
        paired_comparison(a, b, **kw)
