"""Confidence intervals for the evaluation metrics (pure numpy/scipy; no torch, no Ray).

Every interval is computed from the same per-item arrays as the headline value in
:mod:`hdsu_ray.eval.metrics`, so an interval always belongs to its number. Each function returns

    {"low": float, "high": float, "level": 1 - alpha, "method": str, "n_boot": int, "n": int}

or an :class:`~hdsu_ray.eval.metrics.Absent` with its reason. ``method`` is ``"percentile
bootstrap"``, ``"paired bootstrap"``, ``"stratified bootstrap"`` or ``"t"``; ``n_boot`` is the
number of resamples the quantiles were taken over (0 for ``"t"``); ``n`` the number of items (of
seeds for ``"t"``). Resampling draws from ``numpy.random.default_rng(seed)``: the same inputs and
seed give the same interval. Definitions: ``docs/metrics.md`` (section "Uncertainty and seeds").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from hdsu_ray.eval.absent import Absent, is_absent
from hdsu_ray.eval.absent import share_array as _share_array
from hdsu_ray.eval.absent import score_array as _score_array

__all__ = ["N_BOOT", "bootstrap_ci", "accuracy_ci", "forget_rate_ci", "paired_ratio_ci", "difference_ci",
           "stratified_auc_ci", "rank_auc_rows", "mean_ci_over_seeds"]

N_BOOT = 2000  # resamples per interval: the 2.5 % tail then holds 50 resamples
# The [n, N] index matrix is drawn in row chunks of at most this many entries (int64: 32 MB), so a
# large evaluation set does not allocate n * N at once. Chunks of the same generator continue one
# stream, so the indices are identical to a single [n, N] draw.
_CHUNK_ENTRIES = 4_000_000
# Statistics that take ``axis=``: computed on a whole chunk in one numpy call instead of per row.
_AXIS_STATS = (np.mean, np.median, np.sum, np.std, np.var, np.min, np.max)


# --------------------------------------------------------------------------- shared pieces


def _interval(low: float, high: float, method: str, n_boot: int, n: int, alpha: float) -> dict[str, Any]:
    return {"low": float(low), "high": float(high), "level": round(1.0 - alpha, 12), "method": method,
            "n_boot": int(n_boot), "n": int(n)}


def _check_args(n: int, alpha: float) -> None:
    if int(n) < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n >= 1 resamples and 0 < alpha < 1, got n={n}, alpha={alpha}")


def _chunk_rows(n: int, width: int) -> Iterator[int]:
    """Row counts of the chunks of an ``[n, width]`` index matrix (they sum to ``n``)."""
    step = max(1, _CHUNK_ENTRIES // max(1, width))
    for start in range(0, n, step):
        yield min(step, n - start)


def _index_chunks(rng: np.random.Generator, size: int, n: int) -> Iterator[np.ndarray]:
    """``[rows, size]`` int64 indices into ``size`` items, ``n`` rows in all (with replacement)."""
    for rows in _chunk_rows(n, size):
        yield rng.integers(0, size, size=(rows, size))


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _row_stat(sample: np.ndarray, stat: Callable[[np.ndarray], Any]) -> np.ndarray:
    """``stat`` of each row of ``sample [B, N]`` -> ``[B]`` float64."""
    if any(stat is s for s in _AXIS_STATS):
        return np.asarray(stat(sample, axis=1), dtype=np.float64)
    return np.fromiter((float(stat(row)) for row in sample), dtype=np.float64, count=len(sample))


# --------------------------------------------------------------------------- item-level bootstraps


def bootstrap_ci(values: Any, stat: Callable[[np.ndarray], Any] = np.mean, n: int = N_BOOT, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Percentile bootstrap interval of ``stat(values)``.

    Args:
        values: ``[N]`` per-item numbers or booleans (booleans count as 0/1).
        stat: a statistic of a ``[N]`` array. ``np.mean`` (and the other reductions in
            ``_AXIS_STATS``) run on a whole ``[rows, N]`` chunk at once; any other callable per row.
        n: resamples. seed: ``default_rng`` seed. alpha: 1 - confidence level.

    Returns:
        The interval dict (``method`` ``"percentile bootstrap"``), or :class:`Absent` for no values.
        ``ValueError`` if ``stat`` is not finite on some resample (e.g. an infinite value).
    """
    _check_args(n, alpha)
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if v.size == 0:
        return Absent("no values to resample")
    v = v.astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.concatenate([_row_stat(v[idx], stat) for idx in _index_chunks(rng, v.size, n)])
    if not np.isfinite(stats).all():
        raise ValueError("stat returned a non-finite value on a resample")
    return _interval(*_percentiles(stats, alpha), "percentile bootstrap", n, v.size, alpha)


