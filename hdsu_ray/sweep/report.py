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

import base64
import copy
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from hdsu_ray.eval.comparison import (PAPER_LABEL, PAPER_NOTE, PAPER_POINT, figure_png, fmt, is_number,
                                      md_table, new_figure, write_bytes_atomic, write_text_atomic)
from hdsu_ray.sweep.results import pareto_front

NOT_ENOUGH = "not enough trials"
OBJECTIVES = ("forget_rate", "knowledge_preservation")


# --------------------------------------------------------------------------- analysis

def completed(trials: list[dict]) -> list[dict]:
    """COMPLETE trials with both objectives as finite numbers."""
    return [t for t in trials if t.get("status") == "COMPLETE"
            and is_number(t.get("forget_rate")) and is_number(t.get("knowledge_preservation"))]


def front_ids(trials: list[dict]) -> list[str]:
    """Pareto front (both objectives maximised) of the completed trials, recomputed from the numbers."""
    return pareto_front([(str(t["trial_id"]), t["forget_rate"], t["knowledge_preservation"])
                         for t in completed(trials)])


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


# --------------------------------------------------------------------------- figures

def pareto_png(summary: dict, front: list[str]) -> bytes:
    done = completed(summary.get("trials") or [])
    best = (summary.get("best") or {}).get("trial_id")
    fig = new_figure(7, 5.4)
    ax = fig.add_subplot(1, 1, 1)
    rest = [t for t in done if str(t["trial_id"]) not in front]
    on = sorted((t for t in done if str(t["trial_id"]) in front), key=lambda t: t["forget_rate"])
    if rest:
        ax.scatter([t["forget_rate"] for t in rest], [t["knowledge_preservation"] for t in rest], s=40,
                   color="#9aa4b1", label="trial (dominated)", zorder=2)
    if on:
        ax.plot([t["forget_rate"] for t in on], [t["knowledge_preservation"] for t in on], "-o", color="#c0392b",
                ms=7, lw=1.6, label="Pareto front", zorder=3)
        xs = [t["forget_rate"] for t in done]
        mid = (min(xs) + max(xs)) / 2
        for t in on:  # labels point inwards so the rightmost one is not clipped
            right = t["forget_rate"] > mid
            ax.annotate(str(t["trial_id"]), (t["forget_rate"], t["knowledge_preservation"]),
                        textcoords="offset points", xytext=(-6 if right else 6, 5), fontsize=8,
                        color="#c0392b", ha="right" if right else "left")
    bt = next((t for t in done if str(t["trial_id"]) == str(best)), None)
    if bt is not None:
        ax.scatter([bt["forget_rate"]], [bt["knowledge_preservation"]], marker="*", s=320, color="#f1c40f",
                   edgecolor="black", linewidth=0.8, zorder=5, label=f"best trial ({best})")
    ax.scatter([PAPER_POINT[0]], [PAPER_POINT[1]], marker="X", s=110, color="white", edgecolor="black",
               linewidth=1.2, zorder=4, label=f"{PAPER_LABEL} — reference, not ours")
    ax.annotate(PAPER_LABEL, PAPER_POINT, textcoords="offset points", xytext=(8, -14), fontsize=9,
                style="italic")
    if not done:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("forget rate  →  better")
    ax.set_ylabel("knowledge preservation  →  better")
    ax.set_title(f"Sweep {summary.get('workflow', '')}: {len(done)} completed trials", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=8, loc="best")
    return figure_png(fig)


