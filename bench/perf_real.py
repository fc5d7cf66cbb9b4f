"""The real-model rows of bench/run_all.py: SmolLM2-135M on this CPU (issue targets beside them).

``real_model(results)`` is the ``real_model`` record of bench/results.json; ``rows(results)`` its
lines in docs/PERFORMANCE.md. A target measured nowhere says why instead of showing a number.
"""

from __future__ import annotations

import json
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "mhqa-smollm2"


def _study_estimate(prep: dict) -> dict | None:
    """``sweep_estimate`` from the committed SmolLM2 record, when there is one."""
    if not (STUDY / "results.json").is_file() or not (STUDY / "environment.json").is_file():
        return None
    cpus = json.loads((STUDY / "environment.json").read_text())["cpus"]
    return sweep_estimate(prep, json.loads((STUDY / "results.json").read_text()), cpus)


# What was not measured on SmolLM2, and why (no GPU was lent to the sessions that built this).
NOT_MEASURED = {
    "sweep_stage_ratio": "not measured: two 8-trial SmolLM2 sweeps (each trial unlearns and evaluates the 135M "
                         "model) do not fit a CPU session; the GPU workflow is where it belongs",
    "train_1worker_vs_plain": "not measured on SmolLM2 yet: `python bench/run_all.py --only train_real`",
    "eval_vs_plain": "not measured on SmolLM2 yet: `python bench/run_all.py --only eval_real`",
    "memory": "not measured on SmolLM2 (torch engine and ZeRO-2/3 on 2 workers)",
}


