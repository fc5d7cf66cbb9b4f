"""Every benchmark side by side in one run: writes bench/results.json and docs/PERFORMANCE.md.

    python bench/run_all.py                  # all benchmarks (~25 min on 2 cores)
    python bench/run_all.py --only step train
    python bench/run_all.py --only-report    # rebuild the document (bench/out/*.json, else bench/results.json)

Benchmarks (each a script in bench/, run as its own process so thread settings and Ray sessions do
not leak between them):

* ``step``: one unlearning update, dual strategy vs GradDiff vs plain NLL, with FLOPs and MFU
  against a matmul peak measured here (bench_step.py).
* ``train``: the learn loop without Ray vs Ray Train with 1 and 2 workers, tokens/s (bench_train.py).
* ``threads``: the same loop in the main thread vs a second thread, as Ray Train V2 runs it (bench_threads.py).
* ``sweep``: the 8-trial sweep with and without the shared retain-gradient cache (bench_sweep.py).
* ``annotate``: the Ray Data annotation job vs one process, at 1x and 10x rows (bench_annotate.py).
* ``validate``: ``hdsu-ray validate workflows/mhqa.yaml`` cold, median of repeats (bench_validate.py).
* ``prepare``: the prepare stage (Fisher mask, retain basis, reference tensors), one backward pass
  per sample vs batched, against one learning epoch over the same rows (bench_prepare.py; needs
  workflows/mhqa.yaml's learned model in the cache, so run the main job once first).
* ``prepare_real``, ``step_real``, ``eval_real``, ``train_real``, ``memory_real``: the prepare,
  step, evaluation throughput, Ray Train and memory benchmarks on SmolLM2-135M
  (workflows/mhqa_smollm2.yaml; prepare and memory need its learned model); bench/results.json
  ``real_model``.
* ``memory``: peak resident memory of the main job (`hdsu-ray run workflows/mhqa.yaml`, learned
  model cached), summed over every process of its Ray session and per process kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_memory import clean_env, sample_run  # noqa: E402
from bench.perf_doc import write_doc  # noqa: E402
from bench.perf_real import real_model  # noqa: E402

OUT = REPO / "bench" / "out"
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
SCRIPTS = {"step": ["bench/bench_step.py"], "train": ["bench/bench_train.py"], "threads": ["bench/bench_threads.py"],
           "sweep": ["bench/bench_sweep.py"],
           "annotate": ["bench/bench_annotate.py"], "validate": ["bench/bench_validate.py"],
           "prepare": ["bench/bench_prepare.py"],
           # SmolLM2-135M (bench/perf_real.py): run workflows/mhqa_smollm2.yaml once first (its learned model)
           "prepare_real": ["bench/bench_prepare.py", "workflows/mhqa_smollm2.yaml", "--chunk", "8"],
           "step_real": ["bench/bench_step.py", "--workflow", "workflows/mhqa_smollm2.yaml", "--rows", "8",
                         "--steps", "3"],
           "eval_real": ["bench/bench_eval.py", "--workflow", "workflows/mhqa_smollm2.yaml"],
           "train_real": ["bench/bench_train.py", "--workflow", "workflows/mhqa_smollm2.yaml", "--steps", "10",
                          "--workers", "1"],
           "memory_real": ["bench/bench_memory.py"]}
BENCHES = (*SCRIPTS, "memory")
PACKAGES = ("torch", "ray", "transformers", "deepspeed", "numpy", "optuna", "tokenizers", "peft")


def run_script(args: list[str]) -> float:
    env = {**clean_env(), **ENV}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def memory() -> dict:
    """Run the main job and sample the RSS of every process started for it every 0.5 s."""
    return sample_run(["workflows/mhqa.yaml"], {**clean_env(), **ENV}, OUT / "memory-run")


def machine() -> dict:
    """The machine and the package versions, recorded with every benchmark the run measures."""
    from importlib import metadata

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "os": platform.platform(),
            "packages": {p: metadata.version(p) for p in PACKAGES}}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return info


def load(name: str, previous: dict) -> dict | None:
    """A benchmark's numbers: this run's file, else the last results.json's (not rerun)."""
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else previous.get(name)


def provenance(previous: dict, measured_now: list[str]) -> dict:
    """Per benchmark: when and on what it was measured. Rows from before provenance was recorded
    per benchmark carry the old file's machine record (which lists torch only)."""
    old = previous.get("measured") or {k: {"generated": previous.get("generated"), "machine": previous.get("machine")}
                                       for k in BENCHES if previous.get(k)}
    now = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    return {**old, **{k: now for k in measured_now}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=[*SCRIPTS, "memory"], help="run only these benchmarks")
    ap.add_argument("--only-report", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    walls = {}
    if not args.only_report:
        for name, script in SCRIPTS.items():
            if not args.only or name in args.only:
                print(f"== bench {name}", flush=True)
                try:
                    walls[name] = round(run_script(script), 1)
                except subprocess.CalledProcessError as exc:  # the others still run; the doc says so
                    walls[name] = f"failed (exit {exc.returncode})"
                    (OUT / f"{name}.json").unlink(missing_ok=True)
        if not args.only or "memory" in args.only:
            print("== bench memory", flush=True)
            mem = memory()
            (OUT / "memory.json").write_text(json.dumps(mem, indent=2))
    path = REPO / "bench" / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    # benchmarks not rerun keep the wall time and the provenance of the run that measured them
    measured_now = [k for k in walls if not str(walls[k]).startswith("failed")]
    if not args.only_report and (not args.only or "memory" in args.only):
        measured_now.append("memory")
    walls = {**previous.get("bench_wall_s", {}), **walls}
    results = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "bench_wall_s": walls,
               "measured": provenance(previous, measured_now), **{k: load(k, previous) for k in BENCHES}}
    results["real_model"] = real_model(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    print(write_doc(results, REPO / "docs" / "PERFORMANCE.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
