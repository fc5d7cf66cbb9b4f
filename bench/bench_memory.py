"""Peak resident memory of a run, summed over every process it starts and per process kind.

    python bench/bench_memory.py                          # SmolLM2-135M, one hdsu run per engine
    python bench/bench_memory.py --engines torch zero2    # a subset

Each engine runs ``hdsu-ray run workflows/mhqa_smollm2.yaml`` with one ``hdsu`` run of 4 steps and
no retrain oracle, competence sets or attacks, twice: the first run (not sampled) fills the cache
(the learned model, whose key depends on the number of workers, and the mask, basis and
references), so the sampled second run holds the unlearn workers and the evaluation, not the learn
stage's full fine-tuning or the prepare stage. Both runs start from empty output directories (a
rerun into a finished one resumes from its checkpoints and takes no steps), and the sampled run must
have taken every step. ``torch`` is the workflow's own engine (1 worker, 2 CPUs);
``zero2`` and ``zero3`` are DeepSpeed ZeRO-2/3 on 2 workers of 1 CPU each. The RSS of every new
process is sampled every 0.5 s; a worker's peak against the model's fp32 size shows whether a
second copy (a reference model) is resident. Writes bench/out/memory_real.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 ** 2
ENGINES = {"torch": [],
           "zero2": ["unlearn.engine=deepspeed", "unlearn.zero_stage=2", "cluster.num_workers=2",
                     "cluster.cpus_per_worker=1"],
           "zero3": ["unlearn.engine=deepspeed", "unlearn.zero_stage=3", "cluster.num_workers=2",
                     "cluster.cpus_per_worker=1"]}
STEPS = 4
SMALL = [f"unlearn.steps={STEPS}", "unlearn.checkpoint_every=2", "evaluate.candidates=0", "evaluate.retrain=false",
         "evaluate.mmlu_path=null", "evaluate.pubmedqa_path=null", "robustness=null", "compare=null",
         'unlearn.methods=[{name: hdsu, forget_loss: contrast, lr: 1.0e-3, anchor_weight: 1.0, rank: 8}]']


def kind(cmdline: str) -> str:
    for key, name in (("RayTrainWorker", "train_worker"), ("TrainController", "train_controller"),
                      ("_evaluate_task", "evaluate_task"), ("method_run", "method_task"),
                      ("hdsu-ray", "driver"), ("raylet", "ray_system"), ("gcs_server", "ray_system"),
                      ("dashboard", "ray_system"), ("ray::", "other_ray_worker")):
        if key in cmdline:
            return name
    return "other"


def sample_run(args: list[str], env: dict, out_dir: Path) -> dict:
    """Run ``hdsu-ray run <args> --output-dir out_dir``, sampling the RSS of every new process."""
    import psutil

    fresh(out_dir)
    before = {p.pid for p in psutil.process_iter()}
    cmd = [str(Path(sys.executable).parent / "hdsu-ray"), "run", *args, "--output-dir", str(out_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_total, peak_by_kind, stop = 0, {}, threading.Event()

    def sample():
        nonlocal peak_total
        while not stop.is_set():
            total = 0
            for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                if p.info["pid"] in before or p.info["memory_info"] is None:
                    continue
                rss = p.info["memory_info"].rss
                total += rss
                k = kind(" ".join(p.info["cmdline"] or []))
                peak_by_kind[k] = max(peak_by_kind.get(k, 0), rss)  # largest single process of a kind
            peak_total = max(peak_total, total)
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err[-3000:]}")
    res = json.loads((out_dir / "results.json").read_text())
    return {"wall_s": round(time.perf_counter() - start, 1), "steps_taken": steps_taken(out_dir),
            "peak_total_mib": round(peak_total / MIB, 1),
            "peak_single_process_mib": {k: round(v / MIB, 1) for k, v in sorted(peak_by_kind.items())},
            "model_params": res["params_total"], "model_mib_fp32": round(res["params_total"] * 4 / MIB, 1)}


def fresh(out_dir: Path) -> None:
    """Remove a previous run's output and staging directories. A rerun into the same directory
    resumes from its Ray Train checkpoints (hdsu_ray.store.staging_dir), so it would take no
    unlearning steps, and its workers would hold the model without the step's activations."""
    import shutil

    for d in (out_dir, out_dir.with_name(out_dir.name + ".partial")):
        shutil.rmtree(d, ignore_errors=True)


def steps_taken(out_dir: Path) -> dict[str, int]:
    """Unlearning steps each method's run took, from its newest checkpoint's history."""
    taken = {}
    for run in sorted((out_dir / "ray_train").glob("unlearn-*")):
        histories = sorted(run.glob("checkpoint_*/history.json"))
        if histories:
            taken[run.name] = len(json.loads(histories[-1].read_text())["curve"])
    return taken


def clean_env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)  # the tests' fast polling would slow the workers
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default="workflows/mhqa_smollm2.yaml")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    args = ap.parse_args()
    out = {"workflow": args.workflow, "overrides": SMALL, "engines": {}}
    for name in args.engines:
        run = [args.workflow, *SMALL, *ENGINES[name]]
        print(f"== {name}: filling the cache (not sampled)", flush=True)
        fresh(REPO / "bench" / "out" / f"memory-{name}-warm")
        subprocess.run([str(Path(sys.executable).parent / "hdsu-ray"), "run", *run, "--output-dir",
                        str(REPO / "bench" / "out" / f"memory-{name}-warm")], cwd=REPO, env=clean_env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"== {name}: sampled", flush=True)
        out["engines"][name] = {"overrides": ENGINES[name],
                                **sample_run(run, clean_env(), REPO / "bench" / "out" / f"memory-{name}")}
        if set(out["engines"][name]["steps_taken"].values()) != {STEPS}:  # the peak must include the steps
            raise SystemExit(f"{name}: the sampled run took {out['engines'][name]['steps_taken']} steps, not {STEPS}")
        print(json.dumps(out["engines"][name]), flush=True)
    path = REPO / "bench" / "out" / "memory_real.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
