"""One-off computations on the learned model, shared by every unlearning run that needs them.

* the parameter budget: a Fisher-ratio mask (forget Fisher / retain Fisher) over all weights, or
  the same ratio over whole linear modules, which ranks the LoRA targets (``budget: lora``);
* the retain-gradient basis U over the selected entries (the geometric constraint);
* reference tensors of the learned model: forget log-probs (NPO), top-K distributions on
  preservation-critical tokens (KL anchor), retain hidden states (RMU). Precomputing them means
  no second model is resident while unlearning.

All functions take a model and numpy arrays and return numpy, so results go into the Ray object
store zero-copy and onto disk as ``.npz``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hdsu_ray.core.budget import cap_rows, fisher_ratio, top_fraction_masks
from hdsu_ray.core.losses import token_logprobs, topk_reference
from hdsu_ray.core.projection import retain_basis


def _rows_tensors(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
    width = int(arrays["attention_mask"][rows].sum(axis=1).max())
    return {k: torch.as_tensor(arrays[k][rows][:, :width]) for k in ("input_ids", "attention_mask", "labels")}


def _nll_grads(model, arrays, rows) -> dict[str, torch.Tensor]:
    """Gradients of the mean answer NLL of ``rows`` w.r.t. every trainable parameter."""
    b = _rows_tensors(arrays, rows)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    logp, mask = token_logprobs(logits, b["labels"][:, 1:])
    (-(logp * mask).sum() / mask.sum().clamp(min=1)).backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def fisher_diagonals(model, forget: dict, retain: dict, *, samples: int, seed: int, chunk: int = 0,
                     on_forget_logits=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(F_forget, F_retain)``: per-sample empirical Fisher diagonals (float64, shaped like each
    trainable parameter) from ``samples`` rows of each set, drawn by ``seed``. ``chunk > 0`` takes
    that many rows per batched pass (:mod:`hooked_grads`), else one row per backward pass;
    the two agree within float tolerance. The batched passes hand each chunk's forget rows and
    their logits to ``on_forget_logits(rows, logits)`` (a :class:`ForgetReference`)."""
    rng = np.random.default_rng(seed)
    fishers = []
    for arrays, on_logits in ((forget, on_forget_logits), (retain, None)):
        rows = rng.permutation(len(arrays["input_ids"]))[:samples]
        acc: dict[str, torch.Tensor] = {}

        def add(name: str, sq: torch.Tensor) -> None:  # a chunk's sum of squared per-row gradients
            if name in acc:
                acc[name].add_(sq)
            else:
                acc[name] = sq.double()
        _each_sample_grad(model, arrays, rows[:, None], chunk, add, square_sum=True, on_logits=on_logits)
        fishers.append({n: v.div_(len(rows)) for n, v in acc.items()})
    model.zero_grad(set_to_none=True)
    return fishers[0], fishers[1]


def _each_sample_grad(model, arrays: dict, groups, chunk: int, take, square_sum: bool = False,
                      masks: dict[str, torch.Tensor] | None = None, on_logits=None) -> None:
    """``take(name, grad [k, *shape])`` for every trainable parameter and every sample, a sample
    being a row of ``groups [n, b]`` (``b`` rows' mean NLL); ``take`` may overwrite ``grad``.
    With ``square_sum``, ``take(name, sum over the k samples of grad**2)`` instead; with ``masks``
    (boolean, by name), ``take(name, grad[:, mask])`` for the masked parameters only.
    ``chunk > 0``: ``k = chunk`` samples per batched pass, by layer hooks (:mod:`hooked_grads`)
    where every trainable layer has a rule, else by torch.func (:mod:`per_sample`);
    ``chunk == 0``: one backward pass per sample. The hooked passes also hand each chunk's rows
    and logits to ``on_logits``; the other paths do not, and leave it unfilled."""
    if chunk > 0:
        from hdsu_ray.train.hooked_grads import group_grads, owners
        found = owners(model)
        if found is not None:
            group_grads(model, arrays, np.asarray(groups), chunk, take, found, square_sum, masks, on_logits)
            return
    if square_sum:
        take = _squaring(take)
    if masks is not None:
        take = _masking(take, masks)
    if chunk <= 0:
        for group in groups:
            for name, g in _nll_grads(model, arrays, np.asarray(group)).items():
                take(name, g[None])
        return
    from hdsu_ray.train.per_sample import sample_grads
    for grads in sample_grads(model, arrays, np.asarray(groups), chunk):
        for name, g in grads.items():
            take(name, g)


