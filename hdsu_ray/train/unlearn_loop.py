"""Per-worker loop of the unlearn stage.

Only the budgeted parameter entries move. They live in one flat vector ``theta [n_selected]``
that the optimizer owns; after each step the vector is written back into the model at the mask
positions, so every other entry stays bit-identical by construction (not by zeroed gradients).
Gradients are averaged over workers by an explicit all-reduce of the flat vectors, which keeps the
loop exact for any world size and lets the forget gradient be projected after averaging.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _all_reduce_mean(t, world: int):
    import torch.distributed as dist
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


def unlearn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    Config keys: ``model_dir``, ``method`` (the method's YAML mapping), ``settings`` (resolved lr,
    steps, retain_weight), ``batch_size``, ``seed``, ``threads``, ``checkpoint_every``, ``refs``: a
    one-element list holding an object ref of ``{"forget": arrays, "retain": arrays, "masks": {name:
    bool array} | None, "basis": U [n_selected, R] | None}``, ``rank`` (columns of U to use),
    ``projection_metric`` (``euclidean`` or ``adam``).
    """
    import ray
    import ray.train
    import torch

    from hdsu_ray.core.budget import masked_flat
    from hdsu_ray.core.projection import project_out, project_out_metric
    from hdsu_ray.methods import METHODS, parse_method
    from hdsu_ray.methods.view import StepView
    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.train.common import batch_tensors, save_model_dir, setup_worker, shard_batches

    rank, world = setup_worker(config)
    shared = ray.get(config["refs"][0])
    params = parse_method(config["method"], "method", None)
    method = METHODS[params.name]
    settings = config["settings"]
    model, tokenizer = load_model_dir(config["model_dir"])
    model.train()
    named = dict(model.named_parameters())
    masks = shared["masks"] or {n: np.ones(tuple(p.shape), bool) for n, p in named.items()}
    names = [n for n in named if masks[n].any()]
    for n, p in named.items():  # untouched tensors need no gradient at all
        p.requires_grad_(n in names)
    mask_t = {n: torch.from_numpy(np.ascontiguousarray(masks[n])) for n in names}
    theta = masked_flat({n: named[n].detach() for n in names}, mask_t, names).clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([theta], lr=settings["lr"], weight_decay=0.0)
    project = method.projects and getattr(params, "projection", False) and shared["basis"] is not None
    U = torch.from_numpy(np.ascontiguousarray(shared["basis"][:, : config["rank"]])) if project else None

    def write_back() -> None:
        with torch.no_grad():
            start = 0
            for n in names:
                k = int(mask_t[n].sum())
                named[n][mask_t[n]] = theta[start:start + k].detach().to(named[n].dtype)
                start += k

    def flat_grad() -> torch.Tensor:
        grads = {n: named[n].grad if named[n].grad is not None else torch.zeros_like(named[n]) for n in names}
        return _all_reduce_mean(masked_flat(grads, mask_t, names).float(), world)

    start_step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        with torch.no_grad():
            theta.copy_(state["theta"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"] + 1
        write_back()

    forget, retain = shared["forget"], shared["retain"]
    steps, seed = int(settings["steps"]), int(config["seed"])
    hidden_layer = getattr(params, "layer", None)

    def batches_of(arrays, salt):
        epoch = 0
        while True:
            yield from shard_batches(len(arrays["input_ids"]), int(config["batch_size"]), rank, world,
                                     seed * 1000 + salt, epoch)
            epoch += 1

    it_f, it_r = batches_of(forget, 1), batches_of(retain, 2)
    for _ in range(start_step):  # replay the data order up to the resumed step
        next(it_f), next(it_r)
    fault_step = int(os.environ.get("HDSU_FAULT_AT_STEP", "-1"))
    history = []
    for step in range(start_step, steps):
        if step == fault_step and rank == world - 1 and ckpt is None:
            os._exit(1)  # test hook: a worker dies mid-run; Ray Train restarts from the checkpoint
        batches = {"forget": batch_tensors(forget, next(it_f), "cpu"),
                   "retain": batch_tensors(retain, next(it_r), "cpu")}
        view = StepView(model, batches, hidden_layer=hidden_layer)
        terms = method.losses(params, view, settings["retain_weight"])
        model.zero_grad(set_to_none=True)
        if project:
            terms["forget"].backward(retain_graph=len(terms) > 1)
            g_forget = flat_grad()
            if config.get("projection_metric") == "adam" and optimizer.state.get(theta):
                v = optimizer.state[theta]["exp_avg_sq"]
                g_forget = project_out_metric(g_forget, U.T, 1.0 / (v.sqrt() + 1e-8))
            else:
                g_forget = project_out(g_forget, U)
            model.zero_grad(set_to_none=True)
            rest = [v for k, v in terms.items() if k != "forget"]
            g = g_forget + (flat_grad_after(rest, flat_grad) if rest else 0)
        else:
            sum(terms.values()).backward()
            g = flat_grad()
        norm = g.norm()
        g = g * min(1.0, 1.0 / (norm.item() + 1e-12))  # clip to norm 1: direction (and projection) kept
        theta.grad = g
        optimizer.step()
        write_back()
        losses = {f"loss_{k}": float(v.detach()) for k, v in terms.items()}
        history.append({"step": step, **losses})
        if rank == 0 and (step % 10 == 0 or step == steps - 1):
            print(f"[unlearn:{settings['label']}] step {step + 1}/{steps} "
                  + " ".join(f"{k}={v:.4f}" for k, v in losses.items()), flush=True)
        last = step == steps - 1
        if last or (step + 1) % int(config["checkpoint_every"]) == 0:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    torch.save({"theta": theta.detach(), "optimizer": optimizer.state_dict(), "step": step},
                               Path(tmp) / "state.pt")
                    if last:
                        save_model_dir(model, tokenizer, Path(tmp) / "model")
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({"step": step, **losses, "n_selected": int(theta.numel())},
                                 checkpoint=checkpoint)


def flat_grad_after(terms, flat_grad):
    """Backpropagate the non-forget terms and return their averaged flat gradient."""
    sum(terms).backward()
    return flat_grad()
