"""The unlearn stage's driver: one Ray Train run of one method on the learned model.

The CLI's method runs and the sweep's trials both call :func:`run_unlearn_method`, so a trial is
exactly a run. The run's shared artefacts come from a :class:`~hdsu_ray.stages.artefacts.Bundles`.
"""

from __future__ import annotations

import json
from pathlib import Path

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.methods import parse_method, resolved
from hdsu_ray.stages.artefacts import Bundles
from hdsu_ray.store import content_key, copytree_atomic
from hdsu_ray.train.jobs import InLoopSettings, RefreshSettings, UnlearnJob


def zero_config(workflow: Workflow) -> dict | None:
    """The DeepSpeed JSON for the run (``cluster/zero<stage>.json`` unless a file is named)."""
    u = workflow.unlearn
    if u.engine != "deepspeed":
        return None
    from hdsu_ray.config.paths import deepspeed_config_path
    path = deepspeed_config_path(u)
    return {"stage": u.zero_stage, "config": json.loads(path.read_text()), "bf16": workflow.model.dtype == "bfloat16"}


def unlearn_job(workflow: Workflow, spec: dict, bundles: Bundles, rank: int | None = None) -> UnlearnJob:
    """The worker job of one run: the method's resolved settings and its shared bundle."""
    params = parse_method(spec, "method", None)
    settings = resolved(params, workflow.unlearn)
    u, ev, pr = workflow.unlearn, workflow.evaluate, workflow.unlearn.projection
    return UnlearnJob(
        model_dir=str(bundles.learned_dir.resolve()), method=spec, settings=settings,
        bundle=bundles.bundle(params, settings), seed=workflow.seed, batch_size=u.batch_size,
        checkpoint_every=u.checkpoint_every, rank=rank or getattr(params, "rank", None) or pr.rank,
        projection_metric=pr.metric, workflow=workflow.name,
        zero=zero_config(workflow),
        refresh=RefreshSettings(every=pr.refresh_every, samples=pr.basis_samples, batch=pr.basis_batch,
                                method=pr.method, energy=pr.energy),
        in_loop=InLoopSettings(every=ev.every, candidates=ev.candidates, select=ev.select,
                               stop_at_forget_accuracy=ev.stop_at_forget_accuracy, normalise=ev.normalise))


def run_unlearn_method(workflow: Workflow, spec: dict, bundles: Bundles, run_dir: Path, *,
                       rank: int | None = None, callbacks=None, model_name: str | None = None
                       ) -> tuple[Path, dict]:
    """Unlearn with one method; returns the unlearned model's directory (``run_dir/models/
    <model_name or label>``) and the run's settings, with its history (curve, selected step)."""
    from hdsu_ray.train.driver import fit_loop
    from hdsu_ray.train.unlearn_loop import unlearn_per_worker

    job = unlearn_job(workflow, spec, bundles, rank)
    settings = dict(job.settings)
    name = f"unlearn-{settings['label']}-{content_key('unlearn-run', to_dict(workflow.unlearn), spec, workflow.seed)}"
    result = fit_loop(unlearn_per_worker, job, workflow.cluster, name=name, storage=run_dir / "ray_train",
                      callbacks=callbacks)
    target = run_dir / "models" / (model_name or settings["label"])
    with result.checkpoint.as_directory() as d:
        copytree_atomic(Path(d) / "model", target)
        settings.update(json.loads((Path(d) / "history.json").read_text()))
    return target, settings
