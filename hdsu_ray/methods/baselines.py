"""The usual baselines, in the same registry and on the same shared pieces as the dual strategy.

Forget terms use uniform weights over answer tokens; the retain term is plain NLL on the retain
batch. Settings follow their papers' defaults: NPO beta 0.1 (Zhang et al. 2024), SimNPO beta 2.5
(Fan et al. 2024), WGA beta 1 (Wang et al. 2025), RMU c=6.5, alpha=1200 scaled down for tiny models
(Li et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hdsu_ray.config.fields import opt
from hdsu_ray.core.losses import ga_loss, npo_loss, rmu_loss, simnpo_loss, wga_loss, weighted_nll
from hdsu_ray.methods import MethodParams, register
from hdsu_ray.methods.view import StepView


def retain_nll(view: StepView) -> torch.Tensor:
    logp, mask = view.logp("retain")
    return weighted_nll(logp, mask.float())


def _with_retain(terms: dict, view: StepView, retain_weight: float) -> dict:
    if retain_weight > 0 and view.has("retain"):
        terms["retain"] = retain_weight * retain_nll(view)
    return terms


@register("ga")
def ga(p: MethodParams, view: StepView, retain_weight: float) -> dict:
    """Gradient ascent on the forget answers; no retain term."""
    logp, mask = view.logp("forget")
    return {"forget": ga_loss(logp, mask.float())}


@register("graddiff")
def graddiff(p: MethodParams, view: StepView, retain_weight: float) -> dict:
    """Gradient difference: ascent on forget, descent on retain."""
    logp, mask = view.logp("forget")
    return _with_retain({"forget": ga_loss(logp, mask.float())}, view, retain_weight)


@dataclass(frozen=True)
class NPOParams(MethodParams):
    beta: float = opt(0.1, gt=0.0, help="inverse temperature of the preference loss")


@register("npo", NPOParams, needs_reference=True)
def npo(p: NPOParams, view: StepView, retain_weight: float) -> dict:
    """Negative preference optimisation against the learned model (reference log-probs cached)."""
    logp, mask = view.logp("forget")
    loss = npo_loss(logp, view.batch("forget")["ref_logp"], mask.float(), beta=p.beta)
    return _with_retain({"forget": loss}, view, retain_weight)


@dataclass(frozen=True)
class SimNPOParams(MethodParams):
    beta: float = opt(2.5, gt=0.0, help="inverse temperature")
    delta: float = opt(0.0, help="reward margin")


@register("simnpo", SimNPOParams)
def simnpo(p: SimNPOParams, view: StepView, retain_weight: float) -> dict:
    """SimNPO: reference-free, length-normalised NPO."""
    logp, mask = view.logp("forget")
    return _with_retain({"forget": simnpo_loss(logp, mask.float(), beta=p.beta, delta=p.delta)}, view,
                        retain_weight)


@dataclass(frozen=True)
class WGAParams(MethodParams):
    beta: float = opt(1.0, gt=0.0, help="exponent of the detached token probability")


@register("wga", WGAParams)
def wga(p: WGAParams, view: StepView, retain_weight: float) -> dict:
    """Weighted gradient ascent: ascent weighted by each token's own (detached) probability."""
    logp, mask = view.logp("forget")
    return _with_retain({"forget": wga_loss(logp, mask.float(), beta=p.beta)}, view, retain_weight)


@dataclass(frozen=True)
class RMUParams(MethodParams):
    layer: int = opt(2, ge=1, help="hidden layer whose activations are steered")
    steering: float = opt(6.5, gt=0.0, help="norm c of the random control vector")
    alpha: float = opt(10.0, ge=0.0, help="weight of the retain activation-matching term")
    seed: int = opt(0, help="seed of the control vector")


@register("rmu", RMUParams, needs_reference=True)
def rmu(p: RMUParams, view: StepView, retain_weight: float) -> dict:
    """Representation misdirection: forget activations to a random direction, retain to the reference."""
    h_f = view.hidden("forget")
    g = torch.Generator().manual_seed(p.seed)
    control = torch.rand(h_f.shape[-1], generator=g)
    control = p.steering * control / control.norm()
    h_r = view.hidden("retain")
    return {"forget": rmu_loss(h_f, control.to(h_f.dtype), h_r, view.batch("retain")["ref_hidden"],
                               view.label_mask("forget"), view.label_mask("retain"), p.alpha)}
