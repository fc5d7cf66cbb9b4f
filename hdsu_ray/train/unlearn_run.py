"""One unlearning run's state and step, independent of Ray: set-up, resume, step, finish.

Only the budgeted parameter entries move. The adapter (:mod:`hdsu_ray.train.adapter`, or
:mod:`hdsu_ray.train.zero` under DeepSpeed) owns them as one flat vector; after each step it is
written back at the mask positions, so every other entry stays bit-identical by construction.
Gradients are averaged over workers before the forget gradient is projected off the retain basis.

The Ray Train loop (:mod:`hdsu_ray.train.unlearn_loop`) drives this class on every worker;
``bench/tune_offline.py`` drives it in one process with ``rank=0, world=1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hdsu_ray.train.common import batch_tensors, option_tensors, shard_batches
from hdsu_ray.train.in_loop import InLoopEval
from hdsu_ray.train.jobs import UnlearnJob


def batch_stream(arrays: dict, batch_size: int, rank: int, world: int, seed: int) -> Iterator[np.ndarray]:
    """This worker's rows of every global batch, epoch after epoch, in a seeded order."""
    epoch = 0
    while True:
        yield from shard_batches(len(arrays["input_ids"]), batch_size, rank, world, seed, epoch)
        epoch += 1


def make_adapter(model, masks, lr: float, world: int, zero: dict | None):
    """Plain torch updates, or DeepSpeed ZeRO when the run names a ZeRO config."""
    if zero:
        from hdsu_ray.train.zero import ZeroAdapter
        return ZeroAdapter(model, masks, lr, world, zero)
    from hdsu_ray.train.adapter import TorchAdapter
    return TorchAdapter(model, masks, lr, world)


