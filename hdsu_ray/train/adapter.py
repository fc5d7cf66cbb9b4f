"""How the unlearn loop updates a budgeted subset of parameters, independent of the engine.

The loop works only with flat vectors over the selected entries (``[n_selected]``): it asks the
adapter for the averaged gradient of a loss, projects or combines such vectors, and hands one back
to :meth:`apply`. Two adapters implement this contract:

* :class:`TorchAdapter` (here): plain torch; the optimizer owns a flat ``theta`` that is written
  back into the model at the mask positions after every step, and gradients are averaged over
  workers by an explicit all-reduce.
* ``ZeroAdapter`` (:mod:`hdsu_ray.train.zero`): DeepSpeed ZeRO 0-3, the only module that imports
  deepspeed; it reads and writes full gradients through DeepSpeed's safe accessors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hdsu_ray.core.budget import masked_flat
from hdsu_ray.core.projection import project_out, project_out_metric


def selected_names(model, masks: dict[str, np.ndarray] | None) -> tuple[list[str], dict[str, Tensor]]:
    """Parameter names with at least one selected entry (model order), and their masks as bool
    tensors. A name missing from ``masks`` is not selected (LoRA masks name only the adapters)."""
    named = dict(model.named_parameters())
    if masks is None:
        masks = {n: np.ones(tuple(p.shape), bool) for n, p in named.items()}
    names = [n for n in named if n in masks and masks[n].any()]
    return names, {n: torch.from_numpy(np.array(masks[n], dtype=bool)) for n in names}


class TorchAdapter:
    """Budgeted AdamW updates on a plain torch model (any world size, gloo or NCCL)."""

    def __init__(self, model, masks: dict[str, np.ndarray] | None, lr: float, world: int):
        self.model, self.world = model, world
        self.names, self.mask_t = selected_names(model, masks)
        self.named = dict(model.named_parameters())
        self.mask_t = {n: m.to(self.named[n].device) for n, m in self.mask_t.items()}
        for n, p in self.named.items():  # untouched tensors need no gradient at all
            p.requires_grad_(n in self.mask_t)
        self.theta = masked_flat({n: self.named[n].detach() for n in self.names}, self.mask_t,
                                 self.names).clone().float().requires_grad_(True)
        self.optimizer = torch.optim.AdamW([self.theta], lr=lr, weight_decay=0.0)

    @property
    def n_selected(self) -> int:
        return self.theta.numel()

    def flat_grad(self, loss: Tensor, retain_graph: bool = False) -> Tensor:
        """``[n_selected]`` gradient of ``loss``, averaged over workers."""
        self.model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        grads = {n: self.named[n].grad if self.named[n].grad is not None else torch.zeros_like(self.named[n])
                 for n in self.names}
        flat = masked_flat(grads, self.mask_t, self.names).float()
        if self.world > 1:
            torch.distributed.all_reduce(flat)
            flat /= self.world
        self.model.zero_grad(set_to_none=True)
        return flat

    def apply(self, g: Tensor) -> None:
        """One optimizer step with gradient ``g``; then write theta back at the mask positions."""
        self.theta.grad = g.to(self.theta.dtype)
        self.optimizer.step()
        self._write_back()

    def _write_back(self) -> None:
        with torch.no_grad():
            start = 0
            for n in self.names:
                k = int(self.mask_t[n].sum())
                self.named[n][self.mask_t[n]] = self.theta[start:start + k].to(self.named[n].dtype)
                start += k

    def second_moment(self) -> Tensor | None:
        """Adam's ``exp_avg_sq`` over the selected entries (the ``adam`` projection metric)."""
        state = self.optimizer.state.get(self.theta)
        return state["exp_avg_sq"] if state else None

    def state_dict(self) -> dict:
        return {"theta": self.theta.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._write_back()

    def save_model(self, tokenizer, path: Path, rank: int) -> None:
        """Write the model as a Hugging Face directory (rank 0 only; every rank calls this).

        LoRA adapters are merged into their base weights first, in place: the run's last call.
        """
        if rank == 0:
            from hdsu_ray.train.lora import merge_lora
            merge_lora(self.model).save_pretrained(path)
            tokenizer.save_pretrained(path)


def step_gradient(adapter, terms: dict[str, Tensor], U: Tensor | None, metric: str = "euclidean") -> Tensor:
    """``[n_selected]`` update direction of one step, clipped to norm 1.

    With a basis ``U [n_selected, r]`` the ``forget`` term's averaged gradient is projected off the
    retain subspace (in Adam's metric once Adam has statistics, with ``metric="adam"``) and the
    other terms' gradient is added unprojected; without one, all terms are summed. Clipping is a
    rescaling, so the projection still holds.
    """
    if U is not None:
        g_forget = adapter.flat_grad(terms["forget"], retain_graph=len(terms) > 1)
        v = adapter.second_moment() if metric == "adam" else None
        g = (project_out_metric(g_forget, U.T, 1.0 / (v.sqrt() + 1e-8)) if v is not None
             else project_out(g_forget, U))
        rest = [t for k, t in terms.items() if k != "forget"]
        if rest:
            g = g + adapter.flat_grad(sum(rest))
    else:
        g = adapter.flat_grad(sum(terms.values()))
    return g * min(1.0, 1.0 / (g.norm().item() + 1e-12))
