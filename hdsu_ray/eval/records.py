"""Result records: one method run's row of ``results.json``, and the rows of several seeds merged.

Every number in a row comes from :func:`hdsu_ray.eval.suite.method_metrics`, computed once from
the evaluate stage's per-item values; the row's headline fields repeat those values (they are
never recomputed here), so a metric that cannot be computed is the same :class:`Absent` in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hdsu_ray.eval.directions import check
from hdsu_ray.eval.intervals import mean_ci_over_seeds
from hdsu_ray.eval.items import ACCURACY, SETS, intervals, item_arrays, mean_over_seeds
from hdsu_ray.eval.metrics import aggregate_seeds_metrics, to_json

ITEMS = "_items"  # a row's per-item arrays while it is in memory; never written to JSON


def accuracy(correct: np.ndarray) -> float | None:
    return float(np.mean(correct)) if len(correct) else None


def changed_fraction(before_dir: Path, after_dir: Path) -> tuple[float, int, int]:
    """Fraction of parameter entries that differ between two model directories (exact compare)."""
    from hdsu_ray.models.build import load_model_dir

    a, _ = load_model_dir(before_dir)
    b, _ = load_model_dir(after_dir)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    changed = sum(int((pa[n] != pb[n]).sum()) for n in pa)
    total = sum(p.numel() for p in pa.values())
    return changed / total, changed, total


def method_result(workflow, settings: dict, before: dict, after: dict, frac: float | None,
                  changed: int | None, total: int | None, *, levels=None, retrain_aucs=None,
                  oracle: dict | None = None, full: bool = True) -> dict[str, Any]:
    """One run's row. ``full=False`` (a sweep trial) computes only the accuracy metrics, with
    preservation on ``retain_val``: tuning never reads the reported retain_test rows."""
    from hdsu_ray.eval.suite import check_thresholds, headline_metrics, method_metrics

    settings = dict(settings)
    curve = settings.pop("curve", [])
    extra = {k: settings.pop(k) for k in ("selected_step", "stopped_early") if k in settings}
    if full:
        metrics = method_metrics(before, after, attack=workflow.evaluate.mia_attack, retain_levels=levels,
                                 retrain_aucs=retrain_aucs, param_fraction=frac, oracle=oracle)
    else:
        metrics = headline_metrics(before, after, retain="retain_val")
    head = to_json({k: metrics[k] for k in ("forget_rate", "knowledge_preservation")})
    items = item_arrays(before, after) if full else {}
    return {"method": settings["label"], "seed": workflow.seed, "settings": settings, "curve": curve, **extra,
            "before": {ACCURACY[k]: accuracy(before[k]) for k in SETS if k in before},
            "after": {ACCURACY[k]: accuracy(after[k]) for k in SETS if k in after},
            **head, "param_fraction": frac, "params_changed": changed, "params_total": total,
            "metrics": to_json(metrics), "ci": intervals(items) if full else {},
            "thresholds": check_thresholds(metrics, workflow.evaluate.thresholds) if full else {},
            ITEMS: items}


def pop_items(row: dict) -> dict[str, np.ndarray]:
    """Remove and return a row's per-item arrays (they go to an .npz file, not to JSON)."""
    return row.pop(ITEMS, {})


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """One row per method: the first seed's settings and curve; every metric (and the headline
    fields, and the ``after`` accuracies) as its mean over seeds, with ``{"mean", "std", "n",
    "values"}`` of each under ``seeds.spread``. A metric missing or non-finite on some seed is
    Absent, naming the seeds. ``first_seed`` keeps that seed's own ``after`` accuracies: the
    attacks run on its model, so their recovery is measured from them."""
    seeds = [r["seed"] for r in per_seed]
    out = dict(per_seed[0])
    out[ITEMS] = mean_over_seeds([r[ITEMS] for r in per_seed])
    out["ci"] = intervals(out[ITEMS])
    # From the seed-averaged items, as method_result reads one seed's and as the intervals are
    # computed: the after-columns of a table and their intervals describe the same thing.
    out["after"] = {ACCURACY[k]: accuracy(out[ITEMS][f"after_{k}"]) for k in SETS if f"after_{k}" in out[ITEMS]}
    out["first_seed"] = {"seed": seeds[0], "after": per_seed[0]["after"]}
    heads = ("forget_rate", "knowledge_preservation", "param_fraction")
    spread = to_json(aggregate_seeds_metrics([{k: r[k] for k in heads} for r in per_seed], seeds))
    metrics = to_json(aggregate_seeds_metrics([r["metrics"] for r in per_seed], seeds))
    for key in heads:
        out[key] = spread[key]["mean"]
    out["metrics"] = {**out["metrics"], **{k: v["mean"] for k, v in metrics.items() if "." not in k}}
    out["thresholds"] = {name: check(name, out["metrics"].get(name), c["threshold"])
                         for name, c in per_seed[0]["thresholds"].items()}  # on the means, not seed 0
    for values in (*spread.values(), *metrics.values()):  # seed-to-seed spread, beside the item intervals
        values["ci"] = to_json(mean_ci_over_seeds(values["values"]))
    out["seeds"] = {"values": seeds, "spread": {**spread, **metrics},
                    "per_seed": [{k: r[k] for k in ("seed", "forget_rate", "knowledge_preservation")}
                                 for r in per_seed]}
    return out
