"""Per-worker loop of the learn stage: fine-tune the base model on forget + retain QA text.

As in TOFU, a model must first *know* the forget set before forgetting can be measured. Runs as a
Ray Train worker (DDP over gloo on CPU, NCCL on GPU); checkpoints every epoch and resumes from the
last one after a worker failure.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def learn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    Config keys: ``base_dir`` (model directory), ``data_ref`` (object ref of encoded arrays
    ``{input_ids, attention_mask, labels}`` ``[N, L]``), ``seed``, ``threads``, ``epochs``, ``lr``,
    ``batch_size``, ``warmup_ratio``, ``weight_decay``, ``checkpoint_every``.
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.train.common import (batch_tensors, cosine_schedule, save_model_dir, setup_worker,
                                       shard_batches, unwrap)

    rank, world = setup_worker(config)
    arrays = ray.get(config["data_ref"][0])
    model, tokenizer = load_model_dir(config["base_dir"])
    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    opt_state = None
    if ckpt is not None:  # resume: weights, optimizer and epoch from the last report
        with ckpt.as_directory() as d:
            model, _ = load_model_dir(Path(d) / "model")
            state = torch.load(Path(d) / "state.pt", weights_only=False)
            start_epoch, opt_state = state["epoch"] + 1, state["optimizer"]
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    n = len(arrays["input_ids"])
    epochs, batch_size = int(config["epochs"]), int(config["batch_size"])
    steps_per_epoch = max(1, len(list(shard_batches(n, batch_size, 0, world, 0, 0))))
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total, int(config["warmup_ratio"] * total)))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state["optimizer"])
        schedule.load_state_dict(opt_state["schedule"])
    model.train()
    for epoch in range(start_epoch, epochs):
        losses = []
        for rows in shard_batches(n, batch_size, rank, world, int(config["seed"]), epoch):
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
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        last = epoch == epochs - 1
        if rank == 0:
            print(f"[learn] epoch {epoch + 1}/{epochs} loss {metrics['loss']:.4f}", flush=True)
        if last or (epoch + 1) % int(config["checkpoint_every"]) == 0:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    save_model_dir(unwrap(model), tokenizer, Path(tmp) / "model")
                    torch.save({"epoch": epoch, "optimizer": {"optimizer": optimizer.state_dict(),
                                                              "schedule": schedule.state_dict()}},
                               Path(tmp) / "state.pt")
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint)