def sweep_estimate(prep: dict, study: dict, machine_cpus: int, trials: int = 8) -> dict:
    """What the shared cache could save on a SmolLM2 sweep, estimated (not measured) from the study's
    tuning stage and the prepare bench. A shared sweep computes the artefacts once (prepare's time P on
    the 2 threads the bench used) and then runs its trials ``c`` at a time, each taking W of wall (the
    study's tuning stage time over its trials, times c). With per-trial artefacts every trial also
    computes them on its own CPUs: P' = P times the bench's threads / its CPUs. Stage ratio =
    (n/c W + P) / (n/c (W + P')). ``machine_cpus``: the study's machine (its environment.json)."""
    cpus = study["config"]["cluster"]["cpus_per_worker"]
    c = max(1, int(machine_cpus // cpus))  # trials in flight: each holds a worker of ``cpus``
    n_study = sum(r["protocol"]["trials"] for r in study["methods"].values() if r.get("protocol", {}).get("tuned"))
    wall = study["timings"]["tune"] / n_study * c
    out = {"measured": False, "trials": trials, "concurrent": c, "trial_wall_s": round(wall, 1)}
    for path in ("loop", "batched"):
        p = prep[path]["total_s"]
        shared, own = trials / c * wall + p, trials / c * (wall + p * prep["threads"] / cpus)
        out[path] = round(shared / own, 3)
    return out


LABELS = {"sweep_stage_ratio": "sweep stage, shared vs per-trial artefacts (<= 0.6)",
          "train_1worker_vs_plain": "Ray Train 1 worker vs plain loop (>= 0.9x)",
          "eval_vs_plain": "evaluation vs a plain batched forward (>= 0.8x)",
          "memory": "peak memory of an unlearn worker"}


def real_model(results: dict) -> dict:
    prep, step = results.get("prepare_real"), results.get("step_real")
    ev, train, mem = results.get("eval_real"), results.get("train_real"), results.get("memory_real")
    out: dict = {}
    if mem:
        out["memory"] = {e: {"worker_peak_mib": r["peak_single_process_mib"].get("train_worker"),
                             "run_peak_total_mib": r["peak_total_mib"], "model_mib_fp32": r["model_mib_fp32"]}
                         for e, r in mem["engines"].items()}
    if ev:
        out["eval_vs_plain"] = {"ratio": ev["ratio"], "options_per_s": ev["ours_options_per_s"],
                                "plain_options_per_s": ev["plain_options_per_s"], "target": 0.8,
                                "meets_target": ev["ratio"] >= 0.8}
    if train:
        ratio = train["ray_over_plain"]["ray_1"]
        out["train_1worker_vs_plain"] = {"ratio": ratio, "target": 0.9, "meets_target": ratio >= 0.9}
    if prep:
        best = min(prep["loop"]["vs_epoch"], prep["batched"]["vs_epoch"])
        out["prepare_vs_learn_epoch"] = {"loop": prep["loop"]["vs_epoch"], "batched": prep["batched"]["vs_epoch"],
                                         "target": 1.5, "meets_target": best <= 1.5}
    if step:
        out["step_mfu"] = {"dual": step["steps"]["dual"]["mfu"], "graddiff": step["steps"]["graddiff"]["mfu"],
                           "matmul_peak_flops_per_s": step["matmul_peak_flops_per_s"]}
        out["dual_vs_graddiff"] = {"ratio": step["dual_over_graddiff"], "target": 1.3,
                                   "meets_target": step["dual_over_graddiff"] <= 1.3}
    estimate = _study_estimate(prep) if prep else None
    if estimate:
        out["sweep_stage_ratio"] = {**estimate, "target": 0.6, "why": NOT_MEASURED["sweep_stage_ratio"]}
    for key, why in NOT_MEASURED.items():
        out.setdefault(key, why)
    return out


def prepare_cell(prep: dict) -> str:
    """``loop s = ratio / batched s = ratio`` of a bench_prepare.py record (both models' rows)."""
    loop, fast = prep["loop"], prep["batched"]
    return f"{loop['total_s']:.1f} s = {loop['vs_epoch']:.2f}x / {fast['total_s']:.1f} s = {fast['vs_epoch']:.2f}x"


def rows(results: dict, verdict) -> list[str]:
    prep, step = results.get("prepare_real"), results.get("step_real")
    lines = []
    if prep:
        best = min(prep["loop"]["vs_epoch"], prep["batched"]["vs_epoch"])
        lines.append(
            f"| SmolLM2-135M: prepare (Fisher mask + basis + references, {prep['rows']} rows) vs one learning "
            f"epoch ({prep['learn_epoch_s']:.1f} s): one sample per pass / batched (chunk {prep['chunk']}) | "
            f"{prepare_cell(prep)} | <= 1.5x | {verdict(best <= 1.5)} |")
    if step:
        s = step["steps"]
        lines.append(
            f"| SmolLM2-135M: unlearning step, {step['rows']}+{step['rows']} rows (median s: nll / graddiff / dual) | "
            f"{s['nll']['median_s']:.1f} / {s['graddiff']['median_s']:.1f} / {s['dual']['median_s']:.1f}; dual/graddiff "
            f"{step['dual_over_graddiff']:.2f} over {s['dual']['steps']} timed steps (FLOPs "
            f"{s['dual']['flops'] / s['graddiff']['flops']:.2f}x; without the anchor "
            f"{step['dual_no_anchor_over_graddiff']:.2f}x time) | <= 1.3 | {verdict(step['dual_over_graddiff'] <= 1.3)} |")
        lines.append(
            f"| SmolLM2-135M: MFU of the dual step (vs measured fp32 matmul peak "
            f"{step['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s) | {s['dual']['mfu']:.3f} "
            f"({s['dual']['flops_per_s'] / 1e9:.1f} GFLOP/s); GradDiff {s['graddiff']['mfu']:.3f} | - | - |")
    lines += _eval_train_rows(results, verdict)
    if prep or step:
        done = {"eval_vs_plain": results.get("eval_real"), "train_1worker_vs_plain": results.get("train_real"),
                "memory": results.get("memory_real")}
        lines += [f"| SmolLM2-135M: {LABELS[key]} | {_unmeasured(key, why, results)} | - | **missed** |"
                  for key, why in NOT_MEASURED.items() if not done.get(key)]
    return lines


def _unmeasured(key: str, why: str, results: dict) -> str:
    # real_model() computed the estimate already (run_all stores it before writing the document)
    e = (results.get("real_model") or {}).get(key)
    if not isinstance(e, dict) or "loop" not in e:
        return why
    return (f"{why}. Estimated instead from the SmolLM2 study's tuning stage ({e['trial_wall_s']:.0f} s a trial, "
            f"{e['concurrent']} at a time) and the prepare row: {e['loop']:.2f} with one sample per pass, "
            f"{e['batched']:.2f} batched: a trial's own unlearning and evaluation outweigh the artefacts")


def _eval_train_rows(results: dict, verdict) -> list[str]:
    ev, train, mem = results.get("eval_real"), results.get("train_real"), results.get("memory_real")
    lines = []
    if mem:
        e = mem["engines"]
        cells = "; ".join(f"{name} {r['peak_single_process_mib'].get('train_worker', float('nan')):.0f} MiB "
                          f"(run {r['peak_total_mib']:.0f})" for name, r in e.items())
        model = next(iter(e.values()))["model_mib_fp32"]
        lines.append(f"| SmolLM2-135M: peak RSS of one unlearn worker (whole run in brackets), torch engine 1 "
                     f"worker / DeepSpeed ZeRO-2 and ZeRO-3 on 2 workers; the model is {model:.0f} MiB in fp32 | "
                     f"{cells} | measured; one model copy per worker | measured (see notes) |")
    if ev:
        lines.append(
            f"| SmolLM2-135M: evaluation, {ev['options']} options of {ev['records']} questions, option scoring vs a "
            f"plain batched forward of every (question, option) pair | {ev['ours_options_per_s']:.1f} vs "
            f"{ev['plain_options_per_s']:.1f} options/s = {ev['ratio']:.2f}x ({ev['share_in_forward']:.1%} of ours is the "
            f"packed model forward itself) | >= 0.8x | {verdict(ev['ratio'] >= 0.8)} |")
    if train:
        r, ratio = train["rows"], train["ray_over_plain"]["ray_1"]
        lines.append(
            f"| SmolLM2-135M: learn step under Ray Train, 1 worker vs the plain loop ({train['steps']} timed steps, "
            f"batch {train['global_batch']}) | {r['ray_1']['tokens_per_s']:.0f} vs {r['plain']['tokens_per_s']:.0f} "
            f"tokens/s = {ratio:.2f}x | >= 0.9x | {verdict(ratio >= 0.9)} |")
    return lines