class UnlearnRun:
    """Everything one worker needs to take unlearning steps.

    Args:
        job: the run's :class:`UnlearnJob`.
        shared: the bundle behind ``job.bundle`` (already fetched from the object store).
        rank, world: this worker's place in the data-parallel group.
        device: where the model runs.
    """

    def __init__(self, job: UnlearnJob, shared: dict, rank: int, world: int, device):
        from hdsu_ray.methods import METHODS, parse_method, wants_options

        self.job, self.rank, self.world, self.device = job, rank, world, device
        self.params = parse_method(job.method, "method", None)
        self.method = METHODS[self.params.name]
        self.settings, self.steps = job.settings, int(job.settings["steps"])
        self.lora = shared.get("lora")
        self.model, self.tokenizer = self._load_model(job.zero is None)
        self.adapter = make_adapter(self.model, shared["masks"], self.settings["lr"], world, job.zero)
        self.U = self._basis(shared["basis"])
        self.refresh_every = job.refresh.every if self.U is not None else 0
        self.forget, self.retain = self._arrays(shared["forget"]), shared["retain"]
        self.with_options = wants_options(self.params)
        self.hidden_layer = getattr(self.params, "layer", None)
        self.it_f = batch_stream(self.forget, job.batch_size, rank, world, job.seed * 1000 + 1)
        self.it_r = batch_stream(self.retain, job.batch_size, rank, world, job.seed * 1000 + 2)
        # Scored before any resume: preservation in the loop is relative to the learned model.
        self.monitor = InLoopEval(shared.get("eval"), job.in_loop, self.adapter.model)
        self.history: list[dict] = []

    def _load_model(self, place: bool):
        from hdsu_ray.models.build import load_model_dir

        model, tokenizer = load_model_dir(self.job.model_dir)
        if self.lora is not None:  # the driver's plan, so the wrapping matches its basis
            from hdsu_ray.train.lora import wrap_lora
            model = wrap_lora(model, self.lora)
        model.train()
        if place:  # DeepSpeed places the model itself
            model.to(self.device)
        return model, tokenizer

    def _basis(self, basis) -> torch.Tensor | None:
        if not (self.method.projects and getattr(self.params, "projection", False) and basis is not None):
            return None
        return torch.from_numpy(np.ascontiguousarray(basis[:, : self.job.rank])).to(self.device)

    def _arrays(self, forget: dict) -> dict:
        """The forget arrays, with token weights recomputed when the run overrides the concept weights."""
        weights = getattr(self.params, "weights", None)
        if weights and "token_label" in forget:
            from hdsu_ray.core.weighting import reweight_arrays
            forget = {**forget, "token_weight": reweight_arrays(forget, weights)}
        return forget

    def resume(self, state: dict) -> int:
        """Restore a checkpoint's state; returns the step to continue from (data order replayed)."""
        self.adapter.load_state_dict(state["adapter"])
        self.history = list(state["history"])
        if state.get("U") is not None:  # a refreshed basis: resume with the one in force
            self.U = state["U"].to(self.device)
        start = int(state["step"]) + 1
        for _ in range(start):
            next(self.it_f), next(self.it_r)
        return start

    def step(self, step: int) -> dict[str, Any]:
        """One optimizer step; returns the step's record (losses, and a refreshed basis' rank)."""
        from hdsu_ray.methods.view import StepView
        from hdsu_ray.train.adapter import step_gradient

        refreshed = bool(self.refresh_every) and step > 0 and step % self.refresh_every == 0
        if refreshed:
            self.U = self._refreshed_basis(step)
        rows_f = next(self.it_f)
        batches = {"forget": batch_tensors(self.forget, rows_f, self.device),
                   "retain": batch_tensors(self.retain, next(self.it_r), self.device)}
        if self.with_options:
            batches["forget_options"] = option_tensors(self.forget, rows_f, self.device)
        view = StepView(self.adapter.model, batches, hidden_layer=self.hidden_layer)
        terms = self.method.losses(self.params, view, self.settings["retain_weight"])
        self.adapter.apply(step_gradient(self.adapter, terms, self.U, self.job.projection_metric))
        record = {"step": step, **{f"loss_{k}": float(v.detach()) for k, v in terms.items()}}
        if refreshed:
            record["basis_refreshed"] = int(self.U.shape[1])
        self.history.append(record)
        return record

    def _refreshed_basis(self, step: int) -> torch.Tensor:
        """``U [n_selected, rank]`` from retain gradients at the current weights, drawn from
        ``(seed, step)`` so every rank uses the same rows and a rerun the same basis."""
        from hdsu_ray.core.losses import weighted_nll
        from hdsu_ray.core.projection import retain_basis
        from hdsu_ray.methods.view import StepView

        r, seed = self.job.refresh, self.job.seed
        order = np.random.default_rng([seed, 11, step]).permutation(len(self.retain["input_ids"]))
        G = []
        for i in range(0, min(len(order), r.samples * r.batch), r.batch):
            view = StepView(self.adapter.model, {"retain": batch_tensors(self.retain, order[i:i + r.batch],
                                                                         self.device)})
            logp, mask = view.logp("retain")
            G.append(self.adapter.flat_grad(weighted_nll(logp, mask.float())).float().cpu())
        U = retain_basis(torch.stack(G), rank=int(self.U.shape[1]), method=r.method, energy=r.energy,
                         generator=torch.Generator().manual_seed(seed * 100003 + step))
        return U.to(self.device)

    def checkpoint_state(self, step: int) -> dict:
        """What :meth:`resume` needs (rank 0 writes it)."""
        return {"adapter": self.adapter.state_dict(), "step": step, "history": self.history,
                "U": self.U.cpu() if self.refresh_every else None}

    def finish(self, out: Path, stopped: bool) -> None:
        """Restore the selected checkpoint and write the model and its history into ``out``.

        Every rank calls this: ZeRO-3 gathers shards to save; LoRA adapters are merged into the
        base weights, so the saved model is a plain Hugging Face model.
        """
        self.monitor.restore_best(self.adapter)
        self.adapter.save_model(self.tokenizer, out / "model", self.rank)
        if self.rank == 0:
            extra = ({"lora": {k: self.lora[k] for k in ("rank", "modules", "n_params", "n_base")}}
                     if self.lora else {})
            (out / "history.json").write_text(json.dumps(
                {"curve": self.history, "selected_step": self.monitor.best_step, "stopped_early": stopped, **extra}))
