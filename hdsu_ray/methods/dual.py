"""The hierarchical dual-strategy method (``hdsu``).

Strategy 1, geometric-constrained updates, lives in the loop: only the budgeted parameters move,
and the gradient of the ``forget`` term returned here is projected off the retain-gradient
subspace before it is added to the other terms. Strategy 2, concept-aware token interventions,
lives here: the forget loss weights each token by its concept label and level, and a KL anchor
holds preservation-critical tokens at the learned model's distribution. The params and the
registration are in :mod:`hdsu_ray.methods.params` (torch-free).
"""

from __future__ import annotations

from hdsu_ray.core.losses import ga_loss, kl_anchor, npo_loss, option_contrast_loss
from hdsu_ray.methods.baselines import with_retain
from hdsu_ray.methods.params import DualParams
from hdsu_ray.methods.view import StepView


def hdsu(p: DualParams, view: StepView, retain_weight: float) -> dict:
    """Dual strategy: concept-weighted forget loss (projected in the loop), retain NLL, KL anchor."""
    if p.forget_loss == "contrast":
        if p.token_weights:
            scores, answer, valid, qw = view.concept_option_scores("forget")
        else:
            (scores, answer, valid), qw = view.option_scores("forget"), None
        forget = option_contrast_loss(scores, answer, valid, margin=p.margin, sharpness=p.sharpness,
                                      question_weight=qw)
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
    return with_retain(terms, view, retain_weight)
