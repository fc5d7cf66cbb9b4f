"""The fair comparison on four studies, then docs/EXPERIMENTS.md from their results.json files.

    python bench/experiments.py                 # run every study, then write the document
    python bench/experiments.py --only-report   # rebuild the document from the committed record
    python bench/experiments.py --smollm2       # the SmolLM2-135M study instead: docs/SMOLLM2.md
    python bench/experiments.py --only mhqa-trauma   # one study (the others' record is kept)

Protocol (docs/EXPERIMENTS.md says it again): every method is tuned on MHQA with Anxiety
forgotten (workflows/mhqa_compare.yaml: the same trials, step cap, candidate checkpoints and
selection rule for every method, on forget + retain_val only). The frozen settings
(``frozen.yaml``) then run unchanged, with the same seeds, on that study and on the three others
(MHQA Depression and Trauma forgotten, MedMCQA Surgery forgotten): tuned on one study, applied to
all, the same for every method. Every number in the document comes from the files this script
reads; it records the package versions and the machine it ran on.

Each finished study is recorded at once in docs/experiments/<study>/ (bench/study_record.py): the
documents are written from that record, and the studies after the tuning study run the recorded
frozen.yaml, so a series longer than one session (or one machine) can be run a study at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MHQA_DOMAINS = ["Anxiety", "Depression", "Trauma", "Obsessive/Compulsive Disorders"]
TUNED_ON = "mhqa-anxiety"


def _mhqa(domain: str) -> list[str]:
    retain = ", ".join(d for d in MHQA_DOMAINS if d != domain)
    return [f"name=mhqa-{domain.lower()}", f"data.forget.values=[{domain}]", f"data.retain.values=[{retain}]",
            f"concepts.targets=[preset:mhqa-{domain.lower()}]"]


STUDIES: dict[str, list[str]] = {
    "mhqa-anxiety": [],  # the tuning study: workflows/mhqa_compare.yaml itself
    "mhqa-depression": _mhqa("Depression"),
    "mhqa-trauma": _mhqa("Trauma"),
    "medmcqa-surgery": ["name=medmcqa-surgery", "data.source=medmcqa", "data.path=medmcqa/dev.jsonl",
                        "data.forget={field: subject_name, values: [Surgery], limit: 150}",
                        "data.retain={field: subject_name, values: [Surgery, Unknown], exclude: true, limit: 300}",
                        "concepts.targets=[preset:medmcqa-surgery]"],
}


def run(cmd: list[str]) -> float:
    import subprocess

    start = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def tuned_only(frozen: Path) -> str:
    """An override keeping the tuned methods of ``frozen.yaml`` and dropping its ablations."""
    import yaml

    methods = yaml.safe_load(frozen.read_text())["unlearn"]["methods"]
    tuned = [m for m in methods if not any(m["label"] == a["label"] for a in _ablations())]
    return "unlearn.methods=" + json.dumps(tuned)


def default_cache() -> str:
    """The workflows' default ``cache_dir`` (relative: this checkout's)."""
    from dataclasses import fields

    from hdsu_ray.config.schema import Workflow

    return next(f.default for f in fields(Workflow) if f.name == "cache_dir")


def _ablations() -> list[dict]:
    import yaml

    return yaml.safe_load((REPO / "workflows" / "mhqa_compare.yaml").read_text())["compare"]["ablations"]


def run_studies(out_root: Path, only: list[str] | None, transfer_ablations: bool) -> None:
    from bench.study_record import RECORD, record_study

    cli = str(Path(sys.executable).parent / "hdsu-ray")
    for name, overrides in STUDIES.items():
        if only and name not in only:
            continue
        if name == TUNED_ON:
            cmd = [cli, "run", "workflows/mhqa_compare.yaml", "name=mhqa-anxiety"]
        else:  # the recorded frozen settings of the tuning study, unchanged, on this study's data
            frozen = RECORD / TUNED_ON / "frozen.yaml"
            if not frozen.is_file():
                raise SystemExit(f"{frozen}: missing; run the tuning study first (--only {TUNED_ON})")
            # the recorded frozen.yaml names the cache of the machine that tuned; use this checkout's
            cmd = [cli, "run", str(frozen), *overrides, f"cache_dir={default_cache()}"] + (
                [] if transfer_ablations else [tuned_only(frozen)])
        wall = run(cmd + ["--output-dir", str(out_root / name)])
        (out_root / name / "wall_s.txt").write_text(f"{wall:.1f}\n")
        record_study(out_root / name)


def environment() -> dict:
    """Versions and machine, recorded by the script that produced the numbers."""
    import platform
    from importlib import metadata

    from hdsu_ray.audit import git_commit

    packages = ("torch", "ray", "transformers", "deepspeed", "numpy", "optuna", "tokenizers", "scipy", "peft")
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "system": platform.platform(),
            "packages": {p: metadata.version(p) for p in packages},
            "constraints": "constraints.txt (every package pinned)", "git_commit": git_commit()}


def smollm2_study(out_root: Path, only_report: bool) -> int:
    """The real-model study, on a cache of its own so its wall time is a cold run's."""
    from bench.smollm2_doc import STUDY, write_doc as write_smollm2
    from bench.study_record import ENVIRONMENT, RECORD, record_study

    run_dir = out_root / STUDY
    if not only_report:
        # A rerun into a finished or killed run resumes from its checkpoints and cache, and would
        # record a warm run's wall time as the cold one this document reports.
        used = [d for d in (run_dir, run_dir.with_name(run_dir.name + ".partial"), out_root / "smollm2-cache")
                if d.exists()]
        if used:
            raise SystemExit(f"{used[0]}: exists; the SmolLM2 study is timed cold, so give a new --out")
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / ENVIRONMENT).write_text(json.dumps(environment(), indent=2) + "\n")
        cli = str(Path(sys.executable).parent / "hdsu-ray")
        wall = run([cli, "run", "workflows/mhqa_smollm2.yaml", "--output-dir", str(run_dir),
                    f"cache_dir={out_root / 'smollm2-cache'}"])
        (run_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
        record_study(run_dir)
    env_file = RECORD / STUDY / ENVIRONMENT
    print(write_smollm2(RECORD / STUDY, json.loads(env_file.read_text()) if env_file.is_file() else None))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/experiments", help="where the study runs go")
    ap.add_argument("--only", nargs="*", help="run only these studies")
    ap.add_argument("--only-report", action="store_true",
                    help="do not run; rebuild the document from the record (docs/experiments)")
    ap.add_argument("--record", action="store_true",
                    help="do not run; record the finished studies under --out (all, or --only), then rebuild")
    ap.add_argument("--main-job", action="store_true",
                    help="also run workflows/mhqa.yaml cold on a cache of its own (its wall time and numbers)")
    ap.add_argument("--smollm2", action="store_true",
                    help="run only the SmolLM2-135M study (workflows/mhqa_smollm2.yaml, cold) and write docs/SMOLLM2.md")
    ap.add_argument("--no-transfer-ablations", action="store_true",
                    help="run the ablations on the tuning study only (the other studies run the tuned methods)")
    args = ap.parse_args()
    out_root = (REPO / args.out).resolve()
    if args.smollm2:
        return smollm2_study(out_root, args.only_report)
    from bench.experiments_doc import load_results, write_doc
    from bench.experiments_readme import write_readme
    from bench.study_record import RECORD, record_study

    if args.record:
        for name in [*STUDIES, "main-job"]:
            if (not args.only or name in args.only) and (out_root / name / "results.json").is_file():
                print("recorded", record_study(out_root / name))
    elif not args.only_report:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
        run_studies(out_root, args.only, not args.no_transfer_ablations)
        if args.main_job:
            main_job(out_root)
    if not any((RECORD / s / "results.json").is_file() for s in STUDIES):
        raise SystemExit(f"{RECORD}: no study recorded yet, so no document to write (run the studies first)")
    print(write_doc(RECORD, list(STUDIES), TUNED_ON))
    write_readme(load_results(RECORD, list(STUDIES), TUNED_ON), TUNED_ON, RECORD)
    return 0


def main_job(out_root: Path) -> None:
    """workflows/mhqa.yaml cold, on a cache of its own: its wall time and seed-0 numbers."""
    from bench.study_record import record_study

    cli = str(Path(sys.executable).parent / "hdsu-ray")
    wall = run([cli, "run", "workflows/mhqa.yaml", "--output-dir", str(out_root / "main-job"),
                f"cache_dir={out_root / 'main-job-cache'}"])
    (out_root / "main-job" / "wall_s.txt").write_text(f"{wall:.1f}\n")
    record_study(out_root / "main-job")


if __name__ == "__main__":
    sys.exit(main())
