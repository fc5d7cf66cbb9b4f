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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hdsu_ray.config.schema import Workflow


@dataclass(frozen=True)
class RunJob:
    """One method run: its spec, seed, display tag and the object ref of its shared bundle."""

    spec: dict
    seed: int
    tag: str
    bundle: Any


class PrebuiltShared:
    """What :func:`run_unlearn_method` needs of the shared artefacts once the driver built them."""

    def __init__(self, learned_dir: Path, bundle: Any):
        self.learned_dir, self._bundle = Path(learned_dir), bundle

    def bundle(self, params, settings) -> Any:
        return self._bundle


def plan_jobs(workflow: Workflow, shared) -> list[RunJob]:
    """Every (method, seed) of the workflow, in spec order, with its bundle built in the driver."""
    from hdsu_ray.methods import parse_method, resolved

    seeds = workflow.evaluate.seeds or [workflow.seed]
    jobs = []
    for spec in workflow.unlearn.methods:
        params = parse_method(spec, "method", None)
        ref = shared.bundle(params, resolved(params, workflow.unlearn))
        label = spec.get("label") or spec["name"]
        for seed in seeds:
            jobs.append(RunJob(spec, seed, label if len(seeds) == 1 else f"{label}:seed{seed}", ref))
    return jobs


def method_run(workflow: Workflow, job: RunJob, learned_dir: Path, context: dict, output_dir: Path,
               log=print) -> tuple[dict, dict]:
    """Unlearn and evaluate one run; returns ``(result row, {stage: seconds})``."""
    from hdsu_ray.pipeline import Timings, changed_fraction, method_result
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.unlearn import run_unlearn_method

    wf_seed = replace(workflow, seed=job.seed)
    t = Timings()
    with t.stage(f"unlearn:{job.tag}", log):
        # One model directory per run: the seeds of one method must not share (or race for) one.
        model_dir, settings = run_unlearn_method(wf_seed, job.spec, PrebuiltShared(learned_dir, job.bundle),
                                                 output_dir, model_name=job.tag.replace(":", "-"))
    with t.stage(f"evaluate:{job.tag}", log):
        after = evaluate_model(workflow, context["data"], model_dir)
        frac, changed, total = changed_fraction(learned_dir, model_dir)
        lora = settings.get("lora")
        if lora:  # merged adapters change whole matrices: the budget is the trainable LoRA entries
            assert lora["n_base"] == total, (lora["n_base"], total)
            frac = lora["n_params"] / lora["n_base"]
    r = method_result(wf_seed, settings, context["before"], after, frac, changed, total,
                      levels=context["levels"], retrain_aucs=context["retrain_aucs"])
    log(f"[results] {job.tag}: forget_rate {r['forget_rate']:.3f} knowledge_preservation "
        f"{r['knowledge_preservation']:.3f} param_fraction {r['param_fraction']:.6f}")
    return r, dict(t)


def run_jobs(workflow: Workflow, jobs: list[RunJob], learned_dir: Path, context: dict, output_dir: Path,
             log=print) -> tuple[list[dict], dict]:
    """Run ``jobs`` with at most ``unlearn.concurrency`` in flight; results come back in job order.

    A failed run fails the whole stage (the others are cancelled), so no partial comparison is
    ever written as if it were complete.
    """
    limit = min(workflow.unlearn.concurrency, len(jobs))
    if limit <= 1:
        outs = [method_run(workflow, job, learned_dir, context, output_dir, log) for job in jobs]
        return [r for r, _ in outs], {k: v for _, tm in outs for k, v in tm.items()}

    import ray

    from hdsu_ray.train.driver import _worker_env

    # The task itself only waits on its worker group and evaluation task, which hold the CPUs;
    # DEFAULT scheduling keeps it out of any placement group (e.g. when run inside a Tune trial).
    task = ray.remote(method_run).options(num_cpus=0.01, max_retries=0, scheduling_strategy="DEFAULT",
                                           runtime_env={"env_vars": _worker_env()})
    ctx_ref = ray.put(context)
    log(f"[runs] {len(jobs)} runs, {limit} at a time")
    pending: dict[Any, int] = {}
    done: dict[int, tuple[dict, dict]] = {}
    queue = list(enumerate(jobs))
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                i, job = queue.pop(0)
                pending[task.remote(workflow, job, learned_dir, ctx_ref, output_dir)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done[pending.pop(ref)] = ray.get(ref)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    outs = [done[i] for i in range(len(jobs))]
    return [r for r, _ in outs], {k: v for _, tm in outs for k, v in tm.items()}

