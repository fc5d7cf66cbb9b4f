"""A metric that could not be computed, its JSON form, and the input checks every metric shares.

Its own module so that metrics, intervals and directions can all import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Absent:
    """A metric that could not be computed, and why. It is not a number: ``float()`` and
    arithmetic on it raise ``TypeError``, so a missing value cannot slip into a mean."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"value": None, "absent": self.reason}


def is_absent(x: Any) -> bool:
    return isinstance(x, Absent)


def to_json(x: Any) -> Any:
    """Recursively turn a metric result into JSON-ready values: :class:`Absent` -> its
    ``to_json()``, numpy scalars -> Python numbers, tuples -> lists, dict keys -> ``str``."""
    if isinstance(x, Absent):
        return x.to_json()
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return [to_json(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return x.item()
    return x


def bool_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        a = a.astype(bool)
    return a


def share_array(x: Any, name: str) -> np.ndarray:
    """``[N]`` per-item correctness: booleans, or shares in [0, 1] (an item's mean over seeds)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.float64)
    a = a.astype(np.float64)
    if a.size and not ((a >= 0) & (a <= 1)).all():
        raise ValueError(f"{name} must hold booleans or shares in [0, 1]")
    return a


def score_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a
