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
  per sample vs batched, against one learning epoch over the same rows (bench_prepare.py; needs workflows/mhqa.yaml's learned
  model in the cache, so run the main job once first).
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
from bench.perf_real import prepare_cell, real_model, rows as real_rows  # noqa: E402

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


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _prepare_row(prep: dict) -> str:
    loop, fast = prep["loop"], prep["batched"]
    return (f"| prepare (Fisher mask + basis + references, {prep['rows']} rows, tiny model) vs one learning "
            f"epoch ({prep['learn_epoch_s']:.1f} s): one sample per pass / batched (chunk {prep['chunk']}) | "
            f"{prepare_cell(prep)} | <= 1.5x | {verdict(min(loop['vs_epoch'], fast['vs_epoch']) <= 1.5)} |")


def write_doc(results: dict) -> Path:
    lines = ["# Performance", "",
             "Generated by `python bench/run_all.py` (every benchmark in one run; `--only-report` rebuilds "
             "this file from `bench/out/*.json`, else from `bench/results.json`). Raw numbers: "
             "`bench/results.json`. Where and with what each row was measured is listed under the table.", "",
             "| benchmark | measured | target | status |", "|---|---|---|---|"]
    step, train, sweep, ann, mem = (results.get(k) for k in ("step", "train", "sweep", "annotate", "memory"))
    if step:
        s = step["steps"]
        lines.append(f"| unlearning step (median ms: nll / graddiff / dual) | {s['nll']['median_s'] * 1e3:.0f} / "
                     f"{s['graddiff']['median_s'] * 1e3:.0f} / {s['dual']['median_s'] * 1e3:.0f}; dual/graddiff "
                     f"{step['dual_over_graddiff']:.2f} | <= 1.3 | {verdict(step['dual_over_graddiff'] <= 1.3)} |")
        if "dual_no_anchor" in s:
            lines.append(f"| the dual step without the KL anchor (median ms; FLOPs vs GradDiff) | "
                         f"{s['dual_no_anchor']['median_s'] * 1e3:.0f}; "
                         f"{step['dual_no_anchor_over_graddiff']:.2f}x GradDiff's time; FLOPs: dual "
                         f"{s['dual']['flops'] / s['graddiff']['flops']:.2f}x, without anchor "
                         f"{s['dual_no_anchor']['flops'] / s['graddiff']['flops']:.2f}x | - | - |")
        lines.append(f"| MFU of the dual step (vs measured fp32 matmul peak "
                     f"{step['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s) | {s['dual']['mfu']:.3f} "
                     f"({s['dual']['flops_per_s'] / 1e9:.1f} GFLOP/s) | - | - |")
    if train:
        r = train["rows"]
        lines.append(f"| Ray Train 1 worker vs plain loop (tokens/s) | {r['ray_1']['tokens_per_s']:.0f} vs "
                     f"{r['plain']['tokens_per_s']:.0f} = {train['ray_over_plain']['ray_1']:.2f}x | >= 0.9x | "
                     f"{verdict(train['ray_over_plain']['ray_1'] >= 0.9)} |")
        lines.append(f"| Ray Train 2 workers vs plain loop (tokens/s) | {r['ray_2']['tokens_per_s']:.0f} = "
                     f"{train['ray_over_plain']['ray_2']:.2f}x | - | - |")
    threads = results.get("threads")
    if threads:
        t, o = threads["tokens_per_s"], threads["over_main"]
        lines.append(f"| the same loop in a second thread (as Ray Train V2 runs it) vs the main thread, tokens/s; "
                     f"in brackets after the main thread ran it (two OpenMP teams) | {t['thread']:.0f} vs "
                     f"{t['main']:.0f} = {o['thread']:.2f}x ({o['thread_after_main']:.2f}x) | - | - |")
    if sweep:
        r = sweep["runs"]
        lines.append(f"| sweep, {sweep['trials']} trials, whole run: shared cache vs caching off (every trial "
                     f"learns, annotates and computes its own basis), s | {r['shared']['wall_s']:.0f} vs "
                     f"{r['none']['wall_s']:.0f} = {sweep['shared_over_none']:.2f}; learned "
                     f"{r['shared']['learn_computations']}x vs {r['none']['learn_computations']}x, basis "
                     f"{r['shared']['basis_computations']}x vs {r['none']['basis_computations']}x | <= 0.6 | "
                     f"{verdict(sweep['shared_over_none'] <= 0.6)} |")
        lines.append(f"| sweep stage only: shared object-store artefacts vs each trial computing its own mask, "
                     f"reference and basis (learned model shared in both), s | {r['shared']['sweep_wall_s']:.0f} vs "
                     f"{r['per_trial']['sweep_wall_s']:.0f} = {sweep['shared_over_per_trial']:.2f} | <= 0.6 | "
                     f"{verdict(sweep['shared_over_per_trial'] <= 0.6)} |")
    if ann:
        rows = ann.get("results", [])
        cpus = ann.get("meta", {}).get("ray_num_cpus", 2)
        for scale in sorted({r["scale"] for r in rows}):
            single = next(r for r in rows if r["scale"] == scale and r["mode"] == "single-process")
            # One row per actor count: with 1 actor the job's one core is compared with the
            # process's one core; with 2 the actors share the 2 cores with the driver and Ray.
            for run in sorted((r for r in rows if r["scale"] == scale and r["mode"] == "ray-data"),
                              key=lambda r: r["actors"]):
                per_core = single["tokens_per_s"] / (run["tokens_per_s"] / min(run["actors"], cpus))
                lines.append(f"| annotate {single['rows']} rows ({scale}x): one process vs Ray Data, "
                             f"{run['actors']} actor{'s' if run['actors'] > 1 else ''}, tokens/s | "
                             f"{single['tokens_per_s']:.0f} vs {run['tokens_per_s']:.0f}; per core "
                             f"{per_core:.3f}x slower | within 1.5x per core | {verdict(per_core <= 1.5)} |")
        scales = sorted({r["scale"] for r in rows})
        if len(scales) >= 2:
            lo, hi = scales[0], scales[-1]
            wall = {sc: min(r["wall_s"] for r in rows if r["scale"] == sc and r["mode"] == "ray-data") for sc in (lo, hi)}
            growth = wall[hi] / wall[lo]
            lines.append(f"| annotate cost from {lo}x to {hi}x rows (Ray Data wall) | {wall[lo]:.1f} s -> "
                         f"{wall[hi]:.1f} s = {growth:.1f}x for {hi // lo}x rows | linear (<= {hi // lo}x) | "
                         f"{verdict(growth <= hi / lo * 1.1)} |")
    if mem:
        lines.append(f"| peak resident memory of the main job: sum of RSS over its processes (shared pages, e.g. "
                     f"torch's libraries, count once per process: an upper bound) | {mem['peak_total_mib']:.0f} MiB; "
                     f"wall {mem['wall_s']:.0f} s while sampled | recorded | - |")
        lines.append(f"| largest Ray Train worker | {mem['peak_single_process_mib'].get('train_worker', 0):.0f} MiB "
                     f"(model {mem['model_mib_fp32']:.0f} MiB in fp32) | no second model copy | by construction |")
    lines += ["", "## Notes", "",
              "* Each row comes from the JSON file named after it in `bench/out/`; nothing here is typed by hand.",
              "* Sweep: `bench_sweep.py` warms the default disk cache with a one-trial sweep, then runs three "
              "sweeps: `shared` with a cold cache of its own (the driver learns, annotates and computes one basis "
              "at the largest rank), `per_trial` (each trial computes its own mask, reference and basis) and "
              "`none` (each trial also learns, annotates and evaluates the learned model, as a loop of "
              "independent runs would). The whole-run ratio is what the cache saves against such a loop. The "
              "sweep-stage ratio isolates the object-store artefacts; at this model size they are a small part "
              "of a trial (Ray Train's worker-group start, the unlearning steps, the evaluation), so that ratio "
              "cannot reach 0.6 here. Trials run two at a time: each trial holds 0.01 CPU, and its workers and "
              "evaluation borrow it (`driver.held_cpus`); before that fix two 1-CPU trials did not fit on 2 CPUs "
              "and ran one after the other.",
              "* Unlearning step: the dual step's time follows its FLOPs (torch's counter, `step.json`). The "
              "KL anchor is not projected, so its gradient takes a second backward pass through the forget "
              "rows' forward besides the projected forget term's; the row without the anchor shows what that "
              "pass costs. Only the forget term is projected (docs/method.md), so this is the design's price, "
              "not overhead to remove; `anchor_weight: 0` drops it.",
              "* Profiles behind the fixes (commands to repeat them; findings in words, numbers in the rows above "
              "and in the git history of `bench/results.json`):",
              "  * Annotation: `py-spy record --subprocesses -f raw -o ann.txt -- python bench/bench_annotate.py "
              "--scales 10 --actors 1`. Each actor spent seconds before its first batch: importing transformers "
              "for `AutoTokenizer`, and loading the hierarchy to rebuild the label tables. Ray Data's default "
              "200 input blocks also meant one Parquet write task per small block. Fixed: actors tokenize with "
              "the Rust `tokenizers` library (same ids and offsets, a test checks it), take the label tables and "
              "the matcher from the object store, and work on one block per 1024-row batch. Later the driver "
              "took over the Parquet write (one file from the gathered blocks; no write tasks, no read-back "
              "for the coverage record, and no files left on whichever node ran a write task). What is left "
              "is fixed cost: actor processes, Ray Data planning, and each actor unpickling the Aho-Corasick "
              "matcher of the whole hierarchy from the object store. A few seconds of single-process work cannot amortise "
              "it: at 10x rows one actor is within the per-core target, at 1x it is not, and two actors share "
              "the machine's two cores with the driver and Ray's own processes.",
              "  * Ray Train, 1 worker: `python bench/bench_train.py --workers 1 --env "
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5` against `=2`, plus psutil CPU sampling of every process and "
              "`py-spy record -p <RayTrainWorker pid> --threads`. Ray Train V2 runs the loop in a thread while the "
              "worker's main thread answers the controller's polls; polling every 0.5 s (set earlier so short runs "
              "end sooner) took 10-25 % of the loop's throughput on 2 cores. `hdsu-ray run` now keeps Ray's 2 s; "
              "the tests still set 0.5 s. The thread itself costs nothing (`python bench/bench_threads.py`, the "
              "thread row): a Ray Train worker's main thread never runs a torch op, so the loop's thread owns the "
              "only OpenMP team (gdb on a worker: no libgomp thread before the loop, one after). Timing the loop "
              "in a plain actor's thread after its main thread ran it is misleading: with two teams libgomp "
              "manages more threads than CPUs and throttles its spin-wait (the bracketed figure). "
              "`python bench/bench_train.py --workers 1 --cpus 1` measures Ray Train's ratio with no OpenMP "
              "team at all; the ratio varies between runs on this machine, so rerun before reading a miss.",
              "  * Every `TorchTrainer.fit` ended about 11 s late on this machine: Ray Train's "
              "PlacementGroupCleaner finds the cluster through the State API, which read a stale "
              "`/tmp/ray/ray_current_cluster` left by a killed `ray start`, and the controller then waited out "
              "the cleaner's 12 s stop timeout. `hdsu_ray.runtime.start_local_ray` now starts the embedded Ray "
              "with its dashboard on a known GCS port and points its workers' `RAY_ADDRESS` at it.",
              "  * Prepare: `python bench/bench_prepare.py workflows/mhqa_smollm2.yaml --chunk 8`, and "
              "`torch.profiler` around one `fisher_diagonals` call on its rows. torch.func's vmap held every "
              "parameter's per-sample gradients of a chunk at once (chunk x 134.5M floats on SmolLM2) and squared "
              "them in float64, so batching was slower than one row per backward. Now (`hdsu_ray/train/"
              "hooked_grads.py`) the ordinary forward and backward run with the weights frozen, and a tensor "
              "hook forms each layer's per-sample gradient as one batched matmul, hands it to the Fisher sum and "
              "drops it (for a linear weight's Fisher, squared and summed a block of output rows at a time, which made "
              "large chunks as fast as small ones); the row cap's per-row sort and the budget's full topk were replaced by a per-row topk "
              "and a sampled bound (same masks, tests check both). The per-sample matmuls wrote chunk x layer-size "
              "floats for about 40 tokens of work each, memory-bound, the tied embedding and output head most "
              "(one [chunk, vocab, hidden] buffer per chunk). Then (`hdsu_ray/train/grad_terms.py`): the output "
              "head's per-sample product keeps only positions with a gradient (answer tokens), the tied weight's "
              "squares are the head's, taken a block at a time, corrected on each sample's few embedding rows, "
              "the basis forms only the budget's entries of each per-sample gradient instead of the whole "
              "gradient, and the forget rows' reference log-probs are read off the forget Fisher's forward "
              "passes instead of a forward of their own. The mask's selection over 134.5M float64 scores took "
              "seconds of it (`torch.profiler` and timing of each step of `fisher_masks`): the row cap's tie-break ran a cumsum over every row (now only over rows with ties) and the "
              "global top fraction concatenated every score (now tensor by tensor). What is left is near the "
              "floor of the design: the Fisher runs every forget and retain row forward and backward once, with "
              "per-sample products as costly as a weight gradient, and the basis runs its retain micro-batches "
              "again, after the mask they need. On the tiny model the hooks' Python and small matmuls dominate. "
              "The epoch it is held against is the faster of two (`learn_epochs_s` in the results: one epoch's time "
              "varies between runs on this machine, and so does the ratio).",
              "* SmolLM2 memory (`bench/bench_memory.py`): the torch engine's unlearn worker holds the model, "
              "the activations of its forget and retain rows (vocabulary-sized logits dominate) and the optimizer "
              "state of the budgeted entries only. The ZeRO-2/3 workers hold several times more: the client AdamW "
              "keeps dense state for every parameter (its updates are zero outside the budget), and DeepSpeed's "
              "default bucket and prefetch sizes are large against a 135M model; not profiled further. RSS alone "
              "does not prove that no second model copy is resident; the design precomputes the reference "
              "tensors so that none is needed (next bullet). A cold run also learns the model: the learned "
              "model's cache key depends on the number of workers, so switching to 2 workers learns again. The row "
              "is a warm run's: in a first run, where the same job has just computed the prepare artefacts, the "
              "torch engine's unlearn worker peaked several times higher, twice; the cause is not found yet "
              "(issue #21's notes).",
              "* `by construction`: the unlearn worker loads one model; the reference log-probabilities and "
              "RMU's reference activations are precomputed once in the driver (`hdsu_ray/train/prepare.py`) and "
              "reach the worker through the object store, so no reference model is resident. With a model this "
              "small a second copy would be lost in the noise of the process's RSS, so it is not claimed as a "
              "measurement.", ""]
    real = real_rows(results, verdict)
    if real:
        at = lines.index("## Notes") - 1
        lines[at:at] = real
    prep = results.get("prepare")
    if prep:
        lines.insert(lines.index("|---|---|---|---|") + 1, _prepare_row(prep))
    val = results.get("validate")
    if val:
        lines.insert(lines.index("|---|---|---|---|") + 1,
                     f"| `hdsu-ray validate workflows/mhqa.yaml`, cold process (median of {val['repeats']}) | "
                     f"{val['median_s']:.2f} s | < 1.5 s | {verdict(val['median_s'] < 1.5)} |")
    lines += ["", "## Where each row was measured", "",
              "Rows measured before this record existed carry the date and machine of the results file that "
              "held them (package versions other than torch were not recorded then).", "",
              "| benchmark | recorded | machine | packages |", "|---|---|---|---|"]
    for name, rec in (results.get("measured") or {}).items():
        m = rec.get("machine") or {}
        pk = m.get("packages") or {"torch": m.get("torch")}
        lines.append(f"| {name} | {rec.get('generated')} | {m.get('cpu')}, {m.get('cores')} cores, Python "
                     f"{m.get('python')} | {', '.join(f'{k} {v}' for k, v in pk.items())} |")
    path = REPO / "docs" / "PERFORMANCE.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


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
    print(write_doc(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
