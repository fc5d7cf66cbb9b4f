"""Pieces every report shares: number formatting, markdown tables, figures on the Agg canvas.

Reports are written from ``results.json`` / ``sweep.json`` alone (``hdsu-ray report DIR``), so
these helpers read metric values in their JSON form: a number, ``None`` or an absent record
``{"value": None, "absent": reason}``. Names in those files (workflow, method labels, parameters)
are text, never markup: :func:`md_text` escapes them for markdown and :func:`plot_text` for
matplotlib, whose mathtext would otherwise parse (and may fail on) ``$...$``.
"""

from __future__ import annotations

import io
import logging
import math
import re
from typing import Any

log = logging.getLogger(__name__)

# Characters that start markdown (or GitHub math) syntax anywhere in a line.
_MD_INLINE = re.compile(r"([\\`*\[\]<>|~$&#!])")
# ... and at the start of a line or list item: a list marker ("- ", "+ ") or a numbered item ("1.").
_MD_BLOCK_START = re.compile(r"^(\s*)([-+]|\d+(?=[.)]))")


def new_figure(width: float = 7.0, height: float = 5.0):
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes. Drawing happens here; should it fail all the same (labels go
    through :func:`plot_text`), the report gets a figure saying so instead of losing the run."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    except Exception as exc:  # noqa: BLE001  (any drawing error; the run's results are already written)
        log.warning("figure could not be drawn (%s: %s); writing a placeholder", type(exc).__name__, exc)
        fallback = new_figure(6, 2)
        fallback.text(0.5, 0.5, f"figure could not be drawn: {type(exc).__name__}", ha="center", va="center",
                      parse_math=False)
        buf = io.BytesIO()
        fallback.savefig(buf, format="png")
    return buf.getvalue()


def plot_text(text: Any) -> str:
    """``text`` as literal matplotlib text: every ``$`` escaped, so mathtext never parses it."""
    return str(text).replace("$", r"\$")


def md_text(text: Any, start: bool = False) -> str:
    """``text`` as literal markdown: emphasis, links, code, HTML, tables and math characters are
    backslash-escaped, and ``_`` unless it joins two word characters (``forget_rate`` stays
    readable); newlines become spaces. ``start``: the text begins a line or list item, so a leading
    list marker, number or heading is escaped too."""
    out = _MD_INLINE.sub(r"\\\1", str(text).replace("\r", " ").replace("\n", " "))
    out = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", out)
    if start:  # "- x" -> "\- x"; "1. x" -> "1\. x" (the escape goes before the dot)
        out = _MD_BLOCK_START.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit()
                                                          else "\\" + m.group(2)), out, count=1)
    return out


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
    """A table cell of markdown (already escaped, or our own): only ``|`` and newlines would break it."""
    return re.sub(r"(?<!\\)\|", r"\\|", str(text)).replace("\r", " ").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md_cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return out
