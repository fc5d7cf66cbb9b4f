"""Side-by-side comparison of the methods of one run (``results.json``): a JSON table, a markdown
table with the best value per column in bold and threshold pass/fail lines, and a trade-off plot.

The paper's reported operating point (forget rate 0.827, knowledge preservation 0.885) appears only
as a labelled reference marker and a reference line of text: it is the paper's number, never a
result of this run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hdsu_ray.eval import directions
from hdsu_ray.report.common import figure_png, fmt, is_absent, is_number, md_table, md_text, new_figure, plot_text
from hdsu_ray.report.reference import PAPER_LABEL, PAPER_NOTE, PAPER_POINT
from hdsu_ray.store import write_bytes_atomic, write_text_atomic

BASE_COLUMNS = ["method", "forget_rate", "knowledge_preservation", "before_forget_accuracy",
                "after_forget_accuracy", "before_retain_accuracy", "after_retain_accuracy", "param_fraction"]


# --------------------------------------------------------------------------- rows

def _clean(value: Any) -> Any:
    """JSON-safe metric value: finite numbers, None, or an absent record (NaN/inf become absent)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"value": None, "absent": f"not finite ({value})"}
    return value


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, Any]:
    """Numeric leaves and absent records of a method's ``metrics`` dict, nested keys joined by dots.

    ``{"value": x, ...}`` with a number ``x`` counts as ``x``; lists, strings and other values are
    not table cells and are skipped.
    """
    out: dict[str, Any] = {}
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if is_absent(value):
            out[name] = {"value": None, "absent": str(value["absent"])}
        elif isinstance(value, dict) and is_number(value.get("value")):
            out[name] = value["value"]
        elif isinstance(value, dict):
            out.update(flatten_metrics(value, f"{name}."))
        elif is_number(value) or (isinstance(value, float)):
            out[name] = _clean(value)
    return out


def method_rows(results: dict) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: one row per method of ``results["methods"]`` (or the top-level result)."""
    methods = results.get("methods") or {results.get("method", "method"): results}
    rows, extra = [], []
    for label, r in methods.items():
        before, after = r.get("before") or {}, r.get("after") or {}
        row = {"method": label, "forget_rate": _clean(r.get("forget_rate")),
               "knowledge_preservation": _clean(r.get("knowledge_preservation")),
               "before_forget_accuracy": _clean(before.get("forget_accuracy")),
               "after_forget_accuracy": _clean(after.get("forget_accuracy")),
               "before_retain_accuracy": _clean(before.get("retain_accuracy")),
               "after_retain_accuracy": _clean(after.get("retain_accuracy")),
               "param_fraction": _clean(r.get("param_fraction"))}
        for name, value in flatten_metrics(r.get("metrics")).items():
            if name in REPEATED or name.startswith("over_forgetting."):
                continue  # already a base column, or a flag listed under the table
            col = f"metrics.{name}" if name in BASE_COLUMNS else name
            row[col] = value
            if col not in extra:
                extra.append(col)
        row["ci"] = _row_intervals(r.get("ci") or {})
        rows.append(row)
    columns = BASE_COLUMNS + extra
    for row in rows:
        for col in extra:
            row.setdefault(col, None)
    return columns, rows


# Metrics the base columns already show (under another name).
REPEATED = {"forget_accuracy", "retain_accuracy", "forget_rate", "knowledge_preservation", "param_fraction"}

# Interval names in results.json ("ci") -> the table column they belong to.
CI_COLUMNS = {"forget_accuracy": "after_forget_accuracy", "retain_accuracy": "after_retain_accuracy",
              "before_forget_accuracy": "before_forget_accuracy", "before_retain_accuracy": "before_retain_accuracy"}


def _row_intervals(ci: dict) -> dict[str, list[float]]:
    """``{column: [low, high]}`` of a method's 95 % intervals (absent intervals are left out)."""
    out = {}
    for name, value in ci.items():
        if isinstance(value, dict) and is_number(value.get("low")) and is_number(value.get("high")):
            out[CI_COLUMNS.get(name, name)] = [value["low"], value["high"]]
    return out


def _cell(row: dict[str, Any], col: str) -> str:
    """A value with its interval when it has one: ``0.887 [0.83, 0.93]`` (markdown: text escaped)."""
    text = md_text(fmt(row.get(col)))
    low_high = (row.get("ci") or {}).get(col)
    return f"{text} [{low_high[0]:.3g}, {low_high[1]:.3g}]" if low_high and is_number(row.get(col)) else text


def direction(column: str) -> tuple[str, float | None] | None:
    """How to read a column, from the one table of metric directions: ``("max", None)``,
    ``("min", None)``, ``("target", t)`` (closest to ``t`` is best) or ``None`` (not ranked:
    before-unlearning values, spreads, counts, unknown names)."""
    m = directions.direction(column)
    return None if m is None else (m.kind, m.target)


