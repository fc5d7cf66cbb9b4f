"""Per-sample gradients from one ordinary forward and backward pass, read off layer by layer.

For a linear layer ``y = x W^T + b`` the gradient of a sum of per-sample losses is a sum over
samples and positions of ``g_t x_t^T`` (``g`` the gradient at ``y``); keeping the sample index
gives each sample's gradient as one batched matmul. An embedding's is its output gradient
index-added by token, an RMSNorm scale's the sum of ``g`` times the normalised input. Those are
all the trainable layers of the Llama-family models here, so the forward and backward run as in
training (fused attention included) with the parameters frozen: autograd then computes only the
activation gradients, and the weight gradients are computed once, per sample, in the hooks.

Each parameter's ``[n, *shape]`` per-sample tensor is handed to a callback as soon as its last
contribution arrives and dropped after, where the vmap path (:mod:`hdsu_ray.train.per_sample`)
holds every parameter's at once: on SmolLM2-135M that was 8 x 134.5M floats per chunk. A weight
used twice (tied embeddings and ``lm_head``) sums both contributions before the callback sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from hdsu_ray.core.losses import token_logprobs

Take = Callable[[str, torch.Tensor], None]


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
        return "rmsnorm"
    return None


def owners(model: torch.nn.Module) -> dict[str, list[tuple[torch.nn.Module, str]]] | None:
    """Each trainable parameter's name -> the ``(module, attribute)`` pairs that use it, or ``None``
    when one is used by a module without a rule here (the caller then takes the vmap path)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    found: dict[str, list] = {n: [] for n in names.values()}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) not in names:
                continue
            kind = _kind(module)
            if kind is None or (attr != "weight" and not (kind == "linear" and attr == "bias")):
                return None
            found[names[id(p)]].append((module, attr))
    return found if all(found.values()) else None


def _normalised(module, x: torch.Tensor) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)).to(x.dtype)


def _term(kind: str, attr: str, module, saved: torch.Tensor, g: torch.Tensor, shape, into=None) -> torch.Tensor:
    """One module's per-sample contribution ``[n, *shape]``, added to ``into`` when given (a weight
    with two users) or else freshly allocated, which spares zero-filling a buffer first. ``saved``
    and ``g`` are ``[n, positions, features]``: the rows of a sample laid end to end."""
    n = g.shape[0]
    if kind == "embedding":  # saved holds the token ids [n, positions]
        if module.padding_idx is not None:  # autograd gives the padding token's row no gradient here
            g = g * (saved != module.padding_idx)[..., None]
        into = torch.zeros(n, *shape, device=g.device) if into is None else into
        index = (torch.arange(n, device=g.device)[:, None] * shape[0] + saved).reshape(-1)
        into.view(n * shape[0], -1).index_add_(0, index, g.reshape(-1, g.shape[-1]))
        return into
    if kind == "linear" and attr == "weight":
        return torch.bmm(g.transpose(1, 2), saved) if into is None else into.baddbmm_(g.transpose(1, 2), saved)
    term = g.sum(1) if kind == "linear" else (g * saved).sum(1)  # a bias; an RMSNorm scale
    return term if into is None else into.add_(term)


