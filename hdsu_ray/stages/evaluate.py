"""The evaluate stage: multiple-choice accuracy of a model on the workflow's sets, as a Ray task
(so on a cluster it runs where the resources are, e.g. on a GPU node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdsu_ray.config.schema import Workflow
from hdsu_ray.data.select import SelectedData


def _evaluate_task(model_dir: str, sets: dict, max_len: int, batch_size: int, normalise: str,
                   threads: int) -> dict[str, np.ndarray]:
    import torch

    from hdsu_ray.eval.mcq import mcq_correct
    from hdsu_ray.models.build import load_model_dir

    torch.set_num_threads(threads)
    model, tok = load_model_dir(model_dir)
    return {name: mcq_correct(model, tok, records, max_len=max_len, batch_size=batch_size, normalise=normalise)
            for name, records in sets.items()}


def evaluate_model(workflow: Workflow, data: SelectedData, model_dir: Path) -> dict[str, np.ndarray]:
    """Per-item correctness ``{"forget": [N] bool, "retain": [M] bool, "holdout": ...}``."""
    import ray

    cl = workflow.cluster
    cpus = max(1.0, cl.cpus_per_worker * cl.num_workers) if not cl.use_gpu else 1.0
    task = ray.remote(_evaluate_task).options(num_cpus=cpus, num_gpus=1 if cl.use_gpu else 0)
    sets = {"forget": data.forget, "retain": data.retain}
    if data.holdout:
        sets["holdout"] = data.holdout
    return ray.get(task.remote(str(model_dir), sets, workflow.model.tiny.max_len,
                               workflow.evaluate.batch_size, workflow.evaluate.normalise, int(cpus)))
