"""The hierarchical dual-strategy method (``hdsu``).

Strategy 1, geometric-constrained updates, lives in the loop: only the budgeted parameters move,
and the gradient of the ``forget`` term returned here is projected off the retain-gradient
subspace before it is added to the other terms. Strategy 2, concept-aware token interventions,
lives here: the forget loss weights each token by its concept label and level, and a KL anchor
holds preservation-critical tokens at the learned model's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hdsu_ray.config.fields import opt
from hdsu_ray.core.losses import ga_loss, kl_anchor, npo_loss
from hdsu_ray.methods import MethodParams, register
from hdsu_ray.methods.baselines import _with_retain
from hdsu_ray.methods.view import StepView


@dataclass(frozen=True)
class DualParams(MethodParams):
    forget_loss: Literal["ga", "npo"] = opt("npo", help="token-weighted forget loss form")
    beta: float = opt(0.1, gt=0.0, help="NPO inverse temperature")
    token_weights: bool = opt(True, help="weight forget tokens by concept label and level "
                                         "(false: uniform, the projection-only ablation)")
    anchor_weight: float = opt(1.0, ge=0.0, help="weight of the KL anchor on preservation-critical tokens")
    projection: bool = opt(True, help="project the forget gradient off the retain subspace "
                                      "(false: the token-weighting-only ablation)")
    weights: dict[str, Any] | None = opt(None, help="override concepts.weights for this run "
                                                   "(what sweeps search)")


@register("hdsu", DualParams, needs_reference=True, needs_anchor=True, projects=True)
def hdsu(p: DualParams, view: StepView, retain_weight: float) -> dict:
    """Dual strategy: concept-weighted forget loss (projected in the loop), retain NLL, KL anchor."""
    logp, _ = view.logp("forget")
    w = view.weights("forget", p.token_weights)
    if p.forget_loss == "npo":
        forget = npo_loss(logp, view.batch("forget")["ref_logp"], w, beta=p.beta)
    else:
        forget = ga_loss(logp, w)
    terms = {"forget": forget}
    batch = view.batch("forget")
    if p.anchor_weight > 0 and "ref_topk_idx" in batch and "preserve_weight" in batch:
        terms["anchor"] = p.anchor_weight * kl_anchor(view.logits("forget"), batch["ref_topk_idx"],
                                                      batch["ref_topk_logp"], batch["preserve_weight"])
    return _with_retain(terms, view, retain_weight)
