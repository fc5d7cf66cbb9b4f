"""Per-worker loop of the unlearn stage.

Only the budgeted parameter entries move. They live in one flat vector ``theta [n_selected]``
that the optimizer owns; after each step the vector is written back into the model at the mask
positions, so every other entry stays bit-identical by construction (not by zeroed gradients).
Gradients are averaged over workers by an explicit all-reduce of the flat vectors, which keeps the
loop exact for any world size and lets the forget gradient be projected after averaging.
"""

from __future__ import annotations

import json
import os
import time
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def unlearn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    Config keys: ``model_dir``, ``method`` (the method's YAML mapping), ``settings`` (resolved lr,
    steps, retain_weight), ``batch_size``, ``seed``, ``threads``, ``checkpoint_every``, ``refs``: a
    one-element list holding an object ref of ``{"forget": arrays, "retain": arrays, "masks": {name:
    bool array} | None, "basis": U [n_selected, R] | None, "lora": plan | None}`` (a LoRA plan: the
    model is wrapped by it and the masks cover its adapter weights), ``rank`` (columns of U to use),
    ``projection_metric`` (``euclidean`` or ``adam``).
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from hdsu_ray.methods import METHODS, parse_method, wants_options
    from hdsu_ray.methods.view import StepView
    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.train.adapter import step_gradient
    from hdsu_ray.train.common import batch_tensors, option_tensors, setup_worker, shard_batches

    rank, world = setup_worker(config)
    shared = ray.get(config["refs"][0])
    params = parse_method(config["method"], "method", None)
    method = METHODS[params.name]
    settings = config["settings"]
    model, tokenizer = load_model_dir(config["model_dir"])
    lora = shared.get("lora")
    if lora is not None:  # budget: lora; the driver's plan, so the wrapping matches its basis
        from hdsu_ray.train.lora import wrap_lora
        model = wrap_lora(model, lora)
    model.train()
    device = ray.train.torch.get_device()
    if not config.get("zero"):
        model.to(device)  # DeepSpeed places the model itself
    adapter = make_adapter(model, shared["masks"], settings["lr"], world, config.get("zero"))
    project = method.projects and getattr(params, "projection", False) and shared["basis"] is not None
    U = torch.from_numpy(np.ascontiguousarray(shared["basis"][:, : config["rank"]])).to(device) if project else None

    refresh = config.get("refresh") or {}
    refresh_every = int(refresh.get("every", 0)) if project else 0

    start_step, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        adapter.load_state_dict(state["adapter"])
        start_step, history = state["step"] + 1, state["history"]
        if state.get("U") is not None:  # a refreshed basis: resume with the one in force
            U = state["U"].to(device)

    forget, retain = shared["forget"], shared["retain"]
    if getattr(params, "weights", None) and "token_label" in forget:
        from hdsu_ray.stages.tensors import reweight
        forget = {**forget, "token_weight": reweight(forget, params.weights)}
    steps, seed = int(settings["steps"]), int(config["seed"])
    hidden_layer = getattr(params, "layer", None)
    with_options = wants_options(params)

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
    monitor = InLoopEval(shared.get("eval"), config.get("eval", {}), adapter.model)
    for step in range(start_step, steps):
        if step == fault_step and rank == world - 1 and ckpt is None:
            # Test hook: a worker dies mid-run; Ray Train restarts from the checkpoint. Wait for the
            # controller to collect the last report first (it polls the workers periodically).
            time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))
            os._exit(1)
        refreshed = bool(refresh_every) and step > 0 and step % refresh_every == 0
        if refreshed:
            U = refreshed_basis(adapter, retain, device, refresh, rank=U.shape[1], seed=seed, step=step)
        rows_f = next(it_f)
        batches = {"forget": batch_tensors(forget, rows_f, device),
                   "retain": batch_tensors(retain, next(it_r), device)}
        if with_options:
            batches["forget_options"] = option_tensors(forget, rows_f, device)
        view = StepView(adapter.model, batches, hidden_layer=hidden_layer)
        terms = method.losses(params, view, settings["retain_weight"])
        g = step_gradient(adapter, terms, U if project else None, config.get("projection_metric", "euclidean"))
        adapter.apply(g)
        record = {"step": step, **{f"loss_{k}": float(v.detach()) for k, v in terms.items()}}
        if refreshed:
            record["basis_refreshed"] = int(U.shape[1])
        history.append(record)
        stop = monitor.after_step(step, steps, record, adapter)  # same answer on every rank
        last = step == steps - 1 or stop
        if rank == 0 and (step % 10 == 0 or last):
            print(f"[unlearn:{settings['label']}] step {step + 1}/{steps} "
                  + " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step"), flush=True)
        if last or (step + 1) % int(config["checkpoint_every"]) == 0:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    torch.save({"adapter": adapter.state_dict(), "step": step, "history": history,
                                "U": U.cpu() if refresh_every else None}, Path(tmp) / "state.pt")
                if last:
                    monitor.restore_best(adapter)
                    # every rank takes part: ZeRO-3 gathers shards to save; LoRA adapters are
                    # merged into the base weights, so the saved model is a plain HF model
                    adapter.save_model(tokenizer, Path(tmp) / "model", rank)
                    if rank == 0:
                        extra = ({"lora": {k: lora[k] for k in ("rank", "modules", "n_params", "n_base")}}
                                 if lora else {})
                        (Path(tmp) / "history.json").write_text(json.dumps(
                            {"curve": history, "selected_step": monitor.best_step, "stopped_early": stop, **extra}))
                if rank == 0:
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({k: v for k, v in record.items()}, checkpoint=checkpoint)
        if last:
            break


