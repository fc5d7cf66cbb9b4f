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
from hdsu_ray.core.losses import ga_loss, kl_anchor, npo_loss, option_contrast_loss
from hdsu_ray.methods import MethodParams, register
from hdsu_ray.methods.baselines import _with_retain
from hdsu_ray.methods.view import StepView


@dataclass(frozen=True)
class DualParams(MethodParams):
    forget_loss: Literal["ga", "npo", "contrast"] = opt(
        "npo", help="forget loss form: token-weighted GA or NPO, or contrast (rank the right option "
                    "below the best distractor of the question; needs multiple-choice rows)")
    beta: float = opt(0.1, gt=0.0, help="NPO inverse temperature")
    margin: float = opt(0.5, ge=0.0, help="contrast: per-token log-likelihood gap to open below the "
                                           "best distractor")
    sharpness: float = opt(10.0, gt=0.0, help="contrast: softplus sharpness (large: a hinge)")
    token_weights: bool = opt(True, help="weight forget tokens by concept label and level "
                                         "(false: uniform, the projection-only ablation)")
    anchor_weight: float = opt(1.0, ge=0.0, help="weight of the KL anchor on preservation-critical tokens")
    projection: bool = opt(True, help="project the forget gradient off the retain subspace "
                                      "(false: the token-weighting-only ablation)")
    weights: dict[str, Any] | None = opt(None, help="override concepts.weights for this run "
                                                   "(what sweeps search)")


@register("hdsu", DualParams, needs_reference=True, needs_anchor=True, projects=True,
          needs_options=lambda p: p.forget_loss == "contrast")
def hdsu(p: DualParams, view: StepView, retain_weight: float) -> dict:
    """Dual strategy: concept-weighted forget loss (projected in the loop), retain NLL, KL anchor."""
    if p.forget_loss == "contrast":
        scores, answer, valid = view.option_scores("forget")
        forget = option_contrast_loss(scores, answer, valid, margin=p.margin, sharpness=p.sharpness)
    elif p.forget_loss == "npo":
        forget = npo_loss(view.logp("forget")[0], view.batch("forget")["ref_logp"],
                          view.weights("forget", p.token_weights), beta=p.beta)
    else:
        forget = ga_loss(view.logp("forget")[0], view.weights("forget", p.token_weights))
    terms = {"forget": forget}
    batch = view.batch("forget")
    if p.anchor_weight > 0 and "ref_topk_idx" in batch and "preserve_weight" in batch:
        terms["anchor"] = p.anchor_weight * kl_anchor(view.logits("forget"), batch["ref_topk_idx"],
                                                      batch["ref_topk_logp"], batch["preserve_weight"])
    return _with_retain(terms, view, retain_weight)
