"""The Tuner layer: a Ray Tune + Optuna search whose every trial calls the same unlearning driver
as ``hdsu-ray run``, on one learned model, one annotation and one shared retain-gradient basis.

With ``sweep.cache: shared`` the driver builds the bundle of every variant a trial can sample (every
combination of the choice values of the keys that change a bundle: budget, fraction, exclusions,
row cap, RMU layer, projection) before the Tuner starts, the basis at the largest projection rank
in the space; each trial looks its bundle up by :func:`~hdsu_ray.stages.artefacts.bundle_key` and
slices the basis columns it needs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hdsu_ray.config.schema import Workflow
from hdsu_ray.sweep.space import bundle_variants, make_sampler, trial_spec, tune_space, with_rank

log = logging.getLogger(__name__)


def shared_bundles(workflow: Workflow, shared, max_rank: int):
    """Build every variant's bundle once (basis at ``max_rank``); a trial receives the result."""
    from hdsu_ray.methods import parse_method, resolved
    from hdsu_ray.stages.artefacts import PrebuiltBundles, bundle_key

    wf_max = with_rank(workflow, max_rank)
    shared = shared.for_workflow(wf_max)
    refs = {}
    for variant in bundle_variants(workflow.sweep):
        p = parse_method({**workflow.sweep.method, **variant}, "sweep.method", None)
        settings = resolved(p, wf_max.unlearn)
        refs.setdefault(bundle_key(p, settings), shared.bundle(p, settings))
    log.info("[sweep] %d shared bundle(s), basis at rank %d", len(refs), max_rank)
    return PrebuiltBundles(shared.learned_dir, refs)


def sweep_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one unlearning run (the CLI's driver) and its evaluation."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hdsu_ray.eval.records import method_result
    from hdsu_ray.eval.selection import objective
    from hdsu_ray.logs import configure
    from hdsu_ray.stages.artefacts import COMPUTE_COUNTS, SharedArtefacts
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.unlearn import run_unlearn_method

    configure()
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
        shared = ctx["bundles"]
    else:  # benchmark modes: this trial computes its own artefacts in a cache of its own
        wf = with_rank(workflow, rank or workflow.unlearn.projection.rank)
        learned, arrays = Path(ctx["learned_dir"]), ctx["arrays"]
        if ctx["cache"] == "none":  # an independent run: learn, annotate and evaluate before, too
            from hdsu_ray.stages.learn import run_learn
            from hdsu_ray.stages.tensors import unlearn_arrays
            wf = replace(wf, cache_dir=str(run_dir / "cache"))
            learned = run_learn(wf, data, run_dir)
            arrays = unlearn_arrays(wf, data, learned, run_dir)
            before = evaluate_model(wf, data, learned, sets=("forget", "retain_val"))
            extra = {"learn": 1, "annotate": int(wf.concepts is not None and wf.concepts.enabled)}
        shared = SharedArtefacts(wf, learned, arrays, cache_root=run_dir / "cache" / "shared")
    model_dir, settings = run_unlearn_method(workflow, spec, shared, run_dir, rank=rank,
                                             callbacks=[TuneReportCallback()])
    # Accuracies only: the sweep reports forget rate and preservation, so the per-sample
    # statistics and fluency perplexity of the full evaluation (~1.6 s a trial here) are skipped.
    after = evaluate_model(workflow, data, model_dir, with_stats=False, sets=("forget", "retain_val"))
    result = method_result(workflow, settings, before, after, None, None, None, full=False)
    fr, kp = result["forget_rate"], result["knowledge_preservation"]
    tune.report({"forget_rate": fr, "knowledge_preservation": kp,
                 "selection": objective(workflow.evaluate.select, fr, kp) if isinstance(kp, float) else 0.0,
                 "after_forget_accuracy": result["after"]["forget_accuracy"],
                 "after_retain_val_accuracy": result["after"]["retain_val_accuracy"], "rank": rank or -1,
                 "curve": result["curve"], "done": True, "started_at": started, "ended_at": time.time(),
                 # What this trial computed itself (0 with the shared cache: the driver did it once).
                 "trial_computations": {**{k: COMPUTE_COUNTS.get(k, 0) - v for k, v in counts_before.items()},
                                        **extra}})


def run_sweep(workflow: Workflow, data, ctx: dict, run_dir: Path):
    """Run (or resume) the sweep from the pipeline's shared stages ``ctx`` (learned model, arrays,
    before-unlearning evaluation, :class:`SharedArtefacts`); returns the Tune ``ResultGrid``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sw = workflow.sweep
    rank_dim = sw.space.get("projection.rank")
    max_rank = int(max(rank_dim.values) if rank_dim and rank_dim.type == "choice"
                   else rank_dim.high if rank_dim else workflow.unlearn.projection.rank)
    bundles = shared_bundles(workflow, ctx["shared"], max_rank) if sw.cache == "shared" else None
    concepts = workflow.concepts
    context = ray.put({"workflow": workflow, "data": data, "learned_dir": str(ctx["learned"]), "bundles": bundles,
                       "cache": sw.cache, "arrays": None if sw.cache == "shared" else ctx["arrays"],
                       # what tuning may read: the forget set and retain_val, never retain_test
                       "before": {k: v for k, v in ctx["before"].items() if k in ("forget", "retain_val")},
                       "run_dir": str(run_dir), "base_method": dict(sw.method),
                       "concept_weights": dict(concepts.weights) if concepts else None})
    modes = ["max"] * len(sw.objectives)
    sampler = make_sampler(sw.searcher, sw.seed)
    # Always a list, one objective included: OptunaSearch then reads only a trial's final report
    # (the intermediate in-loop reports carry no objectives).
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
        log.info("[sweep] resuming %s", path)
        # Object refs in the param space do not survive a restart: hand Tune the new context.
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True,
                                   param_space={**tune_space(sw.space), "context": [context]})
    else:
        tuner = tune.Tuner(trainable, param_space={**tune_space(sw.space), "context": [context]},
                           tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler,
                                                       num_samples=sw.num_samples),
                           run_config=tune.RunConfig(name="sweep", storage_path=storage))
    return tuner.fit()
