"""What each method's search tried: every trial of a compare, and how much of each range it covered.

A compare writes ``tuning/<method>/sweep.json`` per tuned method and the study record keeps them
(bench/study_record.py), so the documents can show the search itself, not only its pick: a small
random search can leave whole ranges untried, and a pick at the edge of what was tried says that
the range may be too narrow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.doc_format import fmt, settings_text
from hdsu_ray.store import safe_name


def _share(values: list[float], dim: dict) -> float:
    """The share of a dimension's range that the tried values span (in log space for a log dim)."""
    f = math.log if dim.get("log") else float
    return (f(max(values)) - f(min(values))) / (f(dim["high"]) - f(dim["low"]))


def search_section(run_dir: Path, res: dict, heading: str = "## The search") -> list[str]:
    """Every trial of every method's search (the record keeps tuning/<method>/sweep.json), and how
    much of each space the trials covered: a small random search can leave whole ranges untried."""
    lines, notes = [], []
    for label, r in res["methods"].items():
        path = run_dir / "tuning" / safe_name(label) / "sweep.json"  # where compare wrote it
        if not r.get("protocol", {}).get("tuned") or not path.is_file():
            continue
        sweep = json.loads(path.read_text())
        space = sweep["config"]["sweep"]["space"]
        trials = [t for t in sweep["trials"] if t.get("selection") is not None]
        best = (sweep.get("best") or {}).get("trial_id")
        for t in trials:
            lines.append(f"| {label} | {settings_text(t['params'])} | {fmt(t['forget_rate'])} | {fmt(t['knowledge_preservation'])} | "
                         f"{fmt(t['selection'])} | {'**chosen**' if t['trial_id'] == best else ''} |")
        spans = {k: _share([t["params"][k] for t in trials], d) for k, d in space.items()
                 if d["type"] in ("float", "int") and trials}
        words = ", ".join(f"{k} {v:.0%}" for k, v in spans.items())
        lr = [t["params"]["lr"] for t in trials if "lr" in t["params"]]
        chosen_lr = (r["protocol"].get("chosen") or {}).get("lr")
        edge = (lr and chosen_lr == max(lr) and min(t["knowledge_preservation"] for t in trials) >= 0.99)
        notes.append(f"{label}: the trials spanned {words} of each range"
                     + ("; the pick is the largest learning rate tried and no trial lost retain_val accuracy, so "
                        "larger learning rates, untried, might forget more" if edge else "")
                     + _unseen_loss(res, r, next((t for t in trials if t["trial_id"] == best), None)) + ".")
    if not lines:
        return []
    head = [heading, "", "Each trial as the search scored it (forget rows and retain_val; retain_test is "
            "never scored here). The selection is the harmonic mean of forget rate and preservation.", "",
            "| method | trial | forget rate | preservation (retain_val) | selection | |", "|---|---|---|---|---|---|"]
    return head + lines + ["", "Coverage:", ""] + ["- " + n for n in notes] + [""]


def _unseen_loss(res: dict, r: dict, picked: dict | None) -> str:
    """When the pick kept more of retain_val in its search than the top of retain_test's interval
    in the reported run: the selection rule's rows could not see that loss (too few of them)."""
    test, ci = r.get("knowledge_preservation"), (r.get("ci") or {}).get("knowledge_preservation") or {}
    if picked is None or test is None or ci.get("high") is None or picked["knowledge_preservation"] <= ci["high"]:
        return ""
    n_val = (res.get("splits") or {}).get("retain_val", {}).get("n", "the")
    return (f"; its pick kept {fmt(picked['knowledge_preservation'])} of retain_val in the search but "
            f"{fmt(test)} [{ci['low']:.2f}, {ci['high']:.2f}] of retain_test in the reported run: "
            f"{n_val} retain_val rows did not show that loss")
