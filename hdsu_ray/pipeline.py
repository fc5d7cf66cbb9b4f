"""The stage runner: a validated workflow, stage by stage on Ray, to ``results.json``.

Stages: select -> learn -> [retrain] -> annotate -> evaluate (before) -> prepare (shared
artefacts) -> per method and seed: unlearn, evaluate (after) -> results, audit, comparison; or,
with a ``sweep`` section, a Ray Tune search instead of the method runs. Only the CLI imports this
module: every stage it calls lives in a lower layer and is usable on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.logs import Timings
from hdsu_ray.store import write_json_atomic

log = logging.getLogger(__name__)


def _absolute(workflow: Workflow) -> Workflow:
    """Absolute cache and DeepSpeed paths: Tune trials and remote workers have other working dirs."""
    workflow = replace(workflow, cache_dir=str(Path(workflow.cache_dir).resolve()))
    if workflow.unlearn.engine == "deepspeed":
        from hdsu_ray.config.paths import deepspeed_config_path
        ds = deepspeed_config_path(workflow.unlearn)
        workflow = replace(workflow, unlearn=replace(workflow.unlearn, deepspeed_config=str(ds.resolve())))
    return workflow


def run_workflow(workflow: Workflow, output_dir: Path, file: str | None = None) -> dict[str, Any]:
    from hdsu_ray.data.select import select_data
    from hdsu_ray.logs import configure
    from hdsu_ray.runtime import init_ray

    configure()  # stage lines reach the terminal, `ray job logs` and the dashboard's log view
    t = Timings()
    with t.stage("select", log):  # before anything is written: bad selections leave no trace
        data = select_data(workflow, file)
        log.info("[select] forget %d, retain %d, holdout %d rows", len(data.forget), len(data.retain),
                 len(data.holdout))
    output_dir = Path(output_dir).resolve()
    workflow = _absolute(workflow)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "audit.json", "sweep.json"):
        (output_dir / stale).unlink(missing_ok=True)
    init_ray(workflow.cluster)
    ctx = _shared_stages(workflow, data, output_dir, t)
    if workflow.sweep is not None:
        return _sweep_stage(workflow, data, ctx, output_dir, t)
    return _method_runs(workflow, data, ctx, output_dir, t)


def _shared_stages(workflow: Workflow, data, output_dir: Path, t: Timings) -> dict[str, Any]:
    """Learn (and the retrain oracle), annotate and evaluate before unlearning: what every method
    run or sweep trial starts from."""
    from hdsu_ray.eval.suite import attack_aucs
    from hdsu_ray.stages.artefacts import SharedArtefacts
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.learn import run_learn
    from hdsu_ray.stages.tensors import unlearn_arrays

    with t.stage("learn", log):
        learned = run_learn(workflow, data, output_dir)
    retrain_aucs = None
    if workflow.evaluate.retrain:
        with t.stage("retrain", log):  # the oracle: learned without the forget set
            retrained = run_learn(workflow, data, output_dir, tag="retrain")
            retrain_aucs = attack_aucs(evaluate_model(workflow, data, retrained)["stats"])
    with t.stage("annotate", log):
        arrays = unlearn_arrays(workflow, data, learned, output_dir)
    with t.stage("evaluate:before", log):
        before = evaluate_model(workflow, data, learned)
    return {"learned": learned, "arrays": arrays, "before": before, "retrain_aucs": retrain_aucs,
            "shared": SharedArtefacts(workflow, learned, arrays)}


def _method_runs(workflow: Workflow, data, ctx: dict, output_dir: Path, t: Timings) -> dict[str, Any]:
    from hdsu_ray.eval.records import aggregate_seeds
    from hdsu_ray.eval.suite import dominant_levels
    from hdsu_ray.stages.runs import plan_jobs, run_jobs

    retain = ctx["arrays"]["retain"]
    levels = dominant_levels(retain["token_label"], retain["token_level"]) if "token_label" in retain else None
    seeds = workflow.evaluate.seeds or [workflow.seed]
    with t.stage("prepare", log):  # masks, bases, reference tensors: once, before any run starts
        jobs, bundles = plan_jobs(workflow, ctx["shared"])
    context = {"data": data, "before": ctx["before"], "levels": levels, "retrain_aucs": ctx["retrain_aucs"]}
    start = time.perf_counter()
    rows, run_times = run_jobs(workflow, jobs, bundles, context, output_dir)
    t.update(run_times)
    t["runs"] = round(time.perf_counter() - start, 2)  # wall time of all runs (they may overlap)
    runs = [aggregate_seeds(rows[i:i + len(seeds)]) if len(seeds) > 1 else rows[i]
            for i in range(0, len(rows), len(seeds))]
    results = {**runs[0], "methods": {r["method"]: r for r in runs}, "timings": dict(t),
               "workflow": workflow.name, "seeds": {"workflow": workflow.seed, "data": workflow.data.seed,
                                                    "unlearn": seeds},
               "config": to_dict(workflow),
               "sizes": {"forget": len(data.forget), "retain": len(data.retain), "holdout": len(data.holdout)}}
    _write_outputs(workflow, data, results, output_dir)
    return results


def _write_outputs(workflow: Workflow, data, results: dict, output_dir: Path) -> None:
    from hdsu_ray.audit import write_audit
    from hdsu_ray.report import write_comparison

    write_audit(workflow, data, results, output_dir)
    write_json_atomic(output_dir / "results.json", results)
    write_comparison(results, output_dir, workflow.evaluate.thresholds)
    log.info("[results] %s", output_dir / "results.json")


def _sweep_stage(workflow: Workflow, data, ctx: dict, output_dir: Path, t: Timings) -> dict:
    from hdsu_ray.report import write_sweep_report
    from hdsu_ray.stages.artefacts import COMPUTE_COUNTS
    from hdsu_ray.sweep.results import collect
    from hdsu_ray.sweep.tuner import run_sweep

    start = time.perf_counter()
    with t.stage("sweep", log):
        grid = run_sweep(workflow, data, ctx, output_dir)
    summary = collect(grid, workflow, ctx["before"], COMPUTE_COUNTS, time.perf_counter() - start)
    summary["timings"] = dict(t)
    write_json_atomic(output_dir / "sweep.json", summary)
    write_sweep_report(output_dir)
    best = summary["best"]
    log.info("[sweep] %d/%d trials, basis computed %dx; best: %s", summary["completed"], summary["num_trials"],
             summary["basis_computations"], best and best["params"])
    return summary
