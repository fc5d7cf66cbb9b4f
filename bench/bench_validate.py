"""Wall time of ``hdsu-ray validate`` on one workflow, cold: a new process each time.

    cd /work/main && .venv/bin/python bench/bench_validate.py [--repeats 15] [workflows/mhqa.yaml]

Each repetition runs the installed ``hdsu-ray`` entry point in a fresh interpreter (what a user
waits for, interpreter start-up included) and checks it printed ``<file>: ok``. The median is the
figure, since other jobs on the machine disturb single runs; the target is under 1.5 s (no torch,
ray or pyarrow on that path; ``tests/unit/test_validate_imports.py`` checks the imports). Writes
bench/out/validate.json and prints one line per run. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
TARGET_S = 1.5


def hdsu_ray_command() -> list[str]:
    """The console script next to this interpreter (the venv's), else ``python -m``-style start."""
    script = Path(sys.executable).with_name("hdsu-ray")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from hdsu_ray.cli import main; sys.exit(main())"]


def time_once(command: list[str], workflow: str) -> float:
    start = time.perf_counter()
    out = subprocess.run([*command, "validate", workflow], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""}, timeout=120)
    elapsed = time.perf_counter() - start
    if out.returncode != 0 or f"{workflow}: ok" not in out.stdout:
        raise SystemExit(f"validate failed (exit {out.returncode}): {out.stderr.strip()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflow", nargs="?", default="workflows/mhqa.yaml", help="workflow YAML to validate")
    ap.add_argument("--repeats", type=int, default=15, help="cold runs; the median is reported")
    args = ap.parse_args()
    command = hdsu_ray_command()
    time_once(command, args.workflow)  # writes any missing .pyc, so the runs below time validation
    times = []
    for i in range(args.repeats):
        times.append(time_once(command, args.workflow))
        print(f"run {i + 1:>2}: {times[-1]:.3f} s")
    median = statistics.median(times)
    record = {"command": f"hdsu-ray validate {args.workflow}", "repeats": args.repeats,
              "median_s": round(median, 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3),
              "target_s": TARGET_S, "meets_target": median < TARGET_S, "times_s": [round(t, 3) for t in times],
              "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validate.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"median {median:.3f} s over {args.repeats} cold runs (min {min(times):.3f}, max {max(times):.3f}); "
          f"target < {TARGET_S} s: {'met' if median < TARGET_S else 'MISSED'}; wrote {OUT / 'validate.json'}")


if __name__ == "__main__":
    main()
