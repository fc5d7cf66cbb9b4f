"""LoRA adapters as the parameter budget (``unlearn.budget: lora``).

The budget reading is the same as for ``fisher``: at most ``param_budget`` x (parameters of the
base model) trainable entries. Here they are the LoRA matrices ``A [r, in]`` and ``B [out, r]``
of a set of linear modules (PyPI ``peft``); every base weight is frozen. A rank-``r`` adapter on a
``[out, in]`` linear layer costs ``r * (in + out)`` entries. The rank is the user's
(``unlearn.lora_rank``); the set of modules is chosen so the total fits:

* candidates are the ``nn.Linear`` modules whose name matches ``unlearn.lora_targets`` (a target
  ``t`` matches a module called ``t`` or ``<anything>.t``, as in peft) and no
  ``budget_exclude`` substring;
* if all candidates fit, all are adapted (no Fisher pass); otherwise they are ranked by the
  Fisher ratio of the whole weight matrix (:func:`hdsu_ray.train.prepare.module_fisher_scores`)
  and taken greedily in that order, skipping any that would overflow the budget;
* if not even the smallest candidate fits, the run stops with a :class:`WorkflowError` naming the
  budget's key path.

The plan (a small dict: rank, module names, init seed, counts) is made once in the driver and
travels in the run's object-store bundle, so the driver (retain basis) and every worker wrap the
model identically, including the random ``A`` initialisation. peft is imported inside functions
only: ``hdsu-ray validate`` and the fisher/full budgets never load it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from hdsu_ray.errors import WorkflowError


def matches(name: str, targets: list[str] | tuple[str, ...]) -> bool:
    """peft's rule for a list of target names: the full module name or its dotted suffix."""
    return any(name == t or name.endswith("." + t) for t in targets)


def is_candidate(name: str, targets: list[str] | tuple[str, ...], exclude: list[str] | tuple[str, ...]) -> bool:
    """A module the budget may adapt: it matches a LoRA target and no ``budget_exclude`` substring."""
    return matches(name, targets) and not any(x in name for x in exclude)


def adapter_size(in_features: int, out_features: int, rank: int) -> int:
    """Entries of one adapter: ``A [rank, in]`` plus ``B [out, rank]``."""
    return rank * (in_features + out_features)


def budget_count(fraction: float, n_base: int) -> int:
    """The largest ``k`` with ``k / n_base <= fraction`` in floating point, so the reported
    ``param_fraction = n_params / n_base`` never exceeds ``param_budget``."""
    k = int(fraction * n_base)
    while (k + 1) / n_base <= fraction:
        k += 1
    while k > 0 and k / n_base > fraction:
        k -= 1
    return k


def _ceil_sig(x: float, digits: int = 3) -> str:
    """``x`` rounded *up* to ``digits`` significant digits (a budget that surely suffices)."""
    import math

    e = math.floor(math.log10(x)) - digits + 1
    return f"{math.ceil(round(x / 10 ** e, 9)) * 10 ** e:.{digits}g}"


def check_one_fits(shapes: dict[str, tuple[int, int]], rank: int, fraction: float, n_base: int, *,
                   key: str, bound: bool = False, file: str | None = None) -> None:
    """Raise :class:`WorkflowError` when no candidate gets an adapter (none, or none fits).

    Args:
        shapes: ``{module: (in_features, out_features)}`` of the candidates.
        n_base: parameters of the base model (``bound``: an upper bound, from the tiny config).
        key: the YAML key path that set ``fraction`` (``unlearn.param_budget`` or a method's).
    """
    if not shapes:
        raise WorkflowError("no linear module matches the LoRA targets (or all are in budget_exclude)",
                            file=file, key="unlearn.lora_targets", expected="module names such as q_proj, v_proj")
    name = min(shapes, key=lambda n: adapter_size(*shapes[n], rank))
    need = adapter_size(*shapes[name], rank)
    allowed = budget_count(fraction, n_base)
    if need > allowed:
        of = "at most " if bound else ""
        raise WorkflowError(
            f"{fraction} of {of}{n_base:,} parameters allows {allowed:,} trainable entries, but the "
            f"smallest rank-{rank} LoRA adapter ({name}, {shapes[name][0]} -> {shapes[name][1]}) has {need:,}",
            file=file, key=key, expected=f"a budget >= {_ceil_sig(need / n_base)} or a smaller unlearn.lora_rank")


