"""Attacks an unlearned model should survive: weight quantization and relearning (pure torch).

* Quantization (arXiv 2410.16454: unlearned models kept 21 % of forgotten knowledge at full
  precision and 83 % after 4-bit quantization): round-to-nearest, symmetric, group-wise over the
  input dimension of every linear weight. A method that only nudged weights by less than a
  quantization step loses its edit when they are rounded.
* Relearning (arXiv 2406.13356, 2409.18025): a few optimizer steps on a little of the forget data,
  or on unrelated data, bring back what was removed; compared with the same steps on a model that
  never learned the rows, the gap is what unlearning hid rather than removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def quantize_rtn(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """Round-to-nearest symmetric quantization of ``weight [out, in]`` in groups of ``group_size``
    consecutive input columns (the last group may be shorter), dequantized back to float.

    Each group's scale is ``max|w| / (2^(bits-1) - 1)``; a group of zeros stays zero.

    Example: bits 2 (levels -1, 0, 1), one group [0.2, -1.0, 0.6] -> scale 1.0 -> [0.0, -1.0, 1.0].
    """
    if bits < 2 or group_size < 1:
        raise ValueError(f"need bits >= 2 and group_size >= 1, got {bits} and {group_size}")
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().to(torch.float32)
    out_dim, in_dim = w.shape
    pad = (-in_dim) % group_size
    groups = torch.nn.functional.pad(w, (0, pad)).view(out_dim, -1, group_size)
    scale = groups.abs().amax(dim=-1, keepdim=True) / levels
    q = torch.where(scale > 0, torch.round(groups / scale.clamp(min=torch.finfo(torch.float32).tiny)), 0.0)
    q = q.clamp(-levels, levels) * scale
    return q.view(out_dim, -1)[:, :in_dim].to(weight.dtype)


def quantize_linear_layers_(model: nn.Module, bits: int, group_size: int) -> int:
    """Quantize every ``nn.Linear`` weight of ``model`` in place; returns how many weights (tied
    weights, such as an output head tied to the embeddings, count once)."""
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                module.weight.copy_(quantize_rtn(module.weight, bits, group_size))
    return len(seen)


def finetune(model: nn.Module, batches: Iterable[dict[str, Tensor]], *, lr: float,
             loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor],
             on_step: Callable[[int], None] | None = None) -> None:
    """Plain AdamW fine-tuning of every parameter, one step per batch; ``on_step(k)`` after step k
    (1-based), where the caller evaluates the relearning curve."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for k, batch in enumerate(batches, start=1):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()
        if on_step is not None:
            on_step(k)
    model.eval()
