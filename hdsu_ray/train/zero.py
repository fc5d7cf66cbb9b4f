"""DeepSpeed ZeRO 0-3 behind the unlearn loop's adapter contract (see :mod:`hdsu_ray.train.adapter`).

This is the only module that imports deepspeed, and only inside functions, so the rest of the
package (and every worker that runs the plain torch engine) never pays for it. docs/deepspeed.md
explains the configuration files and the measurements.

One step, for every stage:

* ``flat_grad(loss)``: ``engine.backward(loss)`` averages the gradient over workers the way the
  stage does it (stage 0: all-reduce of ``p.grad``; 1/2: fp32 gradient partitions; 3: fp32
  partitions of partitioned weights). The full gradient of each selected tensor is read with
  ``deepspeed.utils.safe_get_full_grad`` (a collective under ZeRO 1-3: every rank reads the same
  tensors in the same order), masked and flattened in ``masked_flat`` order, and the engine's
  gradients are set back to zero, so a second ``flat_grad`` before the step (the projection:
  forget term, then the rest) sees its own loss only. Under ZeRO-3 two more things are needed
  before each backward pass; see :meth:`ZeroAdapter._prepare_zero3_backward`.
* ``apply(g)``: ``g`` is scattered into dense full gradients (zero outside the mask), written with
  ``safe_set_full_grad``, and the engine steps. The client optimizer is ``torch.optim.AdamW`` with
  weight decay 0: an entry whose gradient has always been exactly zero gets a zero update, so
  entries outside the budget stay bit-identical. Then every rank gathers the selected entries of
  the weights and Adam moments (``O(n_selected)`` traffic), which ``second_moment`` and
  ``state_dict`` return without any collective: the loop calls ``state_dict`` on rank 0 only.

``budget: lora`` works under ZeRO 0-2: the engine wraps the peft model, the masks select its
adapter weights, and ``save_model`` merges them into the base weights. ZeRO-3 with LoRA is refused
when the workflow is validated (partitioned adapters would have to be gathered to merge them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hdsu_ray.core.budget import masked_flat, scatter_flat
from hdsu_ray.train.adapter import selected_names
from hdsu_ray.train.zero_parts import ds_config, is_partitioned, local_slice


# ZeRO-3's per-module pre-backward counter is set to this before each backward pass (see
# ZeroAdapter._prepare_zero3_backward): large enough never to run out within one step.
_REARM = 1 << 30


def _deepspeed():
    """Import deepspeed without JIT-building its shared-memory collective op (45-60 s on CPU)."""
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


class ZeroAdapter:
    """Budgeted AdamW updates through a DeepSpeed engine (ZeRO stage 0-3, fp32 or bf16).

    Args:
        model: the Hugging Face causal LM, built normally (not under ``zero.Init``).
        masks: ``{name: bool array}`` of the budgeted entries; ``None`` selects everything.
        lr: AdamW learning rate.
        world: data-parallel world size (the Ray Train world).
        zero: ``{"stage": int, "config": dict, "bf16": bool}``.
    """

    def __init__(self, model, masks: dict[str, np.ndarray] | None, lr: float, world: int, zero: dict):
        deepspeed = _deepspeed()

        self.world, self.stage = world, int(zero.get("stage", 0))
        self.names, self.mask_t = selected_names(model, masks)
        named = dict(model.named_parameters())
        # shapes before ZeRO-3 partitions the parameters (p.shape becomes [0] afterwards)
        self.shapes = {n: tuple(p.shape) for n, p in named.items()}
        for n, p in named.items():  # untouched tensors need no gradient at all
            p.requires_grad_(n in self.mask_t)
        params = [named[n] for n in self.names]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.config = ds_config(zero, world)
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer,
                                               config=self.config, dist_init_required=not dist_ready)
        self.engine = self.model = engine  # the loop runs forward passes through the engine
        self.device = engine.device
        self.params = dict(engine.module.named_parameters())
        self.counts = {n: int(self.mask_t[n].sum()) for n in self.names}
        self._n_selected = sum(self.counts.values())
        # ZeRO 1-3 (and DeepSpeed's bf16 optimizers) keep fp32 masters and Adam state in per-rank slices
        self.partitioned = any(is_partitioned(p) for p in self.params.values())
        self.steps = 0
        self._take_snapshot()

    # -- contract ---------------------------------------------------------------------------------

    @property
    def n_selected(self) -> int:
        return self._n_selected

    def flat_grad(self, loss: Tensor, retain_graph: bool = False) -> Tensor:
        """``[n_selected]`` float32 gradient of ``loss`` on the engine's device, averaged over workers."""
        from deepspeed.utils import safe_get_full_grad

        if self.stage == 3:
            self._prepare_zero3_backward()
        self.engine.backward(loss, retain_graph=retain_graph)
        grads = {}
        for n in self.names:  # a collective under ZeRO 1-3: same order on every rank
            g = safe_get_full_grad(self.params[n])
            grads[n] = (torch.zeros(self.shapes[n]) if g is None
                        else g.detach().reshape(self.shapes[n]).float().cpu())
        flat = masked_flat(grads, self.mask_t, self.names)
        self._set_grads(None)
        return flat.to(self.device)

    def apply(self, g: Tensor) -> None:
        """One engine step with gradient ``g`` on the selected entries and exact zeros elsewhere."""
        like = {n: torch.empty(self.shapes[n], dtype=torch.float32) for n in self.names}
        self._set_grads(scatter_flat(g.detach().float().cpu(), self.mask_t, self.names, like))
        self.engine.step()
        self.steps += 1
        self._take_snapshot()  # every rank is here, so state_dict() needs no collective later

    def second_moment(self) -> Tensor | None:
        """Adam's ``exp_avg_sq`` over the selected entries (``None`` before the first step)."""
        v = self._snapshot.get("exp_avg_sq")
        return None if v is None else v.to(self.device, copy=True)

    def state_dict(self) -> dict:
        """Rank-independent resume state: selected fp32 entries, Adam moments and step counts.

        Not a collective: it returns the snapshot :meth:`apply` gathered on every rank after the
        step, so rank 0 alone may call it (the loop does). Entries outside the mask never change;
        the model directory the run started from restores them.
        """
        return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self._snapshot.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on every rank (a collective under ZeRO 1-3): right after
        construction (resume) or later (the loop's ``restore_best``)."""
        steps = int(state.get("steps", 0))
        if steps > 0 and self.steps == 0:
            self._materialise_optimizer_state()
        self._write_params(self._scatter_into(self._full_state(None), state["theta"]))
        if steps > 0:
            for key in ("exp_avg", "exp_avg_sq"):
                self._write_state(key, self._scatter_into(self._full_state(key), state[key]))
            self._set_adam_step(int(state["adam_step"]))
        self.steps = steps
        self._take_snapshot()

    def save_model(self, tokenizer, path: Path, rank: int) -> None:
        """Write a consolidated Hugging Face directory on rank 0 (every rank must call this)."""
        state = self._gathered_state_dict() if self.stage == 3 else None  # collective
        if rank == 0:
            from hdsu_ray.train.lora import merge_lora
            # LoRA (ZeRO 0-2 only): the module holds the full adapters after the step's gather
            merge_lora(self.engine.module).save_pretrained(path, state_dict=state)
            tokenizer.save_pretrained(path)

    # -- snapshots: the selected entries of parameters and Adam state, O(n_selected) traffic -------

    def _take_snapshot(self) -> None:
        """Gather what :meth:`state_dict` and :meth:`second_moment` return (a collective)."""
        snap = {"theta": self._masked(None), "steps": self.steps}
        if self.steps:
            snap.update(exp_avg=self._masked("exp_avg"), exp_avg_sq=self._masked("exp_avg_sq"),
                        adam_step=self._adam_step())
        self._snapshot = snap

    def _masked(self, key: str | None) -> Tensor:
        """``[n_selected]`` fp32 master parameters (``key=None``) or Adam state ``key``, on CPU.

        Under ZeRO 1-3 each rank owns a slice of every flattened parameter's fp32 copy (and of
        its optimizer state): it writes the selected entries of its slice into a zero vector and
        one all-reduce (SUM) over the disjoint slices assembles the whole. This reads DeepSpeed's
        partition bookkeeping (``_hp_mapping`` for ZeRO 1/2, ``grad_position`` for ZeRO 3);
        the integration test checks it against the ``safe_get_full_*`` accessors.
        """
        out = torch.zeros(self.n_selected, dtype=torch.float32, device=self.device if self.partitioned else "cpu")
        offset = 0
        for n in self.names:
            p, m = self.params[n], self.mask_t[n].reshape(-1)
            k = int(self.counts[n])
            if not self.partitioned:  # ZeRO 0: every rank holds everything
                t = p.detach() if key is None else self._basic_state(p)[key]
                out[offset:offset + k] = t.reshape(-1)[m.to(t.device)].float().to(out.device)
            else:
                piece = local_slice(p, key)
                if piece is not None:
                    lo, values = piece
                    sel = m[lo:lo + values.numel()]
                    pos = offset + torch.cumsum(m.to(torch.int64), 0)[lo:lo + values.numel()][sel] - 1
                    out[pos.to(out.device)] = values.reshape(-1)[sel.to(values.device)].float().to(out.device)
            offset += k
        if self.partitioned and self.world > 1:
            torch.distributed.all_reduce(out)
        return out.cpu()

    # -- gradients ----------------------------------------------------------------------------------

    def _prepare_zero3_backward(self) -> None:
        """Two fixes that make ZeRO-3 give the gradient of *this* loss, whatever graph it covers.

        * ZeRO-3 gathers a module's weights before its backward only while the module's
          ``applied_pre_backward_ref_cnt`` (one per forward call) is positive. A second backward
          pass over a retained graph (the projection: forget term, then the rest) finds it spent
          and multiplies by empty partitions (``The size of tensor a (36) must match the size of
          tensor b (0)``). It is re-armed before every backward pass; gathering an already
          gathered module is a no-op.
        * ZeRO-3 writes gradient partitions only for parameters the backward pass reaches, so a
          loss that covers part of the model (RMU's hidden-state loss, a forget term on an early
          layer) would read the last gradient written into the others (after a step: the one
          :meth:`apply` wrote). The partitions are zeroed first.
        """
        for m in self.engine.module.modules():
            if "applied_pre_backward_ref_cnt" in m.__dict__:
                m.applied_pre_backward_ref_cnt = _REARM
        self._set_grads(None)

    def _set_grads(self, dense: dict[str, Tensor] | None) -> None:
        """Write full gradients (``None``: zeros) into the engine's buffers for every selected tensor."""
        from deepspeed.utils import safe_set_full_grad

        opt = self.engine.optimizer
        for n in self.names:
            p = self.params[n]
            value = dense[n] if dense is not None else torch.zeros(self.shapes[n], dtype=torch.float32)
            if is_partitioned(p):
                # ZeRO 1-3 and the bf16 optimizer keep fp32 gradient partitions behind the param
                safe_set_full_grad(p, value.to(self.device))
            else:  # ZeRO 0, fp32: the client optimizer reads p.grad
                p.grad = None if dense is None else value.to(device=p.device, dtype=p.dtype).reshape(p.shape)
        if dense is None and self.stage in (1, 2) and hasattr(opt, "zero_grad"):
            # drop the low-precision accumulators (grad_accum) so the next backward starts fresh
            opt.zero_grad(set_to_none=True)

    # -- parameters and optimizer state -------------------------------------------------------------

    def _full_state(self, key: str | None) -> dict[str, Tensor]:
        """Full fp32 parameters (``key=None``) or optimizer state ``key`` of each selected tensor."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        out = {}
        for n in self.names:
            p = self.params[n]
            if is_partitioned(p):
                t = safe_get_full_fp32_param(p) if key is None else safe_get_full_optimizer_state(p, key)
            else:
                t = p.detach() if key is None else self._basic_state(p).get(key)
            out[n] = (torch.zeros(self.shapes[n]) if t is None
                      else t.detach().reshape(self.shapes[n]).float().cpu().clone())
        return out

    def _scatter_into(self, full: dict[str, Tensor], flat: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for n in self.names:
            k = self.counts[n]
            t = full[n].clone()
            t[self.mask_t[n]] = flat[start:start + k].to(t.dtype)
            out[n] = t
            start += k
        return out

    def _basic_optimizer(self):
        opt = self.engine.optimizer
        return getattr(opt, "optimizer", opt)

    def _basic_state(self, p) -> dict:
        return self._basic_optimizer().state.get(p, {})

    def _adam_step(self) -> int:
        for st in self._basic_optimizer().state.values():
            if "step" in st:
                return int(st["step"])
        return 0

    def _set_adam_step(self, step: int) -> None:
        for st in self._basic_optimizer().state.values():
            if "step" in st:
                st["step"] = (torch.tensor(float(step), dtype=st["step"].dtype, device=st["step"].device)
                              if torch.is_tensor(st["step"]) else step)

    def _write_params(self, full: dict[str, Tensor]) -> None:
        """Set the model's parameters and the optimizer's fp32 master copies to ``full``."""
        from deepspeed.utils import safe_set_full_fp32_param

        deepspeed = _deepspeed()
        for n in self.names:
            p = self.params[n]
            if hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    with torch.no_grad():
                        p.data.copy_(full[n].to(p.data.device, p.data.dtype).reshape(p.data.shape))
            else:
                with torch.no_grad():
                    p.data.copy_(full[n].to(p.device, p.dtype).reshape(p.shape))
            if is_partitioned(p):
                safe_set_full_fp32_param(p, full[n].to(self.device))

    def _write_state(self, key: str, full: dict[str, Tensor]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        for n in self.names:
            p = self.params[n]
            if is_partitioned(p):
                safe_set_full_optimizer_state(p, full[n].to(self.device), key)
            else:
                self._basic_state(p)[key].copy_(full[n].to(p.device).reshape(p.shape))

    def _materialise_optimizer_state(self) -> None:
        """Create Adam's (lazily built) state with one all-zero-gradient step: a zero update."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        loss = self.engine(input_ids=ids).logits.float().sum() * 0.0
        self.engine.backward(loss)
        self._set_grads(None)
        self._set_grads({n: torch.zeros(self.shapes[n]) for n in self.names})
        self.engine.step()

    def _gathered_state_dict(self) -> dict[str, Tensor] | None:
        """Full parameters and buffers on rank 0 (``None`` elsewhere), one parameter at a time."""
        deepspeed = _deepspeed()
        module = self.engine.module
        rank = torch.distributed.get_rank() if self.world > 1 else 0
        out = {} if rank == 0 else None
        for n, p in module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if out is not None:
                    out[n] = p.detach().clone().cpu()
        if out is not None:  # persistent buffers only (rotary inverse frequencies are not saved)
            keys = set(module.state_dict().keys())
            for n, b in module.named_buffers():
                if n in keys:
                    out[n] = b.detach().clone().cpu()
        return out
