"""docs/EXPERIMENTS.md from the studies' results.json files (bench/experiments.py calls it with the
committed record, docs/experiments: bench/study_record.py).

Every number and every verdict below is computed from the files; nothing is typed. A difference
counts as shown only when its 95 % paired-bootstrap interval excludes 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.doc_format import _num, diff_cell, fmt, shown, with_ci
from bench.search_doc import search_section

REPO = Path(__file__).resolve().parents[1]
PAPER = {"forget_rate": 0.827, "knowledge_preservation": 0.885, "param_fraction": 0.001}
STUDY_METHOD = "hdsu"  # the method under study; every other tuned method is a baseline


def _hmean(r: dict) -> float:
    fr, kp = _num(r.get("forget_rate")), _num(r.get("knowledge_preservation"))
    return 2 * fr * kp / (fr + kp) if fr is not None and kp is not None and fr + kp > 0 else 0.0


def method_table(res: dict) -> list[str]:
    cols = ["method", "tuning", "steps", "forget acc.", "forget rate", "retain_test acc.", "preservation",
            "shuffled forget", "fresh-distractor forget", "MIA AUC (min-k)", "truth ratio", "forget quality",
            "over-forgetting"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, r in res["methods"].items():
        m, ci, p = r.get("metrics", {}), r.get("ci", {}), r.get("protocol", {})
        tuning = (f"{p.get('trials')} trials" if p.get("tuned") else f"frozen from {p['tuned_on']}"
                  if p.get("tuned_on") else f"ablation of {p['ablation_of']}" if p.get("ablation_of") else "not tuned")
        flag = (m.get("over_forgetting") or {}).get("flag")
        lines.append("| " + " | ".join([
            label, tuning, str(r["settings"].get("steps")), with_ci(m.get("forget_accuracy"), ci.get("forget_accuracy")),
            with_ci(r.get("forget_rate"), ci.get("forget_rate")),
            with_ci(m.get("retain_accuracy"), ci.get("retain_accuracy")),
            with_ci(r.get("knowledge_preservation"), ci.get("knowledge_preservation")),
            fmt(m.get("shuffled_forget_accuracy")), fmt(m.get("fresh_distractor_forget_accuracy")),
            with_ci(m.get("mia_auc_min_k"), ci.get("mia_auc_min_k")), fmt(m.get("truth_ratio")),
            fmt(m.get("forget_quality")), "-" if flag is None else ("**yes**" if flag else "no")]) + " |")
    lines.append(f"| paper (reported, other model and protocol) | - | - | - | {PAPER['forget_rate']:.3f} | - | "
                 f"{PAPER['knowledge_preservation']:.3f} | - | - | - | - | - | - |")
    return lines


def paired_table(res: dict, ablations: bool) -> list[str]:
    rows = [(k, v) for k, v in res.get("paired", {}).items() if (" - " + STUDY_METHOD) in k or not ablations]
    rows = [(k, v) for k, v in rows if k.startswith(STUDY_METHOD + "-") == ablations]
    if not rows:
        return ["(none)"]
    lines = ["| difference | forget accuracy | retain_test accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {diff_cell(v.get('forget_accuracy'))} | {diff_cell(v.get('retain_accuracy'))} |"
              for k, v in rows]
    return lines


def oracle_lines(res: dict) -> list[str]:
    """The retrain oracle is the target (its forget accuracy is not zero): which methods come
    nearest it, by forget accuracy (among those keeping preservation >= 0.9) and by forget quality."""
    target = _num((res.get("oracle") or {}).get("forget_accuracy"))
    runs, out = res["methods"], []
    if target is not None:
        near = sorted((abs(_num(r.get("metrics", {}).get("forget_accuracy")) - target), m) for m, r in runs.items()
                      if _num(r.get("metrics", {}).get("forget_accuracy")) is not None
                      and (_num(r.get("knowledge_preservation")) or 0) >= 0.9)
        if near:
            out.append(f"Nearest the retrain oracle's forget accuracy ({target:.3f}), among methods with preservation "
                       ">= 0.9: " + ", ".join(f"{m} (off by {d:.3f})" for d, m in near[:3]) + ".")
    fq = sorted(((_num(r.get("metrics", {}).get("forget_quality")), m) for m, r in runs.items()
                 if _num(r.get("metrics", {}).get("forget_quality")) is not None), reverse=True)
    if fq:
        out.append("Highest forget quality (KS test of truth ratios against the oracle's; higher = closer): "
                   + ", ".join(f"{m} ({q:.3f})" for q, m in fq[:3])
                   + ("" if STUDY_METHOD in [m for _, m in fq[:3]] else f"; {STUDY_METHOD} "
                      + next((f"{q:.3f}" for q, m in fq if m == STUDY_METHOD), "-")) + ".")
    return out


def verdict(res: dict) -> list[str]:
    runs = res["methods"]
    out = []
    bar = [m for m, r in runs.items() if (_num(r.get("forget_rate")) or 0) >= 0.8
           and (_num(r.get("knowledge_preservation")) or 0) >= 0.9]
    out.append(f"Forget rate >= 0.8 with preservation >= 0.9 on retain_test: {', '.join(bar) or 'no method'}.")
    flagged = [m for m, r in runs.items() if (r.get("metrics", {}).get("over_forgetting") or {}).get("flag")]
    if flagged:
        out.append(f"Over-forgetting (forget accuracy clearly below the retrain oracle's): {', '.join(flagged)}.")
    out += oracle_lines(res)
    baselines = [m for m, r in runs.items() if m != STUDY_METHOD
                 and (r.get("protocol", {}).get("tuned") or r.get("protocol", {}).get("tuned_on"))]
    if STUDY_METHOD in runs and baselines:
        best = max(baselines, key=lambda m: _hmean(runs[m]))
        pair = res.get("paired", {}).get(f"{STUDY_METHOD} - {best}", {})
        f, r = pair.get("forget_accuracy"), pair.get("retain_accuracy")
        forgets = "forgets more" if shown(f, -1) else "forgets less" if shown(f, +1) else "forgets about as much"
        keeps = "keeps more" if shown(r, +1) else "keeps less" if shown(r, -1) else "keeps about as much"
        out.append(f"Against the best tuned baseline here ({best}, by the harmonic mean of forget rate and "
                   f"preservation): {STUDY_METHOD} {forgets} (forget accuracy {diff_cell(f)}) and {keeps} "
                   f"(retain_test accuracy {diff_cell(r)}).")
    for ab, (effects, f, r) in ablation_effects(res).items():
        out.append(f"{ab}: {', '.join(effects) if effects else 'no difference the items show'} "
                   f"(forget {diff_cell(f)}, retain {diff_cell(r)}).")
    return ["- " + line for line in out]


EFFECTS = ("forgets less", "forgets more", "keeps less", "keeps more")


def ablation_effects(res: dict) -> dict[str, tuple[list[str], dict | None, dict | None]]:
    """``{ablation: (effects shown against hdsu, forget diff, retain diff)}``; an effect is shown
    when the paired interval of "<ablation> - hdsu" excludes 0 on its side."""
    out = {}
    for key, entry in res.get("paired", {}).items():
        if key.startswith(STUDY_METHOD + "-"):
            f, r = entry.get("forget_accuracy"), entry.get("retain_accuracy")
            signs = ((f, +1), (f, -1), (r, -1), (r, +1))
            out[key.split(" - ")[0]] = ([t for t, (e, s) in zip(EFFECTS, signs) if shown(e, s)], f, r)
    return out


def ablation_counts(results: dict[str, dict]) -> dict[str, dict[str, int]]:
    """``{ablation: {"studies": n, effect: studies showing it}}``: a component matters where
    removing it changes the outcome in most studies, not in one."""
    counts: dict[str, dict[str, int]] = {}
    for res in results.values():
        for ab, (effects, _, _) in ablation_effects(res).items():
            row = counts.setdefault(ab, dict.fromkeys(("studies", *EFFECTS), 0))
            row["studies"] += 1
            for e in effects:
                row[e] += 1
    return counts


def ablation_summary(results: dict[str, dict]) -> list[str]:
    """The table of ``ablation_counts`` for EXPERIMENTS.md's summary."""
    counts = ablation_counts(results)
    if not counts:
        return []
    lines = ["Ablations against hdsu, counted over the studies (an effect counts where its paired interval "
             "excludes 0):", "", "| ablation | studies | " + " | ".join(EFFECTS) + " |", "|---" * (len(EFFECTS) + 2) + "|"]
    lines += [f"| {ab} | {row['studies']} | " + " | ".join(str(row[e]) for e in EFFECTS) + " |"
              for ab, row in counts.items()]
    return lines


