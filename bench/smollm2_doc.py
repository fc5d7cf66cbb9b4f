"""docs/SMOLLM2.md from the SmolLM2 study's results.json (bench/experiments.py --smollm2 calls it).

The real-model study: SmolLM2-135M-Instruct learns a small MHQA selection, then every method of
workflows/mhqa_smollm2.yaml unlearns it. The document answers, from the run's own numbers: did
the model learn the rows (base model vs learned model), what each method forgot and kept (the
study's retain_test rows and general medical competence), and what the attacks brought back.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.doc_format import _num, diff_cell, fmt, settings_text, shown, with_ci
from bench.experiments_doc import REPO, oracle_lines, protocol_text, wall_time
from bench.search_doc import search_section
from bench.robustness import study_table

STUDY = "mhqa-smollm2"
STUDY_METHOD = "hdsu"
COMPETENCE = (("mmlu_medical_accuracy", "MMLU medical"), ("pubmedqa_accuracy", "PubMedQA"))


def _learned(res: dict) -> dict:
    """The learned model's scores with intervals (``competence.after_learning`` records them since
    it scores the study's rows; a run from before that falls back to its ``before`` evaluation)."""
    return (res.get("competence") or {}).get("after_learning") or res["before"]


def learning_table(res: dict) -> list[str]:
    """Base model, learned model and retrain oracle on the study's rows and on general competence."""
    comp = res.get("competence") or {}
    cols = [("forget_accuracy", "forget"), ("retain_accuracy", "retain_test"), *COMPETENCE]
    lines = ["| model | " + " | ".join(f"{name} acc." for _, name in cols) + " |", "|---|" + "---|" * len(cols)]
    rows = [("base model (before learning)", comp.get("before_learning") or {}),
            ("learned model (before unlearning)", _learned(res)),
            ("retrain oracle (learned without the forget rows)", res.get("oracle") or {})]
    for label, rec in rows:
        ci = rec.get("ci") or {}
        lines.append(f"| {label} | " + " | ".join(with_ci(rec.get(k), ci.get(k)) for k, _ in cols) + " |")
    return lines


