"""Token weights from concept labels and levels (paper 1.2, step 1.4): the one weight table.

The annotate stage weights each token with :func:`weight_table` (through
:func:`hdsu_ray.core.concepts.label_tokens`); a run whose method overrides the weights (a sweep
trial) recomputes them from the stored labels and levels with :func:`reweight`. Both read the same
table, so a stored annotation and a reweighted one can never disagree. The default weights are
config's (:func:`hdsu_ray.config.schema.default_concept_weights`): a label left out of a weights
mapping keeps its default there, whoever builds the table.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from hdsu_ray.config.schema import DEFAULT_PRESERVE_LEVELS, concept_weights
from hdsu_ray.core.concepts import LABEL_NEUTRAL, LABEL_PRESERVE, LABEL_TARGETED
from hdsu_ray.errors import WorkflowError

LABELS = {"targeted": LABEL_TARGETED, "preserve": LABEL_PRESERVE, "neutral": LABEL_NEUTRAL}
LEVELS = (1, 2, 3, 4)  # hierarchy levels, 1 foundational .. 4 specific; 0 is "no level"


def check_weight(value: Any, key: str) -> float:
    """``value`` as a token weight (a number >= 0), else a :class:`WorkflowError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise WorkflowError(f"bad weight {value!r}", key=key, expected="a number >= 0")
    return float(value)


def check_level(level: Any, key: str) -> int:
    """A hierarchy level written as a YAML key (``3`` or ``"3"``), else a :class:`WorkflowError`."""
    if str(level) not in {str(lv) for lv in LEVELS}:
        raise WorkflowError(f"unknown level {level!r}", key=key, expected="levels 1-4")
    return int(level)


def _per_level(value: Any, key: str) -> dict[int, float]:
    # A label's weight is one number for every level, or {level: weight}.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {lv: check_weight(value, key) for lv in LEVELS}
    if not isinstance(value, Mapping):
        raise WorkflowError("must be a number or {level: weight}", key=key)
    return {check_level(lv, key): check_weight(w, f"{key}.{lv}") for lv, w in value.items()}


def weight_table(weights: Mapping[str, Any], preserve_levels: Iterable[int],
                 key: str = "concepts.weights") -> dict[tuple[int, int], float]:
    """The complete ``(label, level) -> weight`` table, every label 0-2 at every level 0-4.

    Args:
        weights: ``{"targeted": {level: w} | w, "preserve": {level: w} | w, "neutral": w}``; a
            label left out keeps config's default, a label given is replaced whole.
        preserve_levels: levels whose concepts are preservation-critical; one not in
            ``weights["preserve"]`` weighs 0 (those tokens feed the KL anchor instead).
        key: the key path of ``weights`` in the workflow, named in errors.

    A targeted concept with no level (0) and a targeted level not given take the largest targeted
    weight; any other pair not given takes the neutral weight. These are the fallbacks
    :func:`~hdsu_ray.core.concepts.label_tokens` applies, written out, so :func:`reweight` needs none.

    Raises:
        WorkflowError: an unknown label or level, or a weight that is not >= 0.
    """
    if not isinstance(weights, Mapping):
        raise WorkflowError("weights must be a mapping", key=key, expected="targeted, preserve, neutral")
    unknown = sorted(map(str, set(weights) - set(LABELS)))
    if unknown:
        raise WorkflowError(f"unknown keys {unknown}", key=key, expected="targeted, preserve, neutral")
    weights = concept_weights(dict(weights))
    neutral = check_weight(weights["neutral"], f"{key}.neutral")
    table = {(label, lv): neutral for label in LABELS.values() for lv in (0, *LEVELS)}
    targeted = _per_level(weights["targeted"], f"{key}.targeted")
    top = max(targeted.values(), default=1.0)
    table.update({(LABEL_TARGETED, lv): targeted.get(lv, top) for lv in (0, *LEVELS)})
    preserve = {lv: 0.0 for lv in preserve_levels}
    preserve.update(_per_level(weights["preserve"], f"{key}.preserve"))
    table.update({(LABEL_PRESERVE, lv): w for lv, w in preserve.items()})
    return table


def reweight(token_label: np.ndarray, token_level: np.ndarray,
             table: Mapping[tuple[int, int], float]) -> np.ndarray:
    """Token weights ``[...]`` float32 looked up by ``(token_label, token_level)`` in ``table``.

    Args:
        token_label: int labels 0 neutral, 1 preserve, 2 targeted, any shape (e.g. ``[N, L-1]``).
        token_level: int levels 0-4, the same shape.
        table: a complete table from :func:`weight_table`.
    """
    lut = np.zeros((len(LABELS), len(LEVELS) + 1), np.float32)
    for (label, level), w in table.items():
        lut[label, level] = w
    # Positions without a label token (padding, prompt) get a weight too; the loss masks them out.
    return lut[np.asarray(token_label), np.asarray(token_level)]


def reweight_arrays(arrays: Mapping[str, np.ndarray], weights: Mapping[str, Any],
                    preserve_levels: Iterable[int] = DEFAULT_PRESERVE_LEVELS) -> np.ndarray:
    """``token_weight [N, L-1]`` recomputed from an annotation's stored ``token_label`` and
    ``token_level`` under other ``weights`` (a method's or sweep trial's override)."""
    table = weight_table(weights, preserve_levels, key="weights")
    return reweight(arrays["token_label"], arrays["token_level"], table)
