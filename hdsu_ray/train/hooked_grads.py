"""Per-sample gradients from one ordinary forward and backward pass, read off layer by layer.

For a linear layer ``y = x W^T + b`` the gradient of a sum of per-sample losses is a sum over
samples and positions of ``g_t x_t^T`` (``g`` the gradient at ``y``); keeping the sample index
gives each sample's gradient as one batched matmul. An embedding's is its output gradient
index-added by token, an RMSNorm scale's the sum of ``g`` times the normalised input. Those are
all the trainable layers of the Llama-family models here, so the forward and backward run as in
training (fused attention included) with the parameters frozen: autograd then computes only the
activation gradients, and the weight gradients are computed once, per sample, in the hooks.

Each parameter's result is handed to a callback as soon as its last contribution arrives and
dropped after, where the vmap path (:mod:`hdsu_ray.train.per_sample`) holds every parameter's at
once (on SmolLM2-135M, 8 x 134.5M floats per chunk). What is formed depends on what the caller
needs (:mod:`hdsu_ray.train.grad_terms`): the whole ``[n, *shape]``; a Fisher's squared sum, a
block at a time; or, for the retain basis, only the entries of the budget mask. A weight used
twice (tied embeddings and ``lm_head``) counts both contributions before the callback sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from hdsu_ray.core.losses import token_logprobs
from hdsu_ray.train.grad_terms import (dense_term, kind_of, live_positions, masked_term, normalised, selection,
                                       square_sum_embedding, square_sum_linear)

Take = Callable[[str, torch.Tensor], None]


def owners(model: torch.nn.Module) -> dict[str, list[tuple[torch.nn.Module, str]]] | None:
    """Each trainable parameter's name -> the ``(module, attribute)`` pairs that use it, or ``None``
    when one is used by a module without a rule here (the caller then takes the vmap path)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    found: dict[str, list] = {n: [] for n in names.values()}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) not in names:
                continue
            kind = kind_of(module)
            if kind is None or (attr != "weight" and not (kind == "linear" and attr == "bias")):
                return None
            found[names[id(p)]].append((module, attr))
    return found if all(found.values()) else None