def _arrow(d: tuple[str, float | None] | None) -> str:
    if d is None:
        return ""
    return {"max": " ↑", "min": " ↓"}.get(d[0], f" →{d[1]:g}" if d[1] is not None else "")


def best_methods(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Column -> methods holding its best value (ties all count); only columns with a direction
    and at least two numeric values."""
    out = {}
    for col in columns:
        vals = [(r["method"], r[col]) for r in rows if is_number(r.get(col))]
        if direction(col) is None or len(vals) < 2:
            continue
        key = directions.rank_key(col)
        top = min(key(v) for _, v in vals)
        out[col] = [m for m, v in vals if abs(key(v) - top) <= 1e-12]
    return out


def check_thresholds(thresholds: dict[str, float], columns: list[str],
                     rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per threshold: the comparison (from the directions table, the same check results.json and
    audit.json use) and per method ``True``/``False``, or ``None`` when the value is absent."""
    out = {}
    for metric, bound in thresholds.items():
        checks = {r["method"]: directions.check(metric, r.get(metric), bound) for r in rows}
        first = next(iter(checks.values()), directions.check(metric, None, bound))
        out[metric] = {"threshold": float(bound), "op": first["op"], "target": first["target"],
                       "measured": metric in columns, "pass": {m: c["pass"] for m, c in checks.items()}}
    return out


# --------------------------------------------------------------------------- outputs

def _markdown(results: dict, columns: list[str], rows: list[dict[str, Any]], best: dict[str, list[str]],
              checks: dict[str, Any]) -> str:
    name = results.get("workflow") or (results.get("config") or {}).get("name") or "run"
    lines = [f"# Method comparison: {md_text(name)}", "",
             "One row per unlearning method on the same learned model. ↑ higher is better, ↓ lower is "
             "better, →x closest to x is better; **bold** marks the best value of a column (before-"
             "unlearning columns and columns without a direction are not ranked). Brackets hold 95 % "
             "bootstrap intervals over the items (docs/metrics.md); a bold value whose interval overlaps "
             "another method's is not a significant win.", ""]
    headers = [md_text(c) + _arrow(direction(c)) for c in columns]
    body = []
    for r in rows:
        cells = []
        for col in columns:
            text = _cell(r, col)
            if r["method"] in best.get(col, []):
                text = f"**{text}**"
            cells.append(text)
        body.append(cells)
    lines += md_table(headers, body)
    lines += ["", "## Over-forgetting", ""] + _flag_lines(results)
    lines += ["", "## Robustness", ""] + _robustness_lines(results)
    lines += ["", "## Thresholds", ""]
    if not checks:
        lines.append("No thresholds set (evaluate.thresholds in the workflow).")
    for metric, c in checks.items():
        sym = {"<=": "≤", ">=": "≥"}.get(c["op"]) or f"within {c['target']:g} ±"
        if not c["measured"]:
            lines.append(f"- {md_text(metric, start=True)} {sym} {c['threshold']:g}: not measured in this run")
            continue
        parts = []
        for r in rows:
            ok = c["pass"][r["method"]]
            verdict = "n/a" if ok is None else ("**pass**" if ok else "**fail**")
            parts.append(f"{md_text(r['method'])} {verdict} ({md_text(fmt(r.get(metric)))})")
        lines.append(f"- {md_text(metric, start=True)} {sym} {c['threshold']:g}: " + ", ".join(parts))
    lines += ["", "## Reference", "", PAPER_NOTE, "", "![forget rate vs knowledge preservation](tradeoff.png)", ""]
    return "\n".join(lines)


def _flag_lines(results: dict) -> list[str]:
    """One line per method: is its forget accuracy clearly below a model that never saw the rows?"""
    out = []
    for label, r in (results.get("methods") or {}).items():
        flag = ((r.get("metrics") or {}).get("over_forgetting") or {})
        label = md_text(label, start=True)
        if flag.get("flag") is None:
            out.append(f"- {label}: not checked ({md_text(flag.get('source', 'no reference'))})")
        else:
            verdict = "**flagged**" if flag["flag"] else "not flagged"
            out.append(f"- {label}: {verdict}: forget accuracy at most {fmt(flag.get('forget_accuracy_high'))} "
                       f"(95 % upper bound) against {fmt(flag.get('reference'))}, "
                       f"the {md_text(flag.get('source'))}")
    return out or ["No method rows."]


def _robustness_lines(results: dict) -> list[str]:
    """Per method: forget accuracy after each attack and the share of the removed accuracy it
    brought back; a flagged method's forgetting did not survive (the robustness section)."""
    out = []
    for label, r in (results.get("methods") or {}).items():
        rec, flags = r.get("robustness"), r.get("robustness_flags") or {}
        if not rec:
            continue
        parts = [f"{name} {fmt(a.get('forget_accuracy'))}"
                 + ("" if a.get("recovered") is None else f" (recovered {a['recovered']:+.2f})")
                 for name, a in rec.items() if isinstance(a, dict) and "forget_accuracy" in a]
        verdict = "**flagged**" if flags.get("flagged") else "survives"
        out.append(f"- {md_text(label, start=True)}: {verdict}: " + ", ".join(parts))
    return out or ["No attacks in this run (add a robustness section)."]


def tradeoff_png(rows: list[dict[str, Any]], thresholds: dict[str, float], title: str) -> bytes:
    fig = new_figure(7, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i % 10}" for i in range(len(rows))]
    skipped = []
    for r, color in zip(rows, colors):
        x, y = r.get("forget_rate"), r.get("knowledge_preservation")
        if not (is_number(x) and is_number(y)):
            skipped.append(r["method"])
            continue
        ax.scatter([x], [y], s=70, color=color, zorder=3, edgecolor="black", linewidth=0.6)
        ax.annotate(plot_text(r["method"]), (x, y), textcoords="offset points", xytext=(7, 6), fontsize=9,
                    color=color)
    ax.scatter([PAPER_POINT[0]], [PAPER_POINT[1]], marker="X", s=110, color="white", edgecolor="black",
               linewidth=1.2, zorder=4)
    ax.annotate(PAPER_LABEL, PAPER_POINT, textcoords="offset points", xytext=(8, -14), fontsize=9,
                style="italic")
    if is_number(thresholds.get("forget_rate")):
        ax.axvline(thresholds["forget_rate"], ls="--", color="grey", lw=1)
        ax.annotate(f"forget_rate ≥ {thresholds['forget_rate']:g}", (thresholds["forget_rate"], 0.02),
                    xycoords=("data", "axes fraction"), rotation=90, fontsize=8, color="grey",
                    xytext=(3, 0), textcoords="offset points")
    if is_number(thresholds.get("knowledge_preservation")):
        ax.axhline(thresholds["knowledge_preservation"], ls="--", color="grey", lw=1)
        ax.annotate(f"knowledge_preservation ≥ {thresholds['knowledge_preservation']:g}",
                    (0.02, thresholds["knowledge_preservation"]), xycoords=("axes fraction", "data"),
                    fontsize=8, color="grey", xytext=(0, 3), textcoords="offset points")
    ax.set_xlabel("forget rate (1 − forget accuracy after)  →  better")
    ax.set_ylabel("knowledge preservation (retain acc. after / before)  →  better")
    skipped_text = f"\n(no values: {', '.join(map(str, skipped))})" if skipped else ""
    ax.set_title(plot_text(title + skipped_text), fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return figure_png(fig)


def write_comparison(results: dict, out_dir: Path, thresholds: dict[str, float] | None = None) -> dict[str, Path]:
    """Write ``comparison.json``, ``comparison.md`` and ``tradeoff.png`` into ``out_dir``.

    ``results``: a ``results.json`` dict (``"methods": {label: result}``). ``thresholds``: metric ->
    required value; default: the run's ``config.evaluate.thresholds``. Returns file name -> path.
    """
    out_dir = Path(out_dir)
    if thresholds is None:
        thresholds = ((results.get("config") or {}).get("evaluate") or {}).get("thresholds") or {}
    thresholds = {str(k): float(v) for k, v in thresholds.items()}
    columns, rows = method_rows(results)
    best = best_methods(columns, rows)
    checks = check_thresholds(thresholds, columns, rows)
    name = results.get("workflow") or (results.get("config") or {}).get("name") or "run"
    payload = {"workflow": name, "columns": columns,
               "directions": {c: (list(d) if d else None) for c in columns for d in [direction(c)]},
               "rows": rows, "best": best, "thresholds": checks,
               "reference": {"label": PAPER_LABEL, "forget_rate": PAPER_POINT[0],
                             "knowledge_preservation": PAPER_POINT[1], "note": PAPER_NOTE}}
    paths = {"comparison.json": out_dir / "comparison.json", "comparison.md": out_dir / "comparison.md",
             "tradeoff.png": out_dir / "tradeoff.png"}
    write_text_atomic(paths["comparison.json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    write_text_atomic(paths["comparison.md"], _markdown(results, columns, rows, best, checks))
    write_bytes_atomic(paths["tradeoff.png"], tradeoff_png(rows, thresholds, f"Methods of {name}"))
    return paths
