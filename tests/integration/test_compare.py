"""The fair comparison end to end through the CLI: every method tuned alike on forget + retain_val,
the best settings frozen into a workflow, the frozen methods and an ablation run and reported on
retain_test with their protocol, paired differences and the retrain oracle's checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SPACE = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
         "steps": {"type": "int", "low": 2, "high": 4}}
COMPARE = {
    "trials": 2, "max_concurrent": 2, "seeds": [0],  # two trials side by side: each method's search shares one basis
    "methods": [{"method": {"name": "hdsu", "forget_loss": "contrast"},
                 "space": {**SPACE, "projection.rank": {"type": "choice", "values": [2, 4]}}},
                {"method": {"name": "graddiff"}, "space": SPACE}],
    "ablations": [{"label": "hdsu-no-projection", "of": "hdsu", "set": {"projection": False}}],
}


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, copy_learned):
    base = tmp_path_factory.mktemp("compare")
    smoke = yaml.safe_load((REPO / "workflows" / "smoke.yaml").read_text())
    spec = {**smoke, "name": "compare-smoke", "concepts": {"targets": ["preset:mhqa-anxiety"]},
            "evaluate": {"candidates": 2, "select": "hmean", "sample": 8, "retrain": True},
            "unlearn": {**smoke["unlearn"], "methods": [{"name": "graddiff"}], "param_budget": 0.01,
                        "projection": {"rank": 4, "basis_samples": 8}},
            "compare": COMPARE,
            "robustness": None}  # the attacks are checked on the session's cold smoke run (test_cli_smoke)
    workflow = base / "compare.yaml"
    workflow.write_text(yaml.safe_dump(spec, sort_keys=False))
    copy_learned(base / "cache", workflow)  # the smoke model: only the retrain oracle learns
    cmd = [str(Path(sys.executable).parent / "hdsu-ray"), "run", str(workflow), "--output-dir", str(base / "out"),
           f"cache_dir={base / 'cache'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base / "out", json.loads((base / "out" / "results.json").read_text())


def test_every_method_was_tuned_alike(compare_run):
    out, res = compare_run
    assert set(res["methods"]) == {"hdsu", "graddiff", "hdsu-no-projection"}
    for label in ("hdsu", "graddiff"):
        p = res["methods"][label]["protocol"]
        assert p["tuned"] and p["trials"] == 2 and p["completed"] == 2
        assert (p["steps_cap"], p["candidates"], p["selection_rule"]) == (4, 2, "hmean")
        assert p["selection_data"] == "forget + retain_val"
        trials = json.loads((out / "tuning" / label / "sweep.json").read_text())["trials"]
        for t in trials:  # a trial scores forget and retain_val, never the reported retain_test
            assert "after_retain_val_accuracy" in t and "after_retain_accuracy" not in t
    ab = res["methods"]["hdsu-no-projection"]["protocol"]
    assert ab["tuned"] is False and ab["ablation_of"] == "hdsu" and ab["changed"] == {"projection": False}


def test_frozen_workflow_runs_the_tuned_settings(compare_run):
    out, res = compare_run
    from hdsu_ray.checks import load_workflow

    frozen = load_workflow(out / "frozen.yaml")
    assert frozen.compare is None and frozen.evaluate.seeds == [0]
    specs = {s["label"]: s for s in frozen.unlearn.methods}
    chosen = res["methods"]["hdsu"]["protocol"]["chosen"]
    assert specs["hdsu"]["lr"] == chosen["lr"] and specs["hdsu"]["steps"] == chosen["steps"]
    assert specs["hdsu"]["rank"] == chosen["projection.rank"]
    assert specs["hdsu-no-projection"] == {**specs["hdsu"], "projection": False, "label": "hdsu-no-projection",
                                           "ablation_of": "hdsu"}  # a run of frozen.yaml pairs it as compare did
    assert res["methods"]["hdsu"]["settings"]["steps"] == chosen["steps"]


def test_reported_on_retain_test_with_oracle_checks_and_paired_differences(compare_run):
    _, res = compare_run
    assert {k: v["n"] for k, v in res["splits"].items()}["retain_test"] == 13
    assert set(res["paired"]) == {"hdsu-no-projection - hdsu", "hdsu - graddiff"}
    for entry in res["paired"].values():
        assert set(entry) == {"forget_accuracy", "retain_accuracy"}
        assert entry["retain_accuracy"]["n"] == 13  # the retain_test items
    assert res["oracle"]["forget_accuracy"] is not None
    for r in res["methods"].values():
        m = r["metrics"]
        assert m["over_forgetting"]["source"] == "retrain oracle's forget accuracy"
        assert 0.0 <= m["forget_quality"] <= 1.0
        assert m["shuffled_forget_accuracy"] is not None and m["fresh_distractor_forget_accuracy"] is not None


def test_a_methods_trials_run_side_by_side_on_one_shared_basis(compare_run):
    # Each method's search is a sweep (hdsu_ray.sweep.tuner.run_sweep) with the shared cache: the
    # driver computes the retain basis once and both trials truncate it to their own rank.
    out, _ = compare_run
    summary = json.loads((out / "tuning" / "hdsu" / "sweep.json").read_text())
    assert summary["num_trials"] == 2 and summary["completed"] == 2 and summary["cache"] == "shared"
    assert summary["basis_computations"] == 1
    trials = summary["trials"]
    assert {t["params"]["projection.rank"] for t in trials} <= {2, 4}
    for t in trials:
        assert 0.0 <= t["forget_rate"] <= 1.0 and t["knowledge_preservation"] >= 0.0
        assert any("eval_forget_accuracy" in c for c in t["curve"])  # intermediate reports arrived
    # max_concurrent 2 on 2 CPUs: each trial holds a sliver of CPU while its 1-CPU worker runs, so
    # the workers must borrow it (driver.held_cpus) or the second trial waits for the first.
    starts, ends = [t["started_at"] for t in trials], [t["ended_at"] for t in trials]
    overlap = min(ends) - max(starts)
    assert overlap > 0.5 * min(e - s for s, e in zip(starts, ends)), (starts, ends)