class _Collector:
    """Forward hooks save each owner's input; tensor hooks on its output add per-sample terms.
    Each parameter is handed over as ``[n, *shape]``; with ``square_sum`` as the chunk's sum of
    squared per-sample gradients ``[*shape]``; with ``selections`` (name -> :func:`_selections`)
    as ``[n, m]``, the selected entries only, and parameters without one are skipped."""

    def __init__(self, model, found: dict, n: int, take: Take, square_sum: bool = False,
                 selections: dict[str, tuple] | None = None):
        self.params = dict(model.named_parameters())
        self.n, self.take, self.square_sum, self.selections = n, take, square_sum, selections
        self.by_module: dict[int, list[tuple[str, str]]] = {}
        for name, pairs in found.items():
            for module, attr in pairs:
                self.by_module.setdefault(id(module), []).append((name, attr))
        self.names = list(found) if selections is None else [n for n in found if n in selections]
        self.pending: dict[str, int] = {}  # contributions still to come (a module may run twice)
        self.bufs: dict[str, torch.Tensor] = {}
        self.tied = {name for name, pairs in found.items()  # an output head sharing the embedding
                     if sorted(kind_of(m) or "" for m, _ in pairs) == ["embedding", "linear"]}
        self.heads: dict[str, tuple] = {}  # a tied head's squared sum and live g, x till the embedding's
        self.done: set[str] = set()

    def forward_hook(self, module, args, output):
        kind, x = kind_of(module), args[0]
        with torch.no_grad():
            saved = normalised(module, x) if kind == "rmsnorm" else x.detach()
            if kind == "rmsnorm" and not torch.allclose(module.weight * saved, output, rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{type(module).__name__} is not weight * x / rms(x); no per-sample rule")
        for name, _ in self.by_module[id(module)]:
            self.pending[name] = self.pending.get(name, 0) + 1
        output.register_hook(lambda g: self._backward(module, kind, saved, g))

    def _backward(self, module, kind: str, saved: torch.Tensor, g: torch.Tensor) -> None:
        g = g.float().reshape(self.n, -1, g.shape[-1])
        saved = saved.reshape(self.n, -1) if kind == "embedding" else saved.float().reshape(self.n, -1, saved.shape[-1])
        for name, attr in self.by_module[id(module)]:
            self.pending[name] -= 1
            if self.selections is not None and name not in self.selections:
                continue
            if self.selections is not None and self.selections[name][1] is not None:
                term = masked_term(kind, attr, module, saved, g, self.selections[name][1][kind, attr])
                self.bufs[name] = term if name not in self.bufs else self.bufs[name].add_(term)
            elif not (self.square_sum and self._square_sum(name, kind, attr, module, saved, g)):
                self.bufs[name] = dense_term(kind, attr, module, saved, g, self.params[name].shape,
                                             self.bufs.get(name))
            if self.pending[name] == 0 and name not in self.done:
                self._give(name)

    def _square_sum(self, name: str, kind: str, attr: str, module, saved, g) -> bool:
        """Hand over (or keep, for its embedding use) the squared sum without ``[n, *shape]``
        where the weight's uses allow: one linear call alone, an embedding alone, or a tied output
        head whose embedding use comes after it in the backward (as in a language model); ``False``
        where they do not, and the dense term is built instead."""
        shape = self.params[name].shape
        if name in self.bufs:  # a dense term is already under way
            return False
        if kind == "linear" and attr == "weight" and not self.pending[name] and name not in self.heads:
            self._hand(name, square_sum_linear(g, saved))
        elif kind == "linear" and attr == "weight" and name in self.tied and self.pending[name] == 1:
            g, saved = live_positions(g, saved)
            self.heads[name] = (square_sum_linear(g, saved), g, saved)
        elif kind == "embedding" and not self.pending[name]:
            self._hand(name, square_sum_embedding(module, saved, g, shape, self.heads.pop(name, None)))
        else:
            return False
        return True

    def _hand(self, name: str, value: torch.Tensor) -> None:
        self.done.add(name)
        self.take(name, value)

    def _give(self, name: str) -> None:
        buf = self.bufs.pop(name, None)
        if name in self.heads:  # a tied head whose embedding use got no gradient
            self._hand(name, self.heads.pop(name)[0])
            return
        if buf is None:  # no gradient reached it: zeros, as autograd's would be
            p = self.params[name]
            buf = torch.zeros(self.n, *(p.shape if self.selections is None else (self.selections[name][0],)),
                              device=p.device)
        elif self.selections is not None and self.selections[name][1] is None:  # a dense mask's whole term
            buf = buf[:, self.selections[name][2]]
        self._hand(name, buf.square_().sum(0) if self.square_sum and self.selections is None else buf)

    def flush(self) -> None:
        """What the backward did not hand over: parameters of a module whose output (or one of
        whose calls) got no gradient; their missing terms are zero, as autograd's would be."""
        for name in self.names:
            if name not in self.done:
                self._give(name)


def _require_grad(module, args, output):
    # every trainable weight is frozen for the pass, so nothing would require grad without this
    return output if output.requires_grad else output.detach().requires_grad_()


@contextmanager
def _frozen(params: list[torch.nn.Parameter]):
    """No weight gradients from autograd for the pass: the hooks compute them per sample."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _selections(pairs, mask: torch.Tensor) -> tuple:
    """``(count, by user, mask)``: a sparse mask's :func:`selection` for each ``(kind, attr)`` that
    uses the weight; ``None`` for a dense one (``budget: full``), whose whole term is formed and
    indexed, since gathering most entries one by one is slower than the matmul."""
    count = int(mask.sum())
    if count > 0.25 * mask.numel():
        return count, None, mask
    return count, {(kind_of(m), attr): selection(kind_of(m), attr, mask) for m, attr in pairs}, mask


def group_grads(model, arrays: dict[str, np.ndarray], groups: np.ndarray, chunk: int, take: Take,
                found: dict | None = None, square_sum: bool = False,
                masks: dict[str, np.ndarray] | None = None, on_logits=None) -> None:
    """For each chunk of ``groups [n, b]`` (``b`` rows per sample; 1 for per-row gradients), call
    ``take(name, grad [k, *shape])`` once per trainable parameter: the gradient of each sample's
    mean answer NLL over its ``b`` rows; with ``square_sum``, ``take(name, sum_k grad**2)``
    (what a Fisher diagonal needs); with ``masks``, ``take(name, grad[:, mask] [k, m])`` for each
    masked parameter only (what the retain basis needs). ``found`` is :func:`owners`.
    ``on_logits(rows, logits)`` sees each chunk's rows and their shifted logits (eval mode)."""
    found = found or owners(model)
    if found is None:
        raise ValueError("a trainable parameter is used by a module without a per-sample rule")
    selections = None if masks is None else {name: _selections(pairs, torch.as_tensor(masks[name]))
                                              for name, pairs in found.items() if name in masks}
    modules = {id(m): m for pairs in found.values() for m, _ in pairs}
    inputs = model.get_input_embeddings()
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()  # no dropout in a Fisher estimate, as in the one-row-at-a-time path
    try:
        with _frozen(trainable):
            for start in range(0, len(groups), chunk):
                part = groups[start:start + chunk]
                collector = _Collector(model, found, len(part), take, square_sum, selections)
                handles = [inputs.register_forward_hook(_require_grad)]  # first: later hooks see its output
                handles += [m.register_forward_hook(collector.forward_hook) for m in modules.values()]
                try:
                    _group_loss(model, arrays, part, on_logits).backward()
                finally:
                    for h in handles:
                        h.remove()
                collector.flush()
    finally:
        model.train(was_training)


def _group_loss(model, arrays: dict[str, np.ndarray], part: np.ndarray, on_logits=None) -> torch.Tensor:
    """Sum over samples of each sample's mean answer NLL (its ``b`` rows' tokens together)."""
    rows = part.reshape(-1)
    width = int(arrays["attention_mask"][rows].sum(axis=1).max())
    t = {k: torch.as_tensor(arrays[k][rows][:, :width]) for k in ("input_ids", "attention_mask", "labels")}
    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits[:, :-1].float()
    if on_logits is not None:
        on_logits(rows, logits.detach())
    logp, mask = token_logprobs(logits, t["labels"][:, 1:])
    nll = -(logp * mask).sum(1).view(part.shape).sum(1)
    return (nll / mask.sum(1).view(part.shape).sum(1).clamp(min=1)).sum()
