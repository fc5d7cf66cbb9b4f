"""Tables in the docs that are generated from code stay equal to what the code generates now."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def test_key_reference_is_current():
    from bench.docs_tables import key_reference

    assert key_reference() in (REPO / "docs" / "usage.md").read_text(encoding="utf-8"), \
        "run python bench/docs_tables.py"


def test_every_key_has_help_and_a_default_shown():
    from hdsu_ray.config.fields import field_help
    from hdsu_ray.config.schema import Workflow

    rows = field_help(Workflow)
    assert len(rows) > 100 and all(h for _, _, _, h in rows)
    defaults = dict((k, d) for k, _, d, _ in rows)
    assert defaults["unlearn.steps"] == "40" and defaults["name"] == "required"
    assert defaults["data.splits.retain_test"] == "0.4"


def test_sweep_estimate_by_hand():
    """Shared: n/c trials of W, plus P once; per trial: n/c trials of W + P * threads / CPUs."""
    from bench.perf_real import sweep_estimate

    prep = {"threads": 2, "loop": {"total_s": 60.0}, "batched": {"total_s": 20.0}}
    methods = {m: {"protocol": {"tuned": True, "trials": 4}} for m in ("a", "b")} | {"ab": {"protocol": {}}}
    one = {"config": {"cluster": {"cpus_per_worker": 2.0}}, "timings": {"tune": 1600.0}, "methods": methods}
    e = sweep_estimate(prep, one, machine_cpus=2)  # 8 trials one at a time: W = 200 s
    assert (e["concurrent"], e["trial_wall_s"]) == (1, 200.0)
    assert e["loop"] == round(1660 / 2080, 3) and e["batched"] == round(1620 / 1760, 3)
    two = {**one, "config": {"cluster": {"cpus_per_worker": 1.0}}}
    e = sweep_estimate(prep, two, machine_cpus=2)  # two at a time: W = 400 s, P' = 2 P
    assert (e["concurrent"], e["trial_wall_s"]) == (2, 400.0)
    assert e["batched"] == round((4 * 400 + 20) / (4 * 440), 3)


def test_performance_doc_is_what_the_benchmark_record_generates(tmp_path):
    """docs/PERFORMANCE.md is written from bench/results.json alone; a hand edit to either shows."""
    import json

    from bench.perf_doc import write_doc

    results = json.loads((REPO / "bench" / "results.json").read_text())
    out = write_doc(results, tmp_path / "PERFORMANCE.md")
    assert out.read_text() == (REPO / "docs" / "PERFORMANCE.md").read_text(), \
        "run python bench/run_all.py --only-report"
