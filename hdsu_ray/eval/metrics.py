"""Evaluation metrics as pure functions of per-sample numpy values (no torch, no Ray).

Every function takes arrays that were computed once per item (MCQ correctness from
:mod:`hdsu_ray.eval.mcq`, MIA scores from :mod:`hdsu_ray.eval.sample_stats`) and returns a Python
``float``, a small ``dict`` or a tuple. A metric that cannot be computed from its inputs (empty
set, zero denominator, missing reference) returns an :class:`Absent` that says why -- never a
placeholder number. Invalid input (wrong shapes, NaN scores, values outside their range) raises
``ValueError``: that is a bug upstream, not a missing measurement.

Definitions, orientations and sources: ``docs/metrics.md``.

MIA orientation used throughout (OpenUnlearning's): a score is *higher for more
non-member-like* samples (e.g. the loss); the **members are the forget set** (the data the model
was trained on and must unlearn), the **non-members a held-out set** of the same distribution.
``mia_auc`` treats non-members as the positive class, so it equals
``P(score(non-member) > score(member))`` (ties count 1/2): about 1 while the forget set is still
memorised, 0.5 when the two sets are indistinguishable (ideal), below 0.5 when the forget set now
looks *less* familiar than unseen data (over-unlearning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Absent",
    "is_absent",
    "to_json",
    "accuracy",
    "forget_rate",
    "knowledge_preservation",
    "per_level_preservation",
    "mia_auc",
    "mia_resistance",
    "privleak",
    "bootstrap_ci",
    "mean_and_spread",
    "N_LEVELS",
]

N_LEVELS = 5  # dominant hierarchy level of an item: 0 (no concept) .. 4 (hierarchy/levels.yaml)


@dataclass(frozen=True)
class Absent:
    """A metric that could not be computed, and why. It is not a number: ``float()`` and
    arithmetic on it raise ``TypeError``, so a missing value cannot slip into a mean."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"value": None, "absent": self.reason}


def is_absent(x: Any) -> bool:
    return isinstance(x, Absent)


def to_json(x: Any) -> Any:
    """Recursively turn a metric result into JSON-ready values: :class:`Absent` -> its
    ``to_json()``, numpy scalars -> Python numbers, tuples -> lists, dict keys -> ``str``."""
    if isinstance(x, Absent):
        return x.to_json()
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return [to_json(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return x.item()
    return x


# --------------------------------------------------------------------------- input checks


def _bool_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        a = a.astype(bool)
    return a


def _score_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _check_unit(x: float, name: str) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {x}")
    return x


# --------------------------------------------------------------------------- accuracy family


def accuracy(correct: Any) -> float | Absent:
    """Share of items answered correctly; :class:`Absent` for an empty set."""
    c = _bool_array(correct, "correct")
    if c.size == 0:
        return Absent("no items")
    return float(c.mean())


def forget_rate(after_forget_correct: Any) -> float | Absent:
    """``1 - accuracy(forget set, after unlearning)`` (paper notes section 3: 100 - 17.3 = 82.7)."""
    acc = accuracy(after_forget_correct)
    if is_absent(acc):
        return Absent(f"forget accuracy absent: {acc.reason}")
    return 1.0 - acc


def _same_items(before: np.ndarray, after: np.ndarray) -> None:
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} must score the same items")


def knowledge_preservation(before_retain_correct: Any, after_retain_correct: Any) -> float | Absent:
    """``acc_retain(after) / acc_retain(before)`` on the same retain items.

    :class:`Absent` for an empty retain set or a before-accuracy of 0 (the ratio is undefined).
    Can exceed 1 when unlearning happens to fix retain items.
    """
    before = _bool_array(before_retain_correct, "before_retain_correct")
    after = _bool_array(after_retain_correct, "after_retain_correct")
    _same_items(before, after)
    if before.size == 0:
        return Absent("no retain items")
    acc_before = float(before.mean())
    if acc_before == 0.0:
        return Absent("retain accuracy before unlearning is 0")
    return float(after.mean()) / acc_before


def per_level_preservation(before_correct: Any, after_correct: Any, levels: Any,
                           n_levels: int = N_LEVELS) -> dict[int, dict[str, Any]]:
    """Accuracy before/after and their ratio for the items of each hierarchy level.

    Args:
        before_correct, after_correct: ``[N]`` bool per item, same items in the same order.
        levels: ``[N]`` int, each item's dominant concept level ``0 .. n_levels - 1``.

    Returns:
        ``{level: {"n": int, "before": float|Absent, "after": float|Absent,
        "preservation": float|Absent}}`` for every level ``0 .. n_levels - 1`` (a fixed shape
        for reports; an empty level has ``n = 0`` and Absent values).
    """
    before = _bool_array(before_correct, "before_correct")
    after = _bool_array(after_correct, "after_correct")
    _same_items(before, after)
    lv = np.asarray(levels)
    if lv.shape != before.shape:
        raise ValueError(f"levels {lv.shape} must match the items {before.shape}")
    if lv.size and (not np.issubdtype(lv.dtype, np.integer) or lv.min() < 0 or lv.max() >= n_levels):
        raise ValueError(f"levels must be integers in 0..{n_levels - 1}")
    out: dict[int, dict[str, Any]] = {}
    for level in range(n_levels):
        sel = lv == level
        n = int(sel.sum())
        out[level] = {"n": n, "before": accuracy(before[sel]), "after": accuracy(after[sel]),
                      "preservation": knowledge_preservation(before[sel], after[sel])}
    return out


# --------------------------------------------------------------------------- membership inference


def mia_auc(member_scores: Any, nonmember_scores: Any) -> float | Absent:
    """ROC AUC of a membership-inference attack.

    Scores are *higher = more non-member-like* (LOSS, zlib, Min-k, Min-k++ from
    :func:`hdsu_ray.eval.sample_stats.sequence_stats`). Members (forget set) get label 0,
    non-members (holdout) label 1, so the result is ``P(nonmember score > member score)`` with
    ties counted 1/2 (sklearn ``roc_auc_score``; as OpenUnlearning). 0.5 = no leak; -> 1 = the
    forget set is still recognisably memorised; < 0.5 = over-unlearned (forget set looks
    less familiar than unseen data).

    :class:`Absent` if either set is empty; ``ValueError`` on non-finite scores (a sample with
    no answer token scores NaN in ``sequence_stats``: drop it explicitly before calling).
    """
    m = _score_array(member_scores, "member_scores")
    nm = _score_array(nonmember_scores, "nonmember_scores")
    if m.size == 0 or nm.size == 0:
        return Absent(f"need members and non-members, got {m.size} and {nm.size}")
    bad = int((~np.isfinite(m)).sum() + (~np.isfinite(nm)).sum())
    if bad:
        raise ValueError(f"{bad} non-finite MIA scores")
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.zeros(m.size), np.ones(nm.size)])
    return float(roc_auc_score(y, np.concatenate([m, nm])))