def study_section(name: str, res: dict, wall: float | None, tuned_on: str, run_dir: Path | None = None) -> list[str]:
    b, sizes = res["before"], {k: v["n"] for k, v in res.get("splits", {}).items()}
    oracle = res.get("oracle") or {}
    lines = [f"## {name}", "",
             f"{'Tuned here' if name == tuned_on else f'Frozen settings from {tuned_on}, not tuned here'}. "
             f"Rows: {', '.join(f'{k} {v}' for k, v in sizes.items())}. Before unlearning: forget accuracy "
             f"{fmt(b.get('forget_accuracy'))}, retain_test {fmt(b.get('retain_accuracy'))}, holdout "
             f"{fmt(b.get('holdout_accuracy'))}. Retrain oracle (never saw the forget rows): forget accuracy "
             f"{fmt(oracle.get('forget_accuracy'))}, retain_test {fmt(oracle.get('retain_accuracy'))}."
             + (f" Wall time {wall:.0f} s." if wall else ""), ""]
    lines += method_table(res) + ["", "Paired differences, hdsu minus each tuned baseline (same items, seed-"
                                  "averaged; * = the interval excludes 0):", ""]
    lines += paired_table(res, ablations=False) + ["", "Ablations, each minus the tuned hdsu:", ""]
    lines += paired_table(res, ablations=True) + ["", "Verdict:", ""] + verdict(res) + [""]
    if run_dir is not None and name == tuned_on:  # the other studies ran its frozen settings: no search of their own
        lines += search_section(run_dir, res, f"### The search ({name})")
    return lines


