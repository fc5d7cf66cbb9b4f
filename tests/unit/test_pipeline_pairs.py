"""Which paired differences a run reports: ablations against the method they change, the method
under study against every other method. A frozen.yaml run names its ablations in the method
specs (``ablation_of``), so it pairs them exactly as the compare run that wrote it did."""

from __future__ import annotations

from pathlib import Path

from hdsu_ray.pipeline import _pairs, _protocol

SMOKE = Path(__file__).resolve().parents[2] / "workflows" / "smoke.yaml"


def _run(label: str, protocol: dict) -> dict:
    return {"method": label, "protocol": protocol}


def test_compare_run_pairs_its_ablations_against_their_tuned_method():
    runs = [_run("hdsu", {"tuned": True}), _run("ga", {"tuned": True}),
            _run("hdsu-no-anchor", {"tuned": False, "ablation_of": "hdsu"})]
    assert _pairs(runs) == [("hdsu-no-anchor", "hdsu"), ("hdsu", "ga")]


def test_frozen_run_reads_the_ablation_from_the_method_spec():
    from hdsu_ray.checks import load_workflow

    wf = load_workflow(SMOKE)
    def rows(with_field: bool) -> list[dict]:
        of = {"ablation_of": "hdsu"} if with_field else {}
        return [{"method": "hdsu", "settings": {"steps": 8}}, {"method": "ga", "settings": {"steps": 8}},
                {"method": "hdsu-no-anchor", "settings": {"steps": 8, **of}}]
    runs = [_run(r["method"], _protocol(wf, r)) for r in rows(True)]
    assert runs[2]["protocol"]["ablation_of"] == "hdsu" and "ablation_of" not in runs[1]["protocol"]
    assert _pairs(runs) == [("hdsu-no-anchor", "hdsu"), ("hdsu", "ga")]
    # a frozen.yaml written before the field existed: every method is paired with the first
    old = [_run(r["method"], _protocol(wf, r)) for r in rows(False)]
    assert _pairs(old) == [("hdsu", "ga"), ("hdsu", "hdsu-no-anchor")]
