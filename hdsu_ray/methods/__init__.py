"""Unlearning methods, chosen by short name in YAML (``{name: npo, beta: 0.1}``).

Each method is a params dataclass plus a ``losses(params, view, retain_weight)`` function that
returns named loss terms over a :class:`~hdsu_ray.methods.view.StepView`. The loop adds them up,
except that the ``forget`` term's gradient is kept apart when the method asks for the
retain-subspace projection (``hdsu``). Every baseline is a few lines over the shared pure losses in
:mod:`hdsu_ray.core.losses`.

Layout: :mod:`~hdsu_ray.methods.registry` (the registry and spec parsing) and
:mod:`~hdsu_ray.methods.params` (every method's params and flags) import no torch, so validating a
workflow stays fast; :mod:`~hdsu_ray.methods.baselines` and :mod:`~hdsu_ray.methods.dual` (the loss
functions) and :mod:`~hdsu_ray.methods.view` import torch and load on first use of ``.losses``.
"""

from hdsu_ray.methods import params  # noqa: F401  (fills the registry)
from hdsu_ray.methods.registry import (METHODS, Method, MethodParams, parse_method, register, resolved,
                                       validate_method_specs, wants_options)

__all__ = ["METHODS", "Method", "MethodParams", "parse_method", "register", "resolved",
           "validate_method_specs", "wants_options"]
