"""Does running the learn loop in a second thread cost throughput? (Ray Train V2 runs it so.)

    python bench/bench_threads.py [--steps 60] [--repeats 3]

The learn loop of bench_train.py (tiny model, 2 threads), best of ``--repeats`` runs, in three
placements, each in a fresh process:

* ``main``: the process's main thread, as the plain loop runs;
* ``thread``: one second thread, the main thread never running a torch op: a Ray Train V2 worker
  (its main thread serves Ray's task loop; gdb shows no OpenMP worker before the loop starts);
* ``thread_after_main``: a second thread after the main thread ran the loop. Two OpenMP teams then
  exist, libgomp manages more threads than there are CPUs and throttles its spin-wait, so every
  parallel region pays a sleep and wake-up. This is the trap of timing a loop in a plain Ray
  actor's thread after its main thread ran it, not something a Ray Train worker does.

Writes bench/out/threads.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PLACEMENTS = ("main", "thread", "thread_after_main")


def _runs(steps: int, repeats: int) -> list[float]:
    from bench.bench_train import make_inputs, train_loop

    with tempfile.TemporaryDirectory() as keep:
        inputs = make_inputs("workflows/mhqa.yaml", Path(keep))
        cfg = {"arrays": inputs["arrays"], "model": inputs["model"], "steps": steps, "batch_size": 16, "threads": 2}
        return [train_loop(cfg)["tokens_per_s"] for _ in range(repeats)]


def measure(placement: str, steps: int, repeats: int) -> float:
    """Best tokens/s of the loop placed as ``placement`` (in this process: call it in a fresh one)."""
    if placement == "thread_after_main":
        _runs(steps, 1)  # the main thread's OpenMP team now exists
    if placement == "main":
        return max(_runs(steps, repeats))
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.extend(_runs(steps, repeats)))
    worker.start()
    worker.join()
    return max(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--placement", choices=PLACEMENTS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = ap.parse_args()
    if args.placement:
        print(json.dumps(measure(args.placement, args.steps, args.repeats)))
        return 0
    tps = {}
    for placement in PLACEMENTS:  # each in a fresh process: OpenMP teams and allocator state do not carry over
        cmd = [sys.executable, __file__, "--placement", placement, "--steps", str(args.steps),
               "--repeats", str(args.repeats)]
        tps[placement] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{placement:18s} {tps[placement]:8.0f} tokens/s", flush=True)
    result = {"steps": args.steps, "repeats": args.repeats, "threads": 2, "tokens_per_s": tps,
              "over_main": {k: v / tps["main"] for k, v in tps.items() if k != "main"}}
    out = REPO / "bench" / "out" / "threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(", ".join(f"{k} / main {v:.2f}" for k, v in result["over_main"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