def summary(results: dict[str, dict]) -> list[str]:
    """What holds across the studies: per method, where it meets the bar and its mean forget rate
    and preservation; and how often hdsu beats the best tuned baseline and each ablation."""
    labels = list(next(iter(results.values()))["methods"])
    lines = ["| method | studies with forget rate >= 0.8 and preservation >= 0.9 | mean forget rate | "
             "mean preservation | studies flagged for over-forgetting |", "|---|---|---|---|---|"]
    for label in labels:
        rows = [res["methods"][label] for res in results.values() if label in res["methods"]]
        bar = sum((_num(r.get("forget_rate")) or 0) >= 0.8 and (_num(r.get("knowledge_preservation")) or 0) >= 0.9
                  for r in rows)
        mean = lambda k: sum(_num(r.get(k)) or 0 for r in rows) / max(1, len(rows))
        flagged = sum(bool((r.get("metrics", {}).get("over_forgetting") or {}).get("flag")) for r in rows)
        lines.append(f"| {label} | {bar} of {len(rows)} | {mean('forget_rate'):.3f} | "
                     f"{mean('knowledge_preservation'):.3f} | {flagged} |")
    lines += ["", *ablation_summary(results), "", "Per study (from the verdicts below):", ""]
    for name, res in results.items():
        lines += [f"- {name}: " + v[2:] for v in verdict(res) if "best tuned baseline" in v]
    return lines


def wall_time(run_dir: Path, res: dict) -> float | None:
    """The run's wall time as the driver timed it (wall_s.txt), else the sum of its driver stages."""
    wall_file = run_dir / "wall_s.txt"
    if wall_file.is_file():
        return float(wall_file.read_text())
    t = res.get("timings") or {}
    return sum(v for k, v in t.items() if ":" not in k or k == "evaluate:before") or None


def main_job_section(out_root: Path, studies: dict) -> list[str]:
    """``workflows/mhqa.yaml`` run cold on its own cache: its wall time, and its seed-0 numbers
    beside the same methods' seed-0 runs in the tuning study (same settings, same code path)."""
    path = out_root / "main-job" / "results.json"
    if not path.is_file():
        return []
    res, ref = json.loads(path.read_text()), studies.get("mhqa-anxiety")
    wall = wall_time(out_root / "main-job", res)
    lines = ["## The main job: workflows/mhqa.yaml", "",
             f"`hdsu-ray run workflows/mhqa.yaml` from an empty cache (learn, retrain oracle, annotate, eight "
             f"methods at the frozen settings with seed 0, robustness attacks): wall time {wall:.0f} s "
             f"({wall / 60:.1f} min) on this machine.", "",
             "| method | forget rate | preservation | same as the tuning study's seed-0 run |", "|---|---|---|---|"]
    for label, r in res["methods"].items():
        seed0 = None
        if ref and label in ref["methods"]:
            per = {p["seed"]: p for p in ref["methods"][label]["seeds"]["per_seed"]}
            seed0 = per.get(0)
        same = "-" if seed0 is None else ("yes" if (seed0["forget_rate"], seed0["knowledge_preservation"])
                                          == (r["forget_rate"], r["knowledge_preservation"]) else "**no**")
        lines.append(f"| {label} | {fmt(r['forget_rate'])} | {fmt(r['knowledge_preservation'])} | {same} |")
    return lines + ["", "Across machines this is not measured: every run here came from one machine type. torch's CPU "
                    "kernels sum in an order that depends on the thread count and the instruction set, so another "
                    "machine can differ in the last bits, and an option whose score is nearly tied can then flip. "
                    "Run this section's command on yours and compare the table.", ""]


