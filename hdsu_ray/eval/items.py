"""Per-item values of a run, and the confidence intervals computed from them.

Every interval in ``results.json`` comes from these arrays: per-question correctness before and
after unlearning on each set, and the membership-inference scores of the forget and holdout
answers. A run saves them (``items/<run>.npz``) so any interval can be recomputed or another
test run on the same items later. With several seeds the same items are answered by several
models; an item's correctness is then the share of seeds that got it right, and the intervals
resample items (seed-to-seed spread is reported beside them, as a t-interval over seeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hdsu_ray.eval.absent import Absent, to_json
from hdsu_ray.eval.intervals import accuracy_ci, difference_ci, forget_rate_ci, paired_ratio_ci, stratified_auc_ci

# Evaluated set -> its accuracy metric ("retain" is the reported retain_test).
ACCURACY = {"forget": "forget_accuracy", "retain": "retain_accuracy", "retain_val": "retain_val_accuracy",
            "holdout": "holdout_accuracy", "forget_shuffled": "shuffled_forget_accuracy",
            "forget_fresh": "fresh_distractor_forget_accuracy", "mmlu": "mmlu_medical_accuracy",
            "pubmedqa": "pubmedqa_accuracy"}
SETS = tuple(ACCURACY)
ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


def item_arrays(before: dict, after: dict) -> dict[str, np.ndarray]:
    """``{"before_<set>", "after_<set>": [N] bool, "after_<set>_<attack>": [N] scores}``."""
    out = {f"{when}_{name}": np.asarray(ev[name], dtype=bool)
           for when, ev in (("before", before), ("after", after)) for name in SETS if name in ev}
    for name, stats in (after.get("stats") or {}).items():
        keep = np.asarray(stats["n_tokens"]) > 0  # an item with no answer token has no score
        for attack in ATTACKS:
            out[f"after_{name}_{attack}"] = np.asarray(stats[attack], dtype=np.float64)[keep]
    return out


def mean_over_seeds(per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Correctness arrays as each item's share of seeds answering it right (scores are dropped:
    an AUC of averaged scores is no seed's AUC)."""
    keys = [k for k in per_seed[0] if k.split("_", 1)[1] in SETS]
    return {k: np.mean([np.asarray(items[k], dtype=np.float64) for items in per_seed], axis=0) for k in keys}


def intervals(items: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON-ready 95 % intervals of the metrics the items decide; Absent where they cannot."""
    ci: dict[str, Any] = {}
    for when in ("before", "after"):
        for name in SETS:
            if f"{when}_{name}" in items:
                key = ACCURACY[name] if when == "after" else f"before_{ACCURACY[name]}"
                ci[key] = accuracy_ci(items[f"{when}_{name}"])
    ci["forget_rate"] = forget_rate_ci(items["after_forget"])
    ci["knowledge_preservation"] = paired_ratio_ci(items["before_retain"], items["after_retain"])
    for attack in ATTACKS:
        f, h = items.get(f"after_forget_{attack}"), items.get(f"after_holdout_{attack}")
        ci[f"mia_auc_{attack}"] = (stratified_auc_ci(f, h) if f is not None and h is not None
                                   else Absent("no per-item MIA scores (no holdout set, or several seeds)"))
    return to_json(ci)


def paired_differences(items: dict[str, dict[str, np.ndarray]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``{"a - b": {metric: {"diff", "low", "high", ...}}}``: a paired bootstrap of each
    difference of accuracies over the same items (forget and reported retain rows), from each
    method's per-item correctness (seed-averaged when there are several seeds). An interval that
    excludes 0 is a difference the items support; one that spans 0 is not."""
    out: dict[str, Any] = {}
    for a, b in pairs:
        if a not in items or b not in items:
            continue
        entry = {}
        for name, key in (("forget_accuracy", "after_forget"), ("retain_accuracy", "after_retain")):
            x, y = np.asarray(items[a][key], np.float64), np.asarray(items[b][key], np.float64)
            ci = difference_ci(x, y)
            entry[name] = to_json({"diff": float(x.mean() - y.mean()), **ci} if isinstance(ci, dict) else ci)
        out[f"{a} - {b}"] = entry
    return out
