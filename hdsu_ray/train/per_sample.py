"""Per-sample (and per-micro-batch) gradients in batches: ``torch.func.vmap(grad(...))``.

The fallback for models with a trainable layer :mod:`hdsu_ray.train.hooked_grads` has no rule
for; that path is faster where it applies, since this one holds every parameter's per-sample
gradients of a chunk at once.

The Fisher diagonals need one gradient per row and the retain basis one per micro-batch; taking
them one backward pass at a time leaves a CPU or GPU mostly idle on small inputs. Here a chunk of
rows (or of micro-batches) is differentiated in one vectorised call over a functional copy of the
model's parameters. Hugging Face's mask construction branches on the mask's values, which vmap
cannot trace, so each sample gets a ready 4-D additive mask (causal, padding keys masked); the
result equals the one-at-a-time gradients within float tolerance (tests/unit/test_per_sample.py).
Attention runs as Hugging Face's eager (matmul-softmax-matmul) implementation inside vmap: torch.func
has no batching rule for CPU SDPA kernels, and without one vmap falls back to a per-sample loop with
overhead of its own (the prepare rows of docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from hdsu_ray.core.losses import token_logprobs


def _additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[b, 1, L, L]`` additive mask for rows ``[b, L]``: causal, padded keys off; a padded query
    still sees itself, so its (ignored) row has no all-minus-infinity softmax."""
    L = attention_mask.shape[-1]
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    allow = causal & attention_mask.bool()[:, None, :] | torch.eye(L, dtype=torch.bool)
    return torch.where(allow, 0.0, torch.finfo(torch.float32).min)[:, None]


def _loss_fn(model):
    """The mean answer NLL of one sample (rows ``[b, L]``) as a function of the parameters."""
    from torch.func import functional_call

    def loss(params, input_ids, mask4d, labels):
        logits = functional_call(model, params, (input_ids,), {"attention_mask": mask4d}).logits
        logp, m = token_logprobs(logits[:, :-1].float(), labels[:, 1:])
        return -(logp * m).sum() / m.sum().clamp(min=1)

    return loss


def _chunk_tensors(arrays: dict[str, np.ndarray], groups: np.ndarray) -> tuple[torch.Tensor, ...]:
    """``groups [n, b]`` row indices -> ``(input_ids, 4-D mask, labels)`` as ``[n, b, ...]``."""
    rows = groups.reshape(-1)
    width = int(arrays["attention_mask"][rows].sum(axis=1).max())
    take = lambda k: torch.as_tensor(arrays[k][rows][:, :width]).view(*groups.shape, width)
    ids, att, labels = take("input_ids"), take("attention_mask"), take("labels")
    return ids, _additive_mask(att.view(-1, width)).view(*groups.shape, 1, width, width), labels


def sample_grads(model, arrays: dict[str, np.ndarray], groups: np.ndarray,
                 chunk: int) -> Iterator[dict[str, torch.Tensor]]:
    """For each chunk of ``groups [n, b]`` (``b`` rows per sample: 1 for per-row gradients), the
    gradients of every trainable parameter, ``{name: [chunk, *shape]}``."""
    from torch.func import grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    per_sample = vmap(grad(_loss_fn(model)), in_dims=(None, 0, 0, 0))
    was_training = model.training
    model.eval()  # no dropout in a Fisher estimate; the loop's forward passes do the same
    try:
        with _eager_attention(model):
            for start in range(0, len(groups), chunk):
                ids, mask, labels = _chunk_tensors(arrays, groups[start:start + chunk])
                yield per_sample(params, ids, mask, labels)
    finally:
        model.train(was_training)


@contextmanager
def _eager_attention(model):
    """Switch a Hugging Face model to eager attention for the block, then back to what it had."""
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)
