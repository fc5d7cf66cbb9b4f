"""Human-facing report of a finished sweep, built from ``sweep.json`` alone.

:func:`write_report` writes into the sweep directory ``report.md``, ``report.html`` (one
self-contained file: inline CSS, images as base64 data URIs, no scripts, no network),
``pareto.png``, ``curves.png``, ``importance.png`` and ``best.yaml`` (the best trial as a ready
workflow). Every file goes to a temporary name first and is renamed into place. ``hdsu-ray report
DIR`` calls :func:`rebuild`.

The paper's reported point (forget rate 0.827, knowledge preservation 0.885) is drawn as a labelled
reference marker only; it is never presented as a result of the sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hdsu_ray.report.common import fmt
from hdsu_ray.report.document import Doc
from hdsu_ray.report.reference import PAPER_NOTE
from hdsu_ray.report.sweep_analysis import (OBJECTIVES, best_workflow, best_yaml_text, completed, front_ids,
                                            importances, param_names)
from hdsu_ray.report.sweep_figures import curves_png, importance_png, pareto_png
from hdsu_ray.store import write_bytes_atomic, write_text_atomic


def _front_cell(t: dict, front: list[str], best_id: Any) -> str:
    tid = str(t["trial_id"])
    if t not in completed([t]):
        return "—"
    if tid not in front:
        return "no"
    return "yes (best)" if best_id is not None and tid == str(best_id) else "yes"


def build_doc(summary: dict, front: list[str], imp: dict, best_text: str | None) -> Doc:
    trials = summary.get("trials") or []
    best = summary.get("best")
    name = summary.get("workflow") or "sweep"
    doc = Doc()
    doc.h(1, f"Sweep report: {name}")
    before = summary.get("before") or {}
    doc.ul([f"searcher {summary.get('searcher')}, scheduler {summary.get('scheduler')}, objectives "
            f"{', '.join(summary.get('objectives') or OBJECTIVES)} (both maximised)",
            f"trials: {summary.get('completed', len(completed(trials)))} completed of "
            f"{summary.get('num_trials', len(trials))}; wall time {fmt(summary.get('wall_time_s'))} s",
            f"cache: {summary.get('cache', 'shared')}; basis computed {summary.get('basis_computations')}x, "
            f"masks {summary.get('mask_computations')}x",
            "before unlearning: " + (", ".join(f"{k} accuracy {fmt(v)}" for k, v in before.items()) or "—")])
    doc.h(2, "Best trial")
    if best:
        doc.p(f"Trial {best['trial_id']}: forget rate {fmt(best.get('forget_rate'))}, knowledge preservation "
              f"{fmt(best.get('knowledge_preservation'))}. Rule: {best.get('rule', '—')}.")
        doc.table(["parameter", "value"], [[k, fmt(v)] for k, v in (best.get("params") or {}).items()])
        if str(best["trial_id"]) not in front:
            doc.p("Note: this trial is not on the Pareto front recomputed from the trial numbers below.")
        if best_text:
            doc.p("Run it again as a plain workflow: hdsu-ray run best.yaml (file written beside this report):")
            doc.pre(best_text)
    else:
        doc.p("No best trial: no trial completed with both objectives. best.yaml was not written.")
    doc.h(2, "Pareto front")
    doc.p("Each point is a completed trial. The red line joins the trials no other trial beats on both "
          "objectives (Pareto front); the star is the best trial. " + PAPER_NOTE)
    stored = [str(x) for x in summary.get("pareto") or []]
    if sorted(stored) != sorted(front):
        doc.p(f"Note: sweep.json lists the front {stored}; recomputed from the trial numbers it is {front} "
              "(the table below uses the recomputed front).")
    doc.img("pareto.png", "forget rate vs knowledge preservation, Pareto front highlighted")
    doc.h(2, "Parameter importance")
    if imp["status"] == "ok":
        doc.p("fANOVA importance (Optuna, seed 0) of each sampled parameter for each objective, over the "
              f"{len(completed(trials))} completed trials; each column sums to 1. With few trials these are "
              "rough indications, not measurements.")
        params = sorted({p for v in imp["objectives"].values() if isinstance(v, dict) for p in v},
                        key=lambda p: -sum(v.get(p, 0.0) for v in imp["objectives"].values() if isinstance(v, dict)))
        cols = list(imp["objectives"])
        rows = [[p] + [fmt(imp["objectives"][o].get(p)) if isinstance(imp["objectives"][o], dict) else "n/a"
                       for o in cols] for p in params]
        doc.table(["parameter"] + [f"importance for {o}" for o in cols], rows)
        for o in cols:
            if not isinstance(imp["objectives"][o], dict):
                doc.p(f"{o}: {imp['objectives'][o]}")
        doc.img("importance.png", "parameter importance per objective")
    else:
        doc.p(f"Parameter importance: {imp['reason']}.")
    doc.h(2, "Trials")
    names = param_names(summary)
    best_id = best["trial_id"] if best else None
    rows = [[str(t["trial_id"]), str(t.get("status"))] + [fmt((t.get("params") or {}).get(n)) for n in names]
            + [fmt(t.get("forget_rate")), fmt(t.get("knowledge_preservation")), _front_cell(t, front, best_id)]
            for t in trials]
    doc.table(["trial", "status"] + names + ["forget_rate", "knowledge_preservation", "on Pareto front"], rows)
    doc.h(2, "Learning curves")
    doc.p("Forget loss per unlearning step for each trial (dotted: trial did not complete); right panel, when "
          "in-loop evaluation was on: accuracy on a small forget sample (should fall) and retain sample "
          "(should stay).")
    doc.img("curves.png", "per-trial learning curves")
    return doc


# --------------------------------------------------------------------------- entry points

def write_report(sweep_dir: Path) -> dict[str, Path]:
    """Read ``sweep_dir/sweep.json`` and write the report files into ``sweep_dir``.

    Returns file name -> path for every file written (``best.yaml`` only when there is a best trial).
    """
    sweep_dir = Path(sweep_dir)
    summary = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    front = front_ids(summary.get("trials") or [])
    imp = importances(summary)
    images = {"pareto.png": pareto_png(summary, front), "curves.png": curves_png(summary),
              "importance.png": importance_png(imp)}
    wf = best_workflow(summary)
    best_text = best_yaml_text(summary, wf) if wf is not None else None
    doc = build_doc(summary, front, imp, best_text)
    paths = {}
    for name, data in images.items():
        paths[name] = write_bytes_atomic(sweep_dir / name, data)
    if best_text is not None:
        paths["best.yaml"] = write_text_atomic(sweep_dir / "best.yaml", best_text)
    else:  # a best.yaml from an earlier report of this directory would no longer be true
        (sweep_dir / "best.yaml").unlink(missing_ok=True)
    paths["report.md"] = write_text_atomic(sweep_dir / "report.md", doc.markdown())
    paths["report.html"] = write_text_atomic(sweep_dir / "report.html",
                                             doc.html(f"Sweep report: {summary.get('workflow', '')}", images))
    return paths


def rebuild(sweep_dir: Path) -> dict[str, Path]:
    """``hdsu-ray report DIR``: regenerate every report file of a sweep directory from its sweep.json."""
    return write_report(Path(sweep_dir))
