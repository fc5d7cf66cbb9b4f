"""Confidence intervals (hdsu_ray.eval.intervals) against slow reference loops over the same random
draws, exact enumerations of tiny bootstraps, sklearn and hand-worked t-intervals."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hdsu_ray.eval import intervals
from hdsu_ray.eval.intervals import (accuracy_ci, bootstrap_ci, difference_ci, forget_rate_ci, mean_ci_over_seeds,
                                     paired_ratio_ci, rank_auc_rows, stratified_auc_ci)
from hdsu_ray.eval.metrics import Absent, is_absent, mia_auc, to_json

KEYS = {"low", "high", "level", "method", "n_boot", "n"}


def _quantiles(stats, alpha=0.05):
    return tuple(float(q) for q in np.quantile(stats, [alpha / 2, 1 - alpha / 2]))


# --------------------------------------------------------------------------- percentile bootstrap


def test_bootstrap_ci_equals_slow_loop_over_the_same_draws():
    values = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=bool)
    ci = bootstrap_ci(values, n=500, seed=7)
    idx = np.random.default_rng(7).integers(0, values.size, size=(500, values.size))  # one [n, N] draw
    ref = _quantiles([values[row].astype(float).mean() for row in idx])
    assert (ci["low"], ci["high"]) == pytest.approx(ref, abs=1e-12)
    assert set(ci) == KEYS and ci["level"] == 0.95 and ci["method"] == "percentile bootstrap"
    assert ci["n_boot"] == 500 and ci["n"] == 10
    assert ci == bootstrap_ci(values, n=500, seed=7)  # deterministic for a seed
    scores = np.random.default_rng(0).random(20)
    assert bootstrap_ci(scores, n=200, seed=1) != bootstrap_ci(scores, n=200, seed=2)  # the seed is used
    json.dumps(ci)


def test_bootstrap_ci_other_stats_and_edge_cases():
    assert (lambda c: (c["low"], c["high"]))(bootstrap_ci(np.full(6, 2.5), n=50)) == (2.5, 2.5)
    data = [1.0, 2.0, 3.0, 4.0, 10.0]
    axis = bootstrap_ci(data, stat=np.median, n=300, seed=1)  # one numpy call on the chunk
    rows = bootstrap_ci(data, stat=lambda r: float(np.median(r)), n=300, seed=1)  # per-row path
    assert axis == rows and 1.0 <= axis["low"] <= 3.0 <= axis["high"] <= 10.0
    assert is_absent(bootstrap_ci([]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, math.inf])  # an infinite item is a bug upstream, not a missing value
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], alpha=1.5)


def test_chunked_draws_equal_one_draw(monkeypatch):
    values = np.random.default_rng(0).random(37)
    whole = bootstrap_ci(values, n=101, seed=3)
    auc_whole = stratified_auc_ci(values[:20], values[20:], n=101, seed=3)
    monkeypatch.setattr(intervals, "_CHUNK_ENTRIES", 37 * 4)  # 4 rows per chunk, last one short
    assert bootstrap_ci(values, n=101, seed=3) == whole
    assert stratified_auc_ci(values[:20], values[20:], n=101, seed=3) == auc_whole


def test_accuracy_and_forget_rate_intervals_mirror():
    after = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 1], dtype=bool)
    acc, fr = accuracy_ci(after, n=400, seed=2), forget_rate_ci(after, n=400, seed=2)
    assert fr["low"] == pytest.approx(1 - acc["high"]) and fr["high"] == pytest.approx(1 - acc["low"])
    assert fr["low"] <= 0.7 <= fr["high"] and fr["method"] == "percentile bootstrap"
    assert is_absent(accuracy_ci([])) and is_absent(forget_rate_ci([]))
    with pytest.raises(ValueError):
        accuracy_ci([0, 2])


# --------------------------------------------------------------------------- paired bootstraps


def test_paired_ratio_two_items_by_hand():
    # before [1, 0], after [1, 1]: resamples (0,0) -> 1/1, (0,1) and (1,0) -> 1/0.5 = 2, (1,1) has
    # before-accuracy 0 and is dropped (1 in 4). So the ratio is 1 or 2 and about 3/4 are kept.
    ci = paired_ratio_ci([1, 0], [1, 1], n=4000, seed=0)
    assert (ci["low"], ci["high"]) == (1.0, 2.0) and ci["method"] == "paired bootstrap"
    assert abs(ci["n_boot"] - 3000) < 4 * math.sqrt(4000 * 0.25 * 0.75) and ci["n"] == 2
    # identical answers before and after: the ratio is exactly 1 in every resample (pairing)
    same = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    assert (lambda c: (c["low"], c["high"]))(paired_ratio_ci(same, same, n=300)) == (1.0, 1.0)
    assert is_absent(paired_ratio_ci([0, 0, 0], [1, 1, 0]))  # every resample has before-accuracy 0
    assert is_absent(paired_ratio_ci([], []))
    with pytest.raises(ValueError):
        paired_ratio_ci([1, 0], [1, 0, 1])


def test_paired_ratio_four_items_loop_and_enumeration():
    before = np.array([1, 1, 0, 1], dtype=bool)
    after = np.array([1, 0, 0, 1], dtype=bool)
    ci = paired_ratio_ci(before, after, n=5000, seed=5, alpha=0.5)
    # slow reference: the same index rows, the same indices for before and after
    idx = np.random.default_rng(5).integers(0, 4, size=(5000, 4))
    ratios = [after[r].mean() / before[r].mean() for r in idx if before[r].any()]
    assert (ci["low"], ci["high"]) == pytest.approx(_quantiles(ratios, 0.5), abs=1e-12)
    assert ci["n_boot"] == len(ratios)
    # exact bootstrap distribution over all 4^4 index tuples: 1 dropped, 255 ratios; its 25 % and
    # 75 % quantiles are 1/2 and 1 (CDF: 1/3 -> 47/255 < 1/4 <= 95/255 at 1/2; 3/4 -> 175/255 < 3/4)
    exact = sorted(Fraction(int(after[list(t)].sum()), int(before[list(t)].sum()))
                   for t in itertools.product(range(4), repeat=4) if before[list(t)].any())
    assert len(exact) == 255 and exact[63] == Fraction(1, 2) and exact[191] == 1
    assert (ci["low"], ci["high"]) == (0.5, 1.0)
    assert set(np.round(ratios, 12)) <= {round(float(f), 12) for f in exact}


def test_difference_ci_paired():
    a = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    assert (lambda c: (c["low"], c["high"]))(difference_ci(a, a, n=200)) == (0.0, 0.0)
    assert (lambda c: (c["low"], c["high"]))(difference_ci(np.ones(5), np.zeros(5), n=200)) == (1.0, 1.0)
    b = np.array([0, 1, 0, 0, 0, 1], dtype=bool)
    ci = difference_ci(a, b, n=1000, seed=4)
    idx = np.random.default_rng(4).integers(0, 6, size=(1000, 6))
    ref = _quantiles([a[r].mean() - b[r].mean() for r in idx])  # same items for both models
    assert (ci["low"], ci["high"]) == pytest.approx(ref, abs=1e-12) and ci["method"] == "paired bootstrap"
    with pytest.raises(ValueError):
        difference_ci([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- stratified AUC


def test_rank_auc_rows_equals_sklearn_and_mia_auc():
    rng = np.random.default_rng(11)
    members = rng.integers(0, 6, size=(8, 13)).astype(float)  # many ties
    nonmembers = rng.integers(1, 8, size=(8, 9)).astype(float)
    got = rank_auc_rows(members, nonmembers)
    assert got.shape == (8,)
    for row, (m, h) in enumerate(zip(members, nonmembers)):
        y = np.r_[np.zeros(m.size), np.ones(h.size)]  # non-members positive, as metrics.mia_auc
        assert got[row] == pytest.approx(roc_auc_score(y, np.r_[m, h]), abs=1e-12)
        assert got[row] == pytest.approx(mia_auc(m, h), abs=1e-12)
    assert rank_auc_rows(np.array([[0.1, 0.2]]), np.array([[1.0, 2.0]]))[0] == 1.0  # memorised
    assert rank_auc_rows(np.array([[1.0, 1.0]]), np.array([[1.0]]))[0] == 0.5  # ties count 1/2


def test_stratified_auc_ci_resamples_each_group_separately():
    members = np.array([0.2, 0.5, 0.5, 0.9, 1.3, 0.4, 0.8])
    nonmembers = np.array([0.6, 1.1, 0.5, 1.8, 0.9])
    ci = stratified_auc_ci(members, nonmembers, n=200, seed=9)
    rng_m, rng_n = (np.random.default_rng(s) for s in np.random.SeedSequence(9).spawn(2))
    im, jn = rng_m.integers(0, 7, size=(200, 7)), rng_n.integers(0, 5, size=(200, 5))
    pairs = lambda m, h: np.mean((h[:, None] > m[None]) + 0.5 * (h[:, None] == m[None]))  # P(h > m) + P(=)/2
    ref = _quantiles([pairs(members[i], nonmembers[j]) for i, j in zip(im, jn)])  # 7 + 5 every time
    assert (ci["low"], ci["high"]) == pytest.approx(ref, abs=1e-12)
    assert ci["method"] == "stratified bootstrap" and ci["n"] == 12 and ci["n_boot"] == 200
    assert ci["low"] <= mia_auc(members, nonmembers) <= ci["high"]
    assert is_absent(stratified_auc_ci([], [1.0])) and is_absent(stratified_auc_ci([1.0], []))
    with pytest.raises(ValueError):
        stratified_auc_ci([np.nan, 1.0], [2.0])


def test_large_sets_are_fast_enough():
    rng = np.random.default_rng(0)
    ci = stratified_auc_ci(rng.normal(size=400), rng.normal(0.3, 1, size=300), n=1000)
    assert 0.5 < ci["low"] < ci["high"] < 0.7  # true AUC = Phi(0.3 / sqrt 2) = 0.584
    assert accuracy_ci(rng.random(5000) < 0.3)["n_boot"] == 2000


# --------------------------------------------------------------------------- over seeds


def test_mean_ci_over_seeds_t_interval_by_hand():
    ci = mean_ci_over_seeds([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert (ci["low"], ci["high"]) == pytest.approx((2 - half, 2 + half))
    assert ci["method"] == "t" and ci["n_boot"] == 0 and ci["n"] == 3 and set(ci) == KEYS
    same = mean_ci_over_seeds([0.4, 0.4])
    assert (same["low"], same["high"]) == pytest.approx((0.4, 0.4))
    for bad in ([0.5], [], [0.5, Absent("no holdout")], [0.5, None], [0.5, math.inf]):
        out = mean_ci_over_seeds(bad)
        assert is_absent(out) and out.reason and to_json(out)["value"] is None
