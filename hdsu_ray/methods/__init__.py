"""Unlearning methods, chosen by short name in YAML (``{name: npo, beta: 0.1}``).

Each method is a params dataclass plus a ``losses(params, view)`` function that returns named loss
terms over a :class:`StepView`. The loop adds them up, except that the ``forget`` term's gradient
is kept apart when the method asks for the retain-subspace projection (``hdsu``). Every baseline is
a few lines over the shared pure losses in :mod:`hdsu_ray.core.losses`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

from hdsu_ray.config.fields import build, opt
from hdsu_ray.errors import WorkflowError
from hdsu_ray.methods.view import StepView


@dataclass(frozen=True)
class MethodParams:
    """Settings every method has; ``None`` means "use the unlearn section's value"."""

    name: str = opt(help="method name from the registry")
    label: str | None = opt(None, help="name in reports (default: the method name)")
    lr: float | None = opt(None, gt=0.0, help="learning rate")
    steps: int | None = opt(None, ge=1, help="optimizer steps")
    retain_weight: float | None = opt(None, ge=0.0, help="weight of the retain NLL term")
    param_budget: float | None = opt(None, gt=0.0, le=1.0, help="fraction of parameters it may change")
    budget: Literal["fisher", "lora", "full"] | None = opt(None, help="how the budget is chosen")
    budget_exclude: list[str] | None = opt(None, help="parameters (name substrings) this method's budget "
                                                     "never selects (default: unlearn.budget_exclude)")
    row_cap: int | None = opt(None, ge=0, help="selected entries per matrix row at most, 0: no cap "
                                               "(default: unlearn.row_cap)")

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Method:
    params: type
    losses: Callable[[Any, StepView, float], dict]
    needs_reference: bool = False   # precomputed reference log-probs of the forget set
    needs_anchor: bool = False      # precomputed reference top-k distributions (KL anchor)
    projects: bool = False          # forget gradient projected off the retain subspace
    needs_options: bool | Callable[[Any], bool] = False  # answer options of forget questions in the batch
    help: str = ""


METHODS: dict[str, Method] = {}


def register(name: str, params: type = MethodParams, **flags) -> Callable:
    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(params=params, losses=fn, help=(fn.__doc__ or "").strip(), **flags)
        return fn
    return wrap


def wants_options(params) -> bool:
    """Does this method's loss read the answer options of forget questions?"""
    flag = METHODS[params.name].needs_options
    return flag(params) if callable(flag) else bool(flag)


def parse_method(spec: dict, key: str, file: str | None):
    """Validate one ``unlearn.methods[i]`` entry into its params dataclass."""
    name = spec.get("name") if isinstance(spec, dict) else None
    if name not in METHODS:
        raise WorkflowError(f"unknown method {name!r}", file=file, key=f"{key}.name",
                            expected=f"one of {', '.join(sorted(METHODS))}")
    return build(METHODS[name].params, spec, key=key, file=file)


def validate_method_specs(unlearn_cfg, file: str | None) -> None:
    if not unlearn_cfg.methods:
        raise WorkflowError("empty list", file=file, key="unlearn.methods", expected="at least one method")
    labels = set()
    for i, spec in enumerate(unlearn_cfg.methods):
        params = parse_method(spec, f"unlearn.methods[{i}]", file)
        if params.display in labels:
            raise WorkflowError(f"two methods are called {params.display!r}", file=file,
                                key=f"unlearn.methods[{i}].label", expected="a distinct label")
        labels.add(params.display)


def resolved(params, unlearn_cfg) -> dict[str, Any]:
    """Plain settings for one method run: the method's values, else the section's."""
    out = dataclasses.asdict(params)
    for key in ("lr", "steps", "retain_weight", "param_budget", "budget", "budget_exclude", "row_cap"):
        if out[key] is None:
            out[key] = getattr(unlearn_cfg, key)
    out["label"] = params.display
    return out


from hdsu_ray.methods import baselines, dual  # noqa: E402,F401  (fill the registry)
