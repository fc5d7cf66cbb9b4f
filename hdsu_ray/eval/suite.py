"""Every metric of one unlearned model, from the evaluate stage's per-item values.

A metric that cannot be computed is an :class:`Absent` with its reason, never a placeholder number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hdsu_ray.eval.directions import check
from hdsu_ray.eval.forgetting import forget_quality, over_forgetting, truth_ratios
from hdsu_ray.eval.metrics import (Absent, accuracy, forget_rate, knowledge_preservation, mia_auc, mia_resistance,
                                   per_level_preservation, privleak)

ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


def dominant_levels(token_label: np.ndarray, token_level: np.ndarray) -> np.ndarray:
    """``[N]`` the most frequent hierarchy level among each item's concept tokens (0: none)."""
    out = np.zeros(len(token_level), dtype=np.int64)
    for i, (labels, levels) in enumerate(zip(token_label, token_level)):
        lv = levels[(labels > 0) & (levels > 0)]
        if len(lv):
            out[i] = np.bincount(lv.astype(np.int64), minlength=5).argmax()
    return out


def attack_aucs(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """MIA AUC per attack: forget answers (members) against holdout answers (non-members)."""
    if "forget" not in stats or "holdout" not in stats:
        return {a: Absent("no holdout set (set data.holdout_fraction > 0)") for a in ATTACKS}
    out = {}
    for attack in ATTACKS:
        f, h = stats["forget"], stats["holdout"]
        keep_f, keep_h = f["n_tokens"] > 0, h["n_tokens"] > 0
        out[attack] = mia_auc(f[attack][keep_f], h[attack][keep_h])
    return out


def headline_metrics(before: dict, after: dict, retain: str = "retain") -> dict[str, Any]:
    """Accuracies, forget rate and knowledge preservation: what every run reports, sweeps included.
    ``retain``: the retain set they are measured on (``retain_val`` in a sweep trial, which must
    not see the reported ``retain`` rows)."""
    return {"forget_accuracy": accuracy(after["forget"]), "retain_accuracy": accuracy(after[retain]),
            "forget_rate": forget_rate(after["forget"]),
            "knowledge_preservation": knowledge_preservation(before[retain], after[retain])}


def probe_metrics(before: dict, after: dict, oracle: dict | None) -> dict[str, Any]:
    """Forgetting checked where the forget loss cannot reach it: shuffled options, fresh
    distractors, the gold answer's likelihood (members against held-out non-members), memorisation
    before and after, the truth ratio and forget quality, and over-forgetting against a model that
    never saw the rows (the retrain oracle, else held-out questions of the same domain)."""
    m: dict[str, Any] = {}
    for name, key in (("shuffled_forget_accuracy", "forget_shuffled"),
                      ("fresh_distractor_forget_accuracy", "forget_fresh")):
        m[name] = accuracy(after[key]) if key in after else Absent("probe not scored")
    for name, key in (("mmlu_medical_accuracy", "mmlu"), ("pubmedqa_accuracy", "pubmedqa")):
        m[name] = accuracy(after[key]) if key in after else Absent(f"no evaluate.{key}_path")
        if key in after and key in before:  # general competence kept, as preservation is for retain
            m[f"{name.removesuffix('_accuracy')}_preservation"] = knowledge_preservation(before[key], after[key])
    for which in ("forget", "holdout"):
        st = after.get("stats", {}).get(which)
        m[f"gold_nll_{which}"] = (float(np.mean(st["loss"][st["n_tokens"] > 0])) if st is not None
                                  else Absent(f"no {which} statistics"))
    bst = before.get("stats", {}).get("forget")
    for key in ("exact_memorization", "extraction_strength"):
        m[f"{key}_before"] = float(np.nanmean(bst[key])) if bst is not None else Absent("statistics not computed")
    sc = after.get("scores", {})
    ratios = truth_ratios(sc["forget"], sc["forget_answers"]) if "forget" in sc else None
    m["truth_ratio"] = float(np.mean(ratios)) if ratios is not None else Absent("option scores not kept")
    osc = (oracle or {}).get("scores", {})
    oracle_ratios = truth_ratios(osc["forget"], osc["forget_answers"]) if "forget" in osc else None
    m["forget_quality"] = (forget_quality(ratios, oracle_ratios) if ratios is not None
                           else Absent("option scores not kept"))
    if oracle is not None:
        reference, source = accuracy(oracle["forget"]), "retrain oracle's forget accuracy"
    elif "holdout" in before:
        reference, source = accuracy(before["holdout"]), "learned model's accuracy on held-out forget-domain rows"
    else:
        reference, source = None, "none (no retrain oracle, no holdout set)"
    m["reference_forget_accuracy"] = reference if reference is not None else Absent(source)
    m["over_forgetting"] = over_forgetting(after["forget"], reference, source)
    return m


def method_metrics(before: dict, after: dict, *, attack: str, retain_levels: np.ndarray | None,
                   retrain_aucs: dict[str, Any] | None, param_fraction: float,
                   oracle: dict | None = None) -> dict[str, Any]:
    aucs = attack_aucs(after.get("stats", {}))
    m: dict[str, Any] = {
        **headline_metrics(before, after),
        "retain_val_accuracy": accuracy(after["retain_val"]) if "retain_val" in after else Absent("not scored"),
        "holdout_accuracy": accuracy(after["holdout"]) if "holdout" in after else Absent("no holdout set"),
        "param_fraction": param_fraction,
    }
    for a in ATTACKS:
        m[f"mia_auc_{a}"] = aucs[a]
    m["mia_attack"] = attack
    m["mia_resistance"] = mia_resistance(aucs[attack])
    m["privleak"] = (privleak(aucs["min_k"], retrain_aucs["min_k"]) if retrain_aucs
                     else Absent("no retain-only reference model (set evaluate.retrain: true)"))
    fstats = after.get("stats", {}).get("forget")
    for key in ("exact_memorization", "extraction_strength"):
        m[key] = float(np.nanmean(fstats[key])) if fstats is not None else Absent("statistics not computed")
    ppl = after.get("perplexity")
    m["perplexity_pubmedqa"] = ppl if ppl is not None else Absent("no data.fluency_path")
    m["per_level_preservation"] = (per_level_preservation(before["retain"], after["retain"], retain_levels)
                                   if retain_levels is not None else Absent("no concept annotation"))
    m.update(probe_metrics(before, after, oracle))
    return m


def check_thresholds(metrics: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any]:
    """``{metric: {value, threshold, op, target, pass}}``, each metric read in its direction
    (:mod:`hdsu_ray.eval.directions`: target metrics as a distance to their target)."""
    return {name: check(name, metrics.get(name, Absent("not measured")), limit) for name, limit in thresholds.items()}
