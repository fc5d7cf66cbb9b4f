"""Result rows: headline numbers repeat the metrics, intervals come from the per-item arrays, and
seeds aggregate every metric (mean, spread, intervals), never seed 0's value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hdsu_ray.checks import load_workflow
from hdsu_ray.eval.records import ITEMS, aggregate_seeds, method_result, pop_items


def _eval(forget, retain, holdout=None, stats=True):
    out = {"forget": np.array(forget, bool), "retain": np.array(retain, bool)}
    if holdout is not None:
        out["holdout"] = np.array(holdout, bool)
    if stats:
        rng = np.random.default_rng(len(forget))
        mk = lambda n, shift: {a: rng.normal(shift, 1, n) for a in ("loss", "zlib", "min_k", "min_k_pp")} | {
            "n_tokens": np.full(n, 3), "exact_memorization": np.full(n, 0.5), "extraction_strength": np.full(n, 0.2)}
        out["stats"] = {"forget": mk(len(forget), 0.0), "holdout": mk(len(holdout or []), 1.0)}
    out["perplexity"] = None
    return out


@pytest.fixture(scope="module")
def workflow():
    return load_workflow("workflows/smoke.yaml", ["evaluate.thresholds={forget_rate: 0.5, mia_auc_min_k: 0.1}"])


def _row(workflow, seed, after_forget):
    from dataclasses import replace

    before = _eval([1] * 8, [1, 1, 1, 1, 0, 1, 1, 1], [0, 1, 0, 0])
    after = _eval(after_forget, [1, 1, 0, 1, 0, 1, 1, 1], [0, 1, 0, 0])
    settings = {"label": "m", "curve": [{"step": 0}], "selected_step": None}
    return method_result(replace(workflow, seed=seed), settings, before, after, 0.01, 10, 1000)


def test_row_repeats_the_metrics_and_carries_intervals(workflow):
    row = _row(workflow, 0, [0, 0, 0, 1, 0, 0, 1, 0])
    assert row["forget_rate"] == row["metrics"]["forget_rate"] == pytest.approx(0.75)
    assert row["knowledge_preservation"] == pytest.approx((6 / 8) / (7 / 8))
    ci = row["ci"]
    assert ci["forget_rate"]["low"] <= 0.75 <= ci["forget_rate"]["high"]
    assert ci["knowledge_preservation"]["method"] == "paired bootstrap"
    assert ci["mia_auc_min_k"]["method"] == "stratified bootstrap"
    assert row["thresholds"]["forget_rate"]["pass"] is True
    items = pop_items(row)
    assert ITEMS not in row and items["after_forget"].dtype == bool
    json.dumps(row, allow_nan=False)  # nothing but JSON left


def test_seeds_aggregate_every_metric_and_recheck_thresholds(workflow):
    rows = [_row(workflow, 0, [0] * 8), _row(workflow, 1, [1, 1, 1, 1, 1, 0, 0, 0])]
    agg = aggregate_seeds(rows)
    # forget rate 1.0 and 0.375: the mean, not seed 0's 1.0
    assert agg["forget_rate"] == pytest.approx(0.6875)
    assert agg["metrics"]["forget_rate"] == pytest.approx(0.6875)
    assert agg["seeds"]["spread"]["forget_rate"]["values"] == pytest.approx([1.0, 0.375])
    assert agg["seeds"]["spread"]["mia_auc_min_k"]["n"] == 2  # every metric, not only the headline
    assert agg["seeds"]["spread"]["forget_rate"]["ci"]["method"] == "t"
    # the item interval resamples each question's share of seeds that still answered it
    assert agg["ci"]["forget_rate"]["low"] <= 0.6875 <= agg["ci"]["forget_rate"]["high"]
    assert agg["thresholds"]["forget_rate"]["value"] == pytest.approx(0.6875)
    assert agg[ITEMS]["after_forget"].tolist() == [0.5] * 5 + [0.0] * 3
    # the after accuracies are the seed means too (a table shows them beside the mean forget rate
    # and inside their own item interval); the first seed's own stay for the attacks on its model
    assert agg["after"]["forget_accuracy"] == pytest.approx(1 - 0.6875)
    assert agg["ci"]["forget_accuracy"]["low"] <= agg["after"]["forget_accuracy"] <= agg["ci"]["forget_accuracy"]["high"]
    assert agg["first_seed"] == {"seed": 0, "after": rows[0]["after"]} and rows[0]["after"]["forget_accuracy"] == 0.0


def test_a_metric_missing_on_one_seed_is_absent_not_an_error(workflow):
    rows = [_row(workflow, 0, [0] * 8), _row(workflow, 1, [0] * 8)]
    rows[1]["metrics"]["mia_auc_min_k"] = {"value": None, "absent": "no holdout"}
    rows[1]["metrics"]["perplexity_pubmedqa"] = float("inf")
    agg = aggregate_seeds(rows)
    assert "absent" in agg["metrics"]["mia_auc_min_k"] and "seed 1" in agg["metrics"]["mia_auc_min_k"]["absent"]
    assert "absent" in agg["metrics"]["perplexity_pubmedqa"]
    assert agg["thresholds"]["mia_auc_min_k"]["pass"] is None