def choose_modules(sizes: dict[str, int], allowed: int, scores: Callable[[], dict[str, float]]) -> list[str]:
    """Modules to adapt, in model order: all when they fit, else greedily by descending score.

    Args:
        sizes: ``{module: adapter entries}`` in model order.
        allowed: the budget in entries.
        scores: called only when not everything fits; ``{module: Fisher ratio}``. Ties keep model
            order, so the choice is deterministic.
    """
    if sum(sizes.values()) <= allowed:
        return list(sizes)
    s = scores()
    chosen, used = set(), 0
    for name in sorted(sizes, key=lambda n: -s[n]):  # a stable sort: ties keep model order
        if used + sizes[name] <= allowed:
            chosen.add(name)
            used += sizes[name]
    return [n for n in sizes if n in chosen]


def linear_shapes(model, targets: list[str], exclude: list[str]) -> dict[str, tuple[int, int]]:
    """``{module: (in_features, out_features)}`` of the candidate ``nn.Linear`` modules, model order."""
    import torch

    return {n: (m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and is_candidate(n, targets, exclude)}


def plan_lora(model, *, rank: int, targets: list[str], exclude: list[str], fraction: float, seed: int,
              scores: Callable[[], dict[str, float]], key: str) -> dict[str, Any]:
    """The adapters of one budget: ``{"rank", "modules", "seed", "n_params", "n_base"}``.

    ``model`` is the plain (unwrapped) learned model; ``n_base`` counts its parameters once each
    (tied embeddings once), as ``param_fraction`` does; ``seed`` fixes the ``A`` initialisation.
    """
    n_base = sum(p.numel() for p in model.parameters())
    shapes = linear_shapes(model, targets, exclude)
    check_one_fits(shapes, rank, fraction, n_base, key=key)
    sizes = {n: adapter_size(*s, rank) for n, s in shapes.items()}
    modules = choose_modules(sizes, budget_count(fraction, n_base), scores)
    return {"rank": int(rank), "modules": modules, "seed": int(seed),
            "n_params": int(sum(sizes[n] for n in modules)), "n_base": int(n_base)}


def _module_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def wrap_lora(model, plan: dict[str, Any]):
    """Inject the plan's adapters into ``model`` (in place) and return the ``PeftModel``.

    Scaling is 1 (``lora_alpha = rank``), no dropout (the loss must be a deterministic function of
    the adapters for the projection), ``B = 0`` so the wrapped model equals the base model, and
    ``A [r, in]`` drawn per module from ``(plan seed, module name)`` with peft's default law,
    ``U(-1/sqrt(in), 1/sqrt(in))`` (Kaiming-uniform, a = sqrt(5)): independent of the process's
    RNG state and of peft's internals, so the driver and every worker build the same ``A``.
    Trainable parameters afterwards: exactly the ``lora_A``/``lora_B`` weights.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    r = int(plan["rank"])
    config = LoraConfig(r=r, lora_alpha=r, target_modules=list(plan["modules"]), lora_dropout=0.0,
                        bias="none", init_lora_weights=True)
    peft_model = get_peft_model(model, config)
    inner = peft_model.get_base_model()
    with torch.no_grad():
        for name in plan["modules"]:
            layer = inner.get_submodule(name)
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            bound = 1.0 / A.shape[1] ** 0.5
            gen = torch.Generator().manual_seed(_module_seed(plan["seed"], name))
            A.copy_(torch.empty(A.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen))
            B.zero_()
    n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n != plan["n_params"]:
        raise RuntimeError(f"LoRA wrapping gave {n} trainable entries, the plan says {plan['n_params']}")
    return peft_model


def lora_masks(model) -> dict:
    """``{name: all-True bool array}`` over the LoRA weights of a wrapped model, in model order: the
    budget for the adapters and the retain basis. Names missing here are frozen."""
    import numpy as np

    return {n: np.ones(tuple(p.shape), dtype=bool) for n, p in model.named_parameters()
            if ".lora_A." in n or ".lora_B." in n}


def merge_lora(model):
    """The plain Hugging Face model with ``W + B A`` written into each adapted weight.

    In place (peft's ``merge_and_unload``): the wrapped model is unusable afterwards, so this is
    the run's last use of it. A model without adapters is returned as it is.
    """
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