def accuracy_ci(correct: Any, n: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Bootstrap interval of :func:`~hdsu_ray.eval.metrics.accuracy`; ``correct`` is ``[N]`` bool,
    or each item's share of seeds that answered it right."""
    c = _share_array(correct, "correct")
    if c.size == 0:
        return Absent("no items")
    return bootstrap_ci(c, n=n, seed=seed, alpha=alpha)


def forget_rate_ci(after_forget_correct: Any, n: int = N_BOOT, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Interval of ``1 - accuracy``: the accuracy interval mirrored (its bounds swap)."""
    acc = accuracy_ci(after_forget_correct, n=n, seed=seed, alpha=alpha)
    if is_absent(acc):
        return Absent(f"forget accuracy interval absent: {acc.reason}")
    return {**acc, "low": 1.0 - acc["high"], "high": 1.0 - acc["low"]}


def paired_ratio_ci(before_correct: Any, after_correct: Any, n: int = N_BOOT, seed: int = 0,
                    alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Paired bootstrap interval of knowledge preservation ``acc(after) / acc(before)``.

    Each resample draws one index vector and applies it to both arrays, so an item's before and
    after answers stay together (the ratio's noise largely cancels; an unpaired bootstrap would
    add the two accuracies' variances). Resamples whose before-accuracy is 0 have no ratio and
    are dropped; ``n_boot`` counts the resamples kept.

    Args:
        before_correct, after_correct: ``[N]`` bool (or shares of seeds in [0, 1]), the same
            items in the same order.

    Returns:
        The interval dict (``"paired bootstrap"``), or :class:`Absent` for no items or when every
        resample has before-accuracy 0.
    """
    _check_args(n, alpha)
    before = _share_array(before_correct, "before_correct")
    after = _share_array(after_correct, "after_correct")
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} must score the same items")
    if before.size == 0:
        return Absent("no items")
    rng = np.random.default_rng(seed)
    ratios = []
    for idx in _index_chunks(rng, before.size, n):
        b, a = before[idx].mean(axis=1), after[idx].mean(axis=1)
        keep = b > 0
        ratios.append(a[keep] / b[keep])
    r = np.concatenate(ratios)
    if r.size == 0:
        return Absent("accuracy before is 0 in every resample (no ratio)")
    return _interval(*_percentiles(r, alpha), "paired bootstrap", r.size, before.size, alpha)


def difference_ci(a: Any, b: Any, n: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Paired bootstrap interval of ``mean(a) - mean(b)`` over the same items (two models, one set).

    The mean of the paired differences equals the difference of the means, so this resamples
    ``a - b`` (``[N]`` numbers or booleans each, same items in the same order).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a {x.shape} and b {y.shape} must be 1-D over the same items")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("non-finite values in a or b")
    ci = bootstrap_ci(x - y, n=n, seed=seed, alpha=alpha)
    return ci if is_absent(ci) else {**ci, "method": "paired bootstrap"}


# --------------------------------------------------------------------------- MIA AUC


def _auc_from_codes(members: np.ndarray, nonmembers: np.ndarray, n_codes: int) -> np.ndarray:
    """Row AUCs of scores already replaced by their dense rank codes ``0 .. n_codes - 1``.

    Per row, a histogram of the member codes gives for each code how many members score lower
    (exclusive cumulative sum) and equal; summing ``lower + equal / 2`` over the non-members is
    the Mann-Whitney count. O(B (m + k + n_codes)) with no per-row sort.
    """
    rows, (m, k) = members.shape[0], (members.shape[1], nonmembers.shape[1])
    offsets = np.arange(rows)[:, None] * n_codes
    counts = np.bincount((members + offsets).ravel(), minlength=rows * n_codes).reshape(rows, n_codes)
    lower = np.cumsum(counts, axis=1) - counts
    r = np.arange(rows)[:, None]
    wins = lower[r, nonmembers].sum(axis=1) + 0.5 * counts[r, nonmembers].sum(axis=1)
    return wins / (m * k)


def rank_auc_rows(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """AUC of each row, non-members positive: ``P(nonmember > member)``, ties counting 1/2.

    The Mann-Whitney count on ranks, equal to :func:`~hdsu_ray.eval.metrics.mia_auc` (sklearn
    ``roc_auc_score`` with non-members as label 1) on every row, for all rows at once.

    Args:
        members: ``[B, m]`` scores. nonmembers: ``[B, k]`` scores (higher = more non-member-like).

    Returns:
        ``[B]`` float64.
    """
    members, nonmembers = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if (members.ndim != 2 or nonmembers.ndim != 2 or members.shape[0] != nonmembers.shape[0]
            or 0 in members.shape[1:] + nonmembers.shape[1:]):
        raise ValueError(f"need [B, m >= 1] and [B, k >= 1] scores, got {members.shape} and {nonmembers.shape}")
    values, codes = np.unique(np.concatenate([members, nonmembers], axis=1), return_inverse=True)
    codes = codes.reshape(members.shape[0], -1)
    m = members.shape[1]
    return _auc_from_codes(codes[:, :m], codes[:, m:], values.size)


def stratified_auc_ci(member_scores: Any, nonmember_scores: Any, n: int = N_BOOT, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Stratified bootstrap interval of the MIA AUC.

    Members and non-members are resampled separately (each keeps its size), as the AUC is a
    statistic of two samples: pooling them would let a resample change the class balance or lose
    a class. The two index streams come from two child seeds of ``seed``.

    Args:
        member_scores: ``[m]`` forget-set scores. nonmember_scores: ``[k]`` holdout scores.

    Returns:
        The interval dict (``"stratified bootstrap"``, ``n = m + k``), or :class:`Absent` if a
        group is empty. ``ValueError`` on non-finite scores, as ``mia_auc``.
    """
    _check_args(n, alpha)
    mem = _score_array(member_scores, "member_scores")
    non = _score_array(nonmember_scores, "nonmember_scores")
    if mem.size == 0 or non.size == 0:
        return Absent(f"need members and non-members, got {mem.size} and {non.size}")
    if not (np.isfinite(mem).all() and np.isfinite(non).all()):
        raise ValueError("non-finite MIA scores")
    # Resamples only repeat the original scores, so rank them once: dense codes of the pooled set.
    values, codes = np.unique(np.concatenate([mem, non]), return_inverse=True)
    code_m, code_n = codes[:mem.size], codes[mem.size:]
    rng_m, rng_n = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    aucs = []
    for rows in _chunk_rows(n, mem.size + non.size + values.size):
        im = rng_m.integers(0, mem.size, size=(rows, mem.size))
        jn = rng_n.integers(0, non.size, size=(rows, non.size))
        aucs.append(_auc_from_codes(code_m[im], code_n[jn], values.size))
    stats = np.concatenate(aucs)
    return _interval(*_percentiles(stats, alpha), "stratified bootstrap", n, mem.size + non.size, alpha)


# --------------------------------------------------------------------------- over seeds


def mean_ci_over_seeds(values: Sequence[Any], alpha: float = 0.05) -> dict[str, Any] | Absent:
    """Student-t interval of the mean over seeds: ``mean +- t_{1-alpha/2, n-1} * s / sqrt(n)``.

    A few seeds are too few to bootstrap, hence t. ``values``: one number per seed.

    Returns:
        The interval dict (``"t"``, ``n_boot`` 0, ``n`` seeds), or :class:`Absent` for fewer than
        two seeds or when any seed's value is absent, ``None`` or not finite.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"need 0 < alpha < 1, got {alpha}")
    vals = list(values)
    for i, v in enumerate(vals):
        if is_absent(v):
            return Absent(f"seed {i} absent: {v.reason}")
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
            return Absent(f"seed {i} has no finite value ({v!r})")
    if len(vals) < 2:
        return Absent(f"{len(vals)} seed(s): a t-interval needs at least 2")
    from scipy.stats import t as student_t

    a = np.asarray(vals, dtype=np.float64)
    half = float(student_t.ppf(1.0 - alpha / 2.0, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(a.size)
    mean = float(a.mean())
    return _interval(mean - half, mean + half, "t", 0, a.size, alpha)
