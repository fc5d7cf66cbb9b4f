"""One layer's per-sample weight gradients, from its saved input and its output's gradient.

The math behind :mod:`hdsu_ray.train.hooked_grads`. ``saved`` and ``g`` are ``[n, positions,
features]`` (a sample's rows laid end to end); an embedding's ``saved`` holds token ids ``[n, P]``.
Three shapes of result, each for a caller that needs no more:

* :func:`dense_term` ``[n, *shape]``: every entry of every sample (the general case);
* :func:`masked_term` ``[n, m]``: only the ``m`` entries a budget mask selects, in the mask's
  row-major order, for the retain basis; at a 0.1 % budget this skips almost all the work;
* :func:`square_sum_linear`, :func:`square_sum_embedding`: ``sum_s grad_s**2`` for a Fisher
  diagonal, never holding ``[n, *shape]``; a tied embedding and output head (one weight, two
  users) is squared as the sum of both users' terms.

A linear layer's positions whose output gradient is zero in every feature add nothing, so
:func:`live_positions` drops them first: at the output head only answer tokens carry a loss.
"""

from __future__ import annotations

import torch

_BLOCK = 2 ** 21  # floats per intermediate block: a few MiB, so a block stays in cache


def kind_of(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
        return "rmsnorm"
    return None


def normalised(module, x: torch.Tensor) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)).to(x.dtype)


def live_positions(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``g, x`` gathered to each sample's positions with a non-zero output gradient (padded with
    dead ones, whose zero gradient adds nothing); unchanged when few positions are dead."""
    live = g.abs().amax(-1) > 0
    keep = int(live.sum(1).max())
    if keep > 0.75 * g.shape[1]:
        return g, x
    order = torch.argsort((~live).to(torch.int8), dim=1, stable=True)[:, :keep]
    return (g.gather(1, order[..., None].expand(-1, -1, g.shape[-1])),
            x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])))


def token_grads(module, ids: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An embedding's per-sample gradient as its non-zero rows: ``(keys [k], rows [k, H])``, a key
    being ``sample * vocab + token``; rows of the padding token get none, as from autograd."""
    vocab = module.weight.shape[0]
    keys = (torch.arange(ids.shape[0], device=ids.device)[:, None] * vocab + ids).reshape(-1)
    g = g.reshape(-1, g.shape[-1])
    if module.padding_idx is not None:
        keep = ids.reshape(-1) != module.padding_idx
        keys, g = keys[keep], g[keep]
    keys, inverse = torch.unique(keys, return_inverse=True)
    return keys, torch.zeros(len(keys), g.shape[-1], dtype=g.dtype, device=g.device).index_add_(0, inverse, g)


def dense_term(kind: str, attr: str, module, saved: torch.Tensor, g: torch.Tensor, shape,
               into: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, *shape]``, added to ``into`` when given (a weight with two users) or else freshly
    allocated, which spares zero-filling a buffer first."""
    n = g.shape[0]
    if kind == "embedding":
        into = torch.zeros(n, *shape, device=g.device) if into is None else into
        keys, rows = token_grads(module, saved, g)
        return into.view(n * shape[0], -1).index_add_(0, keys, rows).view(n, *shape)
    if kind == "linear" and attr == "weight":
        g, saved = live_positions(g, saved)
        return torch.bmm(g.transpose(1, 2), saved) if into is None else into.baddbmm_(g.transpose(1, 2), saved)
    term = g.sum(1) if kind == "linear" else (g * saved).sum(1)  # a bias; an RMSNorm scale
    return term if into is None else into.add_(term)


def selection(kind: str, attr: str, mask: torch.Tensor) -> tuple:
    """What :func:`masked_term` needs of a mask, computed once per pass: a linear weight's
    selected ``(rows, cols)``; an embedding's mask and, per row, how many entries precede it."""
    if kind == "linear" and attr == "weight":
        return mask.nonzero(as_tuple=True)
    if kind == "embedding":
        per_row = mask.sum(1)
        return mask, torch.cumsum(per_row, 0) - per_row
    return (mask,)


def masked_term(kind: str, attr: str, module, saved: torch.Tensor, g: torch.Tensor, sel: tuple) -> torch.Tensor:
    """``[n, m]``: the entries a mask selects (``sel`` is its :func:`selection`) of each sample's
    gradient, in the mask's row-major order."""
    n = g.shape[0]
    if kind == "linear" and attr == "weight":
        g, saved = live_positions(g, saved)
        rows, cols = sel
        step = max(1, _BLOCK // max(1, n * g.shape[1]))
        return torch.cat([g.new_zeros(n, 0)] + [(g[:, :, rows[i:i + step]] * saved[:, :, cols[i:i + step]]).sum(1)
                                                for i in range(0, len(rows), step)], dim=1)
    if kind == "embedding":
        mask, before = sel
        keys, grads = token_grads(module, saved, g)
        token = keys % mask.shape[0]
        picked = mask[token]  # [k, H]: the selected entries of each sample's non-zero rows
        where = before[token][:, None] + torch.cumsum(picked.to(torch.int64), 1) - 1
        sample = (keys // mask.shape[0])[:, None].expand_as(picked)
        out = g.new_zeros(n, int(before[-1] + mask[-1].sum()) if len(before) else 0)
        return out.index_put_((sample[picked], where[picked]), grads[picked], accumulate=True)
    full = g.sum(1) if kind == "linear" else (g * saved).sum(1)
    return full[:, sel[0]]


def square_sum_linear(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_s (g_s^T x_s)**2`` for ``g [n, P, out]``, ``x [n, P, in]``, a block of output rows at
    a time: with few positions per sample the whole ``[n, out, in]`` product is memory-bound, and
    a block this size stays in cache while it is squared and summed."""
    g, x = live_positions(g, x)
    rows = max(16, _BLOCK // (g.shape[0] * x.shape[-1]))
    out = torch.empty(g.shape[-1], x.shape[-1], dtype=g.dtype, device=g.device)
    gt = g.transpose(1, 2)
    for r in range(0, out.shape[0], rows):
        out[r:r + rows] = torch.bmm(gt[:, r:r + rows], x).square_().sum(0)
    return out


def square_sum_embedding(module, ids: torch.Tensor, g: torch.Tensor, shape,
                         linear: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``sum_s grad_s**2`` of an embedding weight. ``linear = (S, g_out, x)`` when the weight is
    also an output head: ``S`` its squared sum alone, ``g_out [n, P', vocab]`` and ``x [n, P', H]``
    its live positions. A sample's embedding rows ``E`` are its few tokens', so the square of the
    sum only changes those rows: ``(E + H)**2 = H**2 + E * (E + 2 H)``."""
    keys, E = token_grads(module, ids, g)
    vocab = shape[0]
    sample, token = keys // vocab, keys % vocab
    if linear is None:
        out, H = torch.zeros(*shape, dtype=E.dtype, device=E.device), torch.zeros_like(E)
    else:
        out, g_out, x = linear
        H = torch.einsum("kp,kph->kh", g_out[sample, :, token], x[sample])
    return out.index_add_(0, token, E * (E + 2 * H))