def _masking(take, masks: dict[str, torch.Tensor]):
    return lambda name, g: take(name, g[:, masks[name]]) if name in masks else None


def _squaring(take):
    """``take`` fed ``sum_k grad**2``: one row squared in float64 as it always was; a chunk squared
    and summed in float32 first (a ``[k, vocab, hidden]`` float64 copy would cost more than it adds)."""
    return lambda name, g: take(name, (g.double() ** 2).sum(dim=0) if len(g) == 1 else g.square_().sum(dim=0))


def _absolute_eps(F_retain: dict[str, torch.Tensor], eps: float) -> float:
    # eps is relative to the mean retain Fisher: an absolute eps lets entries whose retain Fisher
    # is numerically zero (dead units, tokens absent from the retain set) win on eps alone.
    total = sum(float(v.sum()) for v in F_retain.values())
    count = sum(v.numel() for v in F_retain.values())
    return eps * total / max(1, count)


def fisher_masks(model, forget: dict, retain: dict, *, fraction: float, samples: int, eps: float,
                 seed: int, exclude: tuple[str, ...] = (), row_cap: int = 0, chunk: int = 0,
                 on_forget_logits=None) -> dict[str, np.ndarray]:
    """Top ``fraction`` of entries by F_forget / (F_retain + eps), per-sample empirical Fisher.

    Parameters whose name contains one of ``exclude`` are never selected; ``fraction`` still
    counts against every parameter of the model, so the budget is the same. ``row_cap > 0`` lets
    each matrix row hold at most that many selected entries (:func:`cap_rows`).
    ``on_forget_logits``: see :func:`fisher_diagonals`.
    """
    F_forget, F_retain = fisher_diagonals(model, forget, retain, samples=samples, seed=seed, chunk=chunk,
                                          on_forget_logits=on_forget_logits)
    scores = fisher_ratio(F_forget, F_retain, eps=_absolute_eps(F_retain, eps))
    for name in scores:
        if any(pattern in name for pattern in exclude):
            scores[name] = torch.full_like(scores[name], -1.0)  # below every real ratio (>= 0)
    scores = cap_rows(scores, row_cap, fill=-1.0)
    eligible = sum(int((v >= 0).sum()) for v in scores.values())
    if eligible < max(1, round(fraction * sum(v.numel() for v in scores.values()))):
        from hdsu_ray.errors import WorkflowError
        raise WorkflowError(f"only {eligible} entries may be selected under budget_exclude and a row cap "
                            f"of {row_cap}, fewer than the budget of {fraction}", key="unlearn.row_cap",
                            expected="a larger row_cap (0: no cap) or fewer exclusions")
    masks = top_fraction_masks(scores, fraction)
    return {n: m.numpy() for n, m in masks.items()}


def module_fisher_scores(model, forget: dict, retain: dict, *, samples: int, eps: float,
                         seed: int, chunk: int = 0) -> dict[str, float]:
    """``{module: tr F_forget / (tr F_retain + eps * numel)}`` over the weight of every linear
    module: the Fisher ratio of whole matrices, which ranks LoRA targets (``budget: lora``).

    Same samples and relative ``eps`` as :func:`fisher_masks`, so both budgets read one Fisher.
    """
    F_forget, F_retain = fisher_diagonals(model, forget, retain, samples=samples, seed=seed, chunk=chunk)
    eps_abs = _absolute_eps(F_retain, eps)
    out = {}
    for name, module in model.named_modules():
        w = f"{name}.weight"
        if isinstance(module, torch.nn.Linear) and w in F_forget:
            out[name] = float(F_forget[w].sum() / (F_retain[w].sum() + eps_abs * F_retain[w].numel()))
    return out


def full_masks(model) -> dict[str, np.ndarray]:
    return {n: np.ones(tuple(p.shape), dtype=bool) for n, p in model.named_parameters()}


