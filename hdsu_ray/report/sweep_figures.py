"""The sweep report's figures: Pareto front, learning curves, parameter importance (PNG bytes).

Every text from ``sweep.json`` (workflow name, trial ids, statuses, parameter and objective names)
goes through :func:`plot_text`, so no name is read as mathtext.
"""

from __future__ import annotations

from hdsu_ray.report.common import figure_png, is_number, new_figure, plot_text
from hdsu_ray.report.reference import PAPER_LABEL, PAPER_POINT
from hdsu_ray.report.sweep_analysis import NOT_ENOUGH, completed


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
            ax.annotate(plot_text(t["trial_id"]), (t["forget_rate"], t["knowledge_preservation"]),
                        textcoords="offset points", xytext=(-6 if right else 6, 5), fontsize=8,
                        color="#c0392b", ha="right" if right else "left")
    bt = next((t for t in done if str(t["trial_id"]) == str(best)), None)
    if bt is not None:
        ax.scatter([bt["forget_rate"]], [bt["knowledge_preservation"]], marker="*", s=320, color="#f1c40f",
                   edgecolor="black", linewidth=0.8, zorder=5, label=plot_text(f"best trial ({best})"))
    ax.scatter([PAPER_POINT[0]], [PAPER_POINT[1]], marker="X", s=110, color="white", edgecolor="black",
               linewidth=1.2, zorder=4, label=f"{PAPER_LABEL} — reference, not ours")
    ax.annotate(PAPER_LABEL, PAPER_POINT, textcoords="offset points", xytext=(8, -14), fontsize=9,
                style="italic")
    if not done:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("forget rate  →  better")
    ax.set_ylabel("knowledge preservation  →  better")
    ax.set_title(plot_text(f"Sweep {summary.get('workflow', '')}: {len(done)} completed trials"), fontsize=10)
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
        label = plot_text(str(t["trial_id"]) + ("" if t.get("status") == "COMPLETE" else f" ({t.get('status')})"))
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
        ax.text(0.5, 0.5, plot_text(imp["reason"] or NOT_ENOUGH), ha="center", va="center", wrap=True,
                transform=ax.transAxes, fontsize=10)
        ax.set_axis_off()
        return figure_png(fig)
    params = sorted({p for v in per.values() for p in v},
                    key=lambda p: -sum(v.get(p, 0.0) for v in per.values()))[::-1]
    height = 0.8 / len(per)
    for j, (objective, vals) in enumerate(per.items()):
        ys = [i + (j - (len(per) - 1) / 2) * height for i in range(len(params))]
        ax.barh(ys, [vals.get(p, 0.0) for p in params], height=height, color=f"C{j}", label=plot_text(objective))
    ax.set_yticks(range(len(params)), [plot_text(p) for p in params])
    ax.set_xlabel("importance (fANOVA, share of explained variance)")
    ax.set_title("Which sampled parameters drive each objective", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return figure_png(fig)
