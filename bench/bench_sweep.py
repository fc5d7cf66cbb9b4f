"""The same sweep with the shared retain-gradient cache and with it turned off, in one run.

    python bench/bench_sweep.py [--workflow workflows/mhqa_sweep.yaml] [--trials 8]

Both sweeps run through the CLI (`hdsu-ray run`) on the same workflow, searcher seed and trial
count, into fresh output directories. The learned model and the annotation come from the disk cache
in both (the first sweep warms it if needed, and that warm-up is timed separately), so the
difference is what `sweep.share_cache` controls: with it, the budget mask, reference tensors and
one retain basis at the largest rank are computed once in the driver and every trial gets the same
object-store reference; without it, every trial computes its own. Writes bench/out/sweep.json.
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
        # Warm the learned-model and annotation caches (a sweep of one trial), so neither timed
        # sweep pays for learning; this is what a user's second sweep on a study looks like.
        warm, _ = run(args.workflow, tmp / "warm", "sweep.num_samples=1")
        rows = {}
        for name, share in (("shared", "true"), ("no_cache", "false")):
            wall, summary = run(args.workflow, tmp / name, trials, f"sweep.share_cache={share}")
            rows[name] = {"wall_s": round(wall, 1), "sweep_wall_s": summary["timings"].get("sweep"),
                          "completed": summary["completed"], "basis_computations": summary["basis_computations"],
                          "mask_computations": summary["mask_computations"], "best": summary.get("best")}
            if name == "shared":  # keep the shared sweep's report next to the numbers
                keep = REPO / "bench" / "out" / "sweep-shared"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp / name, keep, ignore=shutil.ignore_patterns("tune", "trials", "ray_train"))
    ratio = rows["shared"]["sweep_wall_s"] / rows["no_cache"]["sweep_wall_s"]
    result = {"workflow": args.workflow, "trials": args.trials, "warm_up_s": round(warm, 1), "runs": rows,
              "shared_over_no_cache": round(ratio, 3), "target": 0.6,
              "note": "ratio of the sweep stage's wall time (Tuner only; learn and annotate are cached in both)"}
    out = REPO / "bench" / "out" / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, r in rows.items():
        print(f"{name:9s} sweep {r['sweep_wall_s']:7.1f} s (run {r['wall_s']:.1f} s), {r['completed']} trials, "
              f"basis computed {r['basis_computations']}x")
    print(f"shared / no cache = {ratio:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
