"""The same 8-trial sweep with the shared cache and with caching turned off, in one run.

    python bench/bench_sweep.py [--workflow workflows/mhqa_sweep.yaml] [--trials 8]

Three sweeps through the CLI (`hdsu-ray run`) on the same workflow, searcher seed and trial count,
into fresh output directories, after a one-trial sweep that warms the default disk cache:

* ``shared`` (``sweep.cache: shared``) with a cold cache of its own: the driver learns the model,
  annotates and computes one budget mask, reference tensors and one retain basis at the largest
  rank, and every trial gets the same object-store reference.
* ``per_trial``: the driver's learned model and annotation come from the warm cache; each trial
  computes its own mask, reference tensors and basis at its own rank.
* ``none``: each trial is an independent run in a cache of its own: it learns, annotates,
  evaluates the learned model and computes its own mask, reference and basis (the driver's
  learned model comes from the warm cache, as in ``per_trial``).

Two ratios: the sweep stage (Tuner) of ``shared`` over ``per_trial`` isolates the object-store
cache; the whole run of ``shared`` (which learns once) over the whole run of ``none`` is what
sharing saves against a loop of independent runs. Writes bench/out/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
       "TOKENIZERS_PARALLELISM": "false"}


def run(workflow: str, out: Path, *overrides: str) -> tuple[float, dict]:
    cmd = [str(Path(sys.executable).parent / "hdsu-ray"), "run", workflow, "--output-dir", str(out), *overrides]
    env = {**os.environ, **ENV}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"sweep failed: {' '.join(cmd)}")
    return wall, json.loads((out / "sweep.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default="workflows/mhqa_sweep.yaml")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    trials = f"sweep.num_samples={args.trials}"
    with tempfile.TemporaryDirectory(prefix="hdsu-bench-sweep-") as tmp:
        tmp = Path(tmp)
        # Warm the default learned-model and annotation caches (a sweep of one trial) for the
        # drivers of per_trial and none, so neither pays for learning outside its trials.
        warm, _ = run(args.workflow, tmp / "warm", "sweep.num_samples=1")
        rows = {}
        for name, extra in (("shared", [f"cache_dir={tmp / 'cold-cache'}"]), ("per_trial", []), ("none", [])):
            wall, summary = run(args.workflow, tmp / name, trials, f"sweep.cache={name}", *extra)
            rows[name] = {"wall_s": round(wall, 1), "sweep_wall_s": summary["timings"].get("sweep"),
                          "timings": summary["timings"], "completed": summary["completed"],
                          **{k: summary[k] for k in ("learn_computations", "annotate_computations",
                                                      "basis_computations", "mask_computations")},
                          "trial_walls_s": sorted(round(t["ended_at"] - t["started_at"], 1)
                                                  for t in summary["trials"] if t.get("ended_at")),
                          "best": summary.get("best")}
            if name == "shared":  # keep the shared sweep's report next to the numbers
                rows[name]["learn_computations"] += 1  # the driver learned (its cache was cold)
                keep = REPO / "bench" / "out" / "sweep-shared"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp / name, keep, ignore=shutil.ignore_patterns("tune", "trials", "ray_train"))
            r = rows[name]  # as each sweep ends: a later failure must not lose the earlier ones
            print(f"{name:9s} run {r['wall_s']:7.1f} s, sweep stage {r['sweep_wall_s']:7.1f} s, {r['completed']} "
                  f"trials; learned {r['learn_computations']}x, basis {r['basis_computations']}x", flush=True)
            (REPO / "bench" / "out" / "sweep.partial.json").write_text(json.dumps(rows, indent=2))
    narrow = rows["shared"]["sweep_wall_s"] / rows["per_trial"]["sweep_wall_s"]
    whole = rows["shared"]["wall_s"] / rows["none"]["wall_s"]
    result = {"workflow": args.workflow, "trials": args.trials, "warm_up_s": round(warm, 1), "runs": rows,
              "shared_over_per_trial": round(narrow, 3), "shared_over_none": round(whole, 3), "target": 0.6,
              "note": "shared_over_per_trial: sweep stage (Tuner) only, the object-store artefacts; "
                      "shared_over_none: whole runs, shared learning once against trials that each learn, "
                      "annotate and compute their own artefacts"}
    out = REPO / "bench" / "out" / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    (REPO / "bench" / "out" / "sweep.partial.json").unlink(missing_ok=True)
    print(f"sweep stage, shared / per_trial = {narrow:.2f}; whole run, shared / none = {whole:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
