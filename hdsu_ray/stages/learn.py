"""The learn stage: build the base model, fine-tune it on forget + retain QA text with Ray Train,
and cache the learned model on disk under a hash of everything that decides it."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.data.encode import encode_texts
from hdsu_ray.data.select import SelectedData, selection_key
from hdsu_ray.data.text import qa_text


def learned_key(workflow: Workflow, tag: str = "learned") -> str:
    payload = {"model": to_dict(workflow.model), "learn": {k: v for k, v in to_dict(workflow.learn).items()
                                                            if k != "cache"},
               "selection": selection_key(workflow), "seed": workflow.seed,
               "workers": workflow.cluster.num_workers, "format": 1}
    if tag != "learned":
        payload["tag"] = tag
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def corpus_texts(data: SelectedData) -> list[str]:
    """Every text the tokenizer must know: QA texts and all options of all sets."""
    rows = data.forget + data.retain + data.holdout
    return [p + a for p, a in map(qa_text, rows)] + [o for r in rows for o in r.options]


def run_learn(workflow: Workflow, data: SelectedData, run_dir: Path, log=print, tag: str = "learned") -> Path:
    """Return the learned model's directory, training it unless a cached copy exists.

    ``tag="retrain"`` learns the retain set only (the oracle for privleak), with the same base
    model and tokenizer as the full model, so the two differ only by the forget set.
    """
    import ray

    from hdsu_ray.models.build import build_base_model, load_model_dir
    from hdsu_ray.train.common import atomic_copytree
    from hdsu_ray.train.driver import fit_loop
    from hdsu_ray.train.learn_loop import learn_per_worker

    key = learned_key(workflow, tag)
    target = Path(workflow.cache_dir) / tag / key
    if workflow.learn.cache and (target / "config.json").is_file():
        log(f"[{tag}] cached learned model {target}")
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
    config = {"base_dir": str(base.resolve()), "data_ref": [ray.put(arrays)], "seed": workflow.seed,
              "epochs": lc.epochs, "lr": lc.lr, "batch_size": lc.batch_size, "warmup_ratio": lc.warmup_ratio,
              "weight_decay": lc.weight_decay, "checkpoint_every": max(1, lc.epochs // 5)}
    log(f"[{tag}] {len(rows)} rows, {lc.epochs} epochs on {workflow.cluster.num_workers} worker(s)")
    result = fit_loop(learn_per_worker, config, workflow.cluster, name=f"{tag}-{key}",
                      storage=run_dir / "ray_train")
    with result.checkpoint.as_directory() as d:
        atomic_copytree(Path(d) / "model", target)
    return target
