"""Run a validated workflow stage by stage on Ray and write ``results.json``.

Stages: select -> learn -> [annotate] -> evaluate (before) -> per method: unlearn, evaluate (after).
Every file the run writes goes to a temporary name first and is renamed into place, so a failed
run never leaves a ``results.json`` behind.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hdsu_ray.config.fields import to_dict
from hdsu_ray.config.schema import Workflow
from hdsu_ray.errors import WorkflowError


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, default=float)
        fh.write("\n")
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None, log=print, **init_kwargs) -> str | None:
    """Start an embedded Ray with its dashboard, on a GCS port its own workers can find.

    Ray Train's PlacementGroupCleaner (one per ``TorchTrainer.fit``) looks the controller up
    through the State API, which finds "the" cluster from ``RAY_ADDRESS`` or else from
    ``/tmp/ray/ray_current_cluster``, a file a killed ``ray start`` leaves behind. With a stale
    file every fit ended 11 s late, waiting out the cleaner's 12 s stop timeout; with no dashboard
    it logs a warning every second. So the GCS gets a known free port and ``RAY_ADDRESS`` names
    it in the environment the raylet, and so every worker, inherits; the driver's own
    environment is restored afterwards (a later local run must not connect to this one).

    Returns the dashboard URL (None when it could not start).
    """
    import ray
    from ray._private.services import get_node_ip_address

    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    try:
        ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                       dashboard_port=_free_port(), **init_kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"[ray] dashboard: http://{url}")
    return url or None


def init_ray(workflow: Workflow, log=print) -> None:
    """Connect to the cluster named by ``cluster.address`` or ``RAY_ADDRESS`` (set inside
    ``ray job submit``), else start an embedded local Ray on this machine."""
    import ray

    address = workflow.cluster.address or os.environ.get("RAY_ADDRESS")
    # A worker group may have to wait for CPUs held by another trial or an evaluation task: on a
    # small local Ray, 60 s (Ray Train's default) is too short to wait.
    # The Train controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S. Ray's 2 s
    # is kept: polling every 0.5 s cut the 1-worker loop's throughput to 0.72-0.88x of plain
    # torch on 2 cores (bench/bench_train.py --env ...; docs/PERFORMANCE.md), while 2 s costs a
    # run at most 2 s of waiting to be seen finished. Tests set 0.5 s for their many short runs.
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2"),
                        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S":
                            os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")}}
    if address and not address.startswith(("ray://", "auto", "local")) and ":" in address:
        host, _, port = address.rpartition(":")
        try:  # Ray retries an unreachable GCS for minutes; answer at once instead
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise WorkflowError(f"no Ray cluster reachable at {address!r}", key="cluster.address",
                                expected="a running cluster's address, or none for a local Ray") from None
    if ray.is_initialized():  # e.g. inside a test session or a notebook that started Ray
        return
    try:
        if address:
            log(f"[ray] connecting to {address}")
            # No runtime_env here: inside `ray job submit` the job's own env would have to merge.
            ray.init(address=address, log_to_driver=True)
        else:
            log("[ray] starting a local Ray")
            start_local_ray(workflow.cluster.num_cpus, log, runtime_env=env, log_to_driver=True)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise WorkflowError(f"no Ray cluster reachable at {address!r}: {exc}", key="cluster.address",
                            expected="a running cluster's address, or none for a local Ray") from None


class Timings(dict):
    @contextmanager
    def stage(self, name: str, log=print):
        log(f"== stage {name}")
        start = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - start, 2)
        log(f"== stage {name} done in {self[name]:.1f}s")


def accuracy(correct: np.ndarray) -> float | None:
    return float(np.mean(correct)) if len(correct) else None


def changed_fraction(before_dir: Path, after_dir: Path) -> tuple[float, int, int]:
    """Fraction of parameter entries that differ between two model directories (exact compare)."""
    from hdsu_ray.models.build import load_model_dir

    a, _ = load_model_dir(before_dir)
    b, _ = load_model_dir(after_dir)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    changed = sum(int((pa[n] != pb[n]).sum()) for n in pa)
    total = sum(p.numel() for p in pa.values())
    return changed / total, changed, total


def run_workflow(workflow: Workflow, output_dir: Path, log=print, file: str | None = None) -> dict[str, Any]:
    from dataclasses import replace

    from hdsu_ray.data.select import select_data
    from hdsu_ray.eval.suite import attack_aucs, dominant_levels
    from hdsu_ray.stages.evaluate import evaluate_model
    from hdsu_ray.stages.learn import run_learn
    from hdsu_ray.stages.runs import plan_jobs, run_jobs
    from hdsu_ray.stages.tensors import unlearn_arrays
    from hdsu_ray.stages.unlearn import SharedArtefacts

    t = Timings()
    with t.stage("select", log):  # before anything is written: bad selections leave no trace
        data = select_data(workflow, file)
        log(f"[select] forget {len(data.forget)}, retain {len(data.retain)}, holdout {len(data.holdout)} rows")
    # Absolute paths: Tune trials and remote workers do not share the driver's working directory.
    output_dir = Path(output_dir).resolve()
    workflow = replace(workflow, cache_dir=str(Path(workflow.cache_dir).resolve()))
    if workflow.unlearn.engine == "deepspeed":
        from hdsu_ray.config.loader import deepspeed_config_path
        ds = deepspeed_config_path(workflow.unlearn)
        workflow = replace(workflow, unlearn=replace(workflow.unlearn, deepspeed_config=str(ds.resolve())))
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "audit.json", "sweep.json"):
        (output_dir / stale).unlink(missing_ok=True)
    init_ray(workflow, log)
    with t.stage("learn", log):
        learned = run_learn(workflow, data, output_dir, log)
    retrain_aucs = None
    if workflow.evaluate.retrain:
        with t.stage("retrain", log):  # the oracle: learned without the forget set
            retrained = run_learn(workflow, data, output_dir, log, tag="retrain")
            retrain_aucs = attack_aucs(evaluate_model(workflow, data, retrained)["stats"])
    with t.stage("annotate", log):
        arrays = unlearn_arrays(workflow, data, learned, output_dir, log)
    with t.stage("evaluate:before", log):
        before = evaluate_model(workflow, data, learned)
    shared = SharedArtefacts(workflow, learned, arrays, log)
    if workflow.sweep is not None:
        return run_sweep_stage(workflow, data, learned, arrays, before, shared, output_dir, t, log)
    retain = arrays["retain"]
    levels = dominant_levels(retain["token_label"], retain["token_level"]) if "token_label" in retain else None
    seeds = workflow.evaluate.seeds or [workflow.seed]
    with t.stage("prepare", log):  # masks, bases, reference tensors: once, before any run starts
        jobs = plan_jobs(workflow, shared)
    context = {"data": data, "before": before, "levels": levels, "retrain_aucs": retrain_aucs}
    start = time.perf_counter()
    rows, run_times = run_jobs(workflow, jobs, learned, context, output_dir, log)
    t.update(run_times)
    t["runs"] = round(time.perf_counter() - start, 2)  # wall time of all runs (they may overlap)
    runs, i = [], 0
    for _ in workflow.unlearn.methods:
        per_seed = rows[i:i + len(seeds)]
        i += len(seeds)
        runs.append(aggregate_seeds(per_seed) if len(per_seed) > 1 else per_seed[0])
    results = {**runs[0], "methods": {r["method"]: r for r in runs}, "timings": dict(t),
               "workflow": workflow.name, "seeds": {"workflow": workflow.seed, "data": workflow.data.seed,
                                                    "unlearn": seeds},
               "config": to_dict(workflow),
               "sizes": {"forget": len(data.forget), "retain": len(data.retain), "holdout": len(data.holdout)}}
    from hdsu_ray.audit import write_audit
    write_audit(workflow, data, results, output_dir)
    write_json_atomic(output_dir / "results.json", results)
    try:
        from hdsu_ray.eval.comparison import write_comparison
        write_comparison(results, output_dir, workflow.evaluate.thresholds)
    except ImportError:
        pass
    log(f"[results] {output_dir / 'results.json'}")
    return results


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """One row per method: the first seed's fields, with headline metrics as mean over seeds and
    the spread of every scalar metric under ``"seeds"``."""
    from hdsu_ray.eval.metrics import mean_and_spread, to_json

    out = dict(per_seed[0])
    spread = {}
    for key in ("forget_rate", "knowledge_preservation", "param_fraction"):
        spread[key] = to_json(mean_and_spread([r[key] for r in per_seed]))
        out[key] = spread[key]["mean"]
    for key, value in per_seed[0]["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            spread[key] = to_json(mean_and_spread([r["metrics"].get(key) for r in per_seed]))
    out["seeds"] = {"values": [r["seed"] for r in per_seed], "spread": spread,
                    "per_seed": [{k: r[k] for k in ("seed", "forget_rate", "knowledge_preservation")}
                                 for r in per_seed]}
    return out


def method_result(workflow, settings, before, after, frac, changed, total, *, levels=None,
                  retrain_aucs=None) -> dict[str, Any]:
    from hdsu_ray.eval.metrics import to_json
    from hdsu_ray.eval.suite import check_thresholds, method_metrics

    b = {k: accuracy(v) for k, v in before.items() if k in ("forget", "retain", "holdout")}
    a = {k: accuracy(v) for k, v in after.items() if k in ("forget", "retain", "holdout")}
    settings = dict(settings)
    curve = settings.pop("curve", [])
    extra = {k: settings.pop(k) for k in ("selected_step", "stopped_early") if k in settings}
    metrics = method_metrics(before, after, attack=workflow.evaluate.mia_attack, retain_levels=levels,
                             retrain_aucs=retrain_aucs, param_fraction=frac) if frac is not None else {}
    return {"method": settings["label"], "seed": workflow.seed, "settings": settings, "curve": curve, **extra,
            "before": {f"{k}_accuracy": v for k, v in b.items()},
            "after": {f"{k}_accuracy": v for k, v in a.items()},
            "forget_rate": 1.0 - a["forget"],
            "knowledge_preservation": a["retain"] / b["retain"] if b["retain"] else None,
            "param_fraction": frac, "params_changed": changed, "params_total": total,
            "metrics": to_json(metrics),
            "thresholds": check_thresholds(metrics, workflow.evaluate.thresholds) if metrics else {}}


def run_sweep_stage(workflow, data, learned, arrays, before, shared, output_dir, t, log) -> dict:
    from hdsu_ray.stages.unlearn import COMPUTE_COUNTS
    from hdsu_ray.sweep.results import collect
    from hdsu_ray.sweep.tuner import run_sweep

    start = time.perf_counter()
    with t.stage("sweep", log):
        grid = run_sweep(workflow, data, learned, arrays, before, shared, output_dir, log)
    summary = collect(grid, workflow, before, COMPUTE_COUNTS, time.perf_counter() - start)
    summary["timings"] = dict(t)
    write_json_atomic(output_dir / "sweep.json", summary)
    try:
        from hdsu_ray.sweep.report import write_report
        write_report(output_dir)
    except ImportError:
        log("[sweep] report module not available")
    best = summary["best"]
    log(f"[sweep] {summary['completed']}/{summary['num_trials']} trials, basis computed "
        f"{summary['basis_computations']}x; best: {best and best['params']}")
    return summary