def _square_sum_linear(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_s (g_s^T x_s)**2`` for ``g [n, P, out]``, ``x [n, P, in]``, a block of output rows at
    a time: with few positions per sample the whole ``[n, out, in]`` product is memory-bound, and
    a block this size stays in cache while it is squared and summed. It matters most for larger
    chunks, whose whole product no longer fits any cache."""
    rows = max(16, 2 ** 21 // (g.shape[0] * x.shape[-1]))
    out = torch.empty(g.shape[-1], x.shape[-1], dtype=g.dtype, device=g.device)
    gt = g.transpose(1, 2)
    for r in range(0, out.shape[0], rows):
        out[r:r + rows] = torch.bmm(gt[:, r:r + rows], x).square_().sum(0)
    return out


class _Collector:
    """Forward hooks save each owner's input; tensor hooks on its output add per-sample terms.
    With ``square_sum`` each parameter is handed over as the chunk's sum of squared per-sample
    gradients ``[*shape]`` instead of ``[n, *shape]``."""

    def __init__(self, model, found: dict, n: int, take: Take, square_sum: bool = False):
        self.params = dict(model.named_parameters())
        self.n, self.take, self.square_sum = n, take, square_sum
        self.by_module: dict[int, list[tuple[str, str]]] = {}
        for name, pairs in found.items():
            for module, attr in pairs:
                self.by_module.setdefault(id(module), []).append((name, attr))
        self.names = list(found)
        self.pending: dict[str, int] = {}  # contributions still to come (a module may run twice)
        self.bufs: dict[str, torch.Tensor] = {}
        self.done: set[str] = set()

    def forward_hook(self, module, args, output):
        kind, x = _kind(module), args[0]
        with torch.no_grad():
            saved = _normalised(module, x) if kind == "rmsnorm" else x.detach()
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
            if self.square_sum and kind == "linear" and attr == "weight" and not self.pending[name] \
                    and name not in self.bufs:  # this layer's call is the weight's only use
                self.done.add(name)
                self.take(name, _square_sum_linear(g, saved))
                continue
            self.bufs[name] = _term(kind, attr, module, saved, g, self.params[name].shape, self.bufs.get(name))
            if self.pending[name] == 0:
                self._give(name)

    def _give(self, name: str) -> None:
        self.done.add(name)
        buf = self.bufs.pop(name, None)
        p = self.params[name]
        buf = buf if buf is not None else torch.zeros(self.n, *p.shape, device=p.device)
        self.take(name, buf.square_().sum(0) if self.square_sum else buf)

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


def group_grads(model, arrays: dict[str, np.ndarray], groups: np.ndarray, chunk: int, take: Take,
                found: dict | None = None, square_sum: bool = False) -> None:
    """For each chunk of ``groups [n, b]`` (``b`` rows per sample; 1 for per-row gradients), call
    ``take(name, grad [k, *shape])`` once per trainable parameter: the gradient of each sample's
    mean answer NLL over its ``b`` rows; with ``square_sum``, ``take(name, sum_k grad**2)``
    (what a Fisher diagonal needs). ``found`` is :func:`owners` (computed when not given)."""
    found = found or owners(model)
    if found is None:
        raise ValueError("a trainable parameter is used by a module without a per-sample rule")
    modules = {id(m): m for pairs in found.values() for m, _ in pairs}
    inputs = model.get_input_embeddings()
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()  # no dropout in a Fisher estimate, as in the one-row-at-a-time path
    try:
        with _frozen(trainable):
            for start in range(0, len(groups), chunk):
                part = groups[start:start + chunk]
                collector = _Collector(model, found, len(part), take, square_sum)
                handles = [inputs.register_forward_hook(_require_grad)]  # first: later hooks see its output
                handles += [m.register_forward_hook(collector.forward_hook) for m in modules.values()]
                try:
                    _group_loss(model, arrays, part).backward()
                finally:
                    for h in handles:
                        h.remove()
                collector.flush()
    finally:
        model.train(was_training)


def _group_loss(model, arrays: dict[str, np.ndarray], part: np.ndarray) -> torch.Tensor:
    """Sum over samples of each sample's mean answer NLL (its ``b`` rows' tokens together)."""
    rows = part.reshape(-1)
    width = int(arrays["attention_mask"][rows].sum(axis=1).max())
    t = {k: torch.as_tensor(arrays[k][rows][:, :width]) for k in ("input_ids", "attention_mask", "labels")}
    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits[:, :-1].float()
    logp, mask = token_logprobs(logits, t["labels"][:, 1:])
    nll = -(logp * mask).sum(1).view(part.shape).sum(1)
    return (nll / mask.sum(1).view(part.shape).sum(1).clamp(min=1)).sum()
