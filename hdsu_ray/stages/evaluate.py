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

    from hdsu_ray.eval.mcq import option_scores
    from hdsu_ray.eval.sample_stats import perplexity, sequence_stats
    from hdsu_ray.models.build import load_model_dir

    torch.set_num_threads(threads)
    model, tok = load_model_dir(model_dir)
    if torch.cuda.is_available():  # a GPU task on a cluster
        model.to("cuda")
    out: dict = {"scores": {}}
    for name, records in sets.items():
        scores = option_scores(model, tok, records, max_len=max_len, batch_size=batch_size, normalise=normalise)
        out[name] = scores.argmax(axis=1) == np.array([r.answer_index for r in records])
        if name == "forget":  # the truth ratio reads every option's score
            out["scores"][name] = scores
            out["scores"]["forget_answers"] = np.array([r.answer_index for r in records])
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


# Evaluation set -> the selected rows it scores. "retain" is the reported retain set (retain_test);
# retain_val only ever chooses settings and checkpoints.
EVAL_SETS = {"forget": "forget", "retain": "retain_test", "retain_val": "retain_val", "holdout": "holdout"}


def _model_label(model_dir: Path) -> str:
    """``learned/<key>``, ``models/<label>``: enough of the path to tell models apart in a task name."""
    path = Path(model_dir)
    return f"{path.parent.name}/{path.name}"


def evaluate_model(workflow: Workflow, data: SelectedData, model_dir: Path, with_stats: bool = True,
                   sets: tuple[str, ...] = tuple(EVAL_SETS), task_name: str | None = None) -> dict:
    """``{"forget": [N] bool, "retain": [M] bool (retain_test), "retain_val": ..., "holdout": ...,
    "stats": {set: {stat: [N]}}, "perplexity": float | Absent | None}``; ``sets`` limits the sets
    scored (a sweep trial scores forget and retain_val only: tuning never sees retain_test).
    ``task_name`` is the Ray task's name in the dashboard (default: study and the model's directory)."""
    import ray

    from hdsu_ray.runtime import held_cpus, task_cpus

    cl = workflow.cluster
    cpus = task_cpus(cl) if not cl.use_gpu else 1.0  # one node's worth at most: a task runs on one node
    # DEFAULT scheduling: inside a Tune trial the task must not be captured by the trial's
    # placement group (a 0.01-CPU bundle); it takes the CPUs the trial's workers just released,
    # less the sliver the trial holds (see driver.fit_loop), so concurrent trials fit.
    task = ray.remote(_evaluate_task).options(num_cpus=cpus - held_cpus(), num_gpus=1 if cl.use_gpu else 0,
                                              scheduling_strategy="DEFAULT", name=task_name or
                                              f"evaluate {workflow.name} {_model_label(model_dir)}")
    wanted = sets
    sets = {name: getattr(data, EVAL_SETS[name]) for name in wanted if name in EVAL_SETS and getattr(data, EVAL_SETS[name])}
    if with_stats or any(name in ("mmlu", "pubmedqa") for name in wanted):  # general medical competence
        from hdsu_ray.data.competence import competence_sets
        sets.update({k: v for k, v in competence_sets(workflow).items() if with_stats or k in wanted})
    if with_stats and "forget" in sets:  # the probes a loss tuned on the original options cannot target
        from hdsu_ray.data.probes import fresh_distractors, shuffled
        sets["forget_shuffled"] = shuffled(data.forget, workflow.data.seed)
        sets["forget_fresh"] = fresh_distractors(data.forget, data.forget, workflow.data.seed)
    stats_sets = [s for s in ("forget", "holdout") if s in sets] if with_stats else []
    if not sets:
        return {"stats": {}, "scores": {}, "perplexity": None}
    fluency = fluency_texts(workflow) if with_stats else []
    return ray.get(task.remote(str(model_dir), sets, workflow.model.tiny.max_len, workflow.evaluate.batch_size,
                               workflow.evaluate.normalise, int(cpus), stats_sets, fluency))
