"""The usual baselines' loss functions, on the same shared pieces as the dual strategy.

Forget terms use uniform weights over answer tokens; the retain term is plain NLL on the retain
batch. Their params, defaults (with the papers they follow) and registration are in
:mod:`hdsu_ray.methods.params`, which names each function here by dotted path, so this module (and
torch) is imported only when a run first asks for a method's losses.
"""

from __future__ import annotations

import torch

from hdsu_ray.core.losses import (ga_loss, npo_loss, option_contrast_loss, rmu_loss, simnpo_loss, wga_loss,
                                  weighted_nll)
from hdsu_ray.methods.params import ContrastParams, NPOParams, RMUParams, SimNPOParams, WGAParams
from hdsu_ray.methods.registry import MethodParams
from hdsu_ray.methods.view import StepView


def retain_nll(view: StepView) -> torch.Tensor:
    logp, mask = view.logp("retain")
    return weighted_nll(logp, mask.float())


def with_retain(terms: dict, view: StepView, retain_weight: float) -> dict:
    if retain_weight > 0 and view.has("retain"):
        terms["retain"] = retain_weight * retain_nll(view)
    return terms


def ga(p: MethodParams, view: StepView, retain_weight: float) -> dict:
    """Gradient ascent on the forget answers; no retain term."""
    logp, mask = view.logp("forget")
    return {"forget": ga_loss(logp, mask.float())}


def graddiff(p: MethodParams, view: StepView, retain_weight: float) -> dict:
    """Gradient difference: ascent on forget, descent on retain."""
    logp, mask = view.logp("forget")
    return with_retain({"forget": ga_loss(logp, mask.float())}, view, retain_weight)


def npo(p: NPOParams, view: StepView, retain_weight: float) -> dict:
    """Negative preference optimisation against the learned model (reference log-probs cached)."""
    logp, mask = view.logp("forget")
    loss = npo_loss(logp, view.batch("forget")["ref_logp"], mask.float(), beta=p.beta)
    return with_retain({"forget": loss}, view, retain_weight)


def simnpo(p: SimNPOParams, view: StepView, retain_weight: float) -> dict:
    """SimNPO: reference-free, length-normalised NPO."""
    logp, mask = view.logp("forget")
    return with_retain({"forget": simnpo_loss(logp, mask.float(), beta=p.beta, delta=p.delta)}, view,
                        retain_weight)


def wga(p: WGAParams, view: StepView, retain_weight: float) -> dict:
    """Weighted gradient ascent: ascent weighted by each token's own (detached) probability."""
    logp, mask = view.logp("forget")
    return with_retain({"forget": wga_loss(logp, mask.float(), beta=p.beta)}, view, retain_weight)


def rmu(p: RMUParams, view: StepView, retain_weight: float) -> dict:
    """Representation misdirection: forget activations to a random direction, retain to the reference."""
    h_f = view.hidden("forget")
    g = torch.Generator().manual_seed(p.seed)
    control = torch.rand(h_f.shape[-1], generator=g)
    control = p.steering * control / control.norm()
    h_r = view.hidden("retain")
    return {"forget": rmu_loss(h_f, control.to(h_f.dtype), h_r, view.batch("retain")["ref_hidden"],
                               view.label_mask("forget"), view.label_mask("retain"), p.alpha)}


def contrast(p: ContrastParams, view: StepView, retain_weight: float) -> dict:
    """GradDiff with the question-conditioned forget term: the right option ranked below the best
    distractor (uniform token weights, no projection, no anchor), plus retain NLL."""
    scores, answer, valid = view.option_scores("forget")
    forget = option_contrast_loss(scores, answer, valid, margin=p.margin, sharpness=p.sharpness)
    return with_retain({"forget": forget}, view, retain_weight)
