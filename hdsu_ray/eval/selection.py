"""The selection rule: one number that ranks checkpoints within a run and trials within a sweep.

Every method of a comparison is selected by the same rule on the same data (forget set and the
retain validation rows), so no method gets a kinder judge than another.
"""

from __future__ import annotations


def hmean(a: float, b: float) -> float:
    """Harmonic mean of two non-negative numbers (0 when both are 0): high only when both are."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def objective(rule: str, forget_rate: float, preservation: float) -> float:
    """``hmean`` of forget rate and knowledge preservation, else their sum (``sum``; ``last`` logs
    the sum too, and keeps the last checkpoint)."""
    if rule == "hmean":
        return hmean(forget_rate, preservation)
    return forget_rate + preservation


def evaluation_steps(steps: int, candidates: int) -> set[int]:
    """The 1-based steps after which a run of ``steps`` steps is scored: ``candidates`` evenly
    spaced ones ending at the last step (fewer only when the run is shorter than that)."""
    return {max(1, round(steps * i / candidates)) for i in range(1, candidates + 1)}


def candidates(steps: int, every: int, rule: str, fixed: int = 0) -> int:
    """Checkpoints a run's selection rule chooses among: one per in-loop evaluation (the last step
    always is one; ``fixed`` evenly spaced ones with ``evaluate.candidates``), or 1 when the last
    checkpoint is kept."""
    if rule == "last" or not (every or fixed):
        return 1
    if fixed:
        return len(evaluation_steps(steps, fixed))
    return steps // every + (1 if steps % every else 0)
