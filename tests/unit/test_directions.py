"""The one table of metric directions (hdsu_ray.eval.directions): thresholds, best values and Pareto
fronts read every metric the same way, target metrics by distance to their target."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from hdsu_ray.eval.directions import (METRICS, Metric, better, check, direction, directions_markdown, known,
                                      pareto_front, rank_key)
from hdsu_ray.eval.metrics import Absent

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# Every metric name eval/suite.py::method_metrics produces today, and the result/comparison columns.
PRODUCED = ["forget_accuracy", "retain_accuracy", "forget_rate", "knowledge_preservation", "holdout_accuracy",
            "param_fraction", "mia_auc_loss", "mia_auc_zlib", "mia_auc_min_k", "mia_auc_min_k_pp",
            "mia_resistance", "privleak", "exact_memorization", "extraction_strength", "perplexity_pubmedqa",
            "after_forget_accuracy", "after_retain_accuracy", "params_changed"]


def test_table_covers_every_produced_metric():
    assert all(known(name) for name in PRODUCED), [n for n in PRODUCED if not known(n)]
    assert {m.kind for m in METRICS.values()} == {"max", "min", "target"}
    assert all(isinstance(m, Metric) and m.help for m in METRICS.values())
    for later in ("truth_ratio", "forget_quality", "shuffled_forget_accuracy", "pubmedqa_accuracy"):
        assert known(later)
    with pytest.raises(ValueError):
        Metric("x", "target", None, "a target metric needs its target")
    with pytest.raises(ValueError):
        Metric("x", "up", None, "unknown kind")


def test_direction_resolves_table_columns():
    assert direction("metrics.forget_rate") is METRICS["forget_rate"]
    assert direction("after_forget_accuracy") is METRICS["forget_accuracy"]
    assert direction("forget_rate.mean") is METRICS["forget_rate"]
    assert direction("metrics.per_level_preservation.2.preservation") is METRICS["knowledge_preservation"]
    for none in ("before_forget_accuracy", "forget_rate.std", "forget_rate.n", "forget_rate.low",
                 "metrics.per_level_preservation.2.before", "method", "no_such_metric"):
        assert direction(none) is None and not known(none), none


def test_target_threshold_is_a_distance():
    # "AUC <= 0.6" would pass 0.3, an over-forgotten model; the distance to 0.5 fails it
    for value, ok in ((0.55, True), (0.45, True), (0.3, False), (0.7, False), (0.6, True), (0.4, True)):
        out = check("mia_auc_min_k", value, 0.1)
        assert out["pass"] is ok, value
        assert out["op"] == "|x - t| <=" and out["target"] == 0.5 and out["threshold"] == 0.1
    assert [check("privleak", v, 5.0)["pass"] for v in (-3.0, 4.9, 10.0, -10.0)] == [True, True, False, False]
    with pytest.raises(ValueError):
        check("mia_auc_loss", 0.5, -0.1)  # a distance cannot be negative


def test_max_min_thresholds_and_absent_values():
    assert check("forget_rate", 0.83, 0.8) == {"value": 0.83, "threshold": 0.8, "op": ">=", "target": None,
                                               "pass": True}
    assert check("forget_rate", 0.79, 0.8)["pass"] is False
    assert check("forget_accuracy", 0.17, 0.2)["op"] == "<=" and check("forget_accuracy", 0.17, 0.2)["pass"]
    assert check("perplexity_pubmedqa", 31.0, 30.0)["pass"] is False
    assert check("knowledge_preservation", 0.1 + 0.2, 0.3)["pass"] is True  # float rounding tolerated
    for missing in (Absent("no holdout set"), {"value": None, "absent": "no holdout set"}, None, math.inf, math.nan):
        out = check("mia_auc_min_k", missing, 0.1)
        assert out["pass"] is None and (out["value"] is None or out["value"]["value"] is None), missing
    with pytest.raises(KeyError):
        check("forget_rte", 0.9, 0.8)  # a typo is rejected, not silently checked with >=


def test_results_and_comparison_names_check_identically():
    # results.json reads "forget_accuracy"/"mia_auc_min_k"; comparison tables "after_forget_accuracy"
    # and "metrics.mia_auc_min_k": one table, one verdict
    for plain, column in (("forget_accuracy", "after_forget_accuracy"), ("mia_auc_min_k", "metrics.mia_auc_min_k"),
                          ("extraction_strength", "metrics.extraction_strength.mean")):
        for value, bound in itertools.product((0.1, 0.3, 0.5, 0.62, 0.9), (0.05, 0.2, 0.6)):
            assert check(plain, value, bound) == check(column, value, bound), (plain, value, bound)


def test_better_and_rank_key():
    assert better("mia_auc_zlib", 0.52, 0.3) and better("mia_auc_zlib", 0.52, 0.7)
    assert not better("mia_auc_zlib", 0.3, 0.7) and not better("mia_auc_zlib", 0.7, 0.3)  # equally far
    assert better("forget_rate", 0.9, 0.8) and better("forget_accuracy", 0.1, 0.2)
    assert better("privleak", -1.0, 20.0) and better("retain_accuracy", 0.5, Absent("x"))
    assert not better("retain_accuracy", None, 0.1)
    assert min([0.9, 0.45, 0.2, Absent("x")], key=rank_key("mia_auc_loss")) == 0.45
    assert sorted([0.2, None, 0.8, 0.5], key=rank_key("forget_rate")) == [0.8, 0.5, 0.2, None]


def _brute_front(points, names):
    keys = [rank_key(n) for n in names]
    out = []
    for pid, v in points:
        c = [k(v[n]) for k, n in zip(keys, names)]
        dominated = any(all(k(w[n]) <= ci for k, n, ci in zip(keys, names, c)) and
                        any(k(w[n]) < ci for k, n, ci in zip(keys, names, c)) for _, w in points)
        if not dominated:
            out.append(pid)
    return out


def test_pareto_front_any_number_of_objectives():
    pts = [("a", {"forget_rate": 0.9, "knowledge_preservation": 0.8, "mia_auc_min_k": 0.5}),
           ("b", {"forget_rate": 0.9, "knowledge_preservation": 0.8, "mia_auc_min_k": 0.7}),  # a is closer to 0.5
           ("c", {"forget_rate": 0.95, "knowledge_preservation": 0.7, "mia_auc_min_k": 0.6}),
           ("d", {"forget_rate": 0.99, "knowledge_preservation": 0.99}),  # no AUC: not comparable
           ("e", {"forget_rate": 0.9, "knowledge_preservation": 0.8, "mia_auc_min_k": 0.5})]  # equal to a
    names = ["forget_rate", "knowledge_preservation", "mia_auc_min_k"]
    assert pareto_front(pts, names) == ["a", "c", "e"]
    assert pareto_front(pts, names[:2]) == ["d"]
    # an over-forgotten AUC of 0.3 is as far from 0.5 as 0.7
    assert pareto_front([("x", {"mia_auc_min_k": 0.3}), ("y", {"mia_auc_min_k": 0.7})], ["mia_auc_min_k"]) == ["x", "y"]
    rng = np.random.default_rng(1)
    rand = [(i, {"forget_rate": float(x), "knowledge_preservation": float(y), "privleak": float(z)})
            for i, (x, y, z) in enumerate(rng.integers(0, 5, size=(40, 3)))]
    for objectives in (names[:2], ["forget_rate", "knowledge_preservation", "privleak"]):
        assert pareto_front(rand, objectives) == _brute_front(rand, objectives)
    assert pareto_front([], names) == []
    with pytest.raises(KeyError):
        pareto_front(pts, ["objective"])


def test_docs_hold_the_generated_table():
    table = directions_markdown()
    assert len(table.strip().splitlines()) == 2 + len(METRICS)
    assert table in DOC.read_text(encoding="utf-8"), "paste directions_markdown() into docs/metrics.md"
