"""Per-worker loop of the learn stage: fine-tune the base model on forget + retain QA text.

As in TOFU, a model must first *know* the forget set before forgetting can be measured. Runs as a
Ray Train worker (DDP over gloo on CPU, NCCL on GPU); checkpoints every few epochs and resumes from
the last one after a worker failure.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)  # not print(): see unlearn_loop


def learn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["job"]`` is a :class:`~hdsu_ray.train.jobs.LearnJob`."""
    import ray
    import ray.train
    import ray.train.torch

    from hdsu_ray.logs import configure
    from hdsu_ray.train.common import setup_worker

    configure()
    job = config["job"]
    rank, world = setup_worker(job.seed, job.threads)
    arrays = ray.get(job.data)
    model, tokenizer, start_epoch, opt_state = _load(job, ray.train.get_checkpoint())
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer, schedule = _optimizer(model, job, len(arrays["input_ids"]), world, opt_state)
    model.train()
    for epoch in range(start_epoch, job.epochs):
        loss = _epoch(model, optimizer, schedule, arrays, job, rank, world, epoch, device)
        if rank == 0:
            log.info("[learn] epoch %d/%d loss %.4f", epoch + 1, job.epochs, loss)
        if epoch == job.epochs - 1 or (epoch + 1) % job.checkpoint_every == 0:
            _report(model, tokenizer, optimizer, schedule, epoch, loss, rank)


def _load(job, ckpt):
    """``(model, tokenizer, first epoch, optimizer state)``: the base model, or the checkpoint's."""
    import torch

    from hdsu_ray.models.build import load_model_dir

    model, tokenizer = load_model_dir(job.base_dir)
    if ckpt is None:
        return model, tokenizer, 0, None
    with ckpt.as_directory() as d:  # resume: weights, optimizer and epoch from the last report
        model, _ = load_model_dir(Path(d) / "model")
        state = torch.load(Path(d) / "state.pt", weights_only=False)
    return model, tokenizer, state["epoch"] + 1, state["optimizer"]


def _optimizer(model, job, n_rows: int, world: int, opt_state):
    """AdamW with linear warm-up and cosine decay over every step of every epoch."""
    import torch

    from hdsu_ray.train.common import cosine_schedule, shard_batches

    steps_per_epoch = max(1, len(list(shard_batches(n_rows, job.batch_size, 0, world, 0, 0))))
    total = steps_per_epoch * job.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=job.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(total, int(job.warmup_ratio * total)))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state["optimizer"])
        schedule.load_state_dict(opt_state["schedule"])
    return optimizer, schedule


def _epoch(model, optimizer, schedule, arrays, job, rank: int, world: int, epoch: int, device) -> float:
    """One pass over this worker's shard; returns the mean loss (NaN for an empty shard)."""
    import torch
    import torch.nn.functional as F

    from hdsu_ray.train.common import batch_tensors, shard_batches

    losses = []
    for rows in shard_batches(len(arrays["input_ids"]), job.batch_size, rank, world, job.seed, epoch):
        b = batch_tensors(arrays, rows, device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(),
                               ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def _report(model, tokenizer, optimizer, schedule, epoch: int, loss: float, rank: int) -> None:
    import ray.train
    import torch

    from hdsu_ray.train.common import save_model_dir, unwrap

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_model_dir(unwrap(model), tokenizer, Path(tmp) / "model")
            torch.save({"epoch": epoch, "optimizer": {"optimizer": optimizer.state_dict(),
                                                      "schedule": schedule.state_dict()}}, Path(tmp) / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"epoch": epoch, "loss": loss}, checkpoint=checkpoint)