def searcher_words(searcher, trials) -> str:
    """The searcher as it behaved: Optuna's TPE draws its first ``n_startup_trials`` at random (the
    default is read from the installed Optuna), so a budget within them is seeded random search."""
    if searcher == "qmc":
        return "qmc: Optuna's scrambled Sobol sequence, seeded, so a few trials spread over every range"
    if searcher != "tpe" or not isinstance(trials, int):
        return str(searcher)
    import inspect

    import optuna

    start = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    if trials > start:
        return "tpe"
    return (f"tpe; with {trials} trials, all inside Optuna TPE's {start} random start-up trials, so in effect "
            "seeded random search")


def protocol_text(res: dict) -> str:
    p = res["methods"][STUDY_METHOD]["protocol"] if STUDY_METHOD in res["methods"] else {}
    seeds = res.get("seeds", {}).get("unlearn")
    search = searcher_words(p.get("searcher"), p.get("trials"))
    return (f"Every method: {p.get('trials')} Ray Tune + Optuna trials ({search}) over its own space, "
            f"steps up to {p.get('steps_cap')}, {p.get('candidates')} candidate checkpoints, selection "
            f"{p.get('selection_rule')} of forget rate and preservation on {p.get('selection_data')}; the best "
            f"trial frozen; final runs with seeds {seeds}, reported on retain_test (never read by unlearning, "
            "selection or tuning). Intervals: 95 % bootstrap over items (paired for preservation and "
            "differences, stratified for MIA AUC), on each item's share of seeds answering it right.")


def mark_frozen(results: dict[str, dict], tuned_on: str) -> None:
    """In the studies not tuned on, mark each method the tuning study tuned as ``tuned_on`` it
    (their runs use its frozen settings), so tables and verdicts treat them as tuned baselines."""
    if tuned_on not in results:
        return
    protocols = {m: r.get("protocol", {}) for m, r in results[tuned_on]["methods"].items()}
    for name, res in results.items():
        if name == tuned_on:
            continue
        for label, r in res["methods"].items():
            p = protocols.get(label, {})
            if p.get("tuned"):
                r.setdefault("protocol", {})["tuned_on"] = tuned_on
            elif p.get("ablation_of"):
                r.setdefault("protocol", {}).update(ablation_of=p["ablation_of"], changed=p.get("changed"))
        flip_ablation_pairs(res, {m: p["ablation_of"] for m, p in protocols.items() if p.get("ablation_of")})


def flip_ablation_pairs(res: dict, ablation_of: dict[str, str]) -> None:
    """A study run from frozen.yaml does not know which methods are ablations, so it reports
    "hdsu - <ablation>"; restate those as the tuning study does, "<ablation> - hdsu" (negated)."""
    paired = {}
    for key, entry in res.get("paired", {}).items():
        a, _, b = key.partition(" - ")
        if ablation_of.get(b) == a:
            key, entry = f"{b} - {a}", {metric: _negated(v) for metric, v in entry.items()}
        paired[key] = entry
    res["paired"] = paired


def _negated(v):
    if not isinstance(v, dict) or _num(v.get("diff")) is None:
        return v
    return {**v, "diff": -v["diff"], "low": -v["high"], "high": -v["low"]}


def load_results(out_root: Path, studies: list[str], tuned_on: str) -> dict[str, dict]:
    """The recorded studies' results.json, the transfer studies' methods marked (``mark_frozen``)."""
    results = {s: json.loads((out_root / s / "results.json").read_text())
               for s in studies if (out_root / s / "results.json").is_file()}
    mark_frozen(results, tuned_on)
    return results


def write_doc(out_root: Path, studies: list[str], tuned_on: str, path: Path | None = None) -> Path:
    from bench.study_record import environment_lines

    results = load_results(out_root, studies, tuned_on)
    lines = ["# Experiments", "",
             "Generated by `python bench/experiments.py` (runs every study, then writes this file; "
             "`--only-report` rebuilds it from the studies' committed record, docs/experiments/). Nothing here is typed "
             "by hand.", ""]
    if tuned_on in results:
        lines += ["**Protocol.** " + protocol_text(results[tuned_on]) + f" Settings were tuned on {tuned_on} "
                  "only and applied unchanged to the other studies, the same for every method.", ""]
    lines += environment_lines(out_root, [*studies, "main-job"])
    lines += ["**Setting.** A 3.67M-parameter Llama-style model built from a config learns the forget and retain "
              "questions, then unlearns them at a 0.1 % parameter budget. It has no language ability, so these "
              "studies test forgetting of memorised rows, not medical competence. The paper's numbers are a "
              "reference from another model, data split and protocol.", ""]
    if results:
        lines += ["## Summary across studies", ""] + summary(results) + [""]
    lines += main_job_section(out_root, results)
    for s in studies:
        if s in results:
            lines += study_section(s, results[s], wall_time(out_root / s, results[s]), tuned_on, out_root / s)
        else:
            lines += [f"## {s}", "", "Not run yet.", ""]
    path = path or REPO / "docs" / "EXPERIMENTS.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