def refreshed_basis(adapter, retain: dict, device, refresh: dict, *, rank: int, seed: int, step: int):
    """``U [n_selected, rank]`` from retain gradients at the current weights (``projection.
    refresh_every``): ``refresh["samples"]`` micro-batches of ``refresh["batch"]`` rows, drawn from
    ``(seed, step)`` so every rank uses the same rows and a rerun the same basis."""
    import numpy as np
    import torch

    from hdsu_ray.core.losses import weighted_nll
    from hdsu_ray.core.projection import retain_basis
    from hdsu_ray.methods.view import StepView
    from hdsu_ray.train.common import batch_tensors

    k, b = int(refresh["samples"]), int(refresh["batch"])
    order = np.random.default_rng([seed, 11, step]).permutation(len(retain["input_ids"]))
    G = []
    for i in range(0, min(len(order), k * b), b):
        view = StepView(adapter.model, {"retain": batch_tensors(retain, order[i:i + b], device)})
        logp, mask = view.logp("retain")
        G.append(adapter.flat_grad(weighted_nll(logp, mask.float())).float().cpu())
    U = retain_basis(torch.stack(G), rank=rank, method=refresh.get("method", "svd"), energy=refresh.get("energy"),
                     generator=torch.Generator().manual_seed(seed * 100003 + step))
    return U.to(device)


class InLoopEval:
    """Evaluation during unlearning on a small sample (issue: other tools cannot evaluate while
    several workers train). Every rank computes the same numbers, which keeps ZeRO-3's collective
    forward passes in step and makes the early-stop decision identical everywhere."""

    def __init__(self, arrays: dict | None, cfg: dict, model):
        self.arrays, self.cfg, self.model = arrays, cfg, model
        self.every = int(cfg.get("every", 0)) if arrays else 0
        self.best_obj, self.best_state, self.best_step = None, None, None
        self.base_retain = None
        if self.every:
            from hdsu_ray.eval.mcq import accuracy_encoded
            self.base_retain = accuracy_encoded(model, arrays["retain"])

    def after_step(self, step: int, steps: int, record: dict, adapter) -> bool:
        if not self.every or ((step + 1) % self.every and step != steps - 1):
            return False
        from hdsu_ray.eval.mcq import accuracy_encoded
        fa = accuracy_encoded(self.model, self.arrays["forget"])
        ra = accuracy_encoded(self.model, self.arrays["retain"])
        fr, kp = 1.0 - fa, (ra / self.base_retain if self.base_retain else 0.0)
        objective = (2 * fr * kp / (fr + kp) if fr + kp > 0 else 0.0) if self.cfg.get("select") == "hmean" \
            else fr + kp
        record.update(eval_forget_accuracy=fa, eval_retain_accuracy=ra, objective=objective)
        if self.cfg.get("select", "last") != "last" and (self.best_obj is None or objective > self.best_obj):
            self.best_obj, self.best_state, self.best_step = objective, adapter.state_dict(), step
        target = self.cfg.get("stop_at_forget_accuracy")
        return target is not None and fa <= target

    def restore_best(self, adapter) -> None:
        if self.best_state is not None:
            adapter.load_state_dict(self.best_state)


def make_adapter(model, masks, lr: float, world: int, zero: dict | None):
    """Plain torch updates, or DeepSpeed ZeRO when the run names a ZeRO config."""
    if zero:
        from hdsu_ray.train.zero import ZeroAdapter
        return ZeroAdapter(model, masks, lr, world, zero)
    from hdsu_ray.train.adapter import TorchAdapter
    return TorchAdapter(model, masks, lr, world)
