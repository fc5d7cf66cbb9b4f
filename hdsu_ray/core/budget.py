"""The ~0.1 % parameter budget: score every weight, keep a global top fraction, move only those.

HDSU modifies about 0.1 % of the parameters (arXiv 2511.19498, abstract). One reading (paper
notes section 1.2 step 2, reading B) selects them with the diagonal empirical Fisher: a weight
matters for forgetting when the forget set's Fisher is large and the retain set's is small, the
ratio Selective Synaptic Dampening uses (Foster et al. 2023, arXiv 2308.07707).

Tensors are keyed by parameter name, as in ``model.named_parameters()``. ``masked_flat`` and
``scatter_flat`` turn the selected entries into the flat vector that ``core.projection`` works on,
and back.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "fisher_diagonal",
    "fisher_ratio",
    "cap_rows",
    "top_fraction_masks",
    "mask_fraction",
    "masked_flat",
    "scatter_flat",
]


def fisher_diagonal(grads: Iterable[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean of squared gradients, per parameter.

    Args:
        grads: one ``{name: grad}`` dict per sample (or per micro-batch; then it is the Fisher of
            the micro-batch mean, a coarser but much cheaper estimate). Every dict must have the
            same names and shapes. Consumed once, so a generator works.

    Returns:
        ``{name: F}`` with each ``F`` shaped like its gradient, in float32 or wider.
    """
    total: dict[str, Tensor] | None = None
    n = 0
    for g in grads:
        if total is None:
            # accumulate in float32 at least: summing many small squares in bf16 stalls
            total = {k: v.detach().to(_acc_dtype(v)).square() for k, v in g.items()}
        else:
            if g.keys() != total.keys():
                raise KeyError(f"gradient names differ: {sorted(set(g) ^ set(total))}")
            for k, v in g.items():
                total[k].add_(v.detach().to(total[k].dtype).square())
        n += 1
    if total is None:
        raise ValueError("fisher_diagonal needs at least one gradient dict")
    return {k: v / n for k, v in total.items()}


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def fisher_ratio(
    F_forget: dict[str, Tensor], F_retain: dict[str, Tensor], eps: float = 1e-8
) -> dict[str, Tensor]:
    """``F_forget / (F_retain + eps)`` elementwise, per name (SSD's importance ratio).

    ``eps`` keeps weights the retain set never touches finite; they then rank by ``F_forget``.
    Both dicts must have the same names.
    """
    if F_forget.keys() != F_retain.keys():
        raise KeyError(f"Fisher names differ: {sorted(set(F_forget) ^ set(F_retain))}")
    return {k: F_forget[k] / (F_retain[k] + eps) for k in F_forget}