def mia_resistance(auc: float | Absent) -> float | Absent:
    """``1 - 2 |AUC - 0.5|``: 1 at chance (ideal), 0 at AUC 0 or 1 (paper notes section 3:
    AUC 0.555 -> 0.89). Symmetric, so it does not tell under- from over-unlearning."""
    if is_absent(auc):
        return Absent(f"MIA AUC absent: {auc.reason}")
    a = _check_unit(auc, "auc")
    return 1.0 - 2.0 * abs(a - 0.5)


def privleak(auc_unlearned: float | Absent, auc_retrain: float | Absent | None) -> float | Absent:
    """MUSE PrivLeak in %: ``(AUC_unl - AUC_retrain) / AUC_retrain * 100`` in MUSE's orientation.

    Both arguments are :func:`mia_auc` values (our orientation, forget = members). MUSE scores
    the ROC the other way round (forget = non-member, ``roc_curve(y, -score)``), which is
    ``1 - mia_auc``; this function converts both AUCs to that orientation first, exactly as
    OpenUnlearning's ``privleak`` does, so signs read as in the MUSE and OpenUnlearning tables:
    about 0 is ideal, << 0 under-unlearned (forget set still memorised; the target model gives
    about -100), >> 0 over-unlearned.

    :class:`Absent` without a retrain (oracle) AUC -- no 0.5 default is substituted -- or when
    the retrain AUC makes the denominator 0 (``auc_retrain == 1``).
    """
    if auc_retrain is None:
        return Absent("no retrain-model AUC (privleak needs the oracle retrained without the forget set)")
    if is_absent(auc_retrain):
        return Absent(f"retrain AUC absent: {auc_retrain.reason}")
    if is_absent(auc_unlearned):
        return Absent(f"unlearned-model AUC absent: {auc_unlearned.reason}")
    unl = 1.0 - _check_unit(auc_unlearned, "auc_unlearned")
    ref = 1.0 - _check_unit(auc_retrain, "auc_retrain")
    if ref == 0.0:
        return Absent("retrain AUC in MUSE orientation is 0 (division by zero)")
    return (unl - ref) / ref * 100.0


# --------------------------------------------------------------------------- uncertainty


def bootstrap_ci(values: Any, stat: Callable[[np.ndarray], Any] = np.mean, n: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | Absent:
    """Percentile bootstrap confidence interval of ``stat(values)``.

    Resamples the items with replacement ``n`` times from ``numpy.random.default_rng(seed)``
    (same inputs and seed -> same interval) and returns the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the resampled statistic. :class:`Absent` for an empty sample.
    """
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if v.size == 0:
        return Absent("no values to resample")
    if n < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need n >= 1 and 0 < alpha < 1")
    if v.dtype == bool:
        v = v.astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(n, dtype=np.float64)
    for i in range(n):
        stats[i] = float(stat(v[rng.integers(0, v.size, size=v.size)]))
    if not np.isfinite(stats).all():
        raise ValueError("stat returned a non-finite value on a resample")
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def mean_and_spread(values: Sequence[float | Absent]) -> dict[str, Any]:
    """Aggregate one metric over seeds: ``{"mean", "std" (ddof=1), "n"}``.

    ``std`` is :class:`Absent` for a single value; ``mean`` and ``std`` are Absent for none, and
    also when any seed's value is Absent (a mean over the remaining seeds would be biased and
    silently change n).
    """
    vals = list(values)
    n = len(vals)
    missing = [v for v in vals if is_absent(v)]
    if n == 0:
        return {"mean": Absent("no values"), "std": Absent("no values"), "n": 0}
    if missing:
        why = f"{len(missing)} of {n} values absent: {missing[0].reason}"
        return {"mean": Absent(why), "std": Absent(why), "n": n}
    a = np.asarray([float(v) for v in vals], dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("non-finite value to aggregate")
    std: float | Absent = float(a.std(ddof=1)) if n > 1 else Absent("one value: no spread (ddof=1)")
    return {"mean": float(a.mean()), "std": std, "n": n}