def curves_png(summary: dict) -> bytes:
    trials = [t for t in summary.get("trials") or [] if t.get("curve")]
    has_eval = any("eval_forget_accuracy" in r or "eval_retain_accuracy" in r for t in trials for r in t["curve"])
    fig = new_figure(11 if has_eval else 7, 4.6)
    ax = fig.add_subplot(1, 2 if has_eval else 1, 1)
    ax2 = fig.add_subplot(1, 2, 2) if has_eval else None
    for i, t in enumerate(trials):
        color = f"C{i % 10}"
        label = str(t["trial_id"]) + ("" if t.get("status") == "COMPLETE" else f" ({t.get('status')})")
        style = "-" if t.get("status") == "COMPLETE" else ":"
        pts = [(r["step"], r["loss_forget"]) for r in t["curve"] if is_number(r.get("loss_forget"))]
        if pts:
            ax.plot(*zip(*pts), style, color=color, lw=1.3, label=label)
        if ax2 is not None:
            for key, ls, mk in (("eval_forget_accuracy", "-", "o"), ("eval_retain_accuracy", "--", "s")):
                pts = [(r["step"], r[key]) for r in t["curve"] if is_number(r.get(key))]
                if pts:
                    ax2.plot(*zip(*pts), ls, marker=mk, ms=3.5, color=color, lw=1.2)
    if not trials:
        ax.text(0.5, 0.5, "no learning curves recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("unlearning step")
    ax.set_ylabel("forget loss (loss_forget)")
    ax.set_title("Forget loss per trial", fontsize=10)
    ax.grid(alpha=0.3)
    if trials:
        ax.legend(fontsize=7, ncol=1 + len(trials) // 10, title="trial", title_fontsize=7)
    if ax2 is not None:
        from matplotlib.lines import Line2D
        ax2.set_xlabel("unlearning step")
        ax2.set_ylabel("in-loop accuracy (sample)")
        ax2.set_title("In-loop evaluation: forget (solid, ↓ better), retain (dashed, ↑ better)", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend([Line2D([], [], color="black", ls="-", marker="o", ms=3.5),
                    Line2D([], [], color="black", ls="--", marker="s", ms=3.5)],
                   ["eval_forget_accuracy", "eval_retain_accuracy"], fontsize=7)
    return figure_png(fig)


def importance_png(imp: dict) -> bytes:
    fig = new_figure(7, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    per = {k: v for k, v in imp["objectives"].items() if isinstance(v, dict)}
    if imp["status"] != "ok" or not per:
        ax.text(0.5, 0.5, imp["reason"] or NOT_ENOUGH, ha="center", va="center", wrap=True,
                transform=ax.transAxes, fontsize=10)
        ax.set_axis_off()
        return figure_png(fig)
    params = sorted({p for v in per.values() for p in v},
                    key=lambda p: -sum(v.get(p, 0.0) for v in per.values()))[::-1]
    height = 0.8 / len(per)
    for j, (objective, vals) in enumerate(per.items()):
        ys = [i + (j - (len(per) - 1) / 2) * height for i in range(len(params))]
        ax.barh(ys, [vals.get(p, 0.0) for p in params], height=height, color=f"C{j}", label=objective)
    ax.set_yticks(range(len(params)), params)
    ax.set_xlabel("importance (fANOVA, share of explained variance)")
    ax.set_title("Which sampled parameters drive each objective", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return figure_png(fig)


# --------------------------------------------------------------------------- document

class Doc:
    """Blocks rendered both as markdown and as self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[str]]):
        self.blocks.append(("table", headers, rows))

    def img(self, name: str, alt: str):
        self.blocks.append(("img", name, alt))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {i}" for i in b[1]] + [""]
            elif b[0] == "table":
                out += md_table(b[1], b[2]) + [""]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif b[0] == "pre":
                out += ["```yaml", b[1].rstrip("\n"), "```", ""]
        return "\n".join(out)

    def html(self, title: str, images: dict[str, bytes]) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(images[b[1]]).decode("ascii")
                body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(b[2])} ({e(b[1])})</figcaption></figure>")
            elif b[0] == "pre":
                body.append(f"<pre>{e(b[1])}</pre>")
        css = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;"
               "padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #c0392b;padding-bottom:.2em}"
               "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
               "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
               "th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}"
               "tbody tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee}"
               "figure{margin:1em 0}figcaption{font-size:.85em;color:#666}"
               "pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


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
