"""Attack the unlearned models of finished studies, then write docs/ROBUSTNESS.md.

    python bench/robustness.py [--out runs/experiments] [--only STUDY ...] [--only-report]

For every study directory under ``--out`` (bench/experiments.py's runs) it reads the run's own
``results.json`` (its config, hence its data, learned model and retrain oracle), attacks the first
seed's model of every method with the workflow's ``robustness`` settings (the defaults when the
run had none: hdsu_ray.config.schema.RobustnessConfig) as Ray tasks, writes ``robustness.json``
beside ``results.json`` and records the study again, attacks included (bench/study_record.py).
The document, written from that record, shows every attack per method with the published
references beside it and a verdict computed from the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REFERENCES = ("arXiv 2410.16454: unlearned models kept 21 % of the forgotten knowledge at full precision and "
              "83 % after 4-bit quantization; arXiv 2406.13356 and 2409.18025: a few relearning steps on a little "
              "of the forget data, or on unrelated data, restore most of what was removed. The paper (arXiv "
              "2511.19498) reports forget rate 82.7 % and preservation 88.5 % and no attack.")


def attack_study(run_dir: Path) -> dict:
    """``{label: {attack: record, "flags": ...}}`` for one finished study."""
    from hdsu_ray.config.fields import build
    from hdsu_ray.config.schema import RobustnessConfig, Workflow
    from hdsu_ray.data.select import select_data
    from hdsu_ray.runtime import init_ray
    from hdsu_ray.stages.learn import learned_key
    from hdsu_ray.stages.robustness import robustness_flags, run_attacks

    res = json.loads((run_dir / "results.json").read_text())
    wf = build(Workflow, res["config"])
    wf = replace(wf, robustness=wf.robustness or RobustnessConfig())
    data = select_data(wf)
    init_ray(wf.cluster)
    seeds = res["seeds"]["unlearn"]
    tag = (lambda m: f"{m}-seed{seeds[0]}") if len(seeds) > 1 else (lambda m: m)
    dirs = {m: run_dir / "models" / tag(m) for m in res["methods"]}
    oracle = Path(wf.cache_dir) / "retrain" / learned_key(wf, data, "retrain")
    records = run_attacks(wf, data, dirs, oracle if (oracle / "config.json").is_file() else None)
    for label, rec in records.items():
        rec["flags"] = robustness_flags(res["methods"][label], rec, wf.robustness.max_recovery)
    return records


def _pct(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def study_table(name: str, res: dict, rob: dict) -> list[str]:
    lines = [f"## {name}", "", "Forget accuracy (lower = forgotten) after unlearning and after each attack; in "
             "brackets the share of the removed accuracy the attack brought back. Relearning is scored on the "
             "forget rows it did not train on, beside the retrain oracle after the same steps.", "",
             "| method | before | after | 8-bit | 4-bit | relearn (oracle) | benign relearn | flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for label, rec in rob.items():
        row = res["methods"][label]
        after = (row.get("first_seed") or row)["after"]  # the attacked model's; older records: "after" itself

        def cell(attack: str) -> str:
            a = rec.get(attack) or {}
            rcv = a.get("recovered")
            return _pct(a.get("forget_accuracy")) + ("" if rcv is None else f" ({rcv:+.2f})")

        relearn = rec.get("relearn") or {}
        flagged = [k for k, v in rec["flags"]["attacks"].items() if v]
        lines.append(f"| {label} | {_pct(row['before'].get('forget_accuracy'))} | "
                     f"{_pct(after.get('forget_accuracy'))} | {cell('quant8')} | {cell('quant4')} | "
                     f"{cell('relearn')} ({_pct(relearn.get('oracle_forget_accuracy'))}) | {cell('benign_relearn')} | "
                     f"{'**' + ', '.join(flagged) + '**' if flagged else 'no'} |")
    return lines + [""]


def attack_text(r) -> str:
    """The attacks a robustness config runs, in words (``r``: RobustnessConfig or its dict)."""
    g = (lambda k: r[k]) if isinstance(r, dict) else (lambda k: getattr(r, k))
    return (f"round-to-nearest quantization of every linear weight ({', '.join(map(str, g('quant_bits')))} bits, "
            f"groups of {g('group_size')} input columns); relearning, {g('relearn_steps')} AdamW steps (lr "
            f"{g('relearn_lr')}, {g('relearn_batch')} rows) on {g('relearn_fraction'):.0%} of the forget rows, scored "
            "on the others, beside the same attack on the retrain oracle (which never saw them); benign relearning, "
            f"the same steps on retain_train rows. A method is flagged when an attack brings back at least "
            f"{g('max_recovery'):.0%} of the forget accuracy it removed (for relearning: beyond what the oracle "
            "learns from the same rows).")


MAIN_JOB = "main-job"


def study_records(out_root: Path, studies: list[str]):
    """``(name, results, attacks, note)`` per study: bench/experiments.py's studies (attacked by this
    script), then the runs that attacked their own models with their workflow's settings: the main
    job (workflows/mhqa.yaml) and the SmolLM2 study."""
    from bench.smollm2_doc import STUDY, in_run_attacks

    for name in studies:
        path = out_root / name / "robustness.json"
        res = json.loads((out_root / name / "results.json").read_text()) if path.is_file() else None
        yield name, res, json.loads(path.read_text()) if res else None, None
    path = out_root / MAIN_JOB / "results.json"
    if path.is_file():
        res = json.loads(path.read_text())
        # Its models are the tuning study's seed-0 models (docs/EXPERIMENTS.md checks their numbers are
        # equal); write_doc checks its attacks against the study's own once the study is attacked.
        yield (f"{MAIN_JOB} (workflows/mhqa.yaml: MHQA Anxiety, seed 0)", res, in_run_attacks(res),
               "Attacked inside its own run, the eight tuned methods at the frozen settings, with that workflow's "
               "settings: " + attack_text(res["config"]["robustness"]))
    path = out_root / STUDY / "results.json"
    if path.is_file():
        res = json.loads(path.read_text())
        yield (f"{STUDY} (SmolLM2-135M)", res, in_run_attacks(res), "Attacked inside its own run "
               "(workflows/mhqa_smollm2.yaml, docs/SMOLLM2.md), with that workflow's settings: "
               + attack_text(res["config"]["robustness"]))


def same_attacks(rob: dict, other: dict) -> tuple[int, list[str]]:
    """``(methods compared, ["label: attack", ...] that differ)`` between two attack records of the
    same models (every field of each attack both ran, curves included)."""
    shared = [label for label in rob if label in other]
    differ = [f"{label}: {k}" for label in shared for k, v in rob[label].items()
              if k != "flags" and k in other[label] and other[label][k] != v]
    return len(shared), differ


def _main_job_check(rob: dict, tuned: dict | None, tuned_on: str | None) -> tuple[str, bool] | None:
    """The main job runs the tuning study's frozen settings with seed 0: its models are that study's
    first-seed models. ``(sentence, equal)`` once the study itself is attacked, else None."""
    n, differ = same_attacks(rob, tuned or {})
    if not n:  # the study not attacked yet, or no method in common: nothing to check against
        return None
    if not differ:
        return (f"These are {tuned_on}'s seed-0 models, and these in-run attacks equal this script's attacks on "
                f"them field for field ({n} methods, every attack), so the table is not repeated and the verdicts "
                "count them once.", True)
    return (f"These are {tuned_on}'s seed-0 models, but these in-run attacks differ from this script's on them: "
            + "; ".join(differ) + ".", False)


def write_doc(out_root: Path, studies: list[str], path: Path | None = None, tuned_on: str | None = None) -> Path:
    """``tuned_on``: the study whose frozen settings the main job runs (its models are the same)."""
    from hdsu_ray.config.schema import RobustnessConfig

    lines = ["# Robustness of the unlearned models", "",
             "Generated by `python bench/robustness.py` from the runs of `bench/experiments.py` "
             "(`--only-report` rebuilds it from the committed record, docs/experiments/). Each method's first-seed "
             "model is attacked: " + attack_text(RobustnessConfig()),
             "", "References (other models; for comparison only): " + REFERENCES, ""]
    verdicts: dict[str, list[str]] = {}
    attacked: dict[str, dict] = {}
    for name, res, rob, note in study_records(out_root, studies):
        if not rob:
            lines += [f"## {name}", "", "Not attacked yet.", ""]
            continue
        attacked[name] = rob
        check = _main_job_check(rob, attacked.get(tuned_on), tuned_on) if name.startswith(MAIN_JOB) else None
        if check and check[1]:
            lines += [f"## {name}", "", note + " " + check[0], ""]
            continue
        note = f"{note} {check[0]}" if check else note
        table = study_table(name, res, rob)
        lines += table[:2] + ([note, ""] if note else []) + table[2:]
        for label, rec in rob.items():
            verdicts.setdefault(label, []).extend(f"{name}: {k}" for k, v in rec["flags"]["attacks"].items() if v)
    if verdicts:
        lines += ["## Verdict per method", ""]
        lines += [f"- {label}: " + ("survives every attack in every study" if not hits else
                                     "forgetting did not survive " + "; ".join(hits)) for label, hits in verdicts.items()]
    from hdsu_ray.store import write_text_atomic

    return write_text_atomic(path or REPO / "docs" / "ROBUSTNESS.md", "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/experiments", help="where bench/experiments.py put the study runs")
    ap.add_argument("--only-report", action="store_true", help="do not attack; rebuild the document from the record")
    ap.add_argument("--only", nargs="*", help="attack only these studies (the others' record is kept)")
    args = ap.parse_args()
    from bench.experiments import STUDIES, TUNED_ON
    from bench.study_record import RECORD, record_study
    from hdsu_ray.logs import configure
    from hdsu_ray.store import write_json_atomic

    configure()
    out_root = (REPO / args.out).resolve()
    for name in STUDIES:
        run_dir = out_root / name
        if args.only and name not in args.only:
            continue
        if not args.only_report and (run_dir / "results.json").is_file() and not (run_dir / "robustness.json").is_file():
            write_json_atomic(run_dir / "robustness.json", attack_study(run_dir))
            record_study(run_dir)
    print(write_doc(RECORD, list(STUDIES), tuned_on=TUNED_ON))  # the SmolLM2 study joins from its record
    return 0


if __name__ == "__main__":
    sys.exit(main())
