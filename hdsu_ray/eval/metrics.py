"""Evaluation metrics as pure functions of per-sample numpy values (no torch, no Ray).

Every function takes arrays that were computed once per item (MCQ correctness from
:mod:`hdsu_ray.eval.mcq`, MIA scores from :mod:`hdsu_ray.eval.sample_stats`) and returns a Python
``float``, a small ``dict`` or a tuple. A metric that cannot be computed from its inputs (empty
set, zero denominator, missing reference) returns an :class:`Absent` that says why -- never a
placeholder number. Invalid input (wrong shapes, NaN scores, values outside their range) raises
``ValueError``: that is a bug upstream, not a missing measurement.

Definitions, orientations and sources: ``docs/metrics.md``. Confidence intervals of these
metrics: :mod:`hdsu_ray.eval.intervals`; which way each metric is better:
:mod:`hdsu_ray.eval.directions`; :class:`Absent` itself: :mod:`hdsu_ray.eval.absent`.

MIA orientation used throughout (OpenUnlearning's): a score is *higher for more
non-member-like* samples (e.g. the loss); the **members are the forget set** (the data the model
was trained on and must unlearn), the **non-members a held-out set** of the same distribution.
``mia_auc`` treats non-members as the positive class, so it equals
``P(score(non-member) > score(member))`` (ties count 1/2): about 1 while the forget set is still
memorised, 0.5 when the two sets are indistinguishable (ideal), below 0.5 when the forget set now
looks *less* familiar than unseen data (over-unlearning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hdsu_ray.eval.absent import Absent, is_absent, to_json
from hdsu_ray.eval.absent import bool_array as _bool_array
from hdsu_ray.eval.absent import score_array as _score_array

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
    "mean_and_spread",
    "aggregate_seeds_metrics",
    "N_LEVELS",
]

N_LEVELS = 5  # dominant hierarchy level of an item: 0 (no concept) .. 4 (hierarchy/levels.yaml)


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


# --------------------------------------------------------------------------- seeds


def _is_json_absent(v: Any) -> bool:
    return isinstance(v, dict) and "absent" in v and v.get("value") is None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _seed_value(v: Any) -> float | Absent:
    """One seed's value as a finite float, or an :class:`Absent` saying why it is none.

    Accepts what a result dict holds: numbers, Absent, its JSON form ``{"value": None, "absent":
    reason}`` (``to_json`` output) and ``None`` (a key the seed lacks).
    """
    if is_absent(v):
        return v
    if v is None:
        return Absent("missing")
    if _is_json_absent(v):
        return Absent(str(v["absent"]))
    if not _is_number(v):
        return Absent(f"not a number ({type(v).__name__})")
    if not math.isfinite(float(v)):
        return Absent(f"not finite ({float(v)})")
    return float(v)


def mean_and_spread(values: Sequence[Any], seeds: Sequence[Any] | None = None) -> dict[str, Any]:
    """Aggregate one metric over seeds: ``{"mean", "std" (ddof=1), "n", "values"}``. Never raises.

    Args:
        values: one value per seed (a number, :class:`Absent`, its JSON form, or ``None``).
        seeds: labels of the seeds for the reasons (default: positions 0, 1, ...).

    Returns:
        ``n`` is the number of seeds given; ``values`` the per-seed values as finite floats or
        Absent (``None``, non-finite values and non-numbers become Absent with their reason).
        ``mean`` and ``std`` are Absent when any seed's value is absent -- a mean over the
        remaining seeds would silently change n -- with a reason that names those seeds; ``std``
        alone is Absent for a single seed.
    """
    vals = [_seed_value(v) for v in values]
    labels = list(seeds) if seeds is not None else list(range(len(vals)))
    n = len(vals)
    if n == 0:
        return {"mean": Absent("no values"), "std": Absent("no values"), "n": 0, "values": []}
    bad = [(label, v.reason) for label, v in zip(labels, vals) if is_absent(v)]
    if bad:
        why = f"absent on {len(bad)} of {n} seeds (" + "; ".join(f"seed {s}: {r}" for s, r in bad) + ")"
        return {"mean": Absent(why), "std": Absent(why), "n": n, "values": vals}
    a = np.asarray(vals, dtype=np.float64)
    std: float | Absent = float(a.std(ddof=1)) if n > 1 else Absent("one value: no spread (ddof=1)")
    return {"mean": float(a.mean()), "std": std, "n": n, "values": vals}


def _is_leaf(v: Any) -> bool:
    """A value that is a metric (or a missing one): a number, Absent or its JSON form, ``None``."""
    return v is None or is_absent(v) or _is_json_absent(v) or _is_number(v)


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Metric leaves of a nested dict under dotted keys (``per_level_preservation.2.after``).
    Strings, booleans, lists and arrays are not metrics and are left out."""
    out: dict[str, Any] = {}
    for key, v in d.items():
        name = f"{prefix}{key}"
        if _is_leaf(v):
            out[name] = v
        elif isinstance(v, dict):
            out.update(_leaves(v, f"{name}."))
    return out


def _lacking(flat: dict[str, Any], key: str) -> Absent:
    """Why a seed has no ``key``: its absent parent (``per_level_preservation`` without concept
    annotation) if it has one, else plainly missing."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = flat.get(".".join(parts[:i]))
        if parent is not None and is_absent(_seed_value(parent)):
            return _seed_value(parent)
    return Absent("missing")


def aggregate_seeds_metrics(per_seed: Sequence[dict[str, Any]],
                            seeds: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`mean_and_spread` of every metric that any seed reports.

    Args:
        per_seed: one metrics dict per seed (``method_metrics`` output, raw or ``to_json``-ed).
            Nested dicts are aggregated leaf by leaf under dotted keys
            (``per_level_preservation.1.preservation``).
        seeds: seed labels for the reasons (default: positions).

    Returns:
        ``{key: {"mean", "std", "n", "values"}}`` for every key where at least one seed holds a
        number or an Absent, in first-seen order. A seed that lacks the key (or reports ``None``,
        a non-finite or non-numeric value there) makes ``mean`` and ``std`` Absent, naming it; a
        nested key missing under an absent parent gives the parent's reason. Strings
        (``mia_attack``), booleans and lists are not aggregated.
    """
    flat = [_leaves(d) for d in per_seed]
    keys: dict[str, None] = {}
    for f in flat:
        keys.update((k, None) for k, v in f.items() if v is not None)
    # a parent absent on one seed but a dict on others only explains its children's absence
    keys = {k: None for k in keys if not any(other.startswith(f"{k}.") for other in keys)}
    return {k: mean_and_spread([f[k] if k in f else _lacking(f, k) for f in flat], seeds) for k in keys}
