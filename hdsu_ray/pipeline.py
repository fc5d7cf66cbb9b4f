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
from hdsu_ray.store import promote, safe_name, save_npz_atomic, staging_dir, write_json_atomic

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
    from hdsu_ray.runtime import check_fits, init_ray

    configure()  # stage lines reach the terminal, `ray job logs` and the dashboard's log view
    t = Timings(workflow=workflow.name)
    with t.stage("select", log):  # before anything is written: bad selections leave no trace
        data = select_data(workflow, file)
        log.info("[select] forget %d, retain %d, holdout %d rows", len(data.forget), len(data.retain),
                 len(data.holdout))
    final = Path(output_dir).resolve()
    workflow = _absolute(workflow)
    init_ray(workflow.cluster)  # an unreachable cluster fails here, before any file is touched
    check_fits(workflow.cluster)  # as does a worker no node can hold
    # The run writes aside and is swapped in only when it succeeded: a failed run never deletes or
    # replaces the previous run's files (and a rerun resumes from what it left aside).
    work = staging_dir(final)
    for stale in ("results.json", "audit.json", "sweep.json"):
        (work / stale).unlink(missing_ok=True)
    result = _stages(workflow, data, work, t)
    promote(work, final)
    log.info("[results] %s", final)
    return result


def _stages(workflow: Workflow, data, output_dir: Path, t: Timings) -> dict[str, Any]:
    ctx = _shared_stages(workflow, data, output_dir, t)
    if workflow.sweep is not None:
        return _sweep_stage(workflow, data, ctx, output_dir, t)
    if workflow.compare is not None:
        from hdsu_ray.sweep.compare import tune_methods
        with t.stage("tune", log):  # every method alike, on forget + retain_val only
            frozen, protocol = tune_methods(workflow, data, ctx, output_dir)
        return _method_runs(frozen, data, ctx, output_dir, t, protocol)
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
    oracle, retrain_aucs, retrained = None, None, None
    if workflow.evaluate.retrain:
        with t.stage("retrain", log):  # the oracle: learned without the forget set
            retrained = run_learn(workflow, data, output_dir, tag="retrain")
            oracle = evaluate_model(workflow, data, retrained)
            retrain_aucs = attack_aucs(oracle["stats"])
    with t.stage("annotate", log):
        arrays = unlearn_arrays(workflow, data, learned, output_dir)
    with t.stage("evaluate:before", log):
        before = evaluate_model(workflow, data, learned)
    competence = _base_competence(workflow, data, output_dir, before) if workflow.evaluate.mmlu_path or \
        workflow.evaluate.pubmedqa_path else None
    return {"learned": learned, "arrays": arrays, "before": before, "retrain_aucs": retrain_aucs,
            "oracle": oracle, "oracle_dir": retrained, "competence": competence,
            "shared": SharedArtefacts(workflow, learned, arrays)}


def _base_competence(workflow: Workflow, data, output_dir: Path, before: dict) -> dict:
    """What the model answers before it learned the rows (the base model) and after: the study's
    forget and retain_test rows (learning must lift them well above the base model, or there is
    nothing to unlearn) and general medical competence, each with its 95 % interval over items."""
    from hdsu_ray.eval.intervals import accuracy_ci
    from hdsu_ray.eval.items import ACCURACY
    from hdsu_ray.eval.absent import to_json
    from hdsu_ray.eval.records import accuracy
    from hdsu_ray.models.build import build_base_model
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.learn import corpus_texts

    base = output_dir / "base_model"
    if not (base / "config.json").is_file():  # a cached learned model: build its base again (seeded)
        build_base_model(workflow.model, corpus_texts(data), workflow.seed, base)
    wanted = ("forget", "retain", "mmlu", "pubmedqa")
    scored = evaluate_model(workflow, data, base, with_stats=False, sets=wanted)
    out = {}
    for when, ev in (("before_learning", scored), ("after_learning", before)):
        present = [k for k in wanted if k in ev]
        out[when] = {ACCURACY[k]: accuracy(ev[k]) for k in present}
        out[when]["ci"] = to_json({ACCURACY[k]: accuracy_ci(ev[k]) for k in present})
    return out