def retain_gradient_matrix(model, retain: dict, masks: dict[str, np.ndarray], *, samples: int,
                           batch: int, seed: int, chunk: int = 0) -> np.ndarray:
    """``G [k, n_selected]``: one retain NLL gradient per micro-batch, restricted to the budget;
    ``chunk > 0`` takes that many micro-batches per vectorised call (full micro-batches only)."""
    names = [n for n, m in masks.items() if m.any()]
    mask_t = {n: torch.from_numpy(masks[n]) for n in names}
    order = np.random.default_rng([seed, 7]).permutation(len(retain["input_ids"]))
    rows_list = [order[i:i + batch] for i in range(0, min(len(order), samples * batch), batch)]
    blocks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    equal = all(len(r) == batch for r in rows_list)  # batched passes take full micro-batches only
    groups = np.stack(rows_list) if equal else rows_list
    _each_sample_grad(model, retain, groups, chunk if equal else 0,
                      lambda name, g: blocks[name].append(g), masks=mask_t)
    model.zero_grad(set_to_none=True)
    if not names:
        return np.zeros((len(rows_list), 0), np.float32)
    return torch.cat([torch.cat(blocks[n]) for n in names], dim=1).float().numpy()


def basis_from_gradients(G: np.ndarray, *, rank: int, method: str, energy: float | None,
                         seed: int) -> np.ndarray:
    """``U [n_selected, r]`` orthonormal, columns ordered so slicing gives lower ranks."""
    gen = torch.Generator().manual_seed(seed)
    return retain_basis(torch.from_numpy(G), rank=rank, method=method, energy=energy,
                        generator=gen).numpy()


class ForgetReference:
    """The forget rows' reference tensors, filled from forward passes of the learned model made
    anyway (the forget Fisher's, in eval mode), so that the stage need not run them again.
    ``fill(rows, logits)`` takes shifted logits ``[r, w-1, V]`` of rows cut to width ``w``; the
    positions past ``w`` are padding, which no loss reads. :meth:`result` is ``None`` until every
    row has come."""

    def __init__(self, forget: dict, topk: int):
        n, width = forget["input_ids"].shape
        self.labels, self.topk, self.seen = forget["labels"], topk, np.zeros(n, bool)
        self.out = {"forget_ref_logp": np.zeros((n, width - 1), np.float32),
                    "forget_ref_topk_idx": np.zeros((n, width - 1, topk), np.int64),
                    "forget_ref_topk_logp": np.full((n, width - 1, topk), -1e4, np.float32)}

    @torch.no_grad()
    def __call__(self, rows: np.ndarray, logits: torch.Tensor) -> None:
        w = logits.shape[1]
        logp, _ = token_logprobs(logits, torch.as_tensor(self.labels[rows, 1:w + 1]))
        idx, lp = topk_reference(logits, self.topk)
        self.out["forget_ref_logp"][rows, :w] = logp.numpy()
        self.out["forget_ref_topk_idx"][rows, :w], self.out["forget_ref_topk_logp"][rows, :w] = idx.numpy(), lp.numpy()
        self.seen[rows] = True

    def result(self) -> dict[str, np.ndarray] | None:
        return self.out if self.seen.all() else None


@torch.no_grad()
def reference_tensors(model, forget: dict, retain: dict, *, topk: int, hidden_layer: int | None,
                      batch: int = 32) -> dict[str, Any]:
    """The learned model's outputs that losses compare against, in shifted positions ``[N, L-1]``.

    Returns ``forget_ref_logp [N, L-1]``, ``forget_ref_topk_idx/logp [N, L-1, K]`` and, with
    ``hidden_layer``, ``retain_ref_hidden [N, L, H]``.
    """
    model.eval()
    fill = ForgetReference(forget, topk)
    for start in range(0, len(forget["input_ids"]), batch):
        rows = np.arange(start, min(start + batch, len(forget["input_ids"])))
        ids, am = torch.as_tensor(forget["input_ids"][rows]), torch.as_tensor(forget["attention_mask"][rows])
        fill(rows, model(input_ids=ids, attention_mask=am).logits[:, :-1].float())
    out = fill.result()
    if hidden_layer is not None:
        m, w = retain["input_ids"].shape
        hidden = None
        for start in range(0, m, batch):
            sl = slice(start, start + batch)
            res = model(input_ids=torch.as_tensor(retain["input_ids"][sl]),
                        attention_mask=torch.as_tensor(retain["attention_mask"][sl]), output_hidden_states=True)
            h = res.hidden_states[hidden_layer].float().numpy()
            if hidden is None:
                hidden = np.zeros((m, w, h.shape[-1]), np.float32)
            hidden[sl] = h
        out["retain_ref_hidden"] = hidden
    model.train()
    return out
