"""Number formatting shared by the generated study documents (EXPERIMENTS.md, SMOLLM2.md, ROBUSTNESS.md)."""

from __future__ import annotations


def _num(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt(v, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "absent" if isinstance(v, dict) and v.get("absent") else "-"
    return f"{x:.{digits}f}"


def with_ci(value, ci) -> str:
    if not isinstance(ci, dict) or _num(ci.get("low")) is None:
        return fmt(value)
    return f"{fmt(value)} [{ci['low']:.2f}, {ci['high']:.2f}]"


def diff_cell(entry: dict | None) -> str:
    if not isinstance(entry, dict) or _num(entry.get("diff")) is None:
        return "-"
    mark = "" if entry["low"] <= 0 <= entry["high"] else " *"
    return f"{entry['diff']:+.3f} [{entry['low']:+.2f}, {entry['high']:+.2f}]{mark}"


def shown(entry: dict | None, sign: int) -> bool:
    """The interval excludes 0 on the ``sign`` side (+1: a > b, -1: a < b)."""
    if not isinstance(entry, dict) or _num(entry.get("low")) is None:
        return False
    return entry["low"] > 0 if sign > 0 else entry["high"] < 0


def settings_text(params: dict) -> str:
    """A trial's or a frozen setting's values, three significant digits for floats."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
