"""The evaluate stage: multiple-choice accuracy and per-sample statistics of a model, as a Ray task
(so on a cluster it runs where the resources are, e.g. on a GPU node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdsu_ray.config.paths import data_path
from hdsu_ray.config.schema import Workflow
from hdsu_ray.data.select import SelectedData
from hdsu_ray.data.text import qa_text


def _evaluate_task(model_dir: str, sets: dict, max_len: int, batch_size: int, normalise: str,
                   threads: int, stats_sets: list[str], fluency: list[str]) -> dict:
    import torch

    from hdsu_ray.eval.mcq import mcq_correct
    from hdsu_ray.eval.sample_stats import perplexity, sequence_stats
    from hdsu_ray.models.build import load_model_dir

    torch.set_num_threads(threads)
    model, tok = load_model_dir(model_dir)
    if torch.cuda.is_available():  # a GPU task on a cluster
        model.to("cuda")
    out = {name: mcq_correct(model, tok, records, max_len=max_len, batch_size=batch_size, normalise=normalise)
           for name, records in sets.items()}
    out["stats"] = {}
    for name in stats_sets:
        prompts, answers = zip(*map(qa_text, sets[name]))
        out["stats"][name] = sequence_stats(model, tok, list(prompts), list(answers), max_len,
                                            batch_size=batch_size)
    out["perplexity"] = perplexity(model, tok, fluency, max_len) if fluency else None
    return out


def fluency_texts(workflow: Workflow) -> list[str]:
    """PubMedQA contexts for the perplexity check (a fixed, seeded sample)."""
    if not workflow.data.fluency_path:
        return []
    from hdsu_ray.data.loaders import load_records
    records = load_records("pubmedqa", data_path(workflow, workflow.data.fluency_path))
    rng = np.random.default_rng(workflow.data.seed)
    picks = rng.permutation(len(records))[: workflow.evaluate.fluency_samples]
    return [records[i].fields["context"] for i in sorted(picks)]


def evaluate_model(workflow: Workflow, data: SelectedData, model_dir: Path, with_stats: bool = True) -> dict:
    """``{"forget": [N] bool, "retain": [M] bool, "holdout": ..., "stats": {set: {stat: [N]}},
    "perplexity": float | Absent | None}``."""
    import ray

    from hdsu_ray.runtime import held_cpus

    cl = workflow.cluster
    cpus = max(1.0, cl.cpus_per_worker * cl.num_workers) if not cl.use_gpu else 1.0
    # DEFAULT scheduling: inside a Tune trial the task must not be captured by the trial's
    # placement group (a 0.01-CPU bundle); it takes the CPUs the trial's workers just released,
    # less the sliver the trial holds (see driver.fit_loop), so concurrent trials fit.
    task = ray.remote(_evaluate_task).options(num_cpus=cpus - held_cpus(), num_gpus=1 if cl.use_gpu else 0,
                                              scheduling_strategy="DEFAULT")
    sets = {"forget": data.forget, "retain": data.retain}
    if data.holdout:
        sets["holdout"] = data.holdout
    stats_sets = [s for s in ("forget", "holdout") if s in sets] if with_stats else []
    fluency = fluency_texts(workflow) if with_stats else []
    return ray.get(task.remote(str(model_dir), sets, workflow.model.tiny.max_len, workflow.evaluate.batch_size,
                               workflow.evaluate.normalise, int(cpus), stats_sets, fluency))