def cap_rows(scores: dict[str, Tensor], cap: int, fill: float = float("-inf")) -> dict[str, Tensor]:
    """Keep at most ``cap`` scores per row of every matrix; the rest become ``fill``.

    A row is one slice along the first dimension: a token's embedding row, or one output unit's
    weights in a linear layer. Unconstrained, the Fisher ratio piles the budget into a few rows
    (on the learned MHQA model one embedding row took 237 of its 256 entries) and leaves many
    forget answers with no entry on their tokens; the cap spreads the same count over more
    tokens and units (docs/method.md). Vectors (norms, biases) are left as they are.

    Args:
        scores: ``{name: score}`` as for :func:`top_fraction_masks`.
        cap: entries kept per row, ``>= 1``; ``0`` returns ``scores`` unchanged.
        fill: value given to the dropped entries; it must rank below every kept score.

    Returns:
        ``{name: Tensor}``, same shapes. Within a row, ties go to the lower column index.
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if cap == 0:
        return dict(scores)
    out = {}
    for name, s in scores.items():
        rows = s.detach().reshape(s.shape[0], -1) if s.dim() >= 2 else None
        if rows is None or rows.shape[1] <= cap:
            out[name] = s
            continue
        # the cap-th largest of each row by topk (a full sort of every row cost seconds on a 135M
        # model); entries above it stay, and of those equal to it the lowest columns fill the rest
        thr = torch.topk(rows, cap, dim=1).values[:, -1:]
        keep = rows >= thr
        # only rows with more than ``cap`` entries at or above the threshold hold ties to break
        # (e.g. a token the forget set never shows: every ratio 0); the cumsum runs on those alone
        tied = (keep.sum(1) > cap).nonzero().reshape(-1)
        if len(tied):
            r, t = rows[tied], thr[tied]
            above, at = r > t, r == t
            keep[tied] = above | (at & (at.cumsum(1) <= cap - above.sum(1, keepdim=True)))
        out[name] = rows.masked_fill(~keep, fill).reshape(s.shape)
    return out


def top_fraction_masks(scores: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Boolean masks selecting the global top ``fraction`` of entries across all parameters.

    Exactly ``k = max(1, round(fraction * N))`` entries are selected, ``N`` being the total
    number of scored entries (Python ``round``, half to even). Ranking is global, so one layer
    may receive most of the budget. Ties at the threshold go to the lowest index in the
    concatenation of the flattened tensors, in ``scores``' iteration order, so the same
    ``scores`` dict (same name order) always gives the same masks.

    Args:
        scores: ``{name: score}``; higher is more worth updating. NaN is rejected.
        fraction: in ``(0, 1]``.

    Returns:
        ``{name: BoolTensor}`` with exactly the names of ``scores``. A scored parameter that wins
        nothing gets an all-False mask; a parameter missing from ``scores`` gets no entry, and
        callers must treat it as frozen.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    names = list(scores)
    if sum(scores[n].numel() for n in names) == 0:
        raise ValueError("no scored entries")
    # one dtype for exact comparisons (as a concatenation would promote), but no concatenated copy:
    # on a 135M-entry model that copy and the passes over it took seconds
    common = functools.reduce(torch.promote_types, [scores[n].dtype for n in names])
    parts = [scores[n].detach().reshape(-1).to(common) for n in names]
    if any(bool(torch.isnan(p).any()) for p in parts):
        raise ValueError("scores contain NaN")
    k = max(1, round(fraction * sum(p.numel() for p in parts)))
    # ties at the threshold are fixed after, because topk's choice among equal values is unspecified
    thr = kth_largest(parts, k)
    chosen = [p > thr for p in parts]
    need = k - sum(int(c.sum()) for c in chosen)
    for p, c in zip(parts, chosen):  # the lowest indices of the concatenation, in name order
        if need <= 0:
            break
        ties = (p == thr).nonzero().reshape(-1)[:need]
        c[ties] = True
        need -= len(ties)
    return {n: c.reshape(scores[n].shape).to(scores[n].device) for n, c in zip(names, chosen)}


def kth_largest(parts: Tensor | list[Tensor], k: int, stride: int = 64) -> Tensor:
    """The ``k``-th largest entry of ``parts`` (1-D, or a list of 1-D tensors taken as their
    concatenation, which is never formed), exactly.

    A full ``topk`` over a 135M-entry model took seconds. Every ``stride``-th entry is a sample;
    the sample's ``2k / stride``-th largest is a lower bound that usually leaves a few ``k``
    candidates, and the answer is among them whenever at least ``k`` entries reach the bound
    (checked: else the full ``topk``, the same answer, only slower).
    """
    parts = [parts] if isinstance(parts, Tensor) else parts
    total = sum(p.numel() for p in parts)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    sample = torch.cat([p[::stride] for p in parts])
    r = min(sample.numel(), 2 * (k // stride) + 16)
    if stride > 1 and r < sample.numel():
        bound = torch.topk(sample, r).values[-1]
        candidates = torch.cat([p[p >= bound] for p in parts])
        if candidates.numel() >= k:
            return torch.topk(candidates, k, sorted=False).values.min()
    return torch.topk(torch.cat(parts), k, sorted=False).values.min()


def mask_fraction(masks: dict[str, Tensor]) -> float:
    """Selected entries over total entries, across all masks (the reported parameter budget)."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("no mask entries")
    return sum(int(m.sum()) for m in masks.values()) / total


def masked_flat(tensors: dict[str, Tensor], masks: dict[str, Tensor], names: list[str]) -> Tensor:
    """The selected entries of ``tensors[name]`` for each name in ``names``, concatenated.

    Args:
        tensors: ``{name: Tensor}`` (gradients, parameters, Fisher), each shaped like its mask.
        masks: ``{name: BoolTensor}`` from :func:`top_fraction_masks`.
        names: the order of concatenation; pass the same list to :func:`scatter_flat`.

    Returns:
        ``[n_selected]``; within a tensor the entries come in row-major order.
    """
    parts = []
    for n in names:
        if tensors[n].shape != masks[n].shape:
            raise ValueError(
                f"{n}: tensor {tuple(tensors[n].shape)} vs mask {tuple(masks[n].shape)}"
            )
        parts.append(tensors[n][masks[n]])
    if not parts:
        return torch.empty(0)
    return torch.cat(parts)


def scatter_flat(
    flat: Tensor, masks: dict[str, Tensor], names: list[str], like: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Inverse of :func:`masked_flat`: dense tensors, zero except at the selected entries.

    Args:
        flat: ``[n_selected]`` in the order :func:`masked_flat` produced with the same ``names``.
        masks: ``{name: BoolTensor}``.
        names: the same list given to :func:`masked_flat`.
        like: ``{name: Tensor}`` giving each output's shape, dtype and device (e.g. parameters).

    Returns:
        ``{name: Tensor}`` for each name in ``names``.
    """
    counts = [int(masks[n].sum()) for n in names]
    if flat.dim() != 1 or flat.numel() != sum(counts):
        raise ValueError(f"flat has shape {tuple(flat.shape)}, masks select {sum(counts)}")
    out, start = {}, 0
    for n, c in zip(names, counts):
        dense = torch.zeros_like(like[n])
        dense[masks[n].to(dense.device)] = flat[start : start + c].to(dense.dtype)
        out[n] = dense
        start += c
    return out
