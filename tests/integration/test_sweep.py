"""A sweep end to end through the CLI: an independent trial (``cache: none``), report files, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SWEEP = {
    "name": "sweep-smoke", "seed": 0,
    "data": {"source": "mhqa", "path": "mhqa/mhqa_gold.csv",
             "forget": {"field": "topic", "values": ["Anxiety"], "limit": 16},
             "retain": {"field": "topic", "values": ["Depression", "Trauma"], "limit": 32},
             "holdout_fraction": 0.25},  # as workflows/smoke.yaml: the session's learned smoke model
    "model": {"kind": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                        "intermediate_size": 128, "vocab_size": 1024, "max_len": 96}},
    "cluster": {"num_workers": 1, "cpus_per_worker": 1},
    "learn": {"epochs": 3, "lr": 3.0e-3, "batch_size": 16},
    "evaluate": {"every": 2, "sample": 8},
    "concepts": {"targets": ["preset:mhqa-anxiety"]},
    "unlearn": {"steps": 4, "lr": 1.0e-3, "batch_size": 8, "checkpoint_every": 2, "param_budget": 0.01,
                "projection": {"rank": 4, "basis_samples": 8}},
    "sweep": {"method": {"name": "hdsu"}, "num_samples": 2, "max_concurrent": 2,
              "space": {"projection.rank": {"type": "choice", "values": [2, 4]},
                        "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                        "weights.neutral": {"type": "float", "low": 0.0, "high": 0.5}}},
}


def _run(workflow: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "hdsu-ray"), "run", str(workflow), "--output-dir", str(out),
           f"cache_dir={cache}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=os.environ.copy())


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, copy_learned):
    """The benchmark's baseline sweep (``cache: none``): its one trial learns, annotates and computes
    its own mask and basis. The driver's learned model is copied in, so only the trial learns.
    Trials side by side sharing one basis are checked on test_compare's tuning, a sweep per method."""
    base = tmp_path_factory.mktemp("sweep")
    spec = {**SWEEP, "sweep": {**SWEEP["sweep"], "cache": "none", "num_samples": 1}}
    workflow = base / "sweep.yaml"
    workflow.write_text(yaml.safe_dump(spec))
    copy_learned(base / "cache", workflow)  # SWEEP learns exactly the smoke model
    proc = _run(workflow, base / "out", base / "cache")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return workflow, base, proc


def test_cache_none_makes_every_trial_an_independent_run(sweep_run, smoke_cold_run):
    _, base, _ = sweep_run
    out = base / "out"
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["cache"] == "none" and summary["num_trials"] == 1 and summary["completed"] == 1
    # the trial learned, annotated and built its own mask and basis (the driver's came from the cache)
    assert summary["learn_computations"] == 1 and summary["annotate_computations"] == 1
    assert summary["basis_computations"] == 1 and summary["mask_computations"] == 1
    for t in summary["trials"]:
        assert t["params"]["projection.rank"] in {2, 4}
        assert 0.0 <= t["forget_rate"] <= 1.0 and t["knowledge_preservation"] >= 0.0
        assert any("eval_forget_accuracy" in c for c in t["curve"])  # intermediate reports arrived
    # The trial's cold learn is the smoke model's (same rows, settings, seed and worker count), so
    # learning is deterministic: two cold learns, in a CLI run and in a Tune trial, write the same bytes.
    for t in summary["trials"]:
        (learned,) = (out / "trials" / t["trial_id"] / "cache" / "learned").iterdir()
        reference = smoke_cold_run.cache / "learned" / learned.name  # the same learned key
        assert (learned / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_report_and_best_workflow(sweep_run):
    _, base, _ = sweep_run
    out = base / "out"
    for name in ("report.html", "report.md", "pareto.png", "best.yaml"):
        assert (out / name).is_file(), name
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "sweep" not in best and best["unlearn"]["methods"][0]["name"] == "hdsu"
    proc = subprocess.run([str(Path(sys.executable).parent / "hdsu-ray"), "validate", str(out / "best.yaml")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rerun_resumes_without_redoing_trials(sweep_run):
    workflow, base, _ = sweep_run
    before = json.loads((base / "out" / "sweep.json").read_text())
    proc = _run(workflow, base / "out", base / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    after = json.loads((base / "out" / "sweep.json").read_text())
    # the same trial, not run again: a cache-none trial's counts are its own, kept with its result
    def runs(summary):
        return sorted((t["trial_id"], t["started_at"], t["ended_at"]) for t in summary["trials"])
    assert runs(after) == runs(before)
