"""The method registry: names, params dataclasses and flags, importable without torch.

A method is registered with its params dataclass, its flags and the dotted path of its loss
function (``"hdsu_ray.methods.baselines:npo"``). Validating a workflow only parses specs into
params, so it never imports torch; the loss module is imported when a worker first reads
:attr:`Method.losses`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal

from hdsu_ray.config.fields import build, opt
from hdsu_ray.errors import WorkflowError

# Settings a method may override; None in its params means "the unlearn section's value".
SECTION_KEYS = ("lr", "steps", "retain_weight", "param_budget", "budget", "budget_exclude", "row_cap")


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
    ablation_of: str | None = opt(None, help="label of the method this run ablates: reports pair it "
                                             "against that method (compare writes it into frozen.yaml)")

    @property
    def display(self) -> str:
        return self.label or self.name


@lru_cache(maxsize=None)
def _import_losses(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        params: its params dataclass (a subclass of :class:`MethodParams`).
        losses_ref: ``"module:function"`` of ``losses(params, view, retain_weight) -> {term: loss}``.
        needs_reference: precomputed reference log-probs of the forget set.
        needs_anchor: precomputed reference top-k distributions (KL anchor).
        projects: the forget gradient is projected off the retain subspace.
        needs_options: answer options of forget questions in the batch (or a test on the params).
        help: one line for ``hdsu-ray plan`` and error messages.
    """

    params: type
    losses_ref: str
    needs_reference: bool = False
    needs_anchor: bool = False
    projects: bool = False
    needs_options: bool | Callable[[Any], bool] = False
    help: str = ""

    @property
    def losses(self) -> Callable[[Any, Any, float], dict]:
        """The loss function; the first access imports its module (and with it torch)."""
        return _import_losses(self.losses_ref)


METHODS: dict[str, Method] = {}


def register(name: str, params: type = MethodParams, *, losses: str, help: str, **flags) -> Method:
    """Add a method to :data:`METHODS`; ``losses`` is the loss function's ``"module:function"``."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")  # a bug in the registry, not input
    if not (isinstance(params, type) and issubclass(params, MethodParams)):
        raise TypeError(f"params of {name!r} must subclass MethodParams")
    METHODS[name] = Method(params=params, losses_ref=losses, help=help, **flags)
    return METHODS[name]


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
    """Every ``unlearn.methods`` entry parses, and no two share a label (reports key on it)."""
    if not unlearn_cfg.methods:
        raise WorkflowError("empty list", file=file, key="unlearn.methods", expected="at least one method")
    parsed = [parse_method(spec, f"unlearn.methods[{i}]", file) for i, spec in enumerate(unlearn_cfg.methods)]
    labels = set()
    for i, params in enumerate(parsed):
        if params.display in labels:
            raise WorkflowError(f"two methods are called {params.display!r}", file=file,
                                key=f"unlearn.methods[{i}].label", expected="a distinct label")
        labels.add(params.display)
    for i, params in enumerate(parsed):
        if params.ablation_of is not None and params.ablation_of not in labels - {params.display}:
            raise WorkflowError(f"{params.ablation_of!r} is not another method of the list", file=file,
                                key=f"unlearn.methods[{i}].ablation_of",
                                expected=f"one of {', '.join(sorted(labels - {params.display}))}")


def resolved(params, unlearn_cfg) -> dict[str, Any]:
    """Plain settings for one method run: the method's values, else the section's."""
    out = dataclasses.asdict(params)
    for key in SECTION_KEYS:
        if out[key] is None:
            out[key] = getattr(unlearn_cfg, key)
    out["label"] = params.display
    return out
