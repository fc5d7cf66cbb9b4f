"""What a sweep report says, computed from ``sweep.json`` alone: completed trials, the Pareto front
recomputed from their numbers, fANOVA parameter importance, and the best trial as a workflow."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import yaml

from hdsu_ray.eval.directions import pareto_front
from hdsu_ray.report.common import fmt, is_number

NOT_ENOUGH = "not enough trials"
OBJECTIVES = ("forget_rate", "knowledge_preservation")


def completed(trials: list[dict]) -> list[dict]:
    """COMPLETE trials with both objectives as finite numbers."""
    return [t for t in trials if t.get("status") == "COMPLETE"
            and is_number(t.get("forget_rate")) and is_number(t.get("knowledge_preservation"))]


def front_ids(trials: list[dict], objectives: tuple[str, ...] = OBJECTIVES) -> list[str]:
    """Pareto front of the completed trials over ``objectives`` (each read in its own direction),
    recomputed from the numbers."""
    return pareto_front([(str(t["trial_id"]), {k: t[k] for k in objectives}) for t in completed(trials)],
                        list(objectives))


def param_names(summary: dict) -> list[str]:
    """Sampled parameter names: the search-space order first, then any other key a trial has."""
    space = (((summary.get("config") or {}).get("sweep") or {}).get("space") or {})
    names = list(space)
    for t in summary.get("trials", []):
        names += [k for k in (t.get("params") or {}) if k not in names]
    return names


def _distributions(summary: dict, trials: list[dict]) -> dict[str, Any]:
    """Optuna distributions from ``config.sweep.space``; keys outside it inferred from the values.
    Ranges widen to hold every observed value (a resumed sweep whose space changed)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = (((summary.get("config") or {}).get("sweep") or {}).get("space") or {})
    out = {}
    for name in param_names(summary):
        seen = [t["params"][name] for t in trials if name in (t.get("params") or {})]
        if not seen:
            continue
        dim = space.get(name) or {}
        kind = dim.get("type") or ("float" if all(is_number(v) for v in seen) else "choice")
        if kind == "choice":
            values = list(dim.get("values") or [])
            values += [v for v in seen if v not in values]
            out[name] = CategoricalDistribution(values)
            continue
        low = min([v for v in (dim.get("low"),) if v is not None] + seen)
        high = max([v for v in (dim.get("high"),) if v is not None] + seen)
        log = bool(dim.get("log")) and low > 0
        if kind == "int":
            out[name] = IntDistribution(int(math.floor(low)), int(math.ceil(high)), log=log)
        else:
            out[name] = FloatDistribution(float(low), float(high), log=log)
    return out


def importances(summary: dict) -> dict[str, Any]:
    """Parameter importance per objective (fANOVA, seed 0) on an in-memory Optuna study rebuilt
    from the completed trials.

    Returns ``{"status": "ok" | "not enough trials", "reason": str, "objectives": {objective:
    {param: importance} | reason string}}``.
    """
    done = completed(summary.get("trials") or [])
    if len(done) < 2:
        return {"status": NOT_ENOUGH, "reason": f"{NOT_ENOUGH}: {len(done)} completed (need 2)",
                "objectives": {}}
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        return {"status": NOT_ENOUGH, "reason": f"{NOT_ENOUGH} (optuna unavailable: {exc})", "objectives": {}}
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dists = _distributions(summary, done)
            study = optuna.create_study(directions=["maximize", "maximize"])
            for t in done:
                params = {k: v for k, v in t["params"].items() if k in dists}
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions={k: dists[k] for k in params},
                    values=[float(t["forget_rate"]), float(t["knowledge_preservation"])]))
            for i, objective in enumerate(OBJECTIVES):
                try:
                    imp = optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                        target=lambda tr, i=i: tr.values[i])
                    per[objective] = {k: float(v) for k, v in imp.items()}
                except Exception as exc:  # e.g. zero variance of this objective
                    per[objective] = f"{NOT_ENOUGH} ({type(exc).__name__}: {exc})"
    except Exception as exc:
        return {"status": NOT_ENOUGH, "reason": f"{NOT_ENOUGH} (optuna failed: {type(exc).__name__}: {exc})",
                "objectives": {}}
    finally:
        optuna.logging.set_verbosity(level)
    if not any(isinstance(v, dict) and v for v in per.values()):
        return {"status": NOT_ENOUGH, "reason": "; ".join(f"{k}: {v}" for k, v in per.items()) or NOT_ENOUGH,
                "objectives": per}
    return {"status": "ok", "reason": "", "objectives": per}


def _int_keys(node: Any) -> Any:
    """JSON turned the integer level keys of weight tables into strings; turn them back."""
    if isinstance(node, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_int_keys(v) for v in node]
    return node


def best_workflow(summary: dict) -> dict | None:
    """The sweep's config as a plain workflow: no ``sweep``, the best trial as the one method
    (label ``best``), its projection rank, and results under ``<output_dir>/best``."""
    best = summary.get("best")
    config = summary.get("config")
    if not best or not isinstance(config, dict):
        return None
    wf = copy.deepcopy(config)
    wf.pop("sweep", None)
    spec = _int_keys(copy.deepcopy(best.get("method_spec") or {}))
    spec["label"] = "best"
    unlearn = wf.setdefault("unlearn", {})
    unlearn["methods"] = [spec]
    if best.get("projection_rank") is not None:
        unlearn.setdefault("projection", {})["rank"] = int(best["projection_rank"])
    if isinstance(wf.get("concepts"), dict):
        wf["concepts"] = _int_keys(wf["concepts"])
    if isinstance(wf.get("output_dir"), str):
        wf["output_dir"] = wf["output_dir"].rstrip("/") + "/best"
    return wf


def best_yaml_text(summary: dict, wf: dict) -> str:
    best = summary["best"]
    head = (f"# Launch: hdsu-ray run best.yaml (best trial {best['trial_id']} of sweep "
            f"{summary.get('workflow') or wf.get('name')})\n"
            f"# forget_rate {fmt(best.get('forget_rate'))}, knowledge_preservation "
            f"{fmt(best.get('knowledge_preservation'))}; chosen as: {best.get('rule', 'best trial')}.\n"
            "# The sweep config with `sweep` removed, the trial's method spec and projection rank; "
            "results go to <output_dir>/best.\n")
    return head + yaml.safe_dump(wf, sort_keys=False, default_flow_style=False, allow_unicode=True)
