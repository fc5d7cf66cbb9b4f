"""The learn stage: build the base model, fine-tune it on forget + retain QA text with Ray Train,
and cache the learned model on disk under a hash of everything that decides it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.data.encode import encode_texts
from hdsu_ray.data.select import SelectedData
from hdsu_ray.data.text import qa_text
from hdsu_ray.store import content_key, copytree_atomic
from hdsu_ray.train.jobs import LearnJob

log = logging.getLogger(__name__)


def learned_key(workflow: Workflow, data: SelectedData, tag: str = "learned") -> str:
    """Everything that decides the learned model: the model and learn settings, the seed, the
    world size (it splits the batches) and the content of every selected row (the tokenizer is
    trained on all of them), never the data file's path."""
    learn = {k: v for k, v in to_dict(workflow.learn).items() if k != "cache"}
    return content_key("learned", tag, to_dict(workflow.model), learn, data.content_digest(), workflow.seed,
                       workflow.cluster.num_workers, 2)


def corpus_texts(data: SelectedData) -> list[str]:
    """Every text the tokenizer must know: QA texts and all options of all sets."""
    rows = data.forget + data.retain + data.holdout
    return [p + a for p, a in map(qa_text, rows)] + [o for r in rows for o in r.options]


def run_learn(workflow: Workflow, data: SelectedData, run_dir: Path, tag: str = "learned") -> Path:
    """Return the learned model's directory, training it unless a cached copy exists.

    ``tag="retrain"`` learns the retain set only (the oracle for privleak), with the same base
    model and tokenizer as the full model, so the two differ only by the forget set.
    """
    import ray

    from hdsu_ray.models.build import build_base_model, load_model_dir
    from hdsu_ray.train.driver import fit_loop
    from hdsu_ray.train.learn_loop import learn_per_worker

    key = learned_key(workflow, data, tag)
    target = Path(workflow.cache_dir) / tag / key
    if workflow.learn.cache and (target / "config.json").is_file():
        log.info("[%s] cached learned model %s", tag, target)
        return target
    base = run_dir / "base_model"
    if base.exists():
        shutil.rmtree(base)
    build_base_model(workflow.model, corpus_texts(data), workflow.seed, base)
    _, tokenizer = load_model_dir(base)
    rows = data.retain if tag == "retrain" else data.forget + data.retain
    prompts, answers = zip(*map(qa_text, rows))
    arrays = encode_texts(tokenizer, list(prompts), list(answers), workflow.model.tiny.max_len,
                          loss_on=workflow.learn.loss_on)
    lc = workflow.learn
    job = LearnJob(base_dir=str(base.resolve()), data=ray.put(arrays), seed=workflow.seed, epochs=lc.epochs,
                   lr=lc.lr, batch_size=lc.batch_size, warmup_ratio=lc.warmup_ratio, weight_decay=lc.weight_decay,
                   checkpoint_every=max(1, lc.epochs // 5))
    log.info("[%s] %d rows, %d epochs on %d worker(s)", tag, len(rows), lc.epochs, workflow.cluster.num_workers)
    result = fit_loop(learn_per_worker, job, workflow.cluster, name=f"{tag}-{key}", storage=run_dir / "ray_train")
    with result.checkpoint.as_directory() as d:
        copytree_atomic(Path(d) / "model", target)
    return target
