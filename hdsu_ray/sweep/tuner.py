"""The Tuner layer: a Ray Tune + Optuna search whose every trial calls the same unlearning driver
as ``hdsu-ray run``, on one learned model, one annotation and one shared retain-gradient basis.

The basis is computed once, at the largest projection rank in the search space, put in the object
store, and every trial slices the columns it needs. The learned model and the annotation are made
once per sweep by the pipeline before the Tuner starts.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hdsu_ray.config.schema import SearchDim, Workflow


def tune_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dim in space.items():
        if dim.type == "choice":
            out[key] = tune.choice(dim.values)
        elif dim.type == "int":
            out[key] = (tune.lograndint if dim.log else tune.randint)(int(dim.low), int(dim.high) + 1)
        else:
            out[key] = (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
    return out


def trial_spec(base: dict, concept_weights: dict | None, sampled: dict[str, Any]) -> tuple[dict, int | None]:
    """The method spec of one trial (base spec + sampled keys) and its projection rank."""
    spec, rank = copy.deepcopy(base), None
    weights = copy.deepcopy(concept_weights) if concept_weights else None
    for key, value in sampled.items():
        if key == "projection.rank":
            rank = int(value)
        elif key.startswith("weights."):
            parts = key.split(".")[1:]
            weights = weights or {}
            if len(parts) == 1 and parts[0] != "neutral":  # one weight for every level of a label
                weights[parts[0]] = {lv: float(value) for lv in (1, 2, 3, 4)}
            elif len(parts) == 1:
                weights["neutral"] = float(value)
            else:
                weights.setdefault(parts[0], {})[int(parts[1])] = float(value)
        else:
            spec[key] = value
    if weights is not None:
        spec["weights"] = weights
    return spec, rank


def with_rank(workflow: Workflow, rank: int) -> Workflow:
    """``workflow`` with ``unlearn.projection.rank`` set to ``rank`` (the basis is built at it)."""
    u = workflow.unlearn
    return replace(workflow, unlearn=replace(u, projection=replace(u.projection, rank=rank)))


class FixedShared:
    """What a trial sees of :class:`SharedArtefacts`: one prebuilt object-store bundle per budget."""

    def __init__(self, learned_dir: str, bundles: dict[str, Any]):
        self.learned_dir, self.bundles = Path(learned_dir), bundles

    def bundle(self, params, settings) -> Any:
        return self.bundles[str(settings["param_budget"])]


def sweep_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one unlearning run (the CLI's driver) and its evaluation."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hdsu_ray.pipeline import method_result
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.unlearn import COMPUTE_COUNTS, SharedArtefacts, run_unlearn_method

    started = time.time()
    counts_before = {k: COMPUTE_COUNTS.get(k, 0) for k in ("masks", "basis", "reference")}
    ctx = ray.get(config["context"][0])
    workflow, data, before = ctx["workflow"], ctx["data"], ctx["before"]
    sampled = {k: v for k, v in config.items() if k != "context"}
    spec, rank = trial_spec(ctx["base_method"], ctx["concept_weights"], sampled)
    trial_id = tune.get_context().get_trial_id()
    spec["label"] = f"trial-{trial_id}"
    run_dir = Path(ctx["run_dir"]) / "trials" / trial_id
    extra: dict[str, int] = {}
    if ctx["cache"] == "shared":
        shared = FixedShared(ctx["learned_dir"], ctx["bundles"])
    else:  # benchmark modes: this trial computes its own artefacts in a cache of its own
        wf = with_rank(workflow, rank or workflow.unlearn.projection.rank)
        learned, arrays = Path(ctx["learned_dir"]), ctx["arrays"]
        if ctx["cache"] == "none":  # an independent run: learn, annotate and evaluate before, too
            from hdsu_ray.stages.learn import run_learn
            from hdsu_ray.stages.tensors import unlearn_arrays
            wf = replace(wf, cache_dir=str(run_dir / "cache"))
            learned = run_learn(wf, data, run_dir, print)
            arrays = unlearn_arrays(wf, data, learned, run_dir, print)
            before = evaluate_model(wf, data, learned)
            extra = {"learn": 1, "annotate": int(wf.concepts is not None and wf.concepts.enabled)}
        shared = SharedArtefacts(wf, learned, arrays, log=print, cache_root=run_dir / "cache" / "shared")
    model_dir, settings = run_unlearn_method(workflow, spec, shared, run_dir, rank=rank,
                                             callbacks=[TuneReportCallback()])
    # Accuracies only: the sweep reports forget rate and preservation, so the per-sample
    # statistics and fluency perplexity of the full evaluation (~1.6 s a trial here) are skipped.
    after = evaluate_model(workflow, data, model_dir, with_stats=False)
    result = method_result(workflow, settings, before, after, None, None, None)
    tune.report({"forget_rate": result["forget_rate"], "knowledge_preservation": result["knowledge_preservation"],
                 "after_forget_accuracy": result["after"]["forget_accuracy"],
                 "after_retain_accuracy": result["after"]["retain_accuracy"], "rank": rank or -1,
                 "curve": result["curve"], "done": True, "started_at": started, "ended_at": time.time(),
                 # What this trial computed itself (0 with the shared cache: the driver did it once).
                 "trial_computations": {**{k: COMPUTE_COUNTS.get(k, 0) - v for k, v in counts_before.items()},
                                        **extra}})


def run_sweep(workflow: Workflow, data, learned_dir: Path, arrays: dict, before: dict, shared, run_dir: Path,
              log=print):
    """Run (or resume) the sweep; returns the Tune ``ResultGrid``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from hdsu_ray.methods import parse_method, resolved

    sw = workflow.sweep
    base_params = parse_method(sw.method, "sweep.method", None)
    budgets = sw.space["param_budget"].values if "param_budget" in sw.space and sw.space["param_budget"].values \
        else [resolved(base_params, workflow.unlearn)["param_budget"]]
    rank_dim = sw.space.get("projection.rank")
    max_rank = int(max(rank_dim.values) if rank_dim and rank_dim.type == "choice"
                   else rank_dim.high if rank_dim else workflow.unlearn.projection.rank)
    bundles = None
    if sw.cache == "shared":
        wf_max = with_rank(workflow, max_rank)
        shared.wf = wf_max
        bundles = {}
        for b in budgets:
            spec = {**sw.method, "param_budget": b}
            p = parse_method(spec, "sweep.method", None)
            bundles[str(float(b))] = shared.bundle(p, resolved(p, wf_max.unlearn))
        log(f"[sweep] shared basis at rank {max_rank} for budgets {budgets}")
    concepts = workflow.concepts
    context = ray.put({"workflow": workflow, "data": data, "learned_dir": str(learned_dir), "bundles": bundles,
                       "cache": sw.cache, "arrays": None if sw.cache == "shared" else arrays, "before": before,
                       "run_dir": str(run_dir),
                       "base_method": dict(sw.method),
                       "concept_weights": dict(concepts.weights) if concepts else None})
    modes = ["max"] * len(sw.objectives)
    import optuna
    sampler = {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler,
               "random": optuna.samplers.RandomSampler}[sw.searcher](seed=sw.seed)
    search = ConcurrencyLimiter(OptunaSearch(metric=list(sw.objectives), mode=modes, sampler=sampler),
                                max_concurrent=sw.max_concurrent)
    scheduler = None
    if sw.scheduler == "asha":
        scheduler = ASHAScheduler(metric="objective", mode="max", grace_period=sw.grace_evals,
                                  time_attr="training_iteration")
    # Intermediate reports (losses, in-loop evaluations) carry no final objectives; the searcher
    # reads only each trial's last report, which does.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(sweep_trial, {"CPU": 0.01})
    storage = str((run_dir / "tune").resolve())
    path = Path(storage) / "sweep"
    if tune.Tuner.can_restore(str(path)):
        log(f"[sweep] resuming {path}")
        # Object refs in the param space do not survive a restart: hand Tune the new context.
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True,
                                   param_space={**tune_space(sw.space), "context": [context]})
    else:
        tuner = tune.Tuner(trainable, param_space={**tune_space(sw.space), "context": [context]},
                           tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler,
                                                       num_samples=sw.num_samples),
                           run_config=tune.RunConfig(name="sweep", storage_path=storage))
    return tuner.fit()