def _method_runs(workflow: Workflow, data, ctx: dict, output_dir: Path, t: Timings,
                 protocol: dict[str, dict] | None = None) -> dict[str, Any]:
    from hdsu_ray.eval.items import paired_differences
    from hdsu_ray.stages.runs import plan_jobs, run_jobs

    levels = ctx["arrays"]["levels"]  # of the reported retain_test items
    seeds = workflow.evaluate.seeds or [workflow.seed]
    with t.stage("prepare", log):  # masks, bases, reference tensors: once, before any run starts
        jobs, bundles = plan_jobs(workflow, ctx["shared"])
    context = {"data": data, "before": ctx["before"], "levels": levels, "retrain_aucs": ctx["retrain_aucs"],
               "oracle": ctx["oracle"]}
    start = time.perf_counter()
    rows, run_times = run_jobs(workflow, jobs, bundles, context, output_dir)
    t.update(run_times)
    t["runs"] = round(time.perf_counter() - start, 2)  # wall time of all runs (they may overlap)
    items: dict[str, dict] = {}
    runs = [_merge_seeds(rows[i:i + len(seeds)], output_dir, items) for i in range(0, len(rows), len(seeds))]
    for r in runs:
        r["protocol"] = (protocol or {}).get(r["method"]) or _protocol(workflow, r)
    robustness = getattr(workflow, "robustness", None)
    if robustness is not None and robustness.enabled:
        with t.stage("robustness", log):  # attacks on every method's (first seed's) unlearned model
            _attack(workflow, data, runs, ctx, output_dir, seeds[0] if len(seeds) > 1 else None)
    results = {**runs[0], "methods": {r["method"]: r for r in runs}, "timings": dict(t),
               "splits": data.splits(), "paired": paired_differences(items, _pairs(runs)),
               "workflow": workflow.name, "seeds": {"workflow": workflow.seed, "data": workflow.data.seed,
                                                    "unlearn": seeds},
               "config": to_dict(workflow),
               "sizes": {"forget": len(data.forget), "retain": len(data.retain), "holdout": len(data.holdout)},
               "oracle": _oracle_summary(ctx["oracle"]), "competence": ctx.get("competence")}
    _write_outputs(workflow, data, results, output_dir)
    return results


def _merge_seeds(group: list[dict], output_dir: Path, items: dict[str, dict]) -> dict:
    """One method's row from its seeds' rows; each seed's per-item arrays go to ``items/``, and
    the method's (seed-averaged) ones into ``items`` for the paired differences."""
    from hdsu_ray.eval.records import ITEMS, aggregate_seeds, pop_items

    for r in group:
        save_npz_atomic(output_dir / "items" / safe_name(f"{r['method']}-seed{r['seed']}.npz"), r[ITEMS])
    row = aggregate_seeds(group) if len(group) > 1 else group[0]
    items[row["method"]] = row[ITEMS]
    for r in (row, *group):
        pop_items(r)
    return row


def _attack(workflow: Workflow, data, runs: list[dict], ctx: dict, output_dir: Path, seed: int | None) -> None:
    """Quantization and relearning attacks on each method's model; results and flags per row."""
    from hdsu_ray.stages.robustness import robustness_flags, run_attacks

    tag = (lambda label: f"{label}-seed{seed}") if seed is not None else (lambda label: label)
    dirs = {r["method"]: output_dir / "models" / tag(r["method"]).replace(":", "-") for r in runs}
    records = run_attacks(workflow, data, dirs, ctx.get("oracle_dir"))
    for r in runs:
        r["robustness"] = records[r["method"]]
        r["robustness_flags"] = robustness_flags(r, r["robustness"], workflow.robustness.max_recovery)


def _oracle_summary(oracle: dict | None) -> dict | None:
    """The retrain oracle's accuracies (learned without the forget set): the forgetting target."""
    from hdsu_ray.eval.items import ACCURACY
    from hdsu_ray.eval.records import accuracy

    if oracle is None:
        return None
    return {ACCURACY[k]: accuracy(v) for k, v in oracle.items() if k in ACCURACY}


def _protocol(workflow: Workflow, row: dict) -> dict:
    """What a method run that was not tuned here was given: its steps, candidate checkpoints and
    the selection rule and data."""
    from hdsu_ray.eval.selection import candidates

    ev, steps = workflow.evaluate, int(row["settings"]["steps"])
    out = {"tuned": False, "trials": 0, "steps": steps, "selection_rule": ev.select,
           "candidates": candidates(steps, ev.every, ev.select, ev.candidates),
           "selection_data": "forget + retain_val" if ev.every or ev.candidates else "none (last step)"}
    if row["settings"].get("ablation_of"):  # a frozen.yaml run of a compare's ablation
        out["ablation_of"] = row["settings"]["ablation_of"]
    return out


def _pairs(runs: list[dict]) -> list[tuple[str, str]]:
    """Paired differences to report: each ablation against the method it changes (whether a compare
    tuned here or a frozen.yaml names it), and the first method (the one under study) against every
    other method that is not an ablation."""
    ablation_of = {r["method"]: r["protocol"].get("ablation_of") for r in runs}
    ablations = [(label, of) for label, of in ablation_of.items() if of]
    return ablations + [(runs[0]["method"], r["method"]) for r in runs[1:] if not ablation_of[r["method"]]]


def _write_outputs(workflow: Workflow, data, results: dict, output_dir: Path) -> None:
    from hdsu_ray.audit import write_audit
    from hdsu_ray.report import write_comparison

    write_audit(workflow, data, results, output_dir)
    write_json_atomic(output_dir / "results.json", results)
    write_comparison(results, output_dir, workflow.evaluate.thresholds)


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
