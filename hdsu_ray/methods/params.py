"""Every registered method: its params dataclass, flags and loss function, without importing torch.

The loss functions are in :mod:`hdsu_ray.methods.baselines` and :mod:`hdsu_ray.methods.dual`
(named here by dotted path, imported on first use). Settings follow the papers' defaults: NPO beta
0.1 (Zhang et al. 2024), SimNPO beta 2.5 (Fan et al. 2024), WGA beta 1 (Wang et al. 2025), RMU
c=6.5, alpha=1200 scaled down for tiny models (Li et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hdsu_ray.config.fields import opt
from hdsu_ray.methods.registry import MethodParams, register

BASELINES, DUAL = "hdsu_ray.methods.baselines", "hdsu_ray.methods.dual"


@dataclass(frozen=True)
class NPOParams(MethodParams):
    beta: float = opt(0.1, gt=0.0, help="inverse temperature of the preference loss")


@dataclass(frozen=True)
class SimNPOParams(MethodParams):
    beta: float = opt(2.5, gt=0.0, help="inverse temperature")
    delta: float = opt(0.0, help="reward margin")


@dataclass(frozen=True)
class WGAParams(MethodParams):
    beta: float = opt(1.0, gt=0.0, help="exponent of the detached token probability")


@dataclass(frozen=True)
class RMUParams(MethodParams):
    layer: int = opt(2, ge=1, help="hidden layer whose activations are steered")
    steering: float = opt(6.5, gt=0.0, help="norm c of the random control vector")
    alpha: float = opt(10.0, ge=0.0, help="weight of the retain activation-matching term")
    seed: int = opt(0, help="seed of the control vector")


@dataclass(frozen=True)
class ContrastParams(MethodParams):
    margin: float = opt(0.5, ge=0.0, help="per-token log-likelihood gap to open below the best distractor")
    sharpness: float = opt(10.0, gt=0.0, help="softplus sharpness (large: a hinge)")


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
    rank: int | None = opt(None, ge=1, help="projection rank of this run (default: unlearn.projection.rank; "
                                            "a frozen comparison records each method's tuned rank here)")


def _reads_options(p: DualParams) -> bool:
    # Only the contrast form scores the answer options; a named function, so Method pickles.
    return p.forget_loss == "contrast"


register("ga", losses=f"{BASELINES}:ga", help="Gradient ascent on the forget answers; no retain term.")
register("graddiff", losses=f"{BASELINES}:graddiff",
         help="Gradient difference: ascent on forget, descent on retain.")
register("npo", NPOParams, losses=f"{BASELINES}:npo", needs_reference=True,
         help="Negative preference optimisation against the learned model (reference log-probs cached).")
register("simnpo", SimNPOParams, losses=f"{BASELINES}:simnpo",
         help="SimNPO: reference-free, length-normalised NPO.")
register("wga", WGAParams, losses=f"{BASELINES}:wga",
         help="Weighted gradient ascent: ascent weighted by each token's own (detached) probability.")
register("rmu", RMUParams, losses=f"{BASELINES}:rmu", needs_reference=True,
         help="Representation misdirection: forget activations to a random direction, retain to the "
              "reference.")
register("contrast", ContrastParams, losses=f"{BASELINES}:contrast", needs_options=True,
         help="GradDiff with the question-conditioned contrast forget term (the baselines' version of "
              "hdsu's loss: no projection, token weights or anchor).")
register("hdsu", DualParams, losses=f"{DUAL}:hdsu", needs_reference=True, needs_anchor=True, projects=True,
         needs_options=_reads_options,
         help="Dual strategy: concept-weighted forget loss (projected in the loop), retain NLL, KL anchor.")
