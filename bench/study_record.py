"""The committed record of the studies: the few files the documents are written from.

A study's run directory (``bench/experiments.py --out``) holds models, checkpoints and Ray state
that stay on the machine that ran it, and that machine may be gone by the next session. The record
keeps, under version control in ``docs/experiments/<study>/``, only what docs/EXPERIMENTS.md,
docs/ROBUSTNESS.md and docs/SMOLLM2.md are written from: the run's results.json, its wall time,
its robustness.json once attacked, the tuning study's frozen.yaml (which the other studies run)
and the machine and versions that produced it. So ``--only-report`` rebuilds the documents on any
checkout, and a series of studies longer than one session can be run a study at a time.

A study is always recorded whole from one run directory, never merged from two, so its results and
its attacks come from the same models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "docs" / "experiments"
FILES = ("results.json", "wall_s.txt", "robustness.json", "frozen.yaml")
TRIALS = "tuning/*/sweep.json"  # a compare's trials per method: what each search tried, not only its pick
ENVIRONMENT = "environment.json"


def record_study(run_dir: Path, record: Path = RECORD) -> Path:
    """Copy a finished study's files into ``record/<study>`` in one rename.

    The machine is the one its run recorded (``environment.json`` beside the run directory, written
    when the series started), not the machine doing the copying."""
    from hdsu_ray.store import swap_dir, temp_dir_beside

    run_dir = Path(run_dir)
    env = run_dir.parent / ENVIRONMENT
    missing = [p.name for p in (run_dir / "results.json", env) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: not a finished study (no {', '.join(missing)})")
    tmp = temp_dir_beside(record / run_dir.name)
    for name in FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    for src in run_dir.glob(TRIALS):
        dst = tmp / src.relative_to(run_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shutil.copy2(env, tmp / ENVIRONMENT)
    return swap_dir(tmp, record / run_dir.name)


def environments(record: Path, studies: list[str]) -> dict[str, dict]:
    """``{study: environment}`` for the recorded studies that have one."""
    out = {}
    for s in studies:
        path = record / s / ENVIRONMENT
        if path.is_file():
            out[s] = json.loads(path.read_text())
    return out


def describe(env: dict) -> str:
    pk = env["packages"]
    commit = f"; commit {env['git_commit'][:10]}" if env.get("git_commit") else ""
    return (f"Python {env['python']}, {env['cpus']} CPUs ({env['processor']}), {env['system']}; "
            + ", ".join(f"{k} {v}" for k, v in pk.items()) + f"; {env['constraints']}{commit}")


def environment_lines(record: Path, studies: list[str]) -> list[str]:
    """One line when every recorded study ran on the same machine and versions, else one per study
    (a series run over several sessions may span machines; the reader should see that)."""
    envs = environments(record, studies)
    if not envs:
        return []
    distinct = {json.dumps(e, sort_keys=True) for e in envs.values()}
    if len(distinct) == 1:
        return [f"**Environment** (written by the script): {describe(next(iter(envs.values())))}.", ""]
    return ["**Environment** (written by the script; the studies ran on different machines or versions):", ""] + [
        f"- {s}: {describe(e)}." for s, e in envs.items()] + [""]
