"""Checks of forgetting that no forget loss can target directly (pure numpy/scipy).

* Truth ratio (TOFU, open-unlearning): per question, the geometric mean probability of the wrong
  options over the probability of the right one, from the evaluation's option scores (mean
  answer-token log-likelihoods, so ``exp(mean(wrong) - right)``). Below 1: the right answer is
  still preferred; about 1: no preference; above 1: steered away from it.
* Forget quality: the KS-test p-value between the unlearned model's truth ratios on the forget set
  and those of a model retrained without it. High: the forget set now looks as it would had the
  model never seen it.
* Over-forgetting: forget accuracy clearly below what a model that never saw the rows scores (the
  retrain oracle's forget accuracy, else the learned model's accuracy on held-out questions of the
  same domain) tells an attacker which rows were removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hdsu_ray.eval.absent import Absent


def truth_ratios(scores: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """``[N]`` truth ratio of each question from ``scores [N, K]`` (-inf marks a missing option)."""
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(answers)
    n = len(answers)
    right = scores[np.arange(n), answers]
    wrong = scores.copy()
    wrong[np.arange(n), answers] = -np.inf
    valid = np.isfinite(wrong)
    mean_wrong = np.where(valid, wrong, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return np.exp(mean_wrong - right)


def mean_truth_ratio(scores: np.ndarray, answers: np.ndarray) -> float | Absent:
    if len(answers) == 0:
        return Absent("no forget items")
    return float(np.mean(truth_ratios(scores, answers)))


def forget_quality(ratios: np.ndarray, oracle_ratios: np.ndarray | None) -> float | Absent:
    """KS two-sample p-value of the two truth-ratio samples (scipy ``ks_2samp``)."""
    if oracle_ratios is None:
        return Absent("no retrain oracle (set evaluate.retrain: true)")
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(ratios), np.asarray(oracle_ratios)).pvalue)


def over_forgetting(after_forget: np.ndarray, reference: float | None, source: str) -> dict[str, Any]:
    """``{"flag", "forget_accuracy_high", "reference", "source"}``: flagged when the upper end of
    the forget accuracy's 95 % interval lies below ``reference``."""
    from hdsu_ray.eval.intervals import accuracy_ci

    if reference is None:
        return {"flag": None, "reference": None, "source": source}
    ci = accuracy_ci(np.asarray(after_forget, dtype=bool))
    high = ci["high"] if isinstance(ci, dict) else None
    return {"flag": bool(high is not None and high < reference), "forget_accuracy_high": high,
            "reference": float(reference), "source": source}
