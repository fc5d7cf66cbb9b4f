"""Pieces every report shares: number formatting, markdown tables, figures on the Agg canvas.

Reports are written from ``results.json`` / ``sweep.json`` alone (``hdsu-ray report DIR``), so
these helpers read metric values in their JSON form: a number, ``None`` or an absent record
``{"value": None, "absent": reason}``.
"""

from __future__ import annotations

import io
import math
from typing import Any


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