def method_table(res: dict) -> list[str]:
    cols = ["method", "tuning", "steps", "chosen settings", "forget acc.", "forget rate", "retain_test acc.", "preservation",
            "MMLU medical acc.", "MMLU kept", "PubMedQA acc.", "PubMedQA kept", "MIA AUC (min-k)",
            "forget quality", "over-forgetting"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, r in res["methods"].items():
        m, ci, p = r.get("metrics", {}), r.get("ci", {}), r.get("protocol", {})
        tuning = f"{p.get('trials')} trials" if p.get("tuned") else "not tuned here"
        flag = (m.get("over_forgetting") or {}).get("flag")
        lines.append("| " + " | ".join([
            label, tuning, str(r["settings"].get("steps")), chosen(p),
            with_ci(m.get("forget_accuracy"), ci.get("forget_accuracy")),
            with_ci(r.get("forget_rate"), ci.get("forget_rate")),
            with_ci(m.get("retain_accuracy"), ci.get("retain_accuracy")),
            with_ci(r.get("knowledge_preservation"), ci.get("knowledge_preservation")),
            with_ci(m.get("mmlu_medical_accuracy"), ci.get("mmlu_medical_accuracy")),
            fmt(m.get("mmlu_medical_preservation")),
            with_ci(m.get("pubmedqa_accuracy"), ci.get("pubmedqa_accuracy")), fmt(m.get("pubmedqa_preservation")),
            with_ci(m.get("mia_auc_min_k"), ci.get("mia_auc_min_k")), fmt(m.get("forget_quality")),
            "-" if flag is None else ("**yes**" if flag else "no")]) + " |")
    return lines


def chosen(protocol: dict) -> str:
    """The frozen trial's values (steps have their own column)."""
    return settings_text({k: v for k, v in (protocol.get("chosen") or {}).items() if k != "steps"}) or "-"


def tuned(res: dict) -> bool:
    return bool(res["methods"].get(STUDY_METHOD, {}).get("protocol", {}).get("tuned"))


def protocol_lines(res: dict) -> list[str]:
    """How the settings were chosen; an untuned record (before 7ae7192) says so."""
    if not tuned(res):
        return ["**Protocol, and its gap.** No method was tuned on this model: every method runs the settings in "
                "the workflow, which carry the tiny-model study's frozen loss settings with one learning rate for "
                "all (docs/method.md, \"SmolLM2 on CPU\"). The same steps, candidates and selection rule hold for "
                "every method, but an equal search on this model was not afforded; read the ranking with that in mind."]
    spaces = "; ".join(f"{m}: {', '.join(r['protocol'].get('space', []))}" for m, r in res["methods"].items())
    return [f"**Protocol.** Tuned on this model. {protocol_text(res)} Spaces: {spaces}.",
            "**Its limit.** A handful of trials per method is what these cores afford, so each method's "
            "frozen settings are a coarse pick; the budget is equal, the search is not exhaustive."]


def verdict(res: dict) -> list[str]:
    """hdsu against each baseline on the same items; the learning check; the oracle."""
    out = []
    comp = res.get("competence") or {}
    base, learned = comp.get("before_learning") or {}, _learned(res)
    gain = [(_num(learned.get(k)), _num(base.get(k))) for k in ("forget_accuracy", "retain_accuracy")]
    if all(a is not None and b is not None for a, b in gain):
        out.append(f"Learning lifted forget accuracy {gain[0][1]:.3f} -> {gain[0][0]:.3f} and retain_test "
                   f"{gain[1][1]:.3f} -> {gain[1][0]:.3f}: "
                   + ("the rows were learned well above what the base model knew." if min(a - b for a, b in gain) > 0.2
                      else "**the rows were not clearly learned; forgetting them says little.**"))
    out += oracle_lines(res)
    for key, entry in res.get("paired", {}).items():
        if not key.startswith(STUDY_METHOD + " - "):
            continue
        f, r = entry.get("forget_accuracy"), entry.get("retain_accuracy")
        forgets = "forgets more" if shown(f, -1) else "forgets less" if shown(f, +1) else "forgets about as much"
        keeps = "keeps more" if shown(r, +1) else "keeps less" if shown(r, -1) else "keeps about as much"
        out.append(f"Against {key.split(' - ')[1]}: {STUDY_METHOD} {forgets} (forget accuracy {diff_cell(f)}) and "
                   f"{keeps} (retain_test accuracy {diff_cell(r)}).")
    return ["- " + line for line in out]


def setting_lines(res: dict, wall: float | None, env: dict | None) -> list[str]:
    sizes = ", ".join(f"{k} {v['n']}" for k, v in res.get("splits", {}).items())
    cfg = res["config"]
    learn, un = cfg["learn"], cfg["unlearn"]
    lines = [f"**Setting.** SmolLM2-135M-Instruct ({res['params_total'] / 1e6:.1f}M parameters, its own tokenizer, "
             f"fp32 on the CPU). Rows: {sizes}. Learning: full fine-tuning, {learn['epochs']} epochs at lr "
             f"{learn['lr']:g}, batch {learn['batch_size']}. Unlearning: {un['steps']} steps at a "
             f"{un['param_budget']:g} parameter budget, {cfg['evaluate']['candidates']} candidate checkpoints, "
             f"selection {cfg['evaluate']['select']} on forget + retain_val; seeds {res['seeds']['unlearn']}. "
             f"General competence: {cfg['evaluate']['competence_samples']} fixed questions of each set."]
    timings = res.get("timings") or {}
    if wall:
        tune = timings.get("tune")
        study = "" if tune is None else (f" The tuning stage took {tune:.0f} s; the study without it "
                                         f"{wall - tune:.0f} s ({(wall - tune) / 60:.1f} min).")
        lines.append(f"**Cost.** Cold wall time {wall:.0f} s ({wall / 60:.1f} min) on this machine; stages: "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "." + study)
    if env:
        from bench.study_record import describe

        lines.append(f"**Environment** (written by the script): {describe(env)}.")
    return lines


def in_run_attacks(res: dict) -> dict:
    """``{label: attack record with its flags}`` from a run that attacked its own models."""
    return {m: {**r["robustness"], "flags": r["robustness_flags"]} for m, r in res["methods"].items()
            if r.get("robustness")}


def write_doc(run_dir: Path, env: dict | None = None) -> Path:
    res = json.loads((run_dir / "results.json").read_text())
    rob = in_run_attacks(res)
    lines = ["# SmolLM2-135M: a pretrained model on this CPU", "",
             "Generated by `python bench/experiments.py --smollm2` (runs `workflows/mhqa_smollm2.yaml` from an "
             "empty cache of its own, then writes this file; add `--only-report` to rebuild it from the run's "
             "committed record, docs/experiments/). Nothing here is typed by hand; intervals are 95 % bootstrap over items.", "",
             *(line + "\n" for line in setting_lines(res, wall_time(run_dir, res), env)),
             *(line + "\n" for line in protocol_lines(res)),
             "## Did the model learn the rows?", "", *learning_table(res), "",
             "## What each method forgot and kept", "", *method_table(res), "",
             "Verdict:", "", *verdict(res), "", *search_section(run_dir, res)]
    if rob:
        lines += study_table("Attacks on the unlearned models", res, rob)
    out = REPO / "docs" / "SMOLLM2.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
