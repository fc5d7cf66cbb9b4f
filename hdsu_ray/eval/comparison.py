"""Side-by-side comparison of the methods of one run (``results.json``): a JSON table, a markdown
table with the best value per column in bold and threshold pass/fail lines, and a trade-off plot.

The paper's reported operating point (forget rate 0.827, knowledge preservation 0.885) appears only
as a labelled reference marker and a reference line of text: it is the paper's number, never a
result of this run.

Also holds the small helpers the sweep report shares (atomic writes, Agg figures, number format).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

PAPER_POINT = (0.827, 0.885)  # (forget_rate, knowledge_preservation) as reported in the paper
PAPER_LABEL = "paper (reported)"
PAPER_NOTE = (f"Reference only (marked \"{PAPER_LABEL}\" in the plots): the paper reports forget rate {PAPER_POINT[0]} and knowledge preservation "
              f"{PAPER_POINT[1]}. These are the paper's numbers, not a result of this run.")

BASE_COLUMNS = ["method", "forget_rate", "knowledge_preservation", "before_forget_accuracy",
                "after_forget_accuracy", "before_retain_accuracy", "after_retain_accuracy", "param_fraction"]


# --------------------------------------------------------------------------- shared helpers

def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def new_figure(width: float = 7.0, height: float = 5.0):
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def is_absent(value: Any) -> bool:
    """An absent metric as stored in JSON: ``{"value": None, "absent": "reason"}``."""
    return isinstance(value, dict) and "absent" in value and value.get("value") is None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any) -> str:
    """A cell: numbers to 4 significant digits, ``None`` as a dash, absent as ``absent (reason)``."""
    if value is None:
        return "—"
    if is_absent(value):
        return f"absent ({value['absent']})"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md_cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return out


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
            col = f"metrics.{name}" if name in BASE_COLUMNS else name
            row[col] = value
            if col not in extra:
                extra.append(col)
        rows.append(row)
    columns = BASE_COLUMNS + extra
    for row in rows:
        for col in extra:
            row.setdefault(col, None)
    return columns, rows


def direction(column: str) -> tuple[str, float | None] | None:
    """How to read a column: ``("max", None)``, ``("min", None)``, ``("target", t)`` (closest to
    ``t`` is best) or ``None`` (no best: before-unlearning values, spreads, counts, unknown names)."""
    name = column.lower()
    if name == "method" or name.startswith("before_") or name.endswith((".std", ".n", "_n", ".count")):
        return None
    if "privleak" in name:
        return ("target", 0.0)
    if "mia_auc" in name or name.endswith("auc"):
        return ("target", 0.5)
    if any(k in name for k in ("forget_rate", "preservation", "resistance", "retain_accuracy")):
        return ("max", None)
    if any(k in name for k in ("forget_accuracy", "param_fraction", "params_changed", "perplexity")):
        return ("min", None)
    return None


def _arrow(d: tuple[str, float | None] | None) -> str:
    if d is None:
        return ""
    return {"max": " ↑", "min": " ↓"}.get(d[0], f" →{d[1]:g}" if d[1] is not None else "")


def best_methods(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Column -> methods holding its best value (ties all count); only columns with a direction
    and at least two numeric values."""
    out = {}
    for col in columns:
        d = direction(col)
        vals = [(r["method"], r[col]) for r in rows if is_number(r.get(col))]
        if d is None or len(vals) < 2:
            continue
        key = {"max": lambda v: -v, "min": lambda v: v}.get(d[0], lambda v: abs(v - d[1]))
        top = min(key(v) for _, v in vals)
        out[col] = [m for m, v in vals if abs(key(v) - top) <= 1e-12]
    return out


def check_thresholds(thresholds: dict[str, float], columns: list[str],
                     rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per threshold: the comparison (``<=`` for lower-is-better columns, else ``>=``) and per method
    ``True``/``False``, or ``None`` when the value is absent or the metric was not measured."""
    out = {}
    for metric, bound in thresholds.items():
        d = direction(metric)
        op = "<=" if d is not None and d[0] == "min" else ">="
        verdict = {}
        for r in rows:
            v = r.get(metric)
            verdict[r["method"]] = (v <= bound if op == "<=" else v >= bound) if is_number(v) else None
        out[metric] = {"threshold": float(bound), "op": op, "measured": metric in columns, "pass": verdict}
    return out


# --------------------------------------------------------------------------- outputs

def _markdown(results: dict, columns: list[str], rows: list[dict[str, Any]], best: dict[str, list[str]],
              checks: dict[str, Any]) -> str:
    name = results.get("workflow") or (results.get("config") or {}).get("name") or "run"
    lines = [f"# Method comparison: {name}", "",
             "One row per unlearning method on the same learned model. ↑ higher is better, ↓ lower is "
             "better, →x closest to x is better; **bold** marks the best value of a column (before-"
             "unlearning columns and columns without a direction are not ranked).", ""]
    headers = [c + _arrow(direction(c)) for c in columns]
    body = []
    for r in rows:
        cells = []
        for col in columns:
            text = fmt(r.get(col))
            if r["method"] in best.get(col, []):
                text = f"**{text}**"
            cells.append(text)
        body.append(cells)
    lines += md_table(headers, body)
    lines += ["", "## Thresholds", ""]
    if not checks:
        lines.append("No thresholds set (evaluate.thresholds in the workflow).")
    for metric, c in checks.items():
        sym = "≤" if c["op"] == "<=" else "≥"
        if not c["measured"]:
            lines.append(f"- {metric} {sym} {c['threshold']:g}: not measured in this run")
            continue
        parts = []
        for r in rows:
            ok = c["pass"][r["method"]]
            verdict = "n/a" if ok is None else ("**pass**" if ok else "**fail**")
            parts.append(f"{r['method']} {verdict} ({fmt(r.get(metric))})")
        lines.append(f"- {metric} {sym} {c['threshold']:g}: " + ", ".join(parts))
    lines += ["", "## Reference", "", PAPER_NOTE, "", "![forget rate vs knowledge preservation](tradeoff.png)", ""]
    return "\n".join(lines)


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
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(7, 6), fontsize=9, color=color)
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
    ax.set_title(title + (f"\n(no values: {', '.join(skipped)})" if skipped else ""), fontsize=10)
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
