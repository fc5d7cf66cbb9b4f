"""A sweep's search space: Tune distributions from YAML, a trial's method spec from what it sampled,
and the variants of the shared bundle the trials can need. No Ray or torch at import time
(``hdsu-ray validate`` reads :data:`BUNDLE_KEYS`).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from typing import Any

from hdsu_ray.config.schema import Workflow
from hdsu_ray.config.search import SearchDim

# Method keys whose value changes the shared bundle (mask, reference, basis) a trial needs.
BUNDLE_KEYS = ("budget", "param_budget", "budget_exclude", "row_cap", "layer", "projection")


def tune_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dim in space.items():
        if dim.type == "choice":
            out[key] = tune.choice(dim.values)
        elif dim.type == "int":
            out[key] = (tune.lograndint if dim.log else tune.randint)(int(dim.low), int(dim.high) + 1)
        else:
            out[key] = (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
    return out


def make_sampler(searcher: str, seed: int):
    """The Optuna sampler a ``searcher`` name stands for, seeded. ``qmc`` is a scrambled Sobol
    sequence: its first trial is a random draw and each later one fills the space evenly, so a few
    trials still span every range, where seeded random search (tpe's start-up trials) can leave
    most of a range untried."""
    import warnings

    import optuna

    if searcher == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.0; the pinned version is tested
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                              warn_independent_sampling=False)
    return {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler}[searcher](seed=seed)


def trial_spec(base: dict, concept_weights: dict | None, sampled: dict[str, Any]) -> tuple[dict, int | None]:
    """The method spec of one trial (base spec + sampled keys) and its projection rank."""
    spec, rank = copy.deepcopy(base), None
    # The workflow's concept weights are the starting point of a weights.* search only; a method
    # without concept weights (any baseline) gets no weights key.
    searched = any(k.startswith("weights.") for k in sampled)
    weights = copy.deepcopy(concept_weights) if concept_weights and searched else None
    for key, value in sampled.items():
        if key == "projection.rank":
            rank = int(value)
        elif key.startswith("weights."):
            parts = key.split(".")[1:]
            weights = weights or {}
            if len(parts) == 1 and parts[0] != "neutral":  # one weight for every level of a label
                weights[parts[0]] = {lv: float(value) for lv in (1, 2, 3, 4)}
            elif len(parts) == 1:
                weights["neutral"] = float(value)
            else:
                weights.setdefault(parts[0], {})[int(parts[1])] = float(value)
        else:
            spec[key] = value
    if weights is not None:
        spec["weights"] = weights
    return spec, rank


def with_rank(workflow: Workflow, rank: int) -> Workflow:
    """``workflow`` with ``unlearn.projection.rank`` set to ``rank`` (the basis is built at it)."""
    u = workflow.unlearn
    return replace(workflow, unlearn=replace(u, projection=replace(u.projection, rank=rank)))


def bundle_variants(sw) -> list[dict[str, Any]]:
    """Every combination of the sampled values of :data:`BUNDLE_KEYS` (choice dimensions only;
    validation refuses a range over them with the shared cache)."""
    dims = [(k, sw.space[k].values) for k in BUNDLE_KEYS if k in sw.space]
    return [dict(zip([k for k, _ in dims], combo)) for combo in itertools.product(*[v for _, v in dims])]
