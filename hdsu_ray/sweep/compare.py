"""A fair comparison: every method tuned alike, frozen, then run with several seeds.

Each method of ``compare.methods`` gets the same number of Ray Tune + Optuna trials (a trial is
exactly a run, :func:`hdsu_ray.sweep.tuner.run_sweep`), the same step cap (``unlearn.steps``),
the same number of candidate checkpoints (``evaluate.candidates``) and the same selection rule
(``evaluate.select`` on the forget set and ``retain_val``; no trial scores ``retain_test``). The
best trial's settings are frozen into a workflow (``frozen.yaml``), the ablations are the frozen
settings of a tuned method with one component changed, and the pipeline then runs every frozen
method with ``compare.seeds`` and reports it on ``retain_test``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.config.search import SweepConfig
from hdsu_ray.methods import METHODS, parse_method
from hdsu_ray.store import safe_name, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def tune_methods(workflow: Workflow, data, ctx: dict, output_dir: Path) -> tuple[Workflow, dict[str, dict]]:
    """Tune every method, freeze the best settings; returns the frozen workflow and each frozen
    method's ``protocol`` record (what it was given and chose, for results.json)."""
    cmp = workflow.compare
    specs, protocol = [], {}
    for tm in cmp.methods:
        label = parse_method(tm.method, "compare.methods", None).display
        best, record = _tune_one(workflow, data, ctx, output_dir, tm, label)
        specs.append(best)
        protocol[label] = record
    by_label = {s["label"]: s for s in specs}
    for ab in cmp.ablations:
        specs.append({**by_label[ab.of], **ab.set, "label": ab.label, "ablation_of": ab.of})
        protocol[ab.label] = {**protocol[ab.of], "tuned": False, "ablation_of": ab.of, "changed": dict(ab.set),
                              "chosen": None}
    frozen = freeze(workflow, specs)
    path = write_text_atomic(output_dir / "frozen.yaml", frozen_yaml(frozen, workflow))
    log.info("[compare] frozen settings of %d methods in %s", len(specs), path)
    return frozen, protocol


def _tune_one(workflow: Workflow, data, ctx: dict, output_dir: Path, tm, label: str) -> tuple[dict, dict]:
    """One method's search; returns its frozen spec and protocol record."""
    from hdsu_ray.stages.artefacts import COMPUTE_COUNTS
    from hdsu_ray.sweep.results import collect
    from hdsu_ray.sweep.tuner import run_sweep

    cmp = workflow.compare
    sweep = SweepConfig(method=dict(tm.method), space=dict(tm.space), searcher=cmp.searcher, objectives=["selection"],
                        num_samples=cmp.trials, max_concurrent=cmp.max_concurrent, seed=cmp.seed, cache="shared")
    wf = replace(workflow, sweep=sweep, compare=None)
    run_dir = output_dir / "tuning" / safe_name(label)
    log.info("[compare] tuning %s: %d trials over %s", label, cmp.trials, ", ".join(tm.space))
    start = time.perf_counter()
    summary = collect(run_sweep(wf, data, ctx, run_dir), wf, ctx["before"], COMPUTE_COUNTS,
                      time.perf_counter() - start)
    write_json_atomic(run_dir / "sweep.json", summary)
    best = summary["best"]
    if best is None:
        raise RuntimeError(f"no trial of {label} completed: nothing to freeze")
    spec = {**best["method_spec"], "label": label}
    if best.get("projection_rank") is not None and METHODS[spec["name"]].projects:
        spec["rank"] = int(best["projection_rank"])
    ev = workflow.evaluate
    record = {"tuned": True, "trials": cmp.trials, "completed": summary["completed"], "searcher": cmp.searcher,
              "steps_cap": workflow.unlearn.steps, "candidates": ev.candidates, "selection_rule": ev.select,
              "selection_data": "forget + retain_val", "space": sorted(tm.space),
              "chosen": best["params"], "selection": best.get("selection")}
    return spec, record


def freeze(workflow: Workflow, specs: list[dict]) -> Workflow:
    """The comparison as a plain workflow: the frozen methods, the final seeds, no search; the
    shared basis at the largest rank any frozen method uses."""
    u, cmp = workflow.unlearn, workflow.compare
    rank = max([u.projection.rank] + [s["rank"] for s in specs if s.get("rank")])
    unlearn = replace(u, methods=specs, projection=replace(u.projection, rank=rank))
    return replace(workflow, compare=None, sweep=None, unlearn=unlearn,
                   evaluate=replace(workflow.evaluate, seeds=list(cmp.seeds)))


def frozen_yaml(frozen: Workflow, original: Workflow) -> str:
    """``frozen.yaml``: a workflow a user can run again, with a header saying where it came from."""
    head = (f"# Frozen by the fair comparison of {original.name}: every method tuned with "
            f"{original.compare.trials} trials ({original.compare.searcher}), step cap {original.unlearn.steps}, "
            f"{original.evaluate.candidates} candidate checkpoints, selection {original.evaluate.select} on forget + "
            "retain_val.\n# Run it again: hdsu-ray run frozen.yaml (reported on retain_test with the seeds below).\n")
    data: Any = to_dict(frozen)
    for key in ("compare", "sweep", "data_root"):  # data_root: resolved again where it runs
        data.pop(key, None)
    # The run resolved cache_dir to an absolute path; one inside the working directory is written
    # relative again, so the file runs the same from another checkout or machine.
    cache, cwd = Path(data["cache_dir"]), Path.cwd()
    if cache.is_absolute() and cache.is_relative_to(cwd):
        data["cache_dir"] = str(cache.relative_to(cwd))
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
