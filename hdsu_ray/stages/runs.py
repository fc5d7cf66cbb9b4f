"""The per-method runs of a workflow: every (method, seed) unlearns the same learned model with the
same data and budget, then is evaluated; ``unlearn.concurrency`` of them are in flight at once.

The driver builds each run's object-store bundle (budget mask, retain basis, reference tensors)
first, so shared artefacts are computed once whatever the concurrency; a run only trains and
evaluates. With concurrency 1 the runs execute in the driver one after another; above 1 each run is
a Ray task that calls the same driver (:func:`run_unlearn_method`), so Ray Train worker groups of
different methods overlap their start-up, checkpointing and evaluation with each other's steps
(and on a cluster spread over nodes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hdsu_ray.config.schema import Workflow
from hdsu_ray.logs import Timings
from hdsu_ray.stages.artefacts import PrebuiltBundles, SharedArtefacts, bundle_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunJob:
    """One method run: its spec, seed and display tag."""

    spec: dict
    seed: int
    tag: str


def plan_jobs(workflow: Workflow, shared: SharedArtefacts) -> tuple[list[RunJob], PrebuiltBundles]:
    """Every (method, seed) of the workflow in spec order, and every bundle they need, built in
    the driver before any run starts (so the artefacts are computed once whatever the concurrency)."""
    from hdsu_ray.methods import parse_method, resolved

    seeds = workflow.evaluate.seeds or [workflow.seed]
    jobs, refs = [], {}
    for spec in workflow.unlearn.methods:
        params = parse_method(spec, "method", None)
        settings = resolved(params, workflow.unlearn)
        refs[bundle_key(params, settings)] = shared.bundle(params, settings)
        label = spec.get("label") or spec["name"]
        for seed in seeds:
            jobs.append(RunJob(spec, seed, label if len(seeds) == 1 else f"{label}:seed{seed}"))
    return jobs, PrebuiltBundles(shared.learned_dir, refs)


def method_run(workflow: Workflow, job: RunJob, bundles: PrebuiltBundles, context: dict,
               output_dir: Path) -> tuple[dict, dict]:
    """Unlearn and evaluate one run; returns ``(result row, {stage: seconds})``."""
    from hdsu_ray.eval.records import changed_fraction, method_result
    from hdsu_ray.logs import configure
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.unlearn import run_unlearn_method

    configure()  # in a Ray task: this process has no handler yet
    learned_dir = bundles.learned_dir
    wf_seed = replace(workflow, seed=job.seed)
    t = Timings(workflow=workflow.name)
    with t.stage(f"unlearn:{job.tag}", log):
        # One model directory per run: the seeds of one method must not share (or race for) one.
        model_dir, settings = run_unlearn_method(wf_seed, job.spec, bundles, output_dir,
                                                 model_name=job.tag.replace(":", "-"))
    with t.stage(f"evaluate:{job.tag}", log):
        after = evaluate_model(workflow, context["data"], model_dir,
                               task_name=f"evaluate {_run_name(workflow, job)}")
        frac, changed, total = changed_fraction(learned_dir, model_dir)
        lora = settings.get("lora")
        if lora:  # merged adapters change whole matrices: the budget is the trainable LoRA entries
            assert lora["n_base"] == total, (lora["n_base"], total)
            frac = lora["n_params"] / lora["n_base"]
    r = method_result(wf_seed, settings, context["before"], after, frac, changed, total,
                      levels=context["levels"], retrain_aucs=context["retrain_aucs"], oracle=context.get("oracle"))
    log.info("[results] %s: forget_rate %s knowledge_preservation %s param_fraction %.6f", job.tag,
             _fmt(r["forget_rate"]), _fmt(r["knowledge_preservation"]), r["param_fraction"])
    return r, dict(t)


def _run_name(workflow: Workflow, job: RunJob) -> str:
    """``<study> <method label> seed<k>``: what the dashboard's task lists show for a run."""
    return f"{workflow.name} {job.spec.get('label') or job.spec['name']} seed{job.seed}"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run_jobs(workflow: Workflow, jobs: list[RunJob], bundles: PrebuiltBundles, context: dict,
             output_dir: Path) -> tuple[list[dict], dict]:
    """Run ``jobs`` with at most ``unlearn.concurrency`` in flight; results come back in job order.

    A failed run fails the whole stage (the others are cancelled), so no partial comparison is
    ever written as if it were complete.
    """
    limit = min(workflow.unlearn.concurrency, len(jobs))
    if limit <= 1:
        outs = [method_run(workflow, job, bundles, context, output_dir) for job in jobs]
        return [r for r, _ in outs], {k: v for _, tm in outs for k, v in tm.items()}

    import ray

    from hdsu_ray.runtime import worker_env

    # The task itself only waits on its worker group and evaluation task, which hold the CPUs;
    # DEFAULT scheduling keeps it out of any placement group (e.g. when run inside a Tune trial).
    task = ray.remote(method_run)
    options = dict(num_cpus=0.01, max_retries=0, scheduling_strategy="DEFAULT",
                   runtime_env={"env_vars": worker_env()})
    ctx_ref = ray.put(context)
    log.info("[runs] %d runs, %d at a time", len(jobs), limit)
    pending: dict[Any, int] = {}
    done: dict[int, tuple[dict, dict]] = {}
    queue = list(enumerate(jobs))
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                i, job = queue.pop(0)
                # Named, so the dashboard's task lists say which study, method and seed a run is.
                run = task.options(name=f"run {_run_name(workflow, job)}", **options)
                pending[run.remote(workflow, job, bundles, ctx_ref, output_dir)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done[pending.pop(ref)] = ray.get(ref)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    outs = [done[i] for i in range(len(jobs))]
    return [r for r, _ in outs], {k: v for _, tm in outs for k, v in tm.items()}

