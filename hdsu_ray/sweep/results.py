"""Turn a finished Tune ``ResultGrid`` into ``sweep.json``: trials, Pareto front, best configuration."""

from __future__ import annotations

from typing import Any

from hdsu_ray.config.fields import to_dict
from hdsu_ray.eval.directions import pareto_front
from hdsu_ray.eval.selection import hmean
from hdsu_ray.sweep.space import trial_spec


def _selection(trial: dict) -> float:
    """The trial's selection objective (the evaluate.select rule on forget + retain_val); the
    harmonic mean of its objectives for a trial that reported none."""
    value = trial.get("selection")
    return value if isinstance(value, (int, float)) else hmean(trial["forget_rate"], trial["knowledge_preservation"])


def collect(grid, workflow, before: dict, counts: dict, wall: float) -> dict[str, Any]:
    sw = workflow.sweep
    trials = []
    for res in grid:
        m = res.metrics or {}
        sampled = {k: v for k, v in (res.config or {}).items() if k != "context"}
        status = "ERROR" if res.error else ("COMPLETE" if m.get("done") else "STOPPED")
        trials.append({"trial_id": m.get("trial_id") or res.path.rsplit("/", 1)[-1], "params": sampled,
                       "status": status, "forget_rate": m.get("forget_rate"),
                       "knowledge_preservation": m.get("knowledge_preservation"),
                       "after_forget_accuracy": m.get("after_forget_accuracy"),
                       "after_retain_val_accuracy": m.get("after_retain_val_accuracy"),
                       "selection": m.get("selection"),
                       "objective": m.get("objective"), "curve": m.get("curve") or [],
                       "iterations": m.get("training_iteration"),
                       "started_at": m.get("started_at"), "ended_at": m.get("ended_at"),
                       "computations": m.get("trial_computations") or {}})
    done = [t for t in trials if t["status"] == "COMPLETE"]
    objectives = list(sw.objectives)
    front = pareto_front([(t["trial_id"], {k: t[k] for k in objectives}) for t in done], objectives)
    best = max((t for t in done if t["trial_id"] in front), key=_selection, default=None)
    best_out = None
    if best is not None:
        spec, rank = trial_spec(dict(sw.method), dict(workflow.concepts.weights) if workflow.concepts else None,
                                best["params"])
        best_out = {"trial_id": best["trial_id"], "params": best["params"], "method_spec": spec,
                    "projection_rank": rank, "forget_rate": best["forget_rate"],
                    "knowledge_preservation": best["knowledge_preservation"],
                    "selection": best.get("selection"),
                    "rule": f"the highest selection objective ({workflow.evaluate.select} of forget rate and "
                            "preservation on retain_val), a point of the Pareto front"}
    return {"workflow": workflow.name, "objectives": list(sw.objectives), "searcher": sw.searcher,
            "scheduler": sw.scheduler, "num_trials": len(trials), "completed": len(done),
            "wall_time_s": round(wall, 1), "cache": sw.cache,
            # Driver-side computes plus any a trial did itself (only with cache: per_trial or none).
            **{f"{name}_computations": counts.get(kind, 0) + sum(t["computations"].get(kind, 0) for t in trials)
               for name, kind in (("basis", "basis"), ("mask", "masks"), ("learn", "learn"),
                                  ("annotate", "annotate"))},
            "before": {f"{k}_accuracy": float(before[k].mean()) for k in ("forget", "retain_val", "retain", "holdout")
                       if k in before},
            "trials": trials, "pareto": front, "best": best_out, "config": to_dict(workflow)}
