"""The statistics behind the claims (catapults.experiments.stats) against independent
references: numpy / scipy / scikit-learn and brute-force enumeration."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from catapults.experiments import stats


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few = list(rng.normal(1.0, 1.0, 3))
    many = list(rng.normal(1.0, 1.0, 40))
    lo3, hi3 = stats.bootstrap_interval(few)
    lo40, hi40 = stats.bootstrap_interval(many)
    assert lo3 <= np.mean(few) <= hi3 and lo40 <= np.mean(many) <= hi40
    assert hi40 - lo40 < hi3 - lo3
    # the percentile interval of the mean of 40 normals is near +-1.96 sd/sqrt(n)
    half = 1.96 * np.std(many, ddof=1) / math.sqrt(len(many))
    assert (hi40 - lo40) / 2 == pytest.approx(half, rel=0.2)
    assert stats.bootstrap_interval([2.5, 2.5]) == (2.5, 2.5)
    assert stats.bootstrap_interval(few) == stats.bootstrap_interval(few)  # fixed generator
    with pytest.raises(ValueError):
        stats.bootstrap_interval([])


def test_bootstrap_interval_of_two_values_by_enumeration():
    """With two seeds the bootstrap means are a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4:
    the 95% percentile interval is [a, b]."""
    assert stats.bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)


@pytest.mark.parametrize("op,thr,per_seed,status", [
    (">=", 0.5, [0.6, 0.7, 0.8], "pass"),
    (">=", 0.5, [0.4, 0.7, 0.8], "fail"),  # mean 0.63 >= 0.5, but the interval is not
    ("<=", 2.0, [1.0, 1.5, 1.9], "pass"),
    ("<=", 2.0, [1.0, 2.5, 1.9], "fail"),
    (">", 0.0, [0.1, 0.2, 0.3], "pass"),
    (">", 0.0, [0.0, 0.0, 0.0], "fail"),  # no effect is not a gain
    ("<", 0.0, [-0.1, -0.2, -0.3], "pass"),
    ("==", 1.0, [1.0, 1.0, 1.0], "pass"),
    ("==", 1.0, [1.0, 0.0, 1.0], "fail"),
    (">=", 0.5, [0.9], "not run"),  # one seed: no interval
    (">=", 0.5, [None, math.nan, math.inf], "not run"),  # every run diverged
])
def test_decide(op, thr, per_seed, status):
    d = stats.decide(per_seed, op, thr)
    assert d.status == status
    if status == "not run":
        assert d.interval is None and "at least 2" in d.reason
    else:
        assert d.interval[0] <= d.value <= d.interval[1]


def test_spearman_against_scipy_with_ties_and_the_level_rule():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.integers(0, 6, 12).astype(float)
        y = rng.normal(size=12).round(1)
        if len(set(x)) < 5:
            assert stats.spearman(x, y) is None
            continue
        assert stats.spearman(list(x), list(y)) == pytest.approx(spearmanr(x, y).statistic)
    # fewer than 5 levels: a random order would pass |rho| >= 0.6 too often
    assert stats.spearman([1, 2, 3, 4], [1, 2, 3, 4]) is None
    assert stats.spearman([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4, 5], [5, 5, 5, 5, 5]) is None
    assert stats.spearman([1, 2, None, 4, 5, 6], [1, 2, 3, math.nan, 5, 6]) is None


def test_random_order_passes_the_rank_threshold_as_often_as_the_docstring_says():
    """The module's reason for 5 levels, by enumerating every order: P(rho >= 0.6) is 0.21
    over 4 points, 0.175 over 5 and 0.12 over 6 (the level rule switched off)."""
    for n, expected in [(4, 0.21), (5, 0.175), (6, 0.12)]:
        base = list(range(n))
        hits = [stats.spearman(base, list(p), min_levels=1) >= 0.6
                for p in itertools.permutations(base)]
        assert sum(hits) / len(hits) == pytest.approx(expected, abs=0.01)


def test_paired_differences_and_effect_size():
    d = stats.paired_differences([1.0, 2.0, None, 4.0], [0.5, 1.0, 1.0, math.inf])
    assert d == [0.5, 1.0, None, None]
    vals = [0.5, 1.0, 1.5]
    assert stats.effect_size(vals) == pytest.approx(np.mean(vals) / np.std(vals, ddof=1))
    assert stats.effect_size([0.3]) is None
    assert stats.effect_size([0.2, 0.2]) == math.inf
    with pytest.raises(ValueError):
        stats.paired_differences([1.0], [1.0, 2.0])


def test_auc_against_scikit_learn():
    rng = np.random.default_rng(2)
    for _ in range(10):
        labels = rng.random(50) < 0.3
        scores = (rng.normal(size=50) + labels).round(1)  # ties included
        assert stats.auc(list(scores), list(labels)) == pytest.approx(
            roc_auc_score(labels, scores))
    assert stats.auc([0.1, 0.2], [True, True]) is None


def test_within_slope_is_the_fixed_effects_regression():
    """Against a least-squares fit with one dummy per level (numpy lstsq)."""
    rng = np.random.default_rng(3)
    groups, X, Y, L = [], [], [], []
    for _seed in range(4):
        g = []
        for level in (2, 4, 8):
            x = float(rng.integers(0, 5))
            y = 0.3 * x + level + rng.normal(0, 0.1)
            g.append((level, x, y))
            X.append(x)
            Y.append(y)
            L.append(level)
        groups.append(g)
    design = np.column_stack([np.array(X)] + [np.array(L) == lv for lv in (2, 4, 8)])
    coef = np.linalg.lstsq(design.astype(float), np.array(Y), rcond=None)[0]
    assert stats.within_slope(groups) == pytest.approx(coef[0])
    assert stats.within_slope([[(1, 2.0, 1.0), (2, 3.0, 5.0)]]) is None  # no variation within


def test_decide_resampled_cluster_bootstrap():
    rng = np.random.default_rng(4)
    groups = [[(lv, float(x), 0.5 * x + rng.normal(0, 0.05)) for lv in (1, 2)
               for x in rng.integers(0, 4, 3)] for _ in range(5)]
    d = stats.decide_resampled(groups, stats.within_slope, ">", 0.0)
    assert d.status == "pass" and d.interval[0] <= d.value <= d.interval[1]
    assert d.value == pytest.approx(0.5, abs=0.1)
    flat = [[(1, 1.0, 0.0), (2, 1.0, 0.0)]] * 3  # x never varies: the slope is undefined
    assert stats.decide_resampled(flat, stats.within_slope, ">", 0.0).status == "not run"
    assert stats.decide_resampled(groups[:1], stats.within_slope, ">", 0.0).status == "not run"
